#!/usr/bin/env bash
# The discovery-server command line: exit codes and messages for bad input
# and bind errors, readiness, SIGUSR1 counters, clean SIGINT/SIGTERM exit.
# Needs no coturn. Usage: test_discovery_cli.sh PATH/TO/natpunch
set -euo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/lib.sh"
command -v ss >/dev/null || { echo "SKIP: ss not installed (apt-get install iproute2)"; exit 77; }

tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# expect CODE PATTERN ARGS...: runs the command, checks exit code and that
# stderr matches PATTERN (grep -F).
expect() {
  local code=$1 pattern=$2 rc=0; shift 2
  timeout 10 "$NP" discovery-server "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = "$code" ] || { cat "$tmp/err" >&2; np_fail "'$*' exited $rc, expected $code"; }
  grep -qF -- "$pattern" "$tmp/err" || { cat "$tmp/err" >&2; np_fail "'$*': stderr lacks '$pattern'"; }
}

expect 2 "--listen IP[:PORT] is required"
expect 2 "'127.0.0.1:99999'" --listen 127.0.0.1:99999
expect 2 "'nonsense'" --listen nonsense
expect 2 "--threads: '0'" --listen 127.0.0.1 --threads 0
expect 2 "--alt-port: '70000'" --listen 127.0.0.1 --alt-port 70000
expect 2 "'127.0.0.2:5'" --listen 127.0.0.1 --alt-ip 127.0.0.2:5
expect 2 "'::1' is not of the same address family" --listen 127.0.0.1 --alt-ip ::1
expect 2 "unknown option '--bogus'" --bogus
expect 2 "unexpected argument 'extra'" --listen 127.0.0.1 extra
# Binding an address this host does not have (bind is local: no packet).
expect 1 "bind 198.51.100.77:3478: Cannot assign requested address" --listen 198.51.100.77:3478

rc=0; "$NP" discovery-server --help >"$tmp/help" || rc=$?
[ "$rc" = 0 ] && grep -q "Exit status" "$tmp/help" && grep -q -- "--alt-port" "$tmp/help" || np_fail "--help"

for sig in INT TERM; do
  p=$(np_pick_ports 0)
  "$NP" discovery-server --listen "127.0.0.1:$p" --threads 2 2>"$tmp/log" &
  pid=$!
  np_wait_log "$tmp/log" "listening on 127.0.0.1:$p" "$pid" 10 || { cat "$tmp/log" >&2; np_fail "server did not start"; }
  # A second server on the same port must not join the first one's
  # SO_REUSEPORT group: bind error, exit 1.
  expect 1 "bind 127.0.0.1:$p: Address already in use" --listen "127.0.0.1:$p"
  kill -USR1 "$pid"
  np_wait_log "$tmp/log" "counters: received=0" "$pid" 5 || np_fail "no counters on SIGUSR1"
  kill -"$sig" "$pid"
  np_wait_exit "$pid" 10
  pid=
  [ "$NP_RC" = 0 ] || { cat "$tmp/log" >&2; np_fail "exit status $NP_RC after SIG$sig"; }
  grep -q "SIG$sig: stopping" "$tmp/log" && grep -q "stopped; counters: received=0" "$tmp/log" \
    || { cat "$tmp/log" >&2; np_fail "no final counters after SIG$sig"; }
done
echo PASS
