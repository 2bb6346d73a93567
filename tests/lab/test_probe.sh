#!/usr/bin/env bash
# natpunch end to end in the NAT lab: our two discovery servers on the public
# segment, `natpunch probe --json` from a host behind a NAT of KIND, and every
# field of the report checked against what that NAT does (the NAT emulation
# itself is checked against coturn by test_coturn.sh).
# Usage: test_probe.sh NATPUNCH_CLI KIND        (exit 77 = skipped)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"

cli=${1:?usage: $0 NATPUNCH_CLI KIND}
kind=${2:?usage: $0 NATPUNCH_CLI KIND}
case "$cli" in /*) ;; *) cli="$PWD/$cli" ;; esac
[ -x "$cli" ] || { echo "FAIL: $cli is not an executable"; exit 1; }
lab_require_root
command -v jq >/dev/null 2>&1 || { echo "SKIP: jq not found (apt-get install jq)" >&2; exit 77; }

check_if() { # check_if WHAT GOT WANT-TEXT COMMAND...: passes if COMMAND succeeds
  local what=$1 got=$2 want=$3
  shift 3
  if "$@"; then echo "  ok   $what: $got"; else echo "  FAIL $what: got '$got', want $want"; LAB_FAILS=$((LAB_FAILS + 1)); fi
}

lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-probe-$kind.XXXXXX")
on_exit() { lab_down; rm -rf "$logs"; }
trap on_exit EXIT
lab_servers
lab_nat_host "$kind" h
lab_start_natpunch_servers "$cli" "$logs"
pub=$(lab_pubip h)

echo "natpunch probe from a host behind a '$kind' NAT (host $(lab_ip h), public $pub)"
rc=0
lab_exec h timeout 60 "$cli" probe --discovery "$LAB_S1:3478" --discovery "$LAB_S2:3478" --json \
  >"$logs/probe.json" 2>"$logs/probe.err" || rc=$?
if [ "$rc" -ne 0 ] || ! jq -e 'type == "object"' "$logs/probe.json" >/dev/null 2>&1; then
  echo "FAIL: probe exited $rc or did not print one JSON object"
  echo "--- stdout"; cat "$logs/probe.json"
  echo "--- stderr"; cat "$logs/probe.err"
  echo "--- servers"; tail -n 20 "$logs"/server-s*.log
  exit 1
fi
cat "$logs/probe.json"
j() { jq -r "$1" "$logs/probe.json"; }

# Shape: every field there, with its type.
lab_check "field types" "$(j '[(.local|type), (.mapped|type), (.mapped|length), (.delta|type),
  (.mapping|type), (.filtering|type), (.port_preserving|type), (.nat|type),
  (.hairpinning|type|IN("boolean","null")), (.rfc5780|type)] | join(",")')" \
  "string,array,2,number,string,string,boolean,boolean,true,boolean"

local_ip=$(j '.local | sub(":[0-9]+$"; "")') local_port=$(j '.local | sub("^.*:"; "")')
m0=$(j '.mapped[0]') m1=$(j '.mapped[1]')
m0ip=${m0%:*} m0port=${m0##*:} m1ip=${m1%:*} m1port=${m1##*:}
for v in "$local_port" "$m0port" "$m1port"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "FAIL: local/mapped are not ip:port strings"; exit 1; }
done
if [ "$local_ip" != 0.0.0.0 ]; then lab_check "local IP" "$local_ip" "$(lab_ip h)"; fi
lab_check "mapped[0] IP (the NAT's public IP)" "$m0ip" "$pub"
lab_check "mapped[1] IP" "$m1ip" "$pub"
lab_check "delta = mapped[1] port - mapped[0] port" "$(j .delta)" "$((m1port - m0port))"
lab_check "rfc5780 (s1 has an alternate address)" "$(j .rfc5780)" true

# The lab's NATs do not hairpin (a packet from the LAN to the NAT's own public
# address is not looped back), and without a NAT there is nothing to test.
if [ "$kind" = open ]; then want=null; else want=false; fi
lab_check hairpinning "$(j .hairpinning)" "$want"

delta=$(j .delta)
[[ $delta =~ ^-?[0-9]+$ ]] || { echo "FAIL: delta is not an integer: $delta"; exit 1; }
case "$kind" in
  open)
    lab_check nat "$(j .nat)" false
    lab_check mapping "$(j .mapping)" endpoint-independent
    lab_check filtering "$(j .filtering)" endpoint-independent
    lab_check port_preserving "$(j .port_preserving)" true
    lab_check "mapped[0] port = local port" "$m0port" "$local_port"
    lab_check delta "$delta" 0 ;;
  cone | double | addr | fullcone)
    lab_check nat "$(j .nat)" true
    lab_check mapping "$(j .mapping)" endpoint-independent
    case "$kind" in
      fullcone) want=endpoint-independent ;;
      addr) want=address-dependent ;;
      *) want=address-and-port-dependent ;;
    esac
    lab_check filtering "$(j .filtering)" "$want"
    lab_check port_preserving "$(j .port_preserving)" true
    lab_check "mapped[0] port = local port" "$m0port" "$local_port"
    lab_check delta "$delta" 0
    lab_check port_allocation "$(j .port_allocation)" cone
    lab_check stride "$(j .stride)" 0 ;;
  symmetric)
    # A new public port per remote address:port, taken in order from 20000:
    # address-and-port-dependent mapping, and a small positive delta (the
    # RFC 5780 tests in between may take a few ports of the sequence).
    lab_check nat "$(j .nat)" true
    lab_check mapping "$(j .mapping)" address-and-port-dependent
    lab_check filtering "$(j .filtering)" address-and-port-dependent
    lab_check port_preserving "$(j .port_preserving)" false
    check_if "delta (sequential)" "$delta" "1..8" test "$delta" -ge 1 -a "$delta" -le 8
    lab_check port_allocation "$(j .port_allocation)" sequential
    lab_check stride "$(j .stride)" 1
    lab_check "views" "$(j '.evidence.views | length')" 4
    check_if "mapped[0] port in the NAT's sequence" "$m0port" "20000..$((20000 + LAB_SYM_PORTS - 1))" \
      test "$m0port" -ge 20000 -a "$m0port" -lt $((20000 + LAB_SYM_PORTS)) ;;
  seq7 | seq300 | seqneg | seqwrap)
    # Sequential with another stride: a constant step between successive
    # mappings, whatever it is (the seed took every delta beyond 64 as
    # random). The probe's own mappings (the filtering socket's, between
    # the servers' views and the alternate's) move the NAT by whole
    # strides, so every delta is a multiple of the stride and the verdict
    # is the stride itself.
    case "$kind" in seq7) want=7 ;; seq300) want=300 ;; seqneg) want=-5 ;; seqwrap) want=20011 ;; esac
    lab_check nat "$(j .nat)" true
    lab_check mapping "$(j .mapping)" address-and-port-dependent
    lab_check port_preserving "$(j .port_preserving)" false
    lab_check port_allocation "$(j .port_allocation)" sequential
    lab_check stride "$(j .stride)" "$want"
    lab_check "views (two servers, two alternates)" "$(j '.evidence.views | length')" 4
    lab_check "views in mapping order" "$(j '[.evidence.views[].to] | join(" ")')" \
      "$LAB_S1:3478 $LAB_S2:3478 $LAB_S1_ALT:3478 $LAB_S1_ALT:3479"
    lab_check "deltas whole strides (on the ring 1024..65535)" \
      "$(j "[.evidence.deltas[] as \$d | any(range(1; 17); ((. * $want - \$d) % 64512) == 0)] | all")" true
    lab_check "first delta (on the ring) = stride" "$(j '.evidence.deltas[0]')" "$want"
    lab_check "guessed" "$(j .evidence.guessed)" false ;;
  random)
    lab_check nat "$(j .nat)" true
    lab_check port_allocation "$(j .port_allocation)" random
    lab_check mapping "$(j .mapping)" address-and-port-dependent
    lab_check filtering "$(j .filtering)" address-and-port-dependent
    lab_check port_preserving "$(j .port_preserving)" false
    check_if "delta (a new random port per server)" "$delta" "non-zero" test "$delta" -ne 0 ;;
  *) echo "no expectations for kind '$kind'"; exit 2 ;;
esac

# The human report must work too (the demo shows it).
rc=0
lab_exec h timeout 60 "$cli" probe --discovery "$LAB_S1:3478" --discovery "$LAB_S2:3478" \
  >"$logs/probe.txt" 2>&1 || rc=$?
lab_check "human report exit status" "$rc" 0
if grep -q "$pub" "$logs/probe.txt"; then echo "  ok   human report names $pub"; else
  echo "  FAIL human report does not name the public IP $pub"; LAB_FAILS=$((LAB_FAILS + 1)); fi

if [ "$LAB_FAILS" -ne 0 ]; then
  echo "--- probe stderr"; cat "$logs/probe.err"
  echo "--- human report"; cat "$logs/probe.txt"
  lab_conntrack h
  echo "FAIL: $LAB_FAILS check(s) failed for kind '$kind'"
  exit 1
fi
echo "PASS: natpunch probe sees a '$kind' NAT as expected"
