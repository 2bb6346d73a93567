#!/usr/bin/env bash
# natpunch listen / connect through a real rendezvous server, with discovery
# servers, on loopback: the call punches a direct path and the two sides'
# stdin crosses it both ways (half-close at the end); the allow list (flag
# and file) refuses others with 403 before the callee sees them; a busy
# listener declines a second caller with 486; --keep
# serves calls one after another; an offline peer is a quick 404; no
# rendezvous server is a failure within --timeout; bad input is a usage
# error; SIGTERM ends the listener cleanly.
# Usage: test_listen_connect.sh PATH/TO/natpunch
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
  { wait; } 2>/dev/null # no "Killed" lines
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
expect() { # expect WHAT WANT GOT
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got '$3', want '$2'"; fails=$((fails + 1)); fi
}
event() { # event FILE NAME: the last JSON event NAME in FILE
  grep "\"event\":\"$2\"" "$1" | tail -n 1
}

for k in a b c d; do "$NP" keygen "$tmp/$k" >/dev/null 2>&1 || np_fail "keygen $k"; done
A=$("$NP" id --key "$tmp/a") B=$("$NP" id --key "$tmp/b") C=$("$NP" id --key "$tmp/c") D=$("$NP" id --key "$tmp/d")

base=$(np_pick_ports 3) || np_fail "no free ports"
rdv=127.0.0.1:$base stun1=127.0.0.1:$((base + 1)) stun2=127.0.0.2:$((base + 1))
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start: $(cat "$tmp/rs.log")"
"$NP" discovery-server --listen "$stun1" --alt-ip 127.0.0.2 --alt-port $((base + 2)) --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"
# --no-portmap: on loopback there is no gateway to ask, and the test must not
# talk to this host's real one.
common=(-r "$rdv" -d "$stun1" -d "$stun2" --json --no-portmap)

# B accepts A (flag) and D (file); C is not allowed. B's stdin is a fifo
# that this shell holds open (fd 7, closed in every other child): B's line
# goes in once A is connected (a datagram that reaches A before A's side of
# the path is up is dropped), then B's input ends. Its stdin goes to the
# first session only (--keep).
printf '# who may call B\n%s   # D\n\n' "$D" > "$tmp/allow"
mkfifo "$tmp/b.in"
exec 7<>"$tmp/b.in"
"$NP" listen "${common[@]}" --key "$tmp/b" --keep --allow "$A" --allow-file "$tmp/allow" \
  <"$tmp/b.in" >"$tmp/listen.out" 2>"$tmp/listen.log" 7>&- & listener=$!; pids+=($listener)
np_wait_log "$tmp/listen.log" '"event":"listening"' $listener 15 || np_fail "listener did not register: $(cat "$tmp/listen.log")"
expect "listening event names B" "$B" "$(event "$tmp/listen.log" listening | jq -r .id)"

echo "hello from A" | timeout 20 "$NP" connect "${common[@]}" --key "$tmp/a" --peer "$B" \
  --timeout 10 >"$tmp/a.out" 2>"$tmp/a.log" 7>&- & caller=$!; pids+=($caller)
np_wait_log "$tmp/a.log" '"event":"connected"' $caller 12; expect "A connects" 0 $?
# B is in A's session (B's input is still open): D's call is declined at
# once with a signed 486, not left to time out.
start=$(date +%s%N)
timeout 20 "$NP" connect "${common[@]}" --key "$tmp/d" --peer "$B" --timeout 10 \
  </dev/null >/dev/null 2>"$tmp/busy.log" 7>&-
