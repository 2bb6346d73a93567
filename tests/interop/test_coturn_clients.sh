#!/usr/bin/env bash
# coturn's STUN clients (turnutils_stunclient, turnutils_natdiscovery)
# against our discovery server on loopback.
# Usage: test_coturn_clients.sh PATH/TO/natpunch
# Exit: 0 pass, 1 fail, 77 skipped (coturn not installed).
set -euo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/lib.sh"

for t in turnutils_stunclient turnutils_natdiscovery ss; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed (apt-get install coturn iproute2)"; exit 77; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_server NAME ARGS...: starts "natpunch discovery-server ARGS" with
# the placeholders P1/P2 replaced by fresh free ports; retries when another
# process grabbed a port between the pick and the bind. Sets <NAME>_pid,
# <NAME>_p1, <NAME>_p2; logs to $tmp/NAME.log.
start_server() {
  local name=$1; shift
  local attempt p1 p2 args a pid
  for attempt in 1 2 3 4 5; do
    p1=$(np_pick_ports 1); p2=$((p1 + 1))
    args=()
    for a in "$@"; do a=${a//P1/$p1}; args+=("${a//P2/$p2}"); done
    "$NP" discovery-server "${args[@]}" 2>"$tmp/$name.log" &
    pid=$!
    if np_wait_log "$tmp/$name.log" "listening on" "$pid" 10; then
      pids+=("$pid")
      printf -v "${name}_pid" %s "$pid"
      printf -v "${name}_p1" %s "$p1"
      printf -v "${name}_p2" %s "$p2"
      return 0
    fi
    wait "$pid" 2>/dev/null || true
    grep -q "Address already in use" "$tmp/$name.log" || { cat "$tmp/$name.log" >&2; np_fail "$name did not start"; }
  done
  np_fail "$name: no free ports after 5 attempts"
}

# retry CMD...: runs CMD (10 s limit) up to three times until it succeeds;
# prints its output. stunclient binds its local port + 1 for RESPONSE-PORT,
# which another test may hold at that moment.
retry() {
  local i out=
  for i in 1 2 3; do
    out=$(timeout 10 "$@" 2>&1) && { echo "$out"; return 0; }
  done
  echo "$out"
  return 1
}

# An RFC 5780 server (alternate IP and port) and a plain one.
start_server full --listen 127.0.0.1:P1 --alt-ip 127.0.0.2 --alt-port P2 --threads 2
start_server plain --listen 127.0.0.1:P1 --threads 1
echo "servers: 5780 on 127.0.0.1:$full_p1 (+127.0.0.2, port $full_p2), plain on 127.0.0.1:$plain_p1"

# --- turnutils_stunclient, plain server: one Binding, XOR-MAPPED-ADDRESS ---
out=$(retry turnutils_stunclient -L 127.0.0.1 -p "$plain_p1" 127.0.0.1) || np_fail "stunclient (plain) failed: $out"
echo "$out" | sed 's/^/  plain | /'
mapped=$(echo "$out" | sed -n 's/.*UDP reflexive addr: *\(127\.0\.0\.1:[0-9][0-9]*\).*/\1/p' | head -1)
[ -n "$mapped" ] || np_fail "stunclient printed no reflexive address 127.0.0.1:PORT"
! echo "$out" | grep -q "RFC 5780" || np_fail "plain server must not look like RFC 5780"

# --- forced RFC 5780 mode (-f) against the plain server: CHANGE-REQUEST is
# refused with 420, delivered to the RESPONSE-PORT the client listens on.
out=$(retry turnutils_stunclient -f -L 127.0.0.1 -p "$plain_p1" 127.0.0.1) || np_fail "stunclient -f (plain) failed or hung: $out"
echo "$out" | sed 's/^/  plain -f | /'
[ "$(echo "$out" | grep -c "error 420")" = 2 ] || np_fail "expected two 420 answers to CHANGE-REQUEST without an alternate"

# --- turnutils_stunclient, RFC 5780 server: it detects OTHER-ADDRESS and runs
# three requests: plain; CHANGE-REQUEST(ip+port) with RESPONSE-PORT=local+1
# (it then listens on local+1 only); CHANGE-REQUEST with 1500 bytes PADDING
# from that second socket.
for flags in "" "-f"; do
  out=$(retry turnutils_stunclient $flags -L 127.0.0.1 -p "$full_p1" 127.0.0.1) || np_fail "stunclient $flags (5780) failed or hung: $out"
  echo "$out" | sed "s/^/  5780 $flags | /"
  [ "$(echo "$out" | grep -c "^RFC 5780 response")" = 3 ] || np_fail "expected 3 RFC 5780 responses"
  origins=$(echo "$out" | sed -n 's/.*Response origin: *: *\([0-9.:]*\).*/\1/p' | sort -u | tr '\n' ' ')
  [ "$origins" = "127.0.0.1:$full_p1 127.0.0.2:$full_p2 " ] || np_fail "response origins: '$origins'"
  others=$(echo "$out" | sed -n 's/.*Other addr: *: *\([0-9.:]*\).*/\1/p' | sort -u | tr '\n' ' ')
  [ "$others" = "127.0.0.2:$full_p2 " ] || np_fail "other addresses: '$others'"
  mapfile -t m < <(echo "$out" | sed -n 's/.*UDP reflexive addr: *\(127\.0\.0\.1:\([0-9]*\)\).*/\2/p')
  [ "${#m[@]}" = 3 ] || np_fail "expected 3 reflexive addresses"
  # The first two requests left from the same socket; the third from the
  # socket the client bound to first port + 1 (RESPONSE-PORT): so the
  # mapped ports are exactly the client's ports.
  [ "${m[0]}" = "${m[1]}" ] && [ "${m[2]}" = $((m[0] + 1)) ] || np_fail "mapped ports ${m[*]}"
done

# --- turnutils_natdiscovery: on loopback there is no NAT, so mapping and
# filtering are both endpoint-independent.
out=$(timeout 30 turnutils_natdiscovery -m -f -p "$full_p1" 127.0.0.1) || np_fail "natdiscovery failed: $out"
echo "$out" | grep -E "NAT with|Mapping|Filtering" | sed 's/^/  natdiscovery | /'
echo "$out" | grep -q "NAT with Endpoint Independent Mapping" || np_fail "mapping not endpoint-independent"
echo "$out" | grep -q "NAT with Endpoint Independent Filtering" || np_fail "filtering not endpoint-independent"

# --- IPv6, when the host has ::1 ---
if ss -Hlun >/dev/null 2>&1 && ip -6 addr show dev lo 2>/dev/null | grep -q "::1"; then
  start_server v6 --listen "[::1]:P1" --alt-port P2 --threads 1
  out=$(retry turnutils_stunclient -p "$v6_p1" ::1) || np_fail "stunclient ::1 failed: $out"
  echo "$out" | sed 's/^/  v6 | /'
  echo "$out" | grep -qE "UDP reflexive addr: *\[?::1\]?:[0-9]+" || np_fail "no IPv6 reflexive address"
fi

# --- counters on SIGUSR1, clean exit and final counters on SIGTERM ---
kill -USR1 "$full_pid"
np_wait_log "$tmp/full.log" "counters: received=" "$full_pid" 5 || np_fail "no counters on SIGUSR1"
for name in full plain ${v6_pid:+v6}; do
  pid_var=${name}_pid
  kill -TERM "${!pid_var}"
  np_wait_exit "${!pid_var}" 10
  rc=$NP_RC
  sed "s/^/  $name log | /" "$tmp/$name.log"
  [ "$rc" = 0 ] || np_fail "$name exited with status $rc after SIGTERM"
  final=$(grep "stopped; counters:" "$tmp/$name.log") || np_fail "$name printed no final counters"
  get() { echo "$final" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
  [ "$(get received)" -gt 0 ] || np_fail "$name received nothing"
  [ "$(get received)" = $(( $(get answered) + $(get errors_sent) )) ] || np_fail "$name: received != answered + errors_sent"
  [ "$(get dropped_malformed)" = 0 ] && [ "$(get send_failures)" = 0 ] || np_fail "$name dropped or failed: $final"
done
[ "$(grep "stopped; counters:" "$tmp/plain.log" | sed -n 's/.* errors_sent=\([0-9]*\).*/\1/p')" -ge 2 ] || np_fail "plain server should have sent two 420s"
echo "PASS"
