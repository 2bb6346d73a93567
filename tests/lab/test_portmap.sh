#!/usr/bin/env bash
# Port mapping end to end in the NAT lab: a host behind a real miniupnpd
# gateway (lab_upnp.sh) maps a UDP port with np_portmap_* (portmap_driver.c)
# by each protocol in turn; a server on the public segment sends to the
# external address the library reported, and the datagram must arrive at
# the host's socket. After np__portmap_close() the gateway's DNAT rule must be
# gone and a new datagram must not arrive.
# Then renewal, with the natpunch CLI: a listener behind a gateway that
# grants PCP leases of 8 s (less than the hour asked for) renews its mapping
# before each lease ends, so that the mapping is still in the gateway and
# still offered 20 s later; once the gateway is gone, the mapping runs out
# unrenewed and the listener stops offering it.
# Usage: test_portmap.sh PORTMAP_DRIVER [NATPUNCH_CLI]   (exit 77 = skipped)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"
# shellcheck source=lab_upnp.sh
source "$here/lab_upnp.sh"

driver=${1:?usage: $0 PORTMAP_DRIVER [NATPUNCH_CLI]}
case "$driver" in /*) ;; *) driver="$PWD/$driver" ;; esac
cli=${2:-}
if [ -n "$cli" ]; then case "$cli" in /*) ;; *) cli="$PWD/$cli" ;; esac; fi
[ -x "$driver" ] || { echo "FAIL: $driver is not an executable"; exit 1; }
lab_require_root
lab_upnp_require
py=$(command -v python3 || true)
[ -n "$py" ] || { echo "SKIP: python3 not found (the test's UDP sender)" >&2; exit 77; }

lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-portmap.XXXXXX")
on_exit() { lab_down; lab_upnp_cleanup; rm -rf "$logs"; }
trap on_exit EXIT
lab_servers
lab_upnp_host h
LAB_UPNP_NATPMP=no lab_upnp_host u
# Leases of 2..8 s: miniupnpd grants PCP no more than max_lifetime.
LAB_UPNP_MIN_LIFETIME=2 LAB_UPNP_MAX_LIFETIME=8 lab_upnp_host r
lab_nat_host cone c
lab_upnp_routes
pub=$(lab_pubip h)
echo "port mapping from $(lab_ip h) behind miniupnpd gateway $pub"

# send_from NAME SPORT DST DPORT: three datagrams 50 ms apart (one lost
# datagram must not fail the test), bounded by timeout.
send_from() {
  lab_exec "$1" timeout 10 "$py" -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1])))
for i in range(3):
    s.sendto(b"portmap %d" % i, (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.05)
' "$2" "$3" "$4"
}

# wait_line FILE REGEX [TENTHS]: until a line matches (at most TENTHS x 0.1 s,
# default 100); prints it.
wait_line() {
  local n
  for ((n = 0; n < ${3:-100}; n++)); do
    if grep -Eq "$2" "$1" 2>/dev/null; then
      grep -Em1 "$2" "$1"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# has_rule HOST PORT: status 0 when miniupnpd's table in HOST's gateway has
# a rule for destination port PORT, 1 when not, 2 when it cannot be listed.
# (Listed into a variable first: with pipefail, "nft | grep -q" fails
# whenever grep exits before nft has finished writing.)
has_rule() {
  local rules
  rules=$(lab_upnp_rules "$1") || return 2
  grep -q "dport $2 " <<<"$rules" || return 1
}

# run_case [-h HOST] LABEL PORT SPORT WANT_PROTOS DRIVER_OPTS...
run_case() {
  local hn=h
  if [ "$1" = -h ]; then hn=$2; shift 2; fi
  local label=$1 port=$2 sport=$3 want=$4 out line proto ext ms pid n pub rc
  pub=$(lab_pubip "$hn")
  shift 4
  out="$logs/$label.log"
  echo "--- $label (driver $*)"
  lab_spawn "$hn" "$out" "$driver" --port "$port" --timeout 4000 --wait 8000 --after 2000 -v "$@"
  pid=$LAB_LAST_PID
  if ! line=$(wait_line "$out" '^(mapped|failed)' 150) || [[ $line != mapped* ]]; then
    echo "  FAIL $label: no mapping: ${line:-driver silent}"
    LAB_FAILS=$((LAB_FAILS + 1))
    cat "$out"
    return 0
  fi
  proto=$(field proto "$line") ext=$(field external "$line") ms=$(field ms "$line")
  if [[ " $want " == *" $proto "* ]]; then echo "  ok   $label: protocol $proto in ${ms} ms"; else
    echo "  FAIL $label: protocol $proto, want one of: $want"; LAB_FAILS=$((LAB_FAILS + 1)); fi
  lab_check "$label: external IP (the gateway's WAN)" "${ext%:*}" "$pub"
  local eport=${ext##*:}
  if has_rule "$hn" "$eport"; then echo "  ok   $label: gateway has a DNAT rule for $eport"; else
    echo "  FAIL $label: no DNAT rule for $eport in miniupnpd's table"; LAB_FAILS=$((LAB_FAILS + 1)); fi

  send_from s1 "$sport" "${ext%:*}" "$eport"
  line=$(wait_line "$out" '^received' 100) || line="received (driver silent)"
  lab_check "$label: datagram from s1 arrives, sender" "$(field from "$line")" "$LAB_S1:$sport"

  line=$(wait_line "$out" '^closed' 100) || line="closed rc=(driver silent)"
  lab_check "$label: np__portmap_close" "$(field rc "$line")" NP_OK
  rc=0
  has_rule "$hn" "$eport" || rc=$?
  if [ "$rc" = 1 ]; then echo "  ok   $label: DNAT rule for $eport gone"; else
    echo "  FAIL $label: DNAT rule for $eport still there after close (or no listing: $rc)"
    LAB_FAILS=$((LAB_FAILS + 1))
  fi
  # A new source port: the old conntrack entry (already DNATed) would
  # still carry datagrams from the first one.
  send_from s1 $((sport + 1)) "${ext%:*}" "$eport"
  line=$(wait_line "$out" '^after_close' 50) || line="after_close received=(driver silent)"
  lab_check "$label: datagrams arriving after close" "$(field received "$line")" 0
  for ((n = 0; n < 50; n++)); do lab_alive "$pid" || break; sleep 0.1; done
  if [ "$LAB_VERBOSE" = 1 ]; then cat "$out"; fi
}

run_case auto 40001 5001 "pcp natpmp"
run_case pcp 40002 5011 pcp --no-natpmp --no-upnp
run_case natpmp 40003 5021 natpmp --no-pcp --no-upnp
run_case upnp 40004 5031 upnp --no-pcp --no-natpmp
# A UPnP-only gateway: PCP and NAT-PMP fail at once (ICMP port unreachable)
# and the default 2 s budget is left for UPnP.
echo "UPnP-only gateway $(lab_pubip u) for $(lab_ip u)"
run_case -h u upnp-only 40005 5041 upnp --timeout 2000

# --- renewal, through natpunch listen --------------------------------------
if [ -n "$cli" ] && [ -x "$cli" ] && command -v jq >/dev/null; then
  echo "--- renewal: listener behind $(lab_pubip r), leases of 8 s"
  lab_start_natpunch_servers "$cli" "$logs"
  lab_spawn s1 "$logs/rdv.log" "$cli" rendezvous-server --listen "$LAB_S1"
  for k in r c; do lab_exec "$k" "$cli" keygen "$logs/$k.key" >/dev/null 2>&1; done
  rid=$(lab_exec r "$cli" id --key "$logs/r.key")
  common=(-r "$LAB_S1" -d "$LAB_S1" -d "$LAB_S2" --json)
  lab_spawn r "$logs/listen.log" "$cli" listen "${common[@]}" --key "$logs/r.key" --keep -v
  lpid=$LAB_LAST_PID
  if line=$(wait_line "$logs/listen.log" 'agent: gateway mapped' 100); then
    ext=$(jq -r .message <<<"$line" | sed -n 's/.*gateway mapped \([0-9.:]*\) .*/\1/p')
    t0=$SECONDS
    lab_check "renewal: mapped by PCP" "$(jq -r .message <<<"$line" | sed -n 's/.*(\(.*\))$/\1/p')" pcp
    lab_check "renewal: the gateway granted 8 s" \
      "$(grep -c 'portmap: pcp: mapped udp .* for 8 s' "$logs/listen.log" || true)" 1
    sleep 20 # 2.5 leases
    n=$(grep -c 'portmap: pcp: renewed udp' "$logs/listen.log" || true)
    rc=0; [ "$n" -ge 4 ] || rc=1
    lab_check "renewal: renewed at half the lease (>= 4 in $((SECONDS - t0)) s, got $n)" $rc 0
    if has_rule r "${ext##*:}"; then echo "  ok   renewal: the gateway still has the mapping after 20 s"; else
      echo "  FAIL renewal: the gateway dropped the mapping ${ext##*:} (not renewed)"; LAB_FAILS=$((LAB_FAILS + 1)); fi
    lab_exec c timeout 20 "$cli" connect "${common[@]}" --key "$logs/c.key" --peer "$rid" --timeout 10 \
      </dev/null >/dev/null 2>"$logs/call1.log" && rc=0 || rc=$?
    lab_check "renewal: a call after 20 s connects" $rc 0
    offered=$(jq -r 'select(.event == "log") | .message' "$logs/listen.log" | grep 'agent: gathered' | tail -n 1 || true)
    lab_check "renewal: the listener offers its live mapping" "$(sed -n 's/.*portmap \([^,]*\),.*/\1/p' <<<"$offered")" "$ext"
    # The gateway dies (SIGKILL: no cleanup); the mapping runs out within 8 s.
    kill -KILL "${LAB_UPNP_PID[r]}"
    t0=$SECONDS
    wait_line "$logs/listen.log" 'no longer offered' 150 >/dev/null && rc=0 || rc=$?
    lab_check "renewal: a dead mapping is dropped when its lease ends (in $((SECONDS - t0)) s)" $rc 0
    lab_exec c timeout 20 "$cli" connect "${common[@]}" --key "$logs/c.key" --peer "$rid" --timeout 10 \
      </dev/null >/dev/null 2>"$logs/call2.log" && rc=0 || rc=$?
    lab_check "renewal: a call after the gateway died connects" $rc 0
    offered=$(jq -r 'select(.event == "log") | .message' "$logs/listen.log" | grep 'agent: gathered' | tail -n 1 || true)
    lab_check "renewal: the listener no longer offers the dead mapping" "$(sed -n 's/.*portmap \([^,]*\),.*/\1/p' <<<"$offered")" "-"
  else
    echo "  FAIL renewal: the listener never got a mapping"; LAB_FAILS=$((LAB_FAILS + 1))
  fi
  kill -TERM "$lpid" 2>/dev/null || true
else
  echo "  skip renewal (no natpunch CLI given, or no jq)"
fi

# lab_down must take miniupnpd with it (it runs in the router's namespace).
lab_down
for m in h u; do
  mpid=${LAB_UPNP_PID[$m]}
  if lab_alive "$mpid"; then echo "  FAIL miniupnpd ($mpid) survived lab_down"; LAB_FAILS=$((LAB_FAILS + 1)); else
    echo "  ok   miniupnpd of $m gone after lab_down"; fi
done
lab_check "namespaces left after lab_down" "$(lab_leftovers | wc -l)" 0

if [ "$LAB_FAILS" -ne 0 ]; then
  for f in "$logs"/*.log; do echo "--- $f"; cat "$f"; done
  for m in h u; do echo "--- miniupnpd of $m"; tail -n 40 "$(lab_upnp_log "$m")"; done
  echo "FAIL: $LAB_FAILS check(s) failed"
  exit 1
fi
echo "PASS: PCP, NAT-PMP and UPnP mappings through miniupnpd work and are deleted"