expect "D calling busy B exits 1" 1 $?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect "D's failure says busy (486)" true "$(event "$tmp/busy.log" failed | jq '.reason | test("busy.*486")')"
[ "$ms" -lt 5000 ]; expect "busy comes before the timeout (${ms} ms)" 0 $?
echo "hello from B" >&7
exec 7>&-
np_wait_exit $caller 10
expect "A's connect exits 0 (both inputs ended)" 0 "$NP_RC"
con=$(event "$tmp/a.log" connected)
expect "A connected, path direct" direct "$(jq -r .path <<<"$con")"
expect "A's connected has a via" true "$(jq '.via | test("^(host|reflexive|predicted|birthday|portmap)$")' <<<"$con")"
expect "A's connected has a remote IP:PORT" true "$(jq '.remote | test("^[0-9.]+:[0-9]+$")' <<<"$con")"
expect "A's connected has elapsed_ms" true "$(jq '.elapsed_ms | type == "number" and . >= 0' <<<"$con")"
expect "A's connected counts probes > 0" true "$(jq '.probes > 0' <<<"$con")"
expect "A's connected names B" "$B" "$(jq -r .peer <<<"$con")"
expect "B saw A's call" "$A" "$(event "$tmp/listen.log" call | jq -r .from)"
expect "B connected too" direct "$(event "$tmp/listen.log" connected | jq -r .path)"
expect "B's stdout is exactly A's line" "hello from A" "$(cat "$tmp/listen.out")"
expect "A's stdout is exactly B's line" "hello from B" "$(cat "$tmp/a.out")"

timeout 20 "$NP" connect "${common[@]}" --key "$tmp/d" --peer "$B" --timeout 10 --prime-ttl 3 -v \
  </dev/null >"$tmp/d.out" 2>"$tmp/d.log"
expect "D (allowed by file) connects and exits 0 (--keep)" 0 $?
expect "D primes with --prime-ttl 3" true \
  "$(grep '"event":"log"' "$tmp/d.log" | jq -s 'any(.[]; .message | test("gathered: .*prime TTL 3$"))')"
expect "D's connected event" direct "$(event "$tmp/d.log" connected | jq -r .path)"
expect "D gets no data (B's stdin was the first session's)" 0 "$(wc -c <"$tmp/d.out")"
expect "B took D's call" "$D" "$(event "$tmp/listen.log" call | jq -r .from)"

timeout 20 "$NP" connect "${common[@]}" --key "$tmp/c" --peer "$B" --timeout 10 \
  </dev/null >/dev/null 2>"$tmp/c.log"
expect "C (not allowed) exits 1" 1 $?
expect "C's failure is a 403" true "$(event "$tmp/c.log" failed | jq '.reason | test("403")')"
expect "B never saw C" 0 "$(grep -c "$C" "$tmp/listen.log")"

start=$(date +%s%N)
timeout 20 "$NP" connect -r "$rdv" --key "$tmp/c" --peer "$D" --json --no-portmap </dev/null 2>"$tmp/u.log"
expect "offline peer exits 1" 1 $?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect "offline peer is a 404" true "$(event "$tmp/u.log" failed | jq '.reason | test("404")')"
[ "$ms" -lt 3000 ]; expect "404 comes at once (${ms} ms)" 0 $?

start=$(date +%s%N)
timeout 20 "$NP" connect -r "127.0.0.1:$((base + 3))" --key "$tmp/c" --peer "$B" --timeout 1 --json \
  --no-portmap </dev/null 2>"$tmp/t.log"
expect "no rendezvous server: exits 1" 1 $?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect "no rendezvous server: a failed event says so" true "$(event "$tmp/t.log" failed | jq '.reason | test("rendezvous")')"
[ "$ms" -lt 4000 ]; expect "no rendezvous server: gives up after --timeout 1 (${ms} ms)" 0 $?

usage() { # usage WHAT CMD...: CMD is a usage error (exit 2)
  local what=$1; shift
  "$NP" "$@" </dev/null >/dev/null 2>"$tmp/err"
  expect "$what is a usage error" 2 $?
}
usage "bad --peer" connect -r "$rdv" --peer not-a-peer-id
usage "calling yourself" connect -r "$rdv" --key "$tmp/a" --peer "$A"
usage "--peer for listen" listen -r "$rdv" --peer "$A"
usage "--keep for connect" connect -r "$rdv" --key "$tmp/a" --peer "$B" --keep
usage "--predict-after 10 (below 50)" connect -r "$rdv" --key "$tmp/a" --peer "$B" --predict-after 10
usage "--predict-after 70000 (above 60000)" listen -r "$rdv" --key "$tmp/b" --predict-after 70000
usage "--prime-ttl 0" connect -r "$rdv" --key "$tmp/a" --peer "$B" --prime-ttl 0
usage "--prime-ttl 256" listen -r "$rdv" --key "$tmp/b" --prime-ttl 256
printf '# ok\n%s\nzzz\n' "$A" > "$tmp/badallow"
usage "bad allow file" listen -r "$rdv" --allow-file "$tmp/badallow"
grep -q "line 3" "$tmp/err"; expect "the error names the line (line 3)" 0 $?

