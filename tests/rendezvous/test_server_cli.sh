#!/usr/bin/env bash
# The rendezvous-server command line: exit codes and messages for bad input
# and bind errors, readiness, a garbage frame closed with a logged reason,
# SIGUSR1 counters, clean SIGINT/SIGTERM exit with final counters.
# Usage: test_server_cli.sh PATH/TO/natpunch
set -euo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/../interop/lib.sh"
command -v ss >/dev/null || { echo "SKIP: ss not installed (apt-get install iproute2)"; exit 77; }

tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# expect CODE PATTERN ARGS...: runs the command, checks the exit code and
# that stderr contains PATTERN (grep -F).
expect() {
  local code=$1 pattern=$2 rc=0; shift 2
  timeout 10 "$NP" rendezvous-server "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = "$code" ] || { cat "$tmp/err" >&2; np_fail "'$*' exited $rc, expected $code"; }
  grep -qF -- "$pattern" "$tmp/err" || { cat "$tmp/err" >&2; np_fail "'$*': stderr lacks '$pattern'"; }
}

expect 2 "--listen IP[:PORT] is required"
expect 2 "'host.example'" --listen host.example
expect 2 "'127.0.0.1:99999'" --listen 127.0.0.1:99999
expect 2 "--max-connections: '0'" --listen 127.0.0.1:5000 --max-connections 0
expect 2 "--max-frame: '100'" --listen 127.0.0.1:5000 --max-frame 100
expect 2 "--rate: 'x'" --listen 127.0.0.1:5000 --rate x
expect 2 "--auth-timeout: '-5'" --listen 127.0.0.1:5000 --auth-timeout -5
expect 2 "unknown option '--bogus'" --bogus
expect 2 "option '--listen' needs a value" --listen
expect 2 "unexpected argument 'extra'" --listen 127.0.0.1:5000 extra
expect 1 "bind 198.51.100.77:3479: Cannot assign requested address" --listen 198.51.100.77:3479

rc=0; "$NP" rendezvous-server --help >"$tmp/help" || rc=$?
[ "$rc" = 0 ] && grep -q "Exit status" "$tmp/help" && grep -q -- "--max-connections" "$tmp/help" \
  || np_fail "--help"

for sig in INT TERM; do
  p=$(np_pick_ports 0)
  "$NP" rendezvous-server --listen "127.0.0.1:$p" --max-connections 100 2>"$tmp/log" &
  pid=$!
  np_wait_log "$tmp/log" "listening on 127.0.0.1:$p" "$pid" 10 || { cat "$tmp/log" >&2; np_fail "server did not start"; }
  expect 1 "bind 127.0.0.1:$p: Address already in use" --listen "127.0.0.1:$p"
  # A frame that is not a message: 400, closed, the reason logged.
  exec 3<>"/dev/tcp/127.0.0.1/$p"
  printf '\0\0\0\010\001\356\0\0garbage!' >&3
  timeout 5 cat <&3 >"$tmp/reply" || true
  exec 3<&-
  grep -q "closed: 400" "$tmp/log" || { cat "$tmp/log" >&2; np_fail "no log line for the bad frame"; }
  [ -s "$tmp/reply" ] || np_fail "no ERROR frame before the close"
  kill -USR1 "$pid"
  np_wait_log "$tmp/log" "counters: connections=1 open=0 .* closed_bad_frame=1" "$pid" 5 \
    || { cat "$tmp/log" >&2; np_fail "no counters on SIGUSR1"; }
  kill -"$sig" "$pid"
  np_wait_exit "$pid" 10
  pid=
  [ "$NP_RC" = 0 ] || { cat "$tmp/log" >&2; np_fail "exit status $NP_RC after SIG$sig"; }
  grep -q "SIG$sig: stopping" "$tmp/log" && grep -q "stopped; counters: connections=1" "$tmp/log" \
    || { cat "$tmp/log" >&2; np_fail "no final counters after SIG$sig"; }
done
echo PASS
