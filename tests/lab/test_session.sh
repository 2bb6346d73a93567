#!/usr/bin/env bash
# The QUIC session in the NAT lab: alice behind a cone NAT listens, bob
# behind a symmetric NAT calls her, both through the lab's discovery and
# rendezvous servers, and real work crosses the punched path:
#   pipe     20 MB bob -> alice and 2 MB alice -> bob through the byte pipe
#            (stdin to the peer's stdout), at 10 % loss and 100 ms RTT;
#            both checksums equal, both exit 0, the summary line printed
#   flush_caller, flush_callee
#            the same, with the conntrack table of one NAT (bob's symmetric
#            one, or alice's cone one) flushed in the middle of the
#            transfer: the NAT forgets the path and the rendezvous
#            connection, and the session must follow (QUIC migration) or
#            punch a new path (the re-punch) without losing a byte
#   forward  alice `listen --forward` to a TCP echo service on her host; bob
#            `connect --local`: 8 TCP connections at once, each 1 MB out and
#            back, each checked
#   ssh      sshd on alice's host (loopback only, port 2222); bob runs `ssh`
#            with `ProxyCommand natpunch connect %h` and an alias, and the
#            command's output comes back
# Usage: test_session.sh NATPUNCH_CLI SCENARIO [NP_DELAY]   (exit 77 = skipped)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"
# shellcheck source=lab_peers.sh
source "$here/lab_peers.sh"

