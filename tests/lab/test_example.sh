#!/usr/bin/env bash
# examples/connect.c in the NAT lab: alice behind a cone NAT listens with the
# example program, bob behind a symmetric NAT calls her with it; both must
# connect over the punched path and print the other's "hello from <id>".
# Usage: test_example.sh NATPUNCH_CLI CONNECT_EXAMPLE      (exit 77 = skipped)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"

cli=${1:?usage: $0 NATPUNCH_CLI CONNECT_EXAMPLE}
ex=${2:?usage: $0 NATPUNCH_CLI CONNECT_EXAMPLE}
for f in cli ex; do
  case "${!f}" in /*) ;; *) printf -v "$f" '%s' "$PWD/${!f}" ;; esac
  [ -x "${!f}" ] || { echo "FAIL: ${!f} is not an executable"; exit 1; }
done
lab_require_root

lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-example.XXXXXX")
# shellcheck disable=SC2317  # called from the trap
on_exit() { lab_down; rm -rf "$logs"; }
trap on_exit EXIT
lab_servers
lab_server_host rdv 203.0.113.4
lab_nat_host cone alice
lab_nat_host symmetric bob
lab_start_natpunch_servers "$cli" "$logs" || exit 1
lab_spawn rdv "$logs/rdv.log" "$cli" rendezvous-server --listen 203.0.113.4:7000
lab_wait_port() { # lab_wait_port NAME TCPPORT PID: bounded (5 s)
  local n
  for ((n = 0; n < 50; n++)); do
    lab_exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
lab_wait_port rdv 7000 "$LAB_LAST_PID" || { echo "FAIL: rendezvous server did not start"; cat "$logs/rdv.log"; exit 1; }

"$cli" keygen "$logs/alice.key" >/dev/null 2>&1 || { echo "FAIL: keygen"; exit 1; }
"$cli" keygen "$logs/bob.key" >/dev/null 2>&1 || { echo "FAIL: keygen"; exit 1; }
A=$("$cli" id --key "$logs/alice.key") B=$("$cli" id --key "$logs/bob.key")
servers=(203.0.113.4:7000 "$LAB_S1:3478" "$LAB_S2:3478")

echo "connect_example: alice ($(lab_ip alice), cone NAT $(lab_pubip alice)) listens," \
  "bob ($(lab_ip bob), symmetric NAT $(lab_pubip bob)) calls"
lab_spawn alice "$logs/alice.out" timeout 40 "$ex" "${servers[@]}" "$logs/alice.key"
apid=$LAB_LAST_PID
for ((n = 0; n < 100; n++)); do
  grep -q '^registered' "$logs/alice.out" && break
  kill -0 "$apid" 2>/dev/null || break
  sleep 0.1
done
lab_check "alice registered" "$(grep -c '^registered' "$logs/alice.out")" 1

brc=0
lab_exec bob timeout 40 "$ex" "${servers[@]}" "$logs/bob.key" "$A" >"$logs/bob.out" 2>&1 || brc=$?
arc=0
wait "$apid" || arc=$?
for who in alice bob; do
  echo "--- $who"
  sed 's/^/    /' "$logs/$who.out"
done
lab_check "bob exits 0" "$brc" 0
lab_check "alice exits 0" "$arc" 0
lab_check "alice took bob's call" "$(grep -c "^call from $B" "$logs/alice.out")" 1
lab_check "alice connected to bob" "$(grep -c "^connected to $B" "$logs/alice.out")" 1
lab_check "bob connected to alice" "$(grep -c "^connected to $A" "$logs/bob.out")" 1
lab_check "alice printed bob's hello" "$(grep -c "^received: hello from $B\$" "$logs/alice.out")" 1
lab_check "bob printed alice's hello" "$(grep -c "^received: hello from $A\$" "$logs/bob.out")" 1
for who in alice bob; do
  lab_check "$who printed the path stats" \
    "$(grep -cE '^path: via (predicted|birthday|reflexive), remote [0-9.]+:[0-9]+, elapsed [0-9]+ ms, [1-9][0-9]* probes' "$logs/$who.out")" 1
done

[ "$LAB_FAILS" -eq 0 ] && { echo "PASS"; exit 0; }
echo "--- rendezvous server"; tail -n 20 "$logs/rdv.log"
echo "FAIL: $LAB_FAILS check(s)"
exit 1
