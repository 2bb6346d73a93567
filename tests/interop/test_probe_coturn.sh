#!/usr/bin/env bash
# "natpunch probe" against coturn's STUN server (turnserver -S) with an
# alternate address and port, i.e. RFC 5780: on loopback there is no NAT, so
# the probe must report its own address, no NAT, endpoint-independent mapping
# and filtering, delta 0.
# Usage: test_probe_coturn.sh PATH/TO/natpunch
# Exit: 0 pass, 1 fail, 77 skipped (coturn, jq or ss not installed).
set -euo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/lib.sh"

for t in turnserver jq ss; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed (apt-get install coturn jq iproute2)"; exit 77; }
done

tmp=$(mktemp -d)
ts_pid=
cleanup() {
  [ -n "$ts_pid" ] && kill -KILL "$ts_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Without a config file (-n), STUN only (-S), no CLI/TLS/DTLS listeners so
# nothing but our two ports is used. Retried if a port was taken meanwhile.
started=0
for attempt in 1 2 3 4 5; do
  p1=$(np_pick_ports 1); p2=$((p1 + 1))
  turnserver -n -S --no-cli --no-tls --no-dtls \
    --listening-ip 127.0.0.1 --listening-ip 127.0.0.2 \
    --listening-port "$p1" --alt-listening-port "$p2" \
    --log-file stdout --simple-log --pidfile "$tmp/turnserver.pid" -m 1 \
    >"$tmp/turnserver.log" 2>&1 &
  ts_pid=$!
  if np_wait_bound "$ts_pid" 10 127.0.0.1:"$p1" 127.0.0.2:"$p1" 127.0.0.1:"$p2" 127.0.0.2:"$p2"; then
    started=1
    break
  fi
  kill -KILL "$ts_pid" 2>/dev/null || true
  wait "$ts_pid" 2>/dev/null || true
  ts_pid=
done
[ "$started" = 1 ] || { tail -20 "$tmp/turnserver.log" >&2; np_fail "turnserver did not start"; }
echo "turnserver -S on 127.0.0.1/127.0.0.2 ports $p1/$p2"

rc=0
json=$(timeout 30 "$NP" probe --discovery "127.0.0.1:$p1" --discovery "127.0.0.2:$p1" --json) || rc=$?
echo "probe (exit $rc): $json"
[ "$rc" = 0 ] || np_fail "probe exited with $rc"

check() { # check JQ_EXPR DESCRIPTION
  jq -e "$1" >/dev/null <<<"$json" || np_fail "$2 (jq: $1)"
}
check '.local | test("^127\\.0\\.0\\.1:[0-9]+$")' "local is a 127.0.0.1 address"
check '.mapped | length == 2' "both servers answered"
check '.mapped[0] == .local' "mapped[0] equals local"
check '.mapped[1] == .local' "mapped[1] equals local"
check '.nat == false' "no NAT on loopback"
check '.delta == 0' "port delta 0"
check '.mapping == "endpoint-independent"' "mapping endpoint-independent"
check '.filtering == "endpoint-independent"' "filtering endpoint-independent"
check '.port_preserving == true' "port preserved"

kill -TERM "$ts_pid"
np_wait_exit "$ts_pid" 10
ts_pid=
echo "PASS"
