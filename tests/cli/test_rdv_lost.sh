#!/usr/bin/env bash
# The rendezvous connection lost in the middle of a call: a TCP proxy between
# the caller and the server swallows the caller's first OFFER frame and cuts
# that connection, as a server restart or a network change would between the
# offer leaving and being forwarded. The caller re-registers through the
# proxy and sends its offer again (freshly signed), so the call connects in
# about a reconnect's time; it used to wait silently for its whole --timeout
# and fail. On loopback with real servers.
# Usage: test_rdv_lost.sh PATH/TO/natpunch
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../interop/lib.sh"
for t in jq python3 timeout; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  { wait; } 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
expect() { # expect WHAT WANT GOT
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got '$3', want '$2'"; fails=$((fails + 1)); fi
}

for k in a b; do "$NP" keygen "$tmp/$k" >/dev/null 2>&1 || np_fail "keygen $k"; done
B=$("$NP" id --key "$tmp/b")
base=$(np_pick_ports 4) || np_fail "no free ports"
rdv=127.0.0.1:$base stun1=127.0.0.1:$((base + 1)) stun2=127.0.0.2:$((base + 1)) proxy=$((base + 3))
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start"
"$NP" discovery-server --listen "$stun1" --alt-ip 127.0.0.2 --alt-port $((base + 2)) --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"

# The proxy: frames are a 4-byte big-endian length and a body whose second
# byte is the type (OFFER = 5). The first OFFER from a client is dropped and
# that client's connection closed; everything else is passed on.
cat >"$tmp/proxy.py" <<'PY'
import socket, struct, sys, threading
lport, rport = int(sys.argv[1]), int(sys.argv[2])
state = {"dropped": 0}
def pipe(src, dst, inspect):
    buf = b""
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            if not inspect:
                dst.sendall(d); continue
            buf += d
            while len(buf) >= 4:
                n = struct.unpack(">I", buf[:4])[0]
                if len(buf) < 4 + n:
                    break
                frame, buf = buf[:4 + n], buf[4 + n:]
                if n >= 2 and frame[5] == 5 and state["dropped"] == 0:
                    state["dropped"] = 1
                    print("proxy: dropped an OFFER and cut the connection", flush=True)
                    raise ConnectionError
                dst.sendall(frame)
    except Exception:
        pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except Exception: pass
        s.close()
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", lport)); ls.listen(8)
print("proxy: listening", flush=True)
while True:
    c, _ = ls.accept()
    s = socket.create_connection(("127.0.0.1", rport))
    threading.Thread(target=pipe, args=(c, s, True), daemon=True).start()
    threading.Thread(target=pipe, args=(s, c, False), daemon=True).start()
PY
python3 "$tmp/proxy.py" "$proxy" "$base" >"$tmp/proxy.log" 2>&1 & pids+=($!)
np_wait_log "$tmp/proxy.log" "listening" "${pids[-1]}" || np_fail "proxy did not start"

common=(-d "$stun1" -d "$stun2" --json --no-portmap)
"$NP" listen -r "$rdv" "${common[@]}" --key "$tmp/b" </dev/null >"$tmp/b.out" 2>"$tmp/b.log" &
listener=$!; pids+=($listener)
np_wait_log "$tmp/b.log" '"event":"listening"' $listener 15 || np_fail "listener did not register: $(cat "$tmp/b.log")"
start=$(date +%s%N)
echo hello | timeout 40 "$NP" connect -r "127.0.0.1:$proxy" "${common[@]}" --key "$tmp/a" --peer "$B" \
  --timeout 20 >"$tmp/a.out" 2>"$tmp/a.log"
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect "the proxy cut the caller's connection after its offer" 1 "$(grep -c dropped "$tmp/proxy.log")"
expect "the caller connects anyway (exit 0)" 0 "$rc"
expect "connected event" direct "$(grep '"event":"connected"' "$tmp/a.log" | tail -n 1 | jq -r .path)"
# A reconnect is a backoff away (under 2 s); the timeout is 20 s.
[ "$ms" -lt 8000 ]; expect "well before the 20 s timeout (${ms} ms)" 0 $?
expect "the caller said the connection was lost mid-call" 1 "$(grep -c 'lost during a call' "$tmp/a.log")"
if [ "$fails" -ne 0 ]; then
  echo "--- caller"; cat "$tmp/a.log"; echo "--- listener"; cat "$tmp/b.log"
  exit 1
fi
echo PASS