# An allow list that names nobody is an error at start, never "anyone may
# call" (it used to start a listener open to all).
: >"$tmp/empty"
printf '# nobody yet\n   # really\n\n' >"$tmp/comments"
mkdir "$tmp/allowdir"
for f in empty comments allowdir; do
  timeout 5 "$NP" listen -r "$rdv" --key "$tmp/c" --no-portmap --allow-file "$tmp/$f" \
    </dev/null >/dev/null 2>"$tmp/err"
  expect "--allow-file naming nobody ($f) is a usage error" 2 $?
  grep -q "names no peer\|is a directory" "$tmp/err"; expect "--allow-file $f: the error says why" 0 $?
done

# Addresses: an out-of-range port says so; --help says addresses are numeric.
"$NP" connect -r 127.0.0.1:70000 --peer "$A" </dev/null >/dev/null 2>"$tmp/err"
expect "port 70000 is a usage error" 2 $?
grep -q "out of range" "$tmp/err"; expect "port 70000: says out of range" 0 $?
grep -q "not a numeric address" "$tmp/err"; expect "port 70000: not 'not a numeric address'" 1 $?
"$NP" listen -r 127.0.0.1:0 </dev/null >/dev/null 2>"$tmp/err"
expect "port 0 is a usage error" 2 $?
grep -q "out of range" "$tmp/err"; expect "port 0: says out of range" 0 $?
"$NP" connect -r localhost --peer "$A" </dev/null >/dev/null 2>"$tmp/err"
expect "a host name is a usage error" 2 $?
grep -q "numeric" "$tmp/err"; expect "a host name: says addresses are numeric" 0 $?
for c in listen connect; do
  # Through a file: grep -q would leave early and SIGPIPE the (long) help.
  "$NP" $c --help >"$tmp/help"; grep -qi "numeric" "$tmp/help"; expect "$c --help says addresses are numeric" 0 $?
done
# rendezvous-server --listen IP takes the default port 7000, like the clients.
"$NP" rendezvous-server --listen 127.0.0.3 2>"$tmp/rs3.log" & rs3=$!; pids+=($rs3)
np_wait_log "$tmp/rs3.log" "listening on" $rs3 5
expect "rendezvous-server --listen 127.0.0.3 listens on port 7000" 1 "$(grep -c 'listening on 127.0.0.3:7000' "$tmp/rs3.log")"
kill -TERM $rs3 2>/dev/null; np_wait_exit $rs3 5

# A failed signalfd is an error (SIGINT could not end a session cleanly
# without it), not ignored; strace's fault injection makes it fail.
if command -v strace >/dev/null && strace -f -o /dev/null -e inject=signalfd4:error=EMFILE true 2>/dev/null; then
  timeout 20 strace -f -o /dev/null -e trace=signalfd4 -e inject=signalfd4:error=EMFILE \
    "$NP" connect -r "$rdv" --key "$tmp/c" --peer "$B" --no-portmap --timeout 2 </dev/null >/dev/null 2>"$tmp/err"
  expect "failed signalfd: exit 1" 1 $?
  grep -q "signalfd: Too many open files" "$tmp/err"; expect "failed signalfd: says so" 0 $?
else
  echo "  skip signalfd failure (no strace with fault injection)"
fi

expect "listener still running after the sessions (--keep)" 0 "$(kill -0 $listener 2>/dev/null; echo $?)"
kill -TERM $listener; np_wait_exit $listener 5
expect "listener exits 0 on SIGTERM" 0 "$NP_RC"

if [ "$fails" -eq 0 ]; then echo "PASS"; exit 0; fi
echo "--- listener log"; cat "$tmp/listen.log"
echo "--- A's log"; cat "$tmp/a.log"
echo "FAIL: $fails check(s)"; exit 1
