#!/usr/bin/env bash
# `make demo`: natpunch punching direct UDP paths between hosts behind NATs.
# Usage: scripts/demo.sh path/to/natpunch
#
# As root it builds a small simulated internet in network namespaces (the
# NAT lab of tests/lab/lab.sh: 203.0.113.0/24, nftables NATs, nothing
# connected to this machine's network) with two natpunch discovery servers
# and a rendezvous server, then:
#   1. runs `natpunch probe` behind five kinds of NAT (one line each);
#   2. alice behind a cone NAT runs `natpunch listen`, bob behind a symmetric
#      NAT calls her with `natpunch connect`: both sides' connected events
#      (via predicted), and a line of text each way through the path;
#   3. the same from a random-port NAT to a cone NAT (via birthday);
# and removes it all (also on Ctrl-C). About 20 s. Without root it runs what
# it can on loopback: a discovery server on 127.0.0.1 (alternate 127.0.0.2)
# and a probe from this host, which is behind no NAT there. Exits non-zero
# if something failed.
set -uo pipefail
DEMO_DIR="" DEMO_PIDS=""

cli=${1:-build/natpunch}
case "$cli" in /*) ;; *) cli="$PWD/$cli" ;; esac
if [ ! -x "$cli" ]; then
  echo "demo: $cli is not an executable; build first (make)" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
lab_lib="$here/../tests/lab/lab.sh"

if [ -t 1 ]; then
  B=$'\e[1m' D=$'\e[2m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'
else
  B="" D="" G="" R="" N=""
fi
rule() { # a heading padded to 72 columns
  local pad=$((68 - ${#1})) line=""
  while [ "$pad" -gt 0 ]; do line+="─"; pad=$((pad - 1)); done
  printf '%s\n' "${B}── $1 ${line}${N}"
}
indent() { sed 's/^/    /'; }

# ------------------------------------------------------------------ loopback
loopback_demo() {
  local dir port rc=0 n
  DEMO_DIR=$(mktemp -d /tmp/natpunch-demo.XXXXXX)
  dir=$DEMO_DIR
  # shellcheck disable=SC2317  # called from the trap
  cleanup_lo() {
    local p
    for p in $DEMO_PIDS; do kill "$p" 2>/dev/null || true; done
    rm -rf "$DEMO_DIR"
  }
  trap cleanup_lo EXIT
  # A free port pair (port and port+1, the alternate) on loopback.
  port=""
  for ((n = 0; n < 50; n++)); do
    local try=$((20000 + (RANDOM % 20000) * 2))
    if ! ss -Hlun 2>/dev/null | grep -Eq ":($try|$((try + 1)))\b"; then port=$try; break; fi
  done
  [ -n "$port" ] || { echo "demo: no free UDP port on loopback" >&2; return 1; }

  echo "${B}natpunch demo (loopback)${N}"
  echo "  discovery server 1  127.0.0.1:$port  (alternate 127.0.0.2:$((port + 1)), RFC 5780)"
  echo "  discovery server 2  127.0.0.3:$port"
  "$cli" discovery-server --listen "127.0.0.1:$port" --alt-ip 127.0.0.2 --alt-port $((port + 1)) \
    >"$dir/s1.log" 2>&1 &
  p1=$!
  "$cli" discovery-server --listen "127.0.0.3:$port" >"$dir/s2.log" 2>&1 &
  p2=$!
  DEMO_PIDS="$p1 $p2"
  for ((n = 0; n < 50; n++)); do
    if ss -Hlun 2>/dev/null | grep -q "127.0.0.1:$((port + 1))\b" &&
      ss -Hlun 2>/dev/null | grep -q "127.0.0.3:$port\b"; then break; fi
    kill -0 "$p1" 2>/dev/null && kill -0 "$p2" 2>/dev/null || break
    sleep 0.1
  done
  echo
  rule "This host, on loopback: no NAT between it and the servers"
  echo "    ${D}natpunch probe --discovery 127.0.0.1:$port --discovery 127.0.0.3:$port${N}"
  "$cli" probe --discovery "127.0.0.1:$port" --discovery "127.0.0.3:$port" >"$dir/probe.txt" 2>&1 || rc=$?
  indent <"$dir/probe.txt"
  echo
  if [ "$rc" -ne 0 ]; then
    echo "${R}demo: the probe failed (exit $rc)${N}"
    echo "--- server logs"; tail -n 20 "$dir"/s*.log
    return 1
  fi
  if grep -Eq '^Behind NAT +yes' "$dir/probe.txt"; then
    echo "${R}demo: the probe reports a NAT on loopback${N}"
    return 1
  fi
  echo "${G}demo: done${N} (as root, make demo shows hosts behind simulated NATs)"
}

# ------------------------------------------------------------------ the lab
# kind | what it is | expected mapping | expected filtering
hosts=(
  "cone|cone (home router)|endpoint-independent|address-and-port-dependent"
  "fullcone|full cone|endpoint-independent|endpoint-independent"
  "symmetric|symmetric, sequential ports|address-and-port-dependent|address-and-port-dependent"
  "random|symmetric, random ports|address-and-port-dependent|address-and-port-dependent"
  "double|cone behind a carrier-grade NAT|endpoint-independent|address-and-port-dependent"
)
RDV=203.0.113.4:7000

short() { printf '%s…' "${1:0:8}"; } # a peer ID, shortened for the eye

# wait_for FILE PATTERN SECONDS PID...: bounded wait until FILE has a line
# matching PATTERN; fails early if every PID is gone.
wait_for() {
  local file=$1 pattern=$2 secs=$3 n p alive
  shift 3
  for ((n = 0; n < secs * 20; n++)); do
    grep -qE "$pattern" "$file" 2>/dev/null && return 0
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || return 1
    sleep 0.05
  done
  return 1
}

# One line per JSON event of a side's stderr, for humans.
show_events() { # show_events NAME LOG
  jq -rR --arg who "$1" '
    def s: .[0:8] + "…";
    fromjson? |
    if .event == "listening" then "\($who)\tlistening as \(.id|s) (the server sees \(.observed))"
    elif .event == "call" then "\($who)\tcall from \(.from|s)"
    elif .event == "connected" then "\($who)\tconnected: \(.path) path to \(.remote), via \(.via), \(.elapsed_ms) ms (handshake \(.secure_ms) ms), \(.probes) probes sent"
    elif .event == "summary" then "\($who)\tsummary: sent \(.bytes_sent) B, received \(.bytes_received) B in \(.duration_ms) ms, encrypted session, rtt \(.rtt_ms) ms"
    elif .event == "failed" or .event == "closed" then "\($who)\t\(.event): \(.reason)"
    elif .event == "log" then "\($who)\t\(.level): \(.message)"
    else "\($who)\t\(.)" end' "$2" 2>/dev/null | sed 's/^/    /' | expand -t 12
}

# session LISTENER CALLER WANT_VIA: LISTENER runs `natpunch listen`, CALLER
# calls it with `natpunch connect`; once both report the path, one line of
# text goes each way through it (stdin of one, stdout of the other).
session() {
  local l=$1 c=$2 want=$3 dir=$DEMO_DIR lid cid lpid cpid ok=1 line_c line_l got_l got_c via_l via_c
  local common=(--rendezvous "$RDV" --discovery "$LAB_S1:3478" --discovery "$LAB_S2:3478" --json)
  if ! "$cli" keygen "$dir/$l.key" >/dev/null 2>&1 || ! "$cli" keygen "$dir/$c.key" >/dev/null 2>&1; then
    echo "${R}demo: keygen failed${N}"
    return 1
  fi
  lid=$("$cli" id --key "$dir/$l.key") cid=$("$cli" id --key "$dir/$c.key")
  line_c="hi $l, this is $c behind a ${LAB_KIND[$c]} NAT"
  line_l="hello $c, $l here, behind a ${LAB_KIND[$l]} NAT"
  echo "    ${D}$l ($(lab_ip "$l") behind $(lab_pubip "$l")):  natpunch listen  --key $l.key ...   (ID $(short "$lid"))"
  echo "    $c ($(lab_ip "$c") behind $(lab_pubip "$c")):  natpunch connect --key $c.key --peer $(short "$lid") ...   (ID $(short "$cid"))${N}"
  echo
  # Each side's stdin is a fifo held open here (fds 7 and 8, closed in the
  # children): the line goes in once the path is up, then input ends.
  rm -f "$dir/$l.in" "$dir/$c.in"
  mkfifo "$dir/$l.in" "$dir/$c.in"
  exec 7<>"$dir/$l.in" 8<>"$dir/$c.in"
  lab_exec "$l" timeout 40 "$cli" listen "${common[@]}" --key "$dir/$l.key" \
    <"$dir/$l.in" >"$dir/$l.out" 2>"$dir/$l.log" 7>&- 8>&- &
  lpid=$!
  if ! wait_for "$dir/$l.log" '"event":"listening"' 10 "$lpid"; then
    ok=0
  else
    lab_exec "$c" timeout 40 "$cli" connect "${common[@]}" --key "$dir/$c.key" --peer "$lid" \
      --timeout 20 <"$dir/$c.in" >"$dir/$c.out" 2>"$dir/$c.log" 7>&- 8>&- &
    cpid=$!
    wait_for "$dir/$c.log" '"event":"(connected|failed)"' 25 "$cpid" &&
      wait_for "$dir/$l.log" '"event":"connected"' 5 "$lpid" || ok=0
  fi
  grep -q '"event":"connected"' "$dir/$c.log" 2>/dev/null || ok=0
  if [ "$ok" = 1 ]; then
    # The caller speaks first and the listener answers once the line is in:
    # then no data is in flight when a side leaves.
    printf '%s\n' "$line_c" >&8
    wait_for "$dir/$l.out" . 5 "$lpid" || true
    printf '%s\n' "$line_l" >&7
    wait_for "$dir/$c.out" . 5 "$cpid" || true
  fi
  exec 7>&- 8>&- # both inputs end: each side answers the other's end and exits
  wait_for /dev/null '^$' 5 "$lpid" "${cpid:-}" || true
  kill "$lpid" "${cpid:-}" 2>/dev/null || true
  wait "$lpid" "${cpid:-}" 2>/dev/null || true

  echo "    ${B}events${N} (JSON on each side's stderr)"
  show_events "$l" "$dir/$l.log"
  show_events "$c" "$dir/$c.log"
  echo
  echo "    ${B}the connected events, as printed${N}"
  grep -h '"event":"connected"' "$dir/$l.log" "$dir/$c.log" 2>/dev/null | sed "s/^/    ${D}/; s/\$/${N}/"
  echo
  got_l=$(cat "$dir/$l.out" 2>/dev/null) got_c=$(cat "$dir/$c.out" 2>/dev/null)
  echo "    ${B}data through the punched path${N}"
  printf '    %-15s → "%s"\n' "$c's stdin" "$line_c"
  printf '    %-15s ← "%s"\n' "$l's stdout" "$got_l"
  printf '    %-15s → "%s"\n' "$l's stdin" "$line_l"
  printf '    %-15s ← "%s"\n' "$c's stdout" "$got_c"
  via_l=$(jq -rR 'fromjson? | select(.event == "connected") | .via' "$dir/$l.log" 2>/dev/null | head -n1)
  via_c=$(jq -rR 'fromjson? | select(.event == "connected") | .via' "$dir/$c.log" 2>/dev/null | head -n1)
  if [ "$got_l" = "$line_c" ] && [ "$got_c" = "$line_l" ] && [ "$via_c" = "$want" ] && [ "$via_l" = "$want" ]; then
    echo "    ${G}✓ direct path via $want, text delivered both ways${N}"
    return 0
  fi
  echo "    ${R}✗ expected a direct path via $want and both lines delivered${N}"
  return 1
}

lab_demo() {
  # shellcheck source=../tests/lab/lab.sh
  source "$lab_lib"
  local dir fails=0 h kind title want_m want_f rc got_m got_f delta i n=0 t0
  t0=$(date +%s)
  DEMO_DIR=$(mktemp -d /tmp/natpunch-demo.XXXXXX)
  dir=$DEMO_DIR
  lab_init
  # shellcheck disable=SC2317  # called from the trap
  demo_exit() { lab_down; rm -rf "$DEMO_DIR"; }
  trap demo_exit EXIT
  lab_servers
  lab_server_host rdv "${RDV%:*}"
  for h in "${hosts[@]}"; do
    IFS='|' read -r kind _ _ _ <<<"$h"
    lab_nat_host "$kind" "$kind"
  done
  lab_nat_host cone alice
  lab_nat_host symmetric bob
  lab_nat_host random carol
  lab_nat_host cone dave
  if ! lab_start_natpunch_servers "$cli" "$dir"; then
    echo "${R}demo: the discovery servers did not start${N}"
    return 1
  fi
  lab_spawn rdv "$dir/rdv.log" "$cli" rendezvous-server --listen "$RDV"

  echo "${B}natpunch demo: direct UDP paths between hosts behind NATs${N}"
  echo "A simulated internet (203.0.113.0/24) in network namespaces; nothing leaves this machine."
  echo "  discovery servers   $LAB_S1:3478 (alternate $LAB_S1_ALT:3479), $LAB_S2:3478"
  echo "  rendezvous server   $RDV"
  echo

  # The probes run side by side (each waits out its own filtering tests).
  local pids=()
  for h in "${hosts[@]}"; do
    IFS='|' read -r kind _ _ _ <<<"$h"
    (
      rc=0
      lab_exec "$kind" timeout 60 "$cli" probe --discovery "$LAB_S1:3478" \
        --discovery "$LAB_S2:3478" --json >"$dir/$kind.json" 2>"$dir/$kind.err" || rc=$?
      echo "$rc" >"$dir/$kind.rc"
    ) &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || true; done

  rule "1. What each NAT does to UDP (natpunch probe from a host behind it)"
  printf '    %-31s %-27s %-27s %s\n' "NAT" "mapping" "filtering" "delta"
  for h in "${hosts[@]}"; do
    IFS='|' read -r kind title want_m want_f <<<"$h"
    rc=$(cat "$dir/$kind.rc" 2>/dev/null || echo 1)
    got_m=$(jq -r .mapping "$dir/$kind.json" 2>/dev/null) got_f=$(jq -r .filtering "$dir/$kind.json" 2>/dev/null)
    delta=$(jq -r '.delta | if . > 0 then "+\(.)" else "\(.)" end' "$dir/$kind.json" 2>/dev/null)
    if [ "$rc" -ne 0 ] || [ "$got_m" != "$want_m" ] || [ "$got_f" != "$want_f" ]; then
      printf '    %-31s %s\n' "$title" "${R}✗ probe exit $rc: mapping '$got_m', filtering '$got_f'${N}"
      fails=$((fails + 1))
    else
      printf '    %-31s %-27s %-27s %-6s %s\n' "$title" "$got_m" "$got_f" "$delta" "${G}✓${N}"
    fi
  done
  echo "    ${D}(mapping: does the public port depend on the destination? filtering: who may"
  echo "    send in? delta: the public port step between two destinations, for prediction)${N}"
  echo

  rule "2. alice (cone NAT) ⇄ bob (symmetric NAT): a direct path"
  echo "    ${D}bob's NAT gives every new destination the next public port, so alice cannot"
  echo "    answer the port the servers saw: she predicts bob's next ports from his delta.${N}"
  session alice bob predicted || fails=$((fails + 1))
  echo

  rule "3. carol (random-port NAT) → dave (cone NAT): the birthday method"
  echo "    ${D}carol's NAT picks a random port per destination, so nothing can be predicted:"
  echo "    carol opens many sockets (many random ports) and dave probes many of them.${N}"
  session dave carol birthday || fails=$((fails + 1))
  echo

  if [ "$fails" -ne 0 ]; then
    echo "${R}demo: $fails part(s) failed${N}"
    echo "--- rendezvous server"; tail -n 5 "$dir/rdv.log"
    return 1
  fi
  echo "${G}demo: done${N} in $(($(date +%s) - t0)) s; the lab is gone."
}

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: not root, so no NAT lab (it needs network namespaces and nftables)."
  echo "demo: run 'sudo make demo' to see hosts behind simulated NATs; meanwhile, loopback:"
  echo
  loopback_demo
elif ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 || [ ! -r "$lab_lib" ]; then
  echo "demo: nftables/iproute2 or the lab library missing (scripts/deps.sh demo installs them); loopback only:"
  echo
  loopback_demo
elif ! ip netns add "natpunch-demo-check-$$" 2>/dev/null; then
  echo "demo: cannot create network namespaces here (container?); loopback only:"
  echo
  loopback_demo
else
  ip netns del "natpunch-demo-check-$$"
  lab_demo
fi
