#!/usr/bin/env bash
# natpunch listen / connect when a session ends other than by both inputs
# ending, on loopback with a real rendezvous server and discovery servers:
#  - the peer vanishes (kill -9): the other side ends within --peer-timeout
#    with a "closed" event that says so, and a --keep listener takes the next
#    call (it used to decline every later call with 486);
#  - SIGINT: a listener in a session exits 0 and a caller 1, as --help says,
#    and the peer's "closed" event says "abort", not a normal end;
#  - 5 MB through connect arrives whole (back-pressure), and, as root in a
#    private network namespace where 5 % of the session's QUIC packets are
#    dropped both ways, still whole: the session repairs loss (both exit 0,
#    and the summary counts the packets it lost);
#  - stdin's flags (O_NONBLOCK) are as they were after natpunch exits.
# Usage: test_session.sh PATH/TO/natpunch
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
here=$(cd "$(dirname "$0")" && pwd)
# As root, the whole test runs in a network namespace of its own (only its
# loopback), so that the loss case can drop packets without touching the
# host's loopback.
if [ "$(id -u)" = 0 ] && [ -z "${NP_TEST_NETNS:-}" ] && command -v unshare >/dev/null &&
  command -v nft >/dev/null; then
  exec env NP_TEST_NETNS=1 unshare -n bash -c 'ip link set lo up && ip addr add 127.0.0.2/8 dev lo 2>/dev/null; exec "$0" "$@"' "$0" "$@"
fi
. "$here/../interop/lib.sh"
for t in jq ss timeout cmp; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  { wait; } 2>/dev/null
  [ -n "${NP_TEST_NETNS:-}" ] && nft delete table inet nptest 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
expect() { # expect WHAT WANT GOT
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got '$3', want '$2'"; fails=$((fails + 1)); fi
}
event() { grep "\"event\":\"$2\"" "$1" | tail -n 1; }
count() { grep -c "\"event\":\"$2\"" "$1"; }

for k in a b d; do "$NP" keygen "$tmp/$k" >/dev/null 2>&1 || np_fail "keygen $k"; done
A=$("$NP" id --key "$tmp/a") B=$("$NP" id --key "$tmp/b")

base=$(np_pick_ports 3) || np_fail "no free ports"
rdv=127.0.0.1:$base stun1=127.0.0.1:$((base + 1)) stun2=127.0.0.2:$((base + 1))
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start"
"$NP" discovery-server --listen "$stun1" --alt-ip 127.0.0.2 --alt-port $((base + 2)) --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"
common=(-r "$rdv" -d "$stun1" -d "$stun2" --json --no-portmap)

# --- the peer vanishes --------------------------------------------------------
# A's stdin is a fifo held open by this shell (fd 7): the session lasts until
# A is killed.
mkfifo "$tmp/a.in"
exec 7<>"$tmp/a.in"
"$NP" listen "${common[@]}" --key "$tmp/b" --keep --peer-timeout 4 \
  </dev/null >"$tmp/b.out" 2>"$tmp/b.log" 7>&- & listener=$!; pids+=($listener)
np_wait_log "$tmp/b.log" '"event":"listening"' $listener 15 || np_fail "listener did not register: $(cat "$tmp/b.log")"
"$NP" connect "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 \
  <"$tmp/a.in" >/dev/null 2>"$tmp/a.log" 7>&- & caller=$!; pids+=($caller)
np_wait_log "$tmp/a.log" '"event":"connected"' $caller 12; expect "A connects" 0 $?
np_wait_log "$tmp/b.log" '"event":"connected"' $listener 5; expect "B connected" 0 $?
sleep 1 # a keepalive or two cross
kill -KILL $caller
start=$(date +%s%N)
np_wait_log "$tmp/b.log" '"event":"closed"' $listener 10; expect "B notices that A vanished" 0 $?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
closed=$(event "$tmp/b.log" closed)
expect "B's closed event says vanished" vanished "$(jq -r .cause <<<"$closed")"
expect "B's closed reason says so" true "$(jq '.reason | test("vanished|nothing")' <<<"$closed")"
[ "$ms" -ge 2500 ] && [ "$ms" -le 7000 ]; expect "within --peer-timeout 4 (${ms} ms after kill -9)" 0 $?
timeout 20 "$NP" connect "${common[@]}" --key "$tmp/d" --peer "$B" --timeout 10 \
  </dev/null >/dev/null 2>"$tmp/d.log" 7>&-
