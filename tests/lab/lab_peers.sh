# shellcheck shell=bash
# Two natpunch peers in the NAT lab, for the session tests (test_session.sh,
# test_transfer.sh): source after lab.sh and lab_init.
#
#   lab_two_peers CLI LOGDIR   discovery servers on s1/s2, a rendezvous server
#                              on 203.0.113.4:7000, alice behind a cone NAT,
#                              bob behind a symmetric NAT, a key each; sets
#                              A and B (their peer IDs) and common (the
#                              server options, --no-portmap --json)
#   lab_wait_event FILE EVENT SEC PID
#                              bounded wait for a JSON event line in FILE,
#                              failing early if PID dies

lab_two_peers() {
  local cli=$1 logs=$2 n
  lab_servers
  lab_server_host rdv 203.0.113.4
  lab_nat_host cone alice
  lab_nat_host symmetric bob
  lab_start_natpunch_servers "$cli" "$logs" || return 1
  lab_spawn rdv "$logs/rdv.log" "$cli" rendezvous-server --listen 203.0.113.4:7000
  for ((n = 0; n < 50; n++)); do
    lab_exec rdv ss -Hltn "sport = :7000" 2>/dev/null | grep -q . && break
    sleep 0.1
  done
  "$cli" keygen "$logs/alice.key" >/dev/null 2>&1 || { echo "FAIL: keygen"; return 1; }
  "$cli" keygen "$logs/bob.key" >/dev/null 2>&1 || { echo "FAIL: keygen"; return 1; }
  A=$("$cli" id --key "$logs/alice.key") B=$("$cli" id --key "$logs/bob.key")
  common=(--rendezvous 203.0.113.4:7000 --discovery "$LAB_S1:3478" --discovery "$LAB_S2:3478"
    --no-portmap --json)
}

lab_wait_event() {
  local n
  for ((n = 0; n < $3 * 10; n++)); do
    grep -q "\"event\":\"$2\"" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
