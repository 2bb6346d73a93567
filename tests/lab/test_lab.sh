#!/usr/bin/env bash
# Self-test of the NAT lab (needs none of natpunch): it builds every NAT kind,
# checks that nothing touches the root namespace and that no namespace has a
# way out, that a packet from each host reaches the public servers from the
# NAT's public IP, that NATs are rude (or quiet on request), that the core
# hop kills small TTLs, that hosts can share a NAT, that lab_loss and
# lab_delay impair the public segment as they say, and that the lab is torn
# down completely on normal exit, on error and on SIGTERM (processes inside
# included).
# Usage: test_lab.sh [NP_DELAY]   (exit 77 = skipped; without the np_delay
#                                   program the lab_delay checks are skipped)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"
lab_require_root
if [ -n "${1:-}" ]; then
  LAB_NP_DELAY=$1
  case "$LAB_NP_DELAY" in /*) ;; *) LAB_NP_DELAY="$PWD/$LAB_NP_DELAY" ;; esac
fi

fails=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fails=$((fails + 1)); }
gone() { # gone PID: the process ends within 2 s
  local n
  for ((n = 0; n < 20; n++)); do lab_alive "$1" || return 0; sleep 0.1; done
  return 1
}
same() { if [ "$2" = "$3" ]; then ok "$1: $2"; else bad "$1: got '$2', want '$3'"; fi; }
root_links() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }

links_before=$(root_links)
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)

echo "== build every kind"
lab_init
lab_servers
for k in $LAB_KINDS; do lab_nat_host "$k" "$k"; done
echo "lab $LAB_ID: $(lab_leftovers | wc -l) namespaces"

new_links=$(comm -13 <(echo "$links_before") <(root_links))
[ -z "$new_links" ] && ok "no interface added to the root namespace" || bad "root namespace got: $new_links"
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$fwd_before" ] && ok "root ip_forward untouched ($fwd_before)" \
  || bad "root ip_forward changed"

echo "== isolation"
for ns in $(lab_leftovers); do
  # Every veth's peer is in one of this lab's namespaces.
  while read -r line; do
    case "$line" in
      *"link-netns $LAB_ID-"*) ;;
      *) bad "$ns: veth whose peer is not in the lab: $line" ;;
    esac
  done < <(ip -n "$ns" -o -d link show type veth)
  # Default routes only point into the lab: hosts to their router's LAN
  # address, the inner router of a stacked NAT to the CGNAT.
  def=$(ip -n "$ns" route show default)
  case "$def" in
    "" | "default via 10."* | "default via 100.64."*) ;;
    *) bad "$ns: unexpected default route: $def" ;;
  esac
done
for n in s1 s2 open cone-r symmetric-r double-r2; do
  ns=$(lab_ns "$n")
  if ip -n "$ns" route get 192.0.2.1 >/dev/null 2>&1; then
    bad "$ns has a route to 192.0.2.1 (outside the lab)"
  fi
done
[ "$fails" -eq 0 ] && ok "no route out of the lab, no veth to the root namespace"

echo "== a packet from each host reaches s1 from the NAT's public IP"
# Count, on s1, UDP packets to port 9 by source address (nft counters; no
# listener needed: s1 drops them).
ip netns exec "$(lab_ns s1)" nft -f - <<EOF
table ip labtest {
  set seen { type ipv4_addr; flags dynamic; }
  chain in { type filter hook input priority -10; policy accept;
    udp dport 9 add @seen { ip saddr } drop
  }
}
EOF
for k in $LAB_KINDS; do
  lab_exec "$k" bash -c "echo lab >/dev/udp/$LAB_S1/9" || bad "$k: send failed"
done
sleep 0.2
seen=$(ip netns exec "$(lab_ns s1)" nft -j list set ip labtest seen 2>/dev/null || true)
for k in $LAB_KINDS; do
  pub=$(lab_pubip "$k")
  if grep -q "\"$pub\"" <<<"$seen"; then ok "$k: seen from $pub"; else bad "$k: nothing from $pub at s1"; fi
done
echo "== rude NATs (default) and quiet ones (LAB_QUIET=1)"
# A rude NAT takes unsolicited inbound UDP to its own input (ICMP port
# unreachable) and keeps an UNREPLIED conntrack entry for it, so when its
# host then sends to that remote address:port from the same port, the
# public port is taken: the mapping gets a different one. A quiet NAT drops
# the unsolicited packet before conntrack keeps it: the port is preserved.
LAB_QUIET=1 lab_nat_host cone quiet
# public_port ROUTER_NS HOSTIP SPORT DST DPORT: the public port of the
# mapping HOSTIP:SPORT -> DST:DPORT (reply direction's dport), or "none".
public_port() {
  ip netns exec "$1" conntrack -L -p udp 2>/dev/null | awk -v h="$2" -v sp="$3" -v d="$4" -v dp="$5" '
    { delete f; delete c
      for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) { c[kv[1]]++; f[kv[1] c[kv[1]]] = kv[2] }
      if (f["src1"] == h && f["sport1"] == sp && f["dst1"] == d && f["dport1"] == dp) { print f["dport2"]; found = 1; exit } }
    END { if (!found) print "none" }'
}
remote=$(lab_ip open) rport=40002 lport=40001
for h in cone quiet; do
  lab_udp_send open $rport "$(lab_pubip "$h")" $lport  # unsolicited, first
  sleep 0.2
  lab_udp_send "$h" $lport "$remote" $rport
  sleep 0.2
  got=$(public_port "$(lab_ns "$h-r")" "$(lab_ip "$h")" $lport "$remote" $rport)
  if [ "$h" = cone ]; then
    if [[ $got =~ ^[0-9]+$ ]] && [ "$got" != $lport ]; then
      ok "rude cone NAT: mapping after an unsolicited packet from $remote:$rport got port $got, not $lport"
    else
      bad "rude cone NAT: mapping port '$got', want a number other than $lport"; lab_conntrack cone
    fi
  else
    same "quiet cone NAT: mapping keeps the port" "$got" $lport
  fi
done

echo "== core router hop: small TTLs die between the NATs"
# conntrack_from ROUTER_NS SRC DPORT: entries SRC -> * : DPORT in that router.
conntrack_from() {
  ip netns exec "$1" conntrack -L -p udp 2>/dev/null | grep -c "^udp .* src=$2 .*dport=$3 .*\[UNREPLIED\] src=" || true
}
far=$(lab_pubip symmetric) far_r=$(lab_ns symmetric-r)
lab_udp_send cone 0 "$far" 41002 2
lab_udp_send cone 0 "$far" 41064 64
sleep 0.2
same "TTL 2 from behind a cone NAT: entries at the far NAT" "$(conntrack_from "$far_r" "$(lab_pubip cone)" 41002)" 0
same "TTL 64 from behind a cone NAT: entries at the far (rude) NAT" "$(conntrack_from "$far_r" "$(lab_pubip cone)" 41064)" 1
# NAT depth: ICMP time exceeded (type 11) from each NAT router on the way.
same "TTL 1 behind a cone NAT: ICMP from its router" "$(lab_udp_ttl cone "$far" 41100 1)" "icmp 11 0 $(lab_ip cone | sed 's/\.[0-9]*$/.1/')"
i_dbl=$(lab_ip double); i_dbl=${i_dbl#10.}; i_dbl=${i_dbl%%.*}
same "TTL 1 behind a double NAT: ICMP from the inner router" "$(lab_udp_ttl double "$far" 41101 1)" "icmp 11 0 10.$i_dbl.0.1"
same "TTL 2 behind a double NAT: ICMP from the outer router's LAN address" \
  "$(lab_udp_ttl double "$far" 41102 2)" "icmp 11 0 100.64.$i_dbl.1"
same "TTL 3 behind a double NAT: dies in the core, no ICMP" "$(lab_udp_ttl double "$far" 41103 3)" none
same "TTL 1 from an open host: dies in the core, no ICMP" "$(lab_udp_ttl open "$far" 41104 1)" none
same "TTL 64 to a rude NAT: ICMP port unreachable from its public IP" \
  "$(lab_udp_ttl open "$far" 41105 64)" "icmp 3 3 $far"

echo "== shared NATs (lab_nat_join): inbound state is per host"
# Two hosts behind one NAT bind the same port and send to the same remote
# address:port: the second mapping cannot keep the port. Inbound through the
# addr / fullcone rules must reach each host at its own LAN address and port.
tmp=$(mktemp -d "/tmp/$LAB_ID-test.XXXXXX")
remote=$(lab_ip open)
for k in addr fullcone cone; do
  lab_nat_join "$k" "$k-2"
  same "$k-2: public IP shared with $k" "$(lab_pubip "$k-2")" "$(lab_pubip "$k")"
  same "$k-2: next LAN address" "$(lab_ip "$k-2")" "$(lab_ip "$k" | sed 's/\.2$/.3/')"
  r=$(lab_ns "$k-r")
  same "$k-2: shares the router" "$(lab_ns "$k-2-r")" "$r"
  for h in "$k" "$k-2"; do
    lab_udp_recv "$h" 43000 4 "$remote" 43001 >"$tmp/$h.n" &
    lab_wait_udp "$h" 43000 || bad "$h: receiver did not start"
    sleep 0.2
  done
  p1=$(public_port "$r" "$(lab_ip "$k")" 43000 "$remote" 43001)
  p2=$(public_port "$r" "$(lab_ip "$k-2")" 43000 "$remote" 43001)
  same "$k: first host keeps its port" "$p1" 43000
  if [[ $p2 =~ ^[0-9]+$ ]] && [ "$p2" != 43000 ]; then ok "$k-2: second host got port $p2"; else bad "$k-2: public port '$p2'"; fi
  case $k in
    addr) from=open ;;     # the remote IP the mappings sent to, another port
    fullcone) from=s2 ;;   # anyone
    cone) from=open ;;     # must not get in (port-dependent filtering)
  esac
  lab_udp_send "$from" 43002 "$(lab_pubip "$k")" "$p2"
  lab_udp_send "$from" 43002 "$(lab_pubip "$k")" "$p1"
  lab_udp_send "$from" 43002 "$(lab_pubip "$k")" "$p1"
  [ "$k" = addr ] && lab_udp_send s2 43002 "$(lab_pubip "$k")" "$p1"  # not sent to: stays out
  wait
  if [ "$k" = cone ]; then want1=0 want2=0; else want1=2 want2=1; fi
  same "$k: datagrams from $from to the first host's mapping" "$(cat "$tmp/$k.n")" $want1
  same "$k-2: datagrams from $from to the second host's mapping" "$(cat "$tmp/$k-2.n")" $want2
done
rm -rf "$tmp"
# A stacked NAT takes joined hosts on its inner LAN.
lab_nat_join double double-2
same "double-2: shares the outer router" "$(lab_ns double-2-r2)" "$(lab_ns double-r2)"
lab_udp_send double-2 0 "$LAB_S1" 9
sleep 0.2
grep -q "src=$(lab_ip double-2) " <(lab_conntrack double-2) && ok "double-2: its traffic goes through the shared NAT" \
  || bad "double-2: no conntrack entry for $(lab_ip double-2)"

echo "== two NATs of a kind are independent (symmetric port counters)"
lab_nat_host symmetric sym-a
lab_nat_host symmetric sym-b
for h in sym-a sym-b; do
  lab_udp_send "$h" 44000 "$LAB_S1" 9
  lab_udp_send "$h" 44000 "$LAB_S2" 9
done
lab_udp_send sym-a 44000 "$LAB_S1_ALT" 9
sleep 0.2
for h in sym-a sym-b; do
  r=$(lab_ns "$h-r")
  got=$(for d in "$LAB_S1" "$LAB_S2" "$LAB_S1_ALT"; do public_port "$r" "$(lab_ip "$h")" 44000 "$d" 9; done | tr '\n' ' ')
  [ "$h" = sym-a ] && want="20000 20001 20002 " || want="20000 20001 none "
  same "$h: ports of its first mappings" "$got" "$want"
done

echo "== lab_loss: packets crossing the public segment are lost at random"
tmp=$(mktemp -d "/tmp/$LAB_ID-test.XXXXXX")
# count_through PCT: datagrams (of 200) from the cone host to the open host.
count_through() {
  lab_loss "$1"
  local pid
  lab_udp_recv open 46000 8 >"$tmp/n" &
  pid=$!
  lab_wait_udp open 46000 || bad "receiver did not start"
  lab_udp_send cone 0 "$(lab_ip open)" 46000 64 200 5
  wait "$pid" || true
  cat "$tmp/n"
}
got=$(count_through 30)
if [ "$got" -ge 100 ] && [ "$got" -le 180 ]; then ok "lab_loss 30: $got of 200 arrived (10..50% lost)"; else
  bad "lab_loss 30: $got of 200 arrived, want 100..180"; fi
same "lab_loss 0: datagrams of 200 that arrived" "$(count_through 0)" 200

echo "== lab_delay: RTT between two NATed hosts grows by 2*MS"
# The echo server is behind the full-cone NAT (its mapping, opened towards
# s1, lets anyone in); the client behind the cone NAT.
rtt_to_fullcone() { # rtt_to_fullcone COUNT: "sent received min median max"
  local pid
  lab_udp_echo fullcone 47000 15 "$LAB_S1" 9 >/dev/null &
  pid=$!
  lab_wait_udp fullcone 47000 || bad "echo server did not start"
  sleep 0.2
  lab_udp_rtt cone "$(lab_pubip fullcone)" 47000 "$1"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
if [ ! -x "$LAB_NP_DELAY" ]; then
  echo "  skip lab_delay: no np_delay (pass its path; it needs libnetfilter_queue)"
else
  read -r _ n0 _ med0 _ <<<"$(rtt_to_fullcone 10)"
  same "no delay: echoes received" "$n0" 10
  ms=50
  rc=0
  lab_delay $ms || rc=$?
fi
if [ ! -x "$LAB_NP_DELAY" ]; then :
elif [ "$rc" = 77 ]; then
  echo "  skip lab_delay: no way to queue packets here (see lab_delay's message)"
else
  [ "$rc" = 0 ] || bad "lab_delay $ms failed ($rc)"
  nd=$(ip netns list | grep -c "^$LAB_ID-" || true)
  ok "lab_delay $ms: ${#LAB_DELAY_PIDS[@]} np_delay processes for ${#LAB_PUBLINKS[@]} public links ($nd namespaces)"
  read -r _ n1 min1 med1 max1 <<<"$(rtt_to_fullcone 10)"
  same "lab_delay $ms: echoes received" "$n1" 10
  if [ "$n1" -gt 0 ] && awk -v m="$min1" -v x="$max1" -v d=$ms 'BEGIN { exit !(m >= 2 * d && x < 2 * d + 100) }'; then
    ok "lab_delay $ms: RTT min $min1 ms, median $med1 ms, max $max1 ms (no delay: median $med0 ms)"
  else
    bad "lab_delay $ms: RTT min $min1, median $med1, max $max1 ms; want $((2 * ms))..$((2 * ms + 100)) ms"
  fi
  # Hosts made after lab_delay are delayed too.
  lab_nat_host open late
  lab_udp_echo late 47002 6 >/dev/null &
  echo_pid=$!
  lab_wait_udp late 47002 || bad "echo server did not start"
  read -r _ n2 min2 _ <<<"$(lab_udp_rtt open "$(lab_ip late)" 47002 3)"
  kill "$echo_pid" 2>/dev/null || true; wait "$echo_pid" 2>/dev/null || true
  if [ "$n2" = 3 ] && awk -v m="$min2" -v d=$ms 'BEGIN { exit !(m >= 2 * d) }'; then
    ok "a host made after lab_delay: RTT min $min2 ms"; else bad "host made after lab_delay: $n2 of 3 echoes, min $min2 ms"; fi
  # Fail-open: with the fullcone router's np_delay killed, traffic still
  # flows (undelayed there, so the RTT drops to about MS).
  fr=$(lab_ns fullcone-r)
  kill -KILL "${LAB_DELAY_PIDS[$fr]}"
  sleep 0.2
  read -r _ n3 min3 _ <<<"$(rtt_to_fullcone 5)"
  if [ "$n3" = 5 ] && awk -v m="$min3" -v d=$ms 'BEGIN { exit !(m >= d && m < 2 * d) }'; then
    ok "np_delay killed in one NAT: traffic still flows (bypass), RTT min $min3 ms"
  else
    bad "np_delay killed in one NAT: $n3 of 5 echoes, RTT min $min3 ms (want 5, $ms..$((2 * ms)))"
  fi
  lab_delay 0
  left=0
  for ns in $(lab_leftovers); do
    for pid in $(ip netns pids "$ns"); do
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = np_delay ] && left=$((left + 1))
    done
  done
  same "lab_delay 0: np_delay processes left in the lab" "$left" 0
  read -r _ n4 _ med4 _ <<<"$(rtt_to_fullcone 5)"
  if [ "$n4" = 5 ] && awk -v m="$med4" -v d=$ms 'BEGIN { exit !(m < d) }'; then ok "lab_delay 0: RTT median $med4 ms"
  else bad "lab_delay 0: $n4 of 5 echoes, median $med4 ms"; fi
fi
rm -rf "$tmp"

lab_down
[ -z "$(lab_leftovers)" ] && ok "lab_down left no namespace" || bad "left: $(lab_leftovers)"

echo "== cleanup on error and on SIGTERM"
for how in error term; do
  (
    lab_init  # ID nplab<this subshell's PID>
    echo "$LAB_ID" >"/tmp/nplab$$-$how.id"
    lab_servers
    lab_nat_host cone h
    lab_spawn h /dev/null sleep 300
    echo "$LAB_LAST_PID" >"/tmp/nplab$$-$how.pid"
    if [ "$how" = error ]; then false; fi  # set -e: the subshell exits 1 here
    wait "$LAB_LAST_PID"  # (a foreground sleep would hold off the TERM trap)
  ) 2>"/tmp/nplab$$-$how.err" &
  sub=$!
  for ((n = 0; n < 50; n++)); do [ -s "/tmp/nplab$$-$how.pid" ] && break; sleep 0.1; done
  sleeper=$(cat "/tmp/nplab$$-$how.pid" 2>/dev/null || echo "")
  id=$(cat "/tmp/nplab$$-$how.id" 2>/dev/null || echo "none")
  [ "$how" = term ] && kill -TERM "$sub" 2>/dev/null
  rc=0
  wait "$sub" || rc=$?
  left=$(ip netns list | awk '{print $1}' | grep -E "^$id-" || true)
  [ -z "$left" ] && ok "$how (exit $rc): no namespace left" || { bad "$how: left $left"; cat "/tmp/nplab$$-$how.err"; }
  if [ -n "$sleeper" ] && ! gone "$sleeper"; then
    bad "$how: process $sleeper started in the lab still runs"
    kill -KILL "$sleeper" 2>/dev/null || true
  else
    ok "$how: process started in the lab is gone"
  fi
  rm -f "/tmp/nplab$$-$how.pid" "/tmp/nplab$$-$how.id" "/tmp/nplab$$-$how.err"
done

echo "== a lab killed with SIGKILL is reaped by the next lab_init"
(
  lab_init
  echo "$LAB_ID" >"/tmp/nplab$$-kill.id"
  lab_servers
  lab_spawn s2 /dev/null sleep 300
  echo "$LAB_LAST_PID" >"/tmp/nplab$$-kill.pid"
  wait "$LAB_LAST_PID"
) &
sub=$!
for ((n = 0; n < 50; n++)); do [ -s "/tmp/nplab$$-kill.pid" ] && break; sleep 0.1; done
id=$(cat "/tmp/nplab$$-kill.id")
sleeper=$(cat "/tmp/nplab$$-kill.pid")
kill -KILL "$sub"
{ wait "$sub" || true; } 2>/dev/null
ip netns list | grep -q "^$id-" && ok "SIGKILLed lab left its namespaces (expected)" || bad "no namespaces of $id to reap?"
lab_init
lab_down
left=$(ip netns list | awk '{print $1}' | grep -E "^$id-" || true)
[ -z "$left" ] && ok "stale namespaces of $id reaped" || bad "stale namespaces not reaped: $left"
if ! gone "$sleeper"; then
  bad "process $sleeper of the killed lab still runs"
  kill -KILL "$sleeper" 2>/dev/null || true
else
  ok "process of the killed lab is gone"
fi
rm -f "/tmp/nplab$$-kill.id" "/tmp/nplab$$-kill.pid"

new_links=$(comm -13 <(echo "$links_before") <(root_links))
[ -z "$new_links" ] && ok "root namespace links as before" || bad "root namespace got: $new_links"

if [ "$fails" -ne 0 ]; then echo "FAIL: $fails check(s)"; exit 1; fi
echo "PASS: lab self-test"