expect "after the vanish, D's call to the --keep listener succeeds" 0 $?
expect "D connected" direct "$(event "$tmp/d.log" connected | jq -r .path)"
expect "D's call was not declined busy" 0 "$(grep -c 486 "$tmp/d.log")"
kill -TERM $listener; np_wait_exit $listener 5
expect "listener exits 0 on SIGTERM" 0 "$NP_RC"

# --- SIGINT: listener in a session, then caller in a session ------------------
"$NP" listen "${common[@]}" --key "$tmp/b" </dev/null >/dev/null 2>"$tmp/b2.log" 7>&- & listener=$!; pids+=($listener)
np_wait_log "$tmp/b2.log" '"event":"listening"' $listener 15 || np_fail "listener 2 did not register"
"$NP" connect "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 \
  <"$tmp/a.in" >/dev/null 2>"$tmp/a2.log" 7>&- & caller=$!; pids+=($caller)
np_wait_log "$tmp/b2.log" '"event":"connected"' $listener 12; expect "B (2) connected" 0 $?
np_wait_log "$tmp/a2.log" '"event":"connected"' $caller 5
kill -INT $listener; np_wait_exit $listener 5
expect "a listener in a session exits 0 on SIGINT (as --help says)" 0 "$NP_RC"
np_wait_exit $caller 5
expect "its caller exits 1 (the peer aborted)" 1 "$NP_RC"
expect "the caller's closed event says abort" abort "$(event "$tmp/a2.log" closed | jq -r .cause)"

"$NP" listen "${common[@]}" --key "$tmp/b" --keep </dev/null >/dev/null 2>"$tmp/b3.log" 7>&- & listener=$!; pids+=($listener)
np_wait_log "$tmp/b3.log" '"event":"listening"' $listener 15 || np_fail "listener 3 did not register"
"$NP" connect "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 \
  <"$tmp/a.in" >/dev/null 2>"$tmp/a3.log" 7>&- & caller=$!; pids+=($caller)
np_wait_log "$tmp/a3.log" '"event":"connected"' $caller 12; expect "A (3) connected" 0 $?
np_wait_log "$tmp/b3.log" '"event":"connected"' $listener 5
kill -INT $caller; np_wait_exit $caller 5
expect "a caller in a session exits 1 on SIGINT (as --help says)" 1 "$NP_RC"
np_wait_log "$tmp/b3.log" '"event":"closed"' $listener 5
expect "the listener's closed event says abort" abort "$(event "$tmp/b3.log" closed | jq -r .cause)"
expect "the --keep listener goes on" 0 "$(kill -0 $listener 2>/dev/null; echo $?)"

# --- 5 MB through connect ------------------------------------------------------
head -c 5000000 /dev/urandom >"$tmp/big"
transfer() { # transfer LABEL [OPTION...]: A sends big to the listener; sets rc_a
  timeout 60 "$NP" connect "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 "${@:2}" \
    <"$tmp/big" >/dev/null 2>"$tmp/$1.a.log" 7>&-
  rc_a=$?
}
: >"$tmp/b3.out"
kill -TERM $listener; np_wait_exit $listener 5
"$NP" listen "${common[@]}" --key "$tmp/b" </dev/null >"$tmp/big.out" 2>"$tmp/big.b.log" 7>&- & listener=$!; pids+=($listener)
np_wait_log "$tmp/big.b.log" '"event":"listening"' $listener 15 || np_fail "listener 4 did not register"
start=$(date +%s%N)
transfer big
np_wait_exit $listener 10; rc_b=$NP_RC
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect "5 MB: the caller exits 0" 0 "$rc_a"
expect "5 MB: the listener exits 0" 0 "$rc_b"
cmp -s "$tmp/big" "$tmp/big.out"; expect "5 MB arrive whole ($(wc -c <"$tmp/big.out") bytes in ${ms} ms)" 0 $?