cli=${1:?usage: $0 NATPUNCH_CLI pipe|flush_caller|flush_callee|forward|ssh [NP_DELAY]}
scenario=${2:?usage: $0 NATPUNCH_CLI pipe|flush_caller|flush_callee|forward|ssh [NP_DELAY]}
LAB_NP_DELAY=${3:-${LAB_NP_DELAY:-}}
case "$cli" in /*) ;; *) cli=$PWD/$cli ;; esac
[ -x "$cli" ] || { echo "FAIL: $cli is not an executable"; exit 1; }
lab_require_root
for t in sha256sum python3 jq; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
if [ "$scenario" = ssh ]; then
  for t in /usr/sbin/sshd ssh ssh-keygen; do
    command -v "$t" >/dev/null || { echo "SKIP: $t not installed (apt-get install openssh-server openssh-client)"; exit 77; }
  done
fi

lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-session.XXXXXX")
chmod 755 "$logs"
# shellcheck disable=SC2317  # called from the trap
on_exit() {
  lab_down
  [ -n "${KEEP_LOGS:-}" ] && cp -r "$logs" "$KEEP_LOGS" # for a look afterwards
  rm -rf "$logs"
}
trap on_exit EXIT
lab_two_peers "$cli" "$logs" || exit 1
[ "${VERBOSE:-0}" = 1 ] && common+=(--verbose)

dump() {
  for f in "$logs"/alice.err "$logs"/bob.err; do
    [ -f "$f" ] || continue
    echo "--- $(basename "$f")"
    grep -v '"level":"debug"' "$f" | tail -n 25 | sed 's/^/    /'
  done
}

impair() {
  lab_loss 10
  lab_delay 50 || { rc=$?; [ "$rc" = 77 ] && { echo "SKIP: no latency emulation here"; exit 77; }; exit 1; }
  echo "public segment: 10 % loss, +50 ms per crossing (NAT to NAT: 100 ms RTT)"
}

case "$scenario" in
pipe | flush_caller | flush_callee)
  impair
  head -c $((20 * 1024 * 1024)) /dev/urandom >"$logs/up.bin"
  head -c $((2 * 1024 * 1024)) /dev/urandom >"$logs/down.bin"
  lab_spawn alice "$logs/alice.err" sh -c "exec timeout 300 '$cli' listen ${common[*]} --key '$logs/alice.key' --allow $B <'$logs/down.bin' >'$logs/alice.out'"
  apid=$LAB_LAST_PID
  lab_wait_event "$logs/alice.err" listening 10 "$apid" || { echo "FAIL: alice did not register"; dump; exit 1; }
  start=$(date +%s.%N)
  lab_spawn bob "$logs/bob.err" sh -c "exec timeout 300 '$cli' connect ${common[*]} --key '$logs/bob.key' --peer $A <'$logs/up.bin' >'$logs/bob.out'"
  bpid=$LAB_LAST_PID
  if [ "$scenario" != pipe ]; then
    who=bob
    [ "$scenario" = flush_callee ] && who=alice
    # Flush once a few MB have arrived: the mapping is gone mid-transfer.
    for ((n = 0; n < 600; n++)); do
      [ "$(stat -c %s "$logs/alice.out" 2>/dev/null || echo 0)" -ge $((3 * 1024 * 1024)) ] && break
      kill -0 "$bpid" 2>/dev/null || break
      sleep 0.1
    done
    got=$(stat -c %s "$logs/alice.out" 2>/dev/null || echo 0)
    ip netns exec "${LAB_NS[$who-r]}" conntrack -F 2>/dev/null
    echo "flushed $who's NAT (conntrack -F) after $got bytes had arrived"
  fi
  brc=0 arc=0
  wait "$bpid" || brc=$?
  wait "$apid" || arc=$?
  took=$(echo "$(date +%s.%N) - $start" | bc)
  lab_check "bob exits 0" "$brc" 0
  lab_check "alice exits 0" "$arc" 0
  lab_check "20 MB bob -> alice byte-identical" "$(sha256sum <"$logs/alice.out")" "$(sha256sum <"$logs/up.bin")"
  lab_check "2 MB alice -> bob byte-identical" "$(sha256sum <"$logs/bob.out")" "$(sha256sum <"$logs/down.bin")"
  for who in alice bob; do
    lab_check "$who: one summary event" "$(grep -c '"event":"summary"' "$logs/$who.err")" 1
  done
  echo "summary (bob): $(grep '"event":"summary"' "$logs/bob.err" | head -n 1)"
  if [ "$scenario" != pipe ]; then
    echo "path events (bob): $(grep -c '"event":"path_changed"' "$logs/bob.err"), (alice): $(grep -c '"event":"path_changed"' "$logs/alice.err")"
  fi
  printf 'pipe: 22 MB in %.1f s\n' "$took"
  ;;
forward)
  # A TCP echo service on alice's own loopback: only the session reaches it.
  lab_spawn alice "$logs/echo.log" python3 -c '
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9000)); s.listen(64)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR); c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()'
  lab_spawn alice "$logs/alice.err" timeout 120 "$cli" listen "${common[@]}" --key "$logs/alice.key" --allow "$B" --forward 127.0.0.1:9000
  apid=$LAB_LAST_PID
  lab_wait_event "$logs/alice.err" listening 10 "$apid" || { echo "FAIL: alice did not register"; dump; exit 1; }
  lab_spawn bob "$logs/bob.err" timeout 120 "$cli" connect "${common[@]}" --key "$logs/bob.key" --peer "$A" --local 127.0.0.1:9100
  bpid=$LAB_LAST_PID
  lab_wait_event "$logs/bob.err" connected 30 "$bpid" || { echo "FAIL: bob did not connect"; dump; exit 1; }
  # 8 clients at once, each 1 MB of its own random bytes, echoed back.
  lab_exec bob timeout 90 python3 -c '
import hashlib, os, socket, sys, threading, time
ok = []
def one(i):
    data = os.urandom(1 << 20)
    c = socket.create_connection(("127.0.0.1", 9100), timeout=60)
    got = bytearray()
    def rd():
        while True:
            d = c.recv(65536)
            if not d: break
            got.extend(d)
    t = threading.Thread(target=rd); t.start()
    c.sendall(data); c.shutdown(socket.SHUT_WR); t.join(80)
    ok.append(hashlib.sha256(got).digest() == hashlib.sha256(data).digest())
t0 = time.time()
ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
[t.start() for t in ts]; [t.join(85) for t in ts]
print("forward: %d of 8 connections echoed 1 MB intact in %.1f s" % (sum(ok), time.time() - t0))
sys.exit(0 if sum(ok) == 8 else 1)' >"$logs/clients.out" 2>&1
  crc=$?
  cat "$logs/clients.out"
  lab_check "8 forwarded connections, data checked" "$crc" 0
  kill -INT "$bpid" 2>/dev/null
  brc=0
  wait "$bpid" || brc=$?
  lab_check "bob's connect --local ends on SIGINT (exit 1, interrupted)" "$brc" 1
  lab_wait_event "$logs/alice.err" closed 10 "$apid" || true
  lab_check "alice saw the session end" "$(grep -c '"event":"closed"' "$logs/alice.err")" 1
  ;;
ssh)
  # sshd on alice's loopback only, its own host key and one authorized key;
  # bob reaches it through the session: ProxyCommand natpunch connect %h,
  # with the servers and the alias "alice" from bob's config file.
  mkdir -p "$logs/sshd" "$logs/bobhome/.ssh" "$logs/bobcfg/natpunch"
  ssh-keygen -q -t ed25519 -N '' -f "$logs/sshd/host" || exit 1
  ssh-keygen -q -t ed25519 -N '' -f "$logs/bobhome/.ssh/id" || exit 1
  cp "$logs/bobhome/.ssh/id.pub" "$logs/sshd/authorized_keys"
  chmod 700 "$logs/sshd"
  chmod 600 "$logs/sshd/authorized_keys"
  mkdir -p /run/sshd
  cat >"$logs/sshd/config" <<EOF
ListenAddress 127.0.0.1:2222
HostKey $logs/sshd/host
AuthorizedKeysFile $logs/sshd/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
EOF
  lab_spawn alice "$logs/sshd.log" /usr/sbin/sshd -D -e -f "$logs/sshd/config"
  lab_spawn alice "$logs/alice.err" timeout 120 "$cli" listen "${common[@]}" --key "$logs/alice.key" --allow "$B" --keep --forward 127.0.0.1:2222
  apid=$LAB_LAST_PID
  lab_wait_event "$logs/alice.err" listening 10 "$apid" || { echo "FAIL: alice did not register"; dump; exit 1; }
  cat >"$logs/bobcfg/natpunch/config" <<EOF
rendezvous = 203.0.113.4:7000
discovery = $LAB_S1:3478
discovery = $LAB_S2:3478
key = $logs/bob.key
alias alice = $A
EOF
  cat >"$logs/bobhome/.ssh/config" <<EOF
Host alice
  User root
  IdentityFile $logs/bobhome/.ssh/id
  UserKnownHostsFile $logs/bobhome/.ssh/known_hosts
  StrictHostKeyChecking accept-new
  ProxyCommand env XDG_CONFIG_HOME=$logs/bobcfg $cli connect %h --no-portmap
EOF
  # The command prints the addresses of the host it runs on: alice's LAN
  # address proves it ran behind alice's NAT (bob's host has no such one).
  out=$(lab_exec bob timeout 60 env HOME="$logs/bobhome" ssh -F "$logs/bobhome/.ssh/config" -o BatchMode=yes alice 'ip -o -4 addr show; echo sum=$((6*7))' 2>"$logs/bob.err")
  src=$?
  echo "ssh said: $(echo "$out" | tr '\n' ' ' | cut -c1-300)"
  lab_check "ssh through ProxyCommand exits 0" "$src" 0
  lab_check "the command ran on alice's host ($(lab_ip alice))" "$(echo "$out" | grep -c " $(lab_ip alice)/")" 1
  lab_check "its output came back whole" "$(echo "$out" | grep -c '^sum=42$')" 1
  ;;
*)
  echo "usage: $0 NATPUNCH_CLI pipe|flush_caller|flush_callee|forward|ssh" >&2
  exit 2
  ;;
esac

[ "$LAB_FAILS" -eq 0 ] && { echo "PASS"; exit 0; }
dump
echo "FAIL: $LAB_FAILS check(s)"
exit 1
