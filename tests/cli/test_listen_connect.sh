#!/usr/bin/env bash
# natpunch listen / connect through a real rendezvous server, with discovery
# servers, on loopback: the answer arrives with candidates, the allow list
# (flag and file) refuses others with 403 before the callee sees them, an
# offline peer is a quick 404, bad input is a usage error.
# Usage: test_listen_connect.sh PATH/TO/natpunch
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/../interop/lib.sh"
for t in jq ss; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
expect() { # expect WHAT WANT GOT
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got '$3', want '$2'"; fails=$((fails + 1)); fi
}

for k in a b c d; do "$NP" keygen "$tmp/$k" >/dev/null 2>&1 || np_fail "keygen $k"; done
A=$("$NP" id --key "$tmp/a") B=$("$NP" id --key "$tmp/b") C=$("$NP" id --key "$tmp/c") D=$("$NP" id --key "$tmp/d")

base=$(np_pick_ports 3) || np_fail "no free ports"
rdv=127.0.0.1:$base stun1=127.0.0.1:$((base + 1)) stun2=127.0.0.2:$((base + 1))
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start: $(cat "$tmp/rs.log")"
"$NP" discovery-server --listen "$stun1" --alt-ip 127.0.0.2 --alt-port $((base + 2)) --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"

# B accepts A (flag) and D (file); C is not allowed.
printf '# who may call B\n%s   # D\n\n' "$D" > "$tmp/allow"
"$NP" listen -r "$rdv" -d "$stun1" -d "$stun2" --key "$tmp/b" --allow "$A" --allow-file "$tmp/allow" \
  --json 2>"$tmp/listen.log" & listener=$!; pids+=($listener)
np_wait_log "$tmp/listen.log" '"event":"listening"' $listener 15 || np_fail "listener did not register: $(cat "$tmp/listen.log")"
expect "listening event names B" "$B" "$(grep '"event":"listening"' "$tmp/listen.log" | jq -r .id)"

"$NP" connect -r "$rdv" -d "$stun1" -d "$stun2" --key "$tmp/a" --peer "$B" --json 2>"$tmp/a.log"
expect "A's connect exits 0" 0 $?
ans=$(grep '"event":"answer"' "$tmp/a.log")
expect "answer from B" "$B" "$(jq -r .from <<<"$ans")"
expect "answer carries two mapped addresses" 2 "$(jq '.candidates.mapped | length' <<<"$ans")"
expect "answer delta on loopback" 0 "$(jq .candidates.delta <<<"$ans")"
expect "answer mapping" endpoint-independent "$(jq -r .candidates.mapping <<<"$ans")"
expect "answer has private addresses" true "$(jq '.candidates.private | length > 0' <<<"$ans")"
expect "server stamped B's address" true "$(jq '.observed | test("^127\\.0\\.0\\.1:[0-9]+$")' <<<"$ans")"
off=$(grep '"event":"offer"' "$tmp/listen.log")
expect "B saw A's offer" "$A" "$(jq -r .from <<<"$off")"
expect "same session both sides" "$(jq -r .session <<<"$ans")" "$(jq -r .session <<<"$off")"
expect "B's correction is what the server saw of A" "$(jq -r .observed <<<"$off")" "$(jq -r .peer_seen <<<"$ans")"

"$NP" connect -r "$rdv" --key "$tmp/d" --peer "$B" --json 2>"$tmp/d.log"
expect "D (allowed by file) gets an answer" 0 $?

"$NP" connect -r "$rdv" --key "$tmp/c" --peer "$B" --json 2>"$tmp/c.log"
expect "C (not allowed) exits 1" 1 $?
expect "C's failure is a 403" true "$(grep '"event":"failed"' "$tmp/c.log" | jq '.reason | test("403")')"
expect "B never saw C's offer" 0 "$(grep -c "$C" "$tmp/listen.log")"

start=$(date +%s%N)
"$NP" connect -r "$rdv" --key "$tmp/c" --peer "$D" --json 2>"$tmp/u.log"
expect "offline peer exits 1" 1 $?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect "offline peer is a 404" true "$(grep '"event":"failed"' "$tmp/u.log" | jq '.reason | test("404")')"
[ "$ms" -lt 3000 ]; expect "404 comes at once (${ms} ms)" 0 $?

"$NP" connect -r "127.0.0.1:$((base + 3))" --key "$tmp/c" --peer "$B" --timeout 1 --json 2>"$tmp/t.log"
expect "no rendezvous server: exits 1" 1 $?
expect "no rendezvous server: timeout reported" true "$(grep '"event":"failed"' "$tmp/t.log" | jq '.reason | test("register")')"

"$NP" connect -r "$rdv" --peer not-a-peer-id >/dev/null 2>&1; expect "bad --peer is a usage error" 2 $?
"$NP" connect -r "$rdv" --key "$tmp/a" --peer "$A" >/dev/null 2>&1; expect "calling yourself is a usage error" 2 $?
"$NP" listen -r "$rdv" --peer "$A" >/dev/null 2>&1; expect "--peer is not for listen" 2 $?
printf 'zzz\n' > "$tmp/badallow"
"$NP" listen -r "$rdv" --allow-file "$tmp/badallow" 2>"$tmp/err" >/dev/null; expect "bad allow file is a usage error" 2 $?
grep -q "line 1" "$tmp/err"; expect "the error names the line" 0 $?

kill -TERM $listener; np_wait_exit $listener 5
expect "listener exits 0 on SIGTERM" 0 "$NP_RC"

[ "$fails" -eq 0 ] && { echo "PASS"; exit 0; }
echo "FAIL: $fails check(s)"; exit 1
