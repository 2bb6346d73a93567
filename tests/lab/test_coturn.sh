#!/usr/bin/env bash
# Validates the lab's NAT emulation independently of natpunch: coturn's
# STUN server (RFC 5780, on s1) and its turnutils_natdiscovery client, run
# from a host behind a NAT of KIND, must classify the NAT as the kind says.
# Usage: test_coturn.sh KIND        (exit 77 = skipped)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"

kind=${1:?usage: $0 KIND}
lab_require_root
for t in turnserver turnutils_natdiscovery; do
  command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t not found (apt-get install coturn)" >&2; exit 77; }
done


lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-coturn-$kind.XXXXXX")
on_exit() { lab_down; rm -rf "$logs"; }
trap on_exit EXIT
lab_servers
lab_nat_host "$kind" h
lab_start_coturn "$logs"

echo "coturn natdiscovery from a host behind a '$kind' NAT (host $(lab_ip h), public $(lab_pubip h))"
out=$(lab_exec h timeout 30 turnutils_natdiscovery -m -f "$LAB_S1" 2>&1) || {
  echo "$out"
  echo "FAIL: turnutils_natdiscovery failed"
  exit 1
}
mapping=$(sed -n 's/^NAT with \(.*\) Mapping!$/\1/p' <<<"$out" | head -n1)
filtering=$(sed -n 's/^NAT with \(.*\) Filtering!$/\1/p' <<<"$out" | head -n1)
# The reflexive addresses of the mapping test (the first three responses) and
# the local port they were seen from.
mapfile -t refl < <(sed -n 's/.*UDP reflexive addr: \([0-9.]*:[0-9]*\).*/\1/p' <<<"$out")
lport=$(sed -n 's/.*Local addr: : [0-9.]*:\([0-9]*\).*/\1/p' <<<"$out" | head -n1)
ip0=${refl[0]%:*} port0=${refl[0]#*:}

lab_check "mapped IP" "$ip0" "$(lab_pubip h)"
case "$kind" in
  open)
    lab_check mapping "$mapping" "Endpoint Independent"
    lab_check filtering "$filtering" "Endpoint Independent"
    lab_check "mapped port = local port" "$port0" "$lport" ;;
  cone | double)
    lab_check mapping "$mapping" "Endpoint Independent"
    lab_check filtering "$filtering" "Address and Port Dependent"
    lab_check "mapped port = local port" "$port0" "$lport" ;;
  addr)
    lab_check mapping "$mapping" "Endpoint Independent"
    lab_check filtering "$filtering" "Address Dependent"
    lab_check "mapped port = local port" "$port0" "$lport" ;;
  fullcone)
    lab_check mapping "$mapping" "Endpoint Independent"
    lab_check filtering "$filtering" "Endpoint Independent"
    lab_check "mapped port = local port" "$port0" "$lport" ;;
  symmetric)
    lab_check mapping "$mapping" "Address and Port Dependent"
    lab_check filtering "$filtering" "Address and Port Dependent"
    # Three mappings in a row (to s1, alt IP, alt IP + alt port): n, n+1, n+2.
    p1=${refl[1]#*:} p2=${refl[2]#*:}
    lab_check "sequential ports" "$((p1 - port0)),$((p2 - p1))" "1,1" ;;
  random)
    lab_check mapping "$mapping" "Address and Port Dependent"
    lab_check filtering "$filtering" "Address and Port Dependent"
    p1=${refl[1]#*:}
    [ "$port0" != "$lport" ] && pp=no || pp=yes
    lab_check "port preserved" "$pp" "no"
    [ "$p1" != "$port0" ] && diff=yes || diff=no
    lab_check "new port per destination" "$diff" "yes" ;;
  *) echo "no expectations for kind '$kind'"; exit 2 ;;
esac

if [ "$LAB_FAILS" -ne 0 ]; then
  echo "--- natdiscovery output"
  echo "$out"
  lab_conntrack h
  echo "FAIL: $LAB_FAILS check(s) failed for kind '$kind'"
  exit 1
fi
echo "PASS: coturn sees a '$kind' NAT as expected"
