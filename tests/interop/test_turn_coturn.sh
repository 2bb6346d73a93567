#!/usr/bin/env bash
# Our TURN client (src/turn, through tests/interop/turn_driver) against
# coturn's TURN server on loopback with a static long-term user: Allocate
# (401 then success), CreatePermission, a payload to a local UDP peer by
# Send indication and its echo back as a Data indication, ChannelBind and
# the same through ChannelData, then deallocation. The relayed address
# must be coturn's (127.0.0.1, inside the relay port range we gave it),
# and the peer must see the payloads come from it. A wrong password must
# fail with a clear 401.
# Usage: test_turn_coturn.sh PATH/TO/turn_driver
# Exit: 0 pass, 1 fail, 77 skipped (coturn or ss not installed).
set -euo pipefail
DRIVER=${1:?usage: $0 PATH/TO/turn_driver}
. "$(dirname "$0")/lib.sh"

for t in turnserver ss; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed (apt-get install coturn iproute2)"; exit 77; }
done

tmp=$(mktemp -d)
ts_pid=
cleanup() {
  [ -n "$ts_pid" ] && kill -KILL "$ts_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Without a config file (-n); no CLI, TLS, DTLS or TCP listeners; relay
# ports in a range of our own. Retried if a port was taken meanwhile.
started=0
for attempt in 1 2 3 4 5; do
  p=$(np_pick_ports 21); lo=$((p + 1)); hi=$((p + 20))
  turnserver -n -v --no-cli --no-tls --no-dtls --no-tcp \
    --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$p" \
    --min-port "$lo" --max-port "$hi" \
    --lt-cred-mech --user u:p --realm natpunch --allow-loopback-peers \
    --log-file stdout --simple-log --pidfile "$tmp/turnserver.pid" -m 1 \
    --db "$tmp/turnserver.db" \
    >"$tmp/turnserver.log" 2>&1 &
  ts_pid=$!
  if np_wait_bound "$ts_pid" 10 127.0.0.1:"$p"; then
    started=1
    break
  fi
  kill -KILL "$ts_pid" 2>/dev/null || true
  wait "$ts_pid" 2>/dev/null || true
  ts_pid=
done
[ "$started" = 1 ] || { tail -20 "$tmp/turnserver.log" >&2; np_fail "turnserver did not start"; }
echo "turnserver on 127.0.0.1:$p, relay ports $lo-$hi"

rc=0
out=$(timeout 60 "$DRIVER" "127.0.0.1:$p" u p) || rc=$?
echo "$out"
if [ "$rc" != 0 ]; then
  tail -30 "$tmp/turnserver.log" >&2
  np_fail "driver exited with $rc"
fi
want() { # want REGEX DESCRIPTION
  grep -qE "$1" <<<"$out" || np_fail "$2 (expected /$1/)"
}
want '^relayed=127\.0\.0\.1:[0-9]+$' "relayed address on coturn's relay IP"
rport=$(sed -n 's/^relayed=127\.0\.0\.1:\([0-9]*\)$/\1/p' <<<"$out")
[ "$rport" -ge "$lo" ] && [ "$rport" -le "$hi" ] || np_fail "relayed port $rport outside coturn's range $lo-$hi"
want '^mapped=127\.0\.0\.1:[0-9]+$' "XOR-MAPPED-ADDRESS read"
want '^permit=ok$' "CreatePermission"
want '^indication_wire=send-indication$' "Send indication before the channel"
want '^indication_peer_from_relay=yes$' "peer saw the Send indication's payload from the relay"
want '^indication_echo=ok ' "echo came back in a Data indication"
want '^channel=0x4[0-9a-f]{3}$' "channel bound in 0x4000..0x4FFF"
want '^channel_wire=channeldata$' "ChannelData after the bind"
want '^channel_peer_from_relay=yes$' "peer saw the ChannelData payload from the relay"
want '^channel_echo=ok ' "echo came back as ChannelData"
want '^close=ok$' "deallocation answered"
# coturn's own account (-v): the 401 challenge, then each request
# processed, and the deallocation as a refresh to lifetime 0.
for line in "error 401: Unauthorized" "ALLOCATE processed, success" \
            "CREATE_PERMISSION processed, success" "CHANNEL_BIND processed, success" \
            "refreshed, realm=<natpunch>, username=<u>, lifetime=0"; do
  np_wait_log "$tmp/turnserver.log" "$line" "$ts_pid" 5 || np_fail "coturn did not log '$line'"
done

rc=0
bad=$(timeout 30 "$DRIVER" "127.0.0.1:$p" u wrong) || rc=$?
echo "$bad"
[ "$rc" != 0 ] || np_fail "a wrong password allocated"
grep -qE '^allocate=failed state=failed error=authentication failed code=401' <<<"$bad" ||
  np_fail "wrong password: expected a clear 401 authentication failure"

kill -TERM "$ts_pid"
np_wait_exit "$ts_pid" 10
ts_pid=
echo "PASS"
