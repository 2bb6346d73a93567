#!/usr/bin/env bash
# A hostile peer can neither aim nor hijack a listener (issue 9).
#
# Aiming. bob listens behind a cone NAT; carol is another host on bob's LAN,
# victim a host on the public segment. eve, a hostile caller on the public
# segment (hostile_peer), offers bob candidates naming victim and carol:
#   1. only theirs (mapped, private, port-mapping candidates): bob must
#      decline at once and send nothing;
#   2. its own public IP as a sequential NAT (so bob runs the sweep of the
#      prediction) mixed with victim's and carol's addresses: bob punches,
#      at eve only.
# victim and carol count every UDP packet that reaches them (a raw socket):
# zero wanted; eve's count shows bob did punch.
#
# Hijack. olive listens on the public segment (no NAT: anything reaches
# her), dave calls her from behind a cone NAT. A sniffer on the public
# switch captures dave's NOMINATE; mallory, a third host, replays it to
# olive once they are connected, from its own address and spoofed from
# another port of dave's public IP. The path must stay: olive's datagrams
# still reach dave (and none reach mallory), dave's still reach olive.
#
# Usage: test_hostile.sh NATPUNCH_CLI HOSTILE_PEER      (exit 77 = skipped)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"

cli=${1:?usage: $0 NATPUNCH_CLI HOSTILE_PEER}
hp=${2:?usage: $0 NATPUNCH_CLI HOSTILE_PEER}
for f in cli hp; do
  case "${!f}" in /*) ;; *) printf -v "$f" '%s' "$PWD/${!f}" ;; esac
  [ -x "${!f}" ] || { echo "FAIL: ${!f} is not an executable"; exit 1; }
done
lab_require_root

lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-hostile.XXXXXX")
# shellcheck disable=SC2317  # called from the trap
on_exit() { exec 7>&- 8>&- 9>&- 2>/dev/null; lab_down; rm -rf "$logs"; }
trap on_exit EXIT
lab_servers
lab_server_host rdv 203.0.113.4
lab_server_host victim 203.0.113.5
lab_server_host mallory 203.0.113.6
lab_server_host eve 203.0.113.7
lab_nat_host cone bob
lab_nat_join bob carol
lab_nat_host open olive
lab_nat_host cone dave
lab_start_natpunch_servers "$cli" "$logs" || exit 1
lab_spawn rdv "$logs/rdv.log" "$cli" rendezvous-server --listen 203.0.113.4:7000
rdv_pid=$LAB_LAST_PID
for ((n = 0; n < 50; n++)); do
  lab_exec rdv ss -Hltn "sport = :7000" 2>/dev/null | grep -q . && break
  kill -0 "$rdv_pid" 2>/dev/null || break
  sleep 0.1
done
servers=(-r 203.0.113.4:7000 -d "$LAB_S1:3478" -d "$LAB_S2:3478" --json --no-portmap)
for k in bob eve olive dave; do
  "$cli" keygen "$logs/$k.key" >/dev/null 2>&1 || { echo "FAIL: keygen"; exit 1; }
done
B=$("$cli" id --key "$logs/bob.key") O=$("$cli" id --key "$logs/olive.key")

# Counts the UDP datagrams that reach a host (any port) for SECONDS, from
# anyone or only from FROM_IP; prints the count.
# shellcheck disable=SC2016
counter='
import socket, sys, time, select
t, src = float(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
open(sys.argv[3] if len(sys.argv) > 3 else "/dev/null", "w").close()
n, end = 0, time.time() + t
while True:
    left = end - time.time()
    if left <= 0: break
    if select.select([s], [], [], left)[0]:
        pkt, (ip, _) = s.recvfrom(65535)
        if not src or ip == src: n += 1
print(n)
'
wait_for() { # wait_for FILE PATTERN TENTHS
  local n
  for ((n = 0; n < $3; n++)); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
wait_file() { # wait_file FILE TENTHS
  local n
  for ((n = 0; n < $2; n++)); do [ -e "$1" ] && return 0; sleep 0.1; done
  return 1
}
event() { grep "\"event\":\"$2\"" "$1" | tail -n 1; }

# ---- aiming ----------------------------------------------------------------
vip=$(lab_ip victim) cip=$(lab_ip carol) bip=$(lab_ip bob)
echo "aiming: bob ($bip behind $(lab_pubip bob)) listens; eve (203.0.113.7) offers victim ($vip)" \
  "and carol ($cip, on bob's LAN)"
lab_spawn bob "$logs/bob.log" "$cli" listen "${servers[@]}" -v --keep --key "$logs/bob.key" </dev/null
bob_pid=$LAB_LAST_PID
wait_for "$logs/bob.log" '"event":"listening"' 150 || { echo "FAIL: bob did not register"; cat "$logs/bob.log"; exit 1; }
lab_exec victim timeout 30 "$LAB_PY" -c "$counter" 12 "" "$logs/v.up" >"$logs/victim.count" 2>&1 &
vpid=$!
lab_exec carol timeout 30 "$LAB_PY" -c "$counter" 12 "" "$logs/c.up" >"$logs/carol.count" 2>&1 &
cpid=$!
lab_exec eve timeout 30 "$LAB_PY" -c "$counter" 10 "$(lab_pubip bob)" "$logs/e.up" >"$logs/eve.count" 2>&1 &
epid=$!
for f in v c e; do wait_file "$logs/$f.up" 50; done

lab_exec eve timeout 10 "$hp" 203.0.113.4:7000 "$logs/eve.key" "$B" 2000 \
  "m=$vip:3478" "m=$vip:3479" "h=$cip:5000" "h=$vip:22" "p=$vip:8080" "d=1" >"$logs/eve1.out" 2>&1
sed 's/^/    eve: /' "$logs/eve1.out"
lab_check "offer 1 (third parties only) is declined" \
  "$(grep -c '^answer error 400' "$logs/eve1.out")" 1
lab_exec eve timeout 10 "$hp" 203.0.113.4:7000 "$logs/eve.key" "$B" 6000 \
  "m=self:40000" "m=$vip:40001" "h=$cip:5000" "h=$vip:5000" "p=$cip:80" "d=1" >"$logs/eve2.out" 2>&1
sed 's/^/    eve: /' "$logs/eve2.out"
lab_check "offer 2 (eve's own IP among them) is answered" \
  "$(grep -c '^answer candidates' "$logs/eve2.out")" 1
wait "$vpid" "$cpid" "$epid"
echo "    packets at victim $(cat "$logs/victim.count"), at carol $(cat "$logs/carol.count")," \
  "at eve from bob $(cat "$logs/eve.count")"
lab_check "victim (public segment) received nothing" "$(cat "$logs/victim.count")" 0
lab_check "carol (bob's LAN) received nothing" "$(cat "$logs/carol.count")" 0
lab_check "bob did punch, toward eve" "$(($(cat "$logs/eve.count") > 0))" 1
grep -E 'punch: (callee|round|connected|failed)' "$logs/bob.log" | jq -r .message 2>/dev/null | head -n 6 |
  sed 's/^/    bob: /'
kill "$bob_pid" 2>/dev/null

# ---- hijack -----------------------------------------------------------------
oip=$(lab_ip olive) dpub=$(lab_pubip dave)
echo "hijack: olive ($oip, no NAT) listens, dave (behind $dpub) calls; mallory replays"
# The sniffer: every frame crossing the public switch; the first request
# with our NOMINATE attribute (0xC001) from dave's NAT to olive is kept.
sniffer='
import socket, struct, sys, time
src, dst, out = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.settimeout(1)
open(out + ".up", "w").close()
end = time.time() + 20
while time.time() < end:
    try: f = s.recv(65535)
    except socket.timeout: continue
    if len(f) < 42 or f[12:14] != b"\x08\x00" or f[23] != 17: continue
    ihl = (f[14] & 15) * 4
    ip, udp = f[14:], f[14 + ihl:]
    if socket.inet_ntoa(ip[12:16]) != src or socket.inet_ntoa(ip[16:20]) != dst: continue
    sport, dport, ulen = struct.unpack("!HHH", udp[:6])
    p = udp[8:ulen]
    if len(p) < 20 or p[0:2] != b"\x00\x01": continue
    off = 20
    while off + 4 <= len(p):
        t, l = struct.unpack("!HH", p[off:off + 4])
        if t == 0xC001:
            open(out, "w").write("%d %d %s\n" % (sport, dport, p.hex()))
            sys.exit(0)
        off += 4 + ((l + 3) & ~3)
'
ip netns exec "$LAB_ID-pub" timeout 25 "$LAB_PY" -c "$sniffer" "$dpub" "$oip" "$logs/nom" 2>"$logs/sniff.err" &
spid=$!
wait_file "$logs/nom.up" 50 || true
mkfifo "$logs/o.in" "$logs/d.in"
exec 7<>"$logs/o.in" 8<>"$logs/d.in"
lab_spawn olive "$logs/olive.log" sh -c "exec \"\$0\" \"\$@\" <\"$logs/o.in\" >\"$logs/olive.out\" 7>&- 8>&-" \
  "$cli" listen "${servers[@]}" --key "$logs/olive.key"
wait_for "$logs/olive.log" '"event":"listening"' 150 || { echo "FAIL: olive did not register"; cat "$logs/olive.log"; exit 1; }
lab_spawn dave "$logs/dave.log" sh -c "exec \"\$0\" \"\$@\" <\"$logs/d.in\" >\"$logs/dave.out\" 7>&- 8>&-" \
  "$cli" connect "${servers[@]}" --key "$logs/dave.key" --peer "$O" --timeout 15
wait_for "$logs/dave.log" '"event":"connected"' 150
wait_for "$logs/olive.log" '"event":"connected"' 50
remote_before=$(event "$logs/olive.log" connected | jq -r .remote)
wait "$spid"
lab_check "the nomination was captured" "$([ -s "$logs/nom" ] && echo 1)" 1
if [ -s "$logs/nom" ]; then
  read -r csport cdport chex <"$logs/nom"
  # mallory replays it three times from itself and three times spoofed from
  # another port of dave's public IP (raw socket, own IP header), while it
  # counts what olive sends it.
  replay='
import socket, struct, sys, time
src, sport, dst, dport, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5])
udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                  socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(3):
    s.sendto(iph + udp, (dst, 0))
    time.sleep(0.2)
'
  mip=$(lab_ip mallory)
  lab_exec mallory timeout 10 "$LAB_PY" -c "$counter" 4 "$oip" "$logs/m.up" >"$logs/mallory.count" 2>&1 &
  mpid=$!
  wait_file "$logs/m.up" 50 || true
  lab_exec mallory "$LAB_PY" -c "$replay" "$mip" 5000 "$oip" "$cdport" "$chex"
  lab_exec mallory "$LAB_PY" -c "$replay" "$dpub" $((csport + 1)) "$oip" "$cdport" "$chex"
  sleep 1.5
  echo "olive after the replay" >&7
  echo "dave after the replay" >&8
  wait_for "$logs/dave.out" "olive after the replay" 50
  wait_for "$logs/olive.out" "dave after the replay" 50
  wait "$mpid"
  lab_check "olive's path is where it was" "$(grep -c 'moved the path' "$logs/olive.log")" 0
  lab_check "olive's data still reaches dave" "$(grep -c 'olive after the replay' "$logs/dave.out")" 1
  lab_check "dave's data still reaches olive" "$(grep -c 'dave after the replay' "$logs/olive.out")" 1
  lab_check "mallory received nothing from olive" "$(cat "$logs/mallory.count")" 0
  echo "    olive's remote: $remote_before"
fi
exec 7>&- 8>&-

[ "$LAB_FAILS" -eq 0 ] && { echo "PASS"; exit 0; }
for f in bob olive dave; do echo "--- $f"; tail -n 15 "$logs/$f.log"; done
echo "FAIL: $LAB_FAILS check(s)"
exit 1
