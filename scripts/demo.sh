#!/usr/bin/env bash
# `make demo`: natpunch's NAT report for hosts behind NATs of different kinds.
# Usage: scripts/demo.sh path/to/natpunch
#
# As root it builds a small simulated internet in network namespaces (the
# NAT lab of tests/lab/lab.sh: 203.0.113.0/24, nftables NATs, nothing
# connected to this machine's network), runs two natpunch discovery servers
# there and `natpunch probe` from one host behind each NAT, then removes it
# all. Without root it runs what it can on loopback: a discovery server on
# 127.0.0.1 (alternate 127.0.0.2) and a probe from this host, which is behind
# no NAT there. Exits non-zero if something failed.
set -euo pipefail
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
# kind | heading | how the lab builds it | expected mapping | expected filtering
hosts=(
  "cone|home router (port-restricted cone)|masquerade: keeps the port, one mapping for all destinations, replies only from where it sent|endpoint-independent|address-and-port-dependent"
  "fullcone|full-cone NAT|masquerade + dnat of mapped ports: once a port is mapped, anyone can reach it|endpoint-independent|endpoint-independent"
  "symmetric|symmetric NAT, sequential ports|snat to the next port of a counter (20000, 20001, ...) for each new destination|address-and-port-dependent|address-and-port-dependent"
  "random|symmetric NAT, random ports|masquerade fully-random: a random port for each new destination|address-and-port-dependent|address-and-port-dependent"
  "double|home router behind a carrier-grade NAT|two masquerading NATs stacked, the outer one on 100.64.0.0/10 inside|endpoint-independent|address-and-port-dependent"
)

lab_demo() {
  # shellcheck source=../tests/lab/lab.sh
  source "$lab_lib"
  local dir fails=0 h kind title how want_m want_f rc got_m got_f i n=0
  DEMO_DIR=$(mktemp -d /tmp/natpunch-demo.XXXXXX)
  dir=$DEMO_DIR
  lab_init
  # shellcheck disable=SC2317  # called from the trap
  demo_exit() { lab_down; rm -rf "$DEMO_DIR"; }
  trap demo_exit EXIT
  lab_servers
  for h in "${hosts[@]}"; do
    IFS='|' read -r kind _ _ _ _ <<<"$h"
    lab_nat_host "$kind" "$kind"
  done
  if ! lab_start_natpunch_servers "$cli" "$dir"; then
    echo "${R}demo: the discovery servers did not start${N}"
    return 1
  fi

  echo "${B}natpunch demo: what does each NAT do to a host's UDP traffic?${N}"
  echo "A simulated internet (203.0.113.0/24) in network namespaces; nothing leaves this machine."
  echo "  discovery server 1  $LAB_S1:3478  (alternate $LAB_S1_ALT:3479, RFC 5780 tests)"
  echo "  discovery server 2  $LAB_S2:3478"
  echo "Each host runs: natpunch probe --discovery $LAB_S1:3478 --discovery $LAB_S2:3478"
  echo

  # The probes run side by side (each waits out its own filtering tests);
  # the reports are printed in order.
  local pids=()
  for ((i = 0; i < ${#hosts[@]}; i++)); do
    IFS='|' read -r kind _ _ _ _ <<<"${hosts[$i]}"
    (
      rc=0
      lab_exec "$kind" timeout 60 "$cli" probe --discovery "$LAB_S1:3478" \
        --discovery "$LAB_S2:3478" >"$dir/$kind.txt" 2>&1 || rc=$?
      echo "$rc" >"$dir/$kind.rc"
    ) &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || true; done

  for h in "${hosts[@]}"; do
    IFS='|' read -r kind title how want_m want_f <<<"$h"
    n=$((n + 1))
    rule "$n. behind a $title"
    echo "    ${D}host $(lab_ip "$kind"), NAT public address $(lab_pubip "$kind")"
    echo "    nftables: $how${N}"
    echo
    indent <"$dir/$kind.txt"
    rc=$(cat "$dir/$kind.rc" 2>/dev/null || echo 1)
    got_m=$(sed -n 's/^Mapping  *//p' "$dir/$kind.txt" | head -n1)
    got_f=$(sed -n 's/^Filtering  *//p' "$dir/$kind.txt" | head -n1)
    if [ "$rc" -ne 0 ]; then
      echo "    ${R}✗ the probe failed (exit $rc)${N}"
      fails=$((fails + 1))
    elif [ -n "$got_m$got_f" ] && { [ "$got_m" != "$want_m" ] || [ "$got_f" != "$want_f" ]; }; then
      echo "    ${R}✗ differs from the NAT the lab built${N}"
      fails=$((fails + 1))
    else
      echo "    ${G}✓ as built: mapping $want_m, filtering $want_f${N}"
    fi
    echo
  done

  if [ "$fails" -ne 0 ]; then
    echo "${R}demo: $fails of ${#hosts[@]} hosts failed${N}"
    echo "--- discovery server logs"; tail -n 20 "$dir"/server-s*.log
    return 1
  fi
  echo "${G}demo: done${N}: ${#hosts[@]} NATs probed; the lab is gone."
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