# --- a slow reader of the listener's stdout -----------------------------------
# The caller is done, and closes, once the listener's QUIC stack has its
# bytes: up to the stream window (4 MiB) plus the pipe may still be inside
# the listener then. It must write them all out before it exits.
"$NP" listen "${common[@]}" --key "$tmp/b" </dev/null 2>"$tmp/slow.b.log" 7>&- |
  { sleep 1.5; cat >"$tmp/slow.out"; } & slowpipe=$!; pids+=($slowpipe)
np_wait_log "$tmp/slow.b.log" '"event":"listening"' $slowpipe 15 || np_fail "listener (slow) did not register"
transfer slow
np_wait_exit $slowpipe 20
expect "slow reader: the caller exits 0" 0 "$rc_a"
cmp -s "$tmp/big" "$tmp/slow.out"; expect "slow reader: 5 MB arrive whole all the same ($(wc -c <"$tmp/slow.out") bytes)" 0 $?

# --- --bind: the caller's socket where it was asked to be ----------------------
bport=$(np_pick_ports 0) || np_fail "no free port"
"$NP" listen "${common[@]}" --key "$tmp/b" </dev/null >"$tmp/bind.out" 2>"$tmp/bind.b.log" 7>&- & listener=$!; pids+=($listener)
np_wait_log "$tmp/bind.b.log" '"event":"listening"' $listener 15 || np_fail "listener (bind) did not register"
transfer bind --bind "127.0.0.1:$bport"
np_wait_exit $listener 10
expect "--bind 127.0.0.1:$bport: the caller exits 0" 0 "$rc_a"
expect "--bind: the listener sees the caller at that port" "127.0.0.1:$bport" \
  "$(event "$tmp/bind.b.log" connected | jq -r .remote)"
"$NP" connect "${common[@]}" --key "$tmp/a" --peer "$B" --bind "[::1]:$bport" </dev/null >/dev/null 2>"$tmp/bind6.log"
expect "--bind of the other family than the servers' is a usage error (exit 2)" 2 $?
expect "  and says why" 1 "$(grep -c 'is IPv6 but the servers are IPv4' "$tmp/bind6.log")"

if [ -n "${NP_TEST_NETNS:-}" ]; then
  # QUIC short-header packets (the first payload byte's top bits 01: the
  # session's data) lose 5 % on the way in, both ways (as on a network:
  # nobody is told); STUN, the handshake and signaling do not.
  nft -f - <<'NFT' || np_fail "nft"
table inet nptest {
  chain in {
    type filter hook input priority 0; policy accept;
    meta l4proto udp @th,64,2 1 numgen random mod 100 < 5 drop
  }
}
NFT
  "$NP" listen "${common[@]}" --key "$tmp/b" </dev/null >"$tmp/lossy.out" 2>"$tmp/lossy.b.log" 7>&- & listener=$!; pids+=($listener)
  np_wait_log "$tmp/lossy.b.log" '"event":"listening"' $listener 15 || np_fail "listener 5 did not register"
  transfer lossy
  np_wait_exit $listener 10; rc_b=$NP_RC
  nft delete table inet nptest
  cmp -s "$tmp/big" "$tmp/lossy.out"; expect "5 % loss: 5 MB arrive whole all the same" 0 $?
  expect "5 % loss: the caller exits 0" 0 "$rc_a"
  expect "5 % loss: the listener exits 0" 0 "$rc_b"
  expect "5 % loss: the caller's summary counts lost packets" true \
    "$(event "$tmp/lossy.a.log" summary | jq '.packets_lost > 0')"
else
  echo "  skip 5 % loss case (needs root, unshare and nft)"
fi

# --- stdin's flags --------------------------------------------------------------
mkfifo "$tmp/s.in"
exec 8<>"$tmp/s.in"
before=$(awk '/^flags/ {print $2}' /proc/$$/fdinfo/8)
timeout 20 "$NP" connect -r "127.0.0.1:$((base + 3))" --key "$tmp/a" --peer "$B" --timeout 0.5 \
  --json --no-portmap <&8 >/dev/null 2>/dev/null 7>&-
after=$(awk '/^flags/ {print $2}' /proc/$$/fdinfo/8)
expect "stdin's flags restored on exit" "$before" "$after"
exec 8>&-

if [ "$fails" -eq 0 ]; then echo "PASS"; exit 0; fi
for f in "$tmp"/*.log; do echo "--- $f"; tail -n 30 "$f"; done
echo "FAIL: $fails check(s)"; exit 1
