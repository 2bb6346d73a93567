#!/usr/bin/env bash
# send / receive across the lab's NATs, interrupted and resumed: alice
# behind a cone NAT runs `natpunch receive --accept-from bob`, bob behind a
# symmetric NAT `send`s a 50 MB file at 10 % loss and 100 ms RTT. Once a few
# MB of alice's .part file are on disk, bob is killed (SIGKILL: no goodbye,
# alice sees the peer vanish and keeps the .part). Both run again: the
# transfer resumes where the .part ends (the file events say "resumed" with
# that offset; bob's summary counts fewer bytes sent than the file), and the
# file alice ends with has the source's SHA-256.
# Usage: test_transfer.sh NATPUNCH_CLI [NP_DELAY]   (exit 77 = skipped)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.sh
source "$here/lab.sh"
# shellcheck source=lab_peers.sh
source "$here/lab_peers.sh"

cli=${1:?usage: $0 NATPUNCH_CLI [NP_DELAY]}
LAB_NP_DELAY=${2:-${LAB_NP_DELAY:-}}
case "$cli" in /*) ;; *) cli=$PWD/$cli ;; esac
[ -x "$cli" ] || { echo "FAIL: $cli is not an executable"; exit 1; }
lab_require_root
for t in sha256sum jq bc; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done

lab_init
logs=$(mktemp -d "/tmp/${LAB_ID}-transfer.XXXXXX")
chmod 755 "$logs"
# shellcheck disable=SC2317  # called from the trap
on_exit() { lab_down; rm -rf "$logs"; }
trap on_exit EXIT
lab_two_peers "$cli" "$logs" || exit 1

wait_pid() { # wait_pid PID SEC: bounded wait; sets RC (137 when it had to be killed)
  local n
  for ((n = 0; n < $2 * 10; n++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
  RC=0
  { wait "$1"; } 2>/dev/null || RC=$? # no "Killed" line from the shell
}
dump() {
  for f in "$logs"/alice*.err "$logs"/bob*.err; do
    [ -f "$f" ] || continue
    echo "--- $(basename "$f")"
    grep -v '"level":"debug"' "$f" | tail -n 15 | sed 's/^/    /'
  done
}
event() { grep "\"event\":\"$2\"" "$1" | tail -n 1; }

lab_loss 10
lab_delay 50 || { rc=$?; [ "$rc" = 77 ] && { echo "SKIP: no latency emulation here"; exit 77; }; exit 1; }
echo "public segment: 10 % loss, +50 ms per crossing (NAT to NAT: 100 ms RTT)"

size=$((50 * 1024 * 1024))
mkdir -p "$logs/in"
head -c "$size" /dev/urandom >"$logs/big.bin"
chmod 0644 "$logs/big.bin"
part="$logs/in/.big.bin.natpunch-part"
# alice gives up on a silent peer after 5 s (--peer-timeout), so the killed
# sender's session ends soon.
receive() { # receive RUN: alice's receiver, its log alice.RUN.err; sets APID
  lab_spawn alice "$logs/alice.$1.err" timeout 300 "$cli" receive "${common[@]}" --key "$logs/alice.key" \
    --accept-from "$B" --peer-timeout 5 "$logs/in"
  APID=$LAB_LAST_PID
  lab_wait_event "$logs/alice.$1.err" listening 15 "$APID" || { echo "FAIL: alice did not register ($1)"; dump; exit 1; }
}

# Run 1: bob runs natpunch itself (no timeout wrapper), so that SIGKILL
# reaches the sender and nothing else.
receive 1
start=$(date +%s.%N)
lab_spawn bob "$logs/bob.1.err" "$cli" send "${common[@]}" --key "$logs/bob.key" --peer "$A" "$logs/big.bin"
bpid=$LAB_LAST_PID
cut_at=$((6 * 1024 * 1024))
for ((n = 0; n < 1200; n++)); do
  [ "$(stat -c %s "$part" 2>/dev/null || echo 0)" -ge "$cut_at" ] && break
  kill -0 "$bpid" 2>/dev/null || break
  sleep 0.1
done
had=$(stat -c %s "$part" 2>/dev/null || echo 0)
kill -KILL "$bpid" 2>/dev/null
wait_pid "$bpid" 5
t1=$(echo "$(date +%s.%N) - $start" | bc)
printf 'run 1: bob killed after %.1f s, with %d bytes in alice'"'"'s .part\n' "$t1" "$had"
lab_check "bob was still sending when killed (137 = SIGKILL)" "$RC" 137
lab_check "the .part had a few MB when bob was killed" "$([ "$had" -ge "$cut_at" ] && [ "$had" -lt "$size" ] && echo yes || echo "no ($had)")" yes
wait_pid "$APID" 30
lab_check "alice's receive exits 1 (the peer vanished)" "$RC" 1
lab_check "alice says the peer vanished" "$(jq -r .cause <<<"$(event "$logs/alice.1.err" closed)")" vanished
lab_check "alice's file event: failed, what arrived kept" \
  "$(jq -r '"\(.status) \(.reason | test("kept"))"' <<<"$(event "$logs/alice.1.err" file)")" "failed true"
kept=$(stat -c %s "$part" 2>/dev/null || echo 0)
lab_check "the .part is kept for a resume" "$([ "$kept" -ge "$had" ] && echo yes || echo "no ($kept)")" yes
lab_check "no big.bin yet" "$([ -e "$logs/in/big.bin" ] && echo yes || echo no)" no

# Run 2: the same file again resumes from the .part.
receive 2
start=$(date +%s.%N)
lab_spawn bob "$logs/bob.2.err" timeout 400 "$cli" send "${common[@]}" --key "$logs/bob.key" --peer "$A" "$logs/big.bin"
bpid=$LAB_LAST_PID
wait_pid "$bpid" 400
brc=$RC
wait_pid "$APID" 30
arc=$RC
t2=$(echo "$(date +%s.%N) - $start" | bc)
lab_check "bob's second send exits 0" "$brc" 0
lab_check "alice's second receive exits 0" "$arc" 0
bf=$(event "$logs/bob.2.err" file) af=$(event "$logs/alice.2.err" file)
lab_check "bob's file event: resumed" "$(jq -r .status <<<"$bf")" resumed
lab_check "alice's file event: resumed" "$(jq -r .status <<<"$af")" resumed
off=$(jq -r .offset <<<"$af")
lab_check "alice resumed at the kept .part's length ($kept)" "$off" "$kept"
lab_check "bob was told the same offset" "$(jq -r .offset <<<"$bf")" "$off"
sent=$(jq -r .bytes_sent <<<"$(event "$logs/bob.2.err" summary)")
lab_check "run 2 sent fewer bytes than the file (bytes_sent $sent < $size)" \
  "$([ "$sent" -lt "$size" ] && echo yes || echo no)" yes
lab_check "run 2 sent at least the rest of the file ($((size - off)))" \
  "$([ "$sent" -ge $((size - off)) ] && echo yes || echo no)" yes
lab_check "big.bin's SHA-256 equals the source's" "$(sha256sum <"$logs/in/big.bin" 2>/dev/null | cut -d' ' -f1)" \
  "$(sha256sum <"$logs/big.bin" | cut -d' ' -f1)"
lab_check "its mode is the source's" "$(stat -c %a "$logs/in/big.bin" 2>/dev/null)" 644
lab_check "no .part or sidecar left" "$(ls -A "$logs/in" | tr '\n' ' ')" "big.bin "
printf 'run 2: the rest (%d of %d bytes, from offset %d) in %.1f s (%.2f MB/s); bob: %s\n' "$((size - off))" \
  "$size" "$off" "$t2" "$(echo "($size - $off) / $t2 / 1000000" | bc -l)" "$(event "$logs/bob.2.err" summary)"

[ "$LAB_FAILS" -eq 0 ] && { echo "PASS"; exit 0; }
dump
echo "FAIL: $LAB_FAILS check(s)"
exit 1
