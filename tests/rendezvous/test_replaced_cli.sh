#!/usr/bin/env bash
# Two `listen`s with one key (issue 9, access control): the second takes the
# ID (the server moves it, with an authenticated 409 to the first); the
# first says so ("replaced" event) and exits 1 instead of taking the ID back,
# and the second stays registered. Loopback only, every wait bounded.
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/../interop/lib.sh"
for t in jq ss timeout; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  { wait; } 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
expect() { # expect WHAT WANT GOT
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got '$3', want '$2'"; fails=$((fails + 1)); fi
}

"$NP" keygen "$tmp/a" >/dev/null 2>&1 || np_fail "keygen"
base=$(np_pick_ports 2) || np_fail "no free ports"
rdv=127.0.0.1:$base stun=127.0.0.1:$((base + 1))
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start"
"$NP" discovery-server --listen "$stun" --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"
common=(-r "$rdv" -d "$stun" --json --no-portmap --key "$tmp/a")

"$NP" listen "${common[@]}" </dev/null >/dev/null 2>"$tmp/l1.log" & l1=$!; pids+=($l1)
np_wait_log "$tmp/l1.log" '"event":"listening"' $l1 15 || np_fail "first listener did not register: $(cat "$tmp/l1.log")"
"$NP" listen "${common[@]}" </dev/null >/dev/null 2>"$tmp/l2.log" & l2=$!; pids+=($l2)
np_wait_log "$tmp/l2.log" '"event":"listening"' $l2 15 || np_fail "second listener did not register"

np_wait_exit $l1 10
expect "the displaced listener exits 1" 1 "$NP_RC"
expect "it says it was replaced" true \
  "$(grep '"event":"replaced"' "$tmp/l1.log" | tail -n 1 | jq '.reason | test("another process")')"
sleep 1.5 # longer than the client's shortest backoff: a retry would show now
kill -0 $l2 2>/dev/null; expect "the newer listener still runs" 0 $?
expect "the newer one registered once (nobody took the ID back)" 1 \
  "$(grep -c '"event":"listening"' "$tmp/l2.log")"

[ "$fails" -eq 0 ] || { echo "--- l1"; cat "$tmp/l1.log"; echo "--- l2"; cat "$tmp/l2.log"; exit 1; }
echo "all ok"
