#!/usr/bin/env bash
# natpunch send / receive end to end on loopback, through a real rendezvous
# server and discovery servers: one file and several files arrive
# byte-identical under their names with their permission bits; JSON events
# (offer, progress, file, summary) parse; a receiver with no terminal and
# no --accept-from refuses the offer and writes nothing; on a terminal it
# asks, and "y" takes the files, "n" refuses them; an existing file is
# refused without --force and replaced with it; names the receiver would
# refuse cannot even be offered (usage error), nor can a bad DIR be given;
# a `listen` peer takes no files; exit codes as the --help texts say.
# Usage: test_transfer.sh PATH/TO/natpunch
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/../interop/lib.sh"
for t in jq ss timeout sha256sum; do
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
event() { grep "\"event\":\"$2\"" "$1" | tail -n 1; }
sum() { sha256sum <"$1" | cut -d' ' -f1; }

for k in a b; do "$NP" keygen "$tmp/$k" >/dev/null 2>&1 || np_fail "keygen $k"; done
A=$("$NP" id --key "$tmp/a") B=$("$NP" id --key "$tmp/b")

base=$(np_pick_ports 3) || np_fail "no free ports"
rdv=127.0.0.1:$base stun1=127.0.0.1:$((base + 1)) stun2=127.0.0.2:$((base + 1))
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start: $(cat "$tmp/rs.log")"
"$NP" discovery-server --listen "$stun1" --alt-ip 127.0.0.2 --alt-port $((base + 2)) --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"
# --no-portmap: on loopback there is no gateway to ask, and the test must not
# talk to this host's real one.
common=(-r "$rdv" -d "$stun1" -d "$stun2" --no-portmap)

# transfer TAG "RECEIVE ARGS" SEND ARGS...: B receives (its args split on
# spaces; stdin /dev/null unless RECV_STDIN is set), A sends once B has
# registered; both bounded. Sets SRC and RRC to the exit codes; the logs
# are $tmp/TAG.send and $tmp/TAG.recv.
transfer() {
  local tag=$1 rargs=$2; shift 2
  # shellcheck disable=SC2086
  timeout 30 "$NP" receive "${common[@]}" --key "$tmp/b" $rargs <"${RECV_STDIN:-/dev/null}" \
    >/dev/null 2>"$tmp/$tag.recv" & local rp=$!; pids+=($rp)
  if ! np_wait_log "$tmp/$tag.recv" 'listening' $rp 10; then
    echo "  FAIL $tag: receiver did not register: $(cat "$tmp/$tag.recv")"; fails=$((fails + 1))
  fi
  timeout 30 "$NP" send "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 "$@" \
    </dev/null >/dev/null 2>"$tmp/$tag.send"
  SRC=$?
  np_wait_exit $rp 15
  RRC=$NP_RC
}

mkdir -p "$tmp/src" "$tmp/one" "$tmp/many" "$tmp/refuse" "$tmp/exist"
head -c $((3 * 1024 * 1024 + 17)) /dev/urandom >"$tmp/src/photo.jpg"
chmod 0640 "$tmp/src/photo.jpg"

echo "one file"
transfer one "--json --accept-from $A $tmp/one" --json "$tmp/src/photo.jpg"
expect "send exits 0" 0 "$SRC"
expect "receive exits 0" 0 "$RRC"
expect "photo.jpg arrived byte-identical" "$(sum "$tmp/src/photo.jpg")" "$(sum "$tmp/one/photo.jpg" 2>/dev/null)"
expect "its mode is kept (640)" 640 "$(stat -c %a "$tmp/one/photo.jpg" 2>/dev/null)"
expect "nothing else in DIR (no .part, no sidecar)" "photo.jpg" "$(ls -A "$tmp/one" | tr '\n' ' ' | sed 's/ $//')"
for side in send recv; do
  # Every line on stderr is a JSON object with an event name.
  expect "$side: every stderr line is a JSON event" 0 \
    "$(jq -e -s 'all(.[]; type == "object" and (.event | type == "string"))' "$tmp/one.$side" >/dev/null; echo $?)"
  f=$(event "$tmp/one.$side" file)
  expect "$side: file event ok" "photo.jpg ok $((3 * 1024 * 1024 + 17)) $(sum "$tmp/src/photo.jpg") 0" \
    "$(jq -r '"\(.name) \(.status) \(.size) \(.sha256) \(.offset)"' <<<"$f")"
  p=$(event "$tmp/one.$side" progress)
  expect "$side: a progress event with bytes, total, rate" true \
    "$(jq '(.file == "photo.jpg") and (.bytes | type == "number") and (.total == 3145745) and (.rate >= 0)' <<<"$p")"
  expect "$side: one summary event" 1 "$(grep -c '"event":"summary"' "$tmp/one.$side")"
done
o=$(event "$tmp/one.recv" offer)
expect "receiver's offer event names A and the file" "$A photo.jpg 3145745" \
  "$(jq -r '"\(.from) \(.files[0].name) \(.files[0].size)"' <<<"$o")"
expect "the offer comes before any file event" true \
  "$(jq -s 'map(.event) | index("offer") < index("file")' "$tmp/one.recv")"
# The summary counts the user's bytes: the file plus the frames (< 1 %).
s=$(jq -r .bytes_sent <<<"$(event "$tmp/one.send" summary)")
expect "sender's summary: bytes_sent is the file and its framing" true \
  "$([ "$s" -ge 3145745 ] && [ "$s" -lt $((3145745 + 32768)) ] && echo true || echo "false ($s)")"

echo "several files"
printf 'hello\n' >"$tmp/src/notes.txt"
: >"$tmp/src/empty"
head -c 200000 /dev/urandom >"$tmp/src/with space.bin"
cp "$tmp/src/notes.txt" "$tmp/src/run.sh"
chmod 0755 "$tmp/src/run.sh"
chmod 0600 "$tmp/src/with space.bin"
transfer many "--accept-from $A $tmp/many" "$tmp/src/notes.txt" "$tmp/src/empty" \
  "$tmp/src/with space.bin" "$tmp/src/run.sh" "$tmp/src/photo.jpg"
expect "send exits 0" 0 "$SRC"
expect "receive exits 0" 0 "$RRC"
for f in notes.txt empty "with space.bin" run.sh photo.jpg; do
  expect "$f byte-identical" "$(sum "$tmp/src/$f")" "$(sum "$tmp/many/$f" 2>/dev/null)"
  expect "$f: mode kept" "$(stat -c %a "$tmp/src/$f")" "$(stat -c %a "$tmp/many/$f" 2>/dev/null)"
done
expect "five files in DIR, nothing else" 5 "$(ls -A "$tmp/many" | wc -l)"
# Without --json: plain lines, one per file end (no bar: not a terminal).
expect "plain output: an ok line per file" 5 "$(grep -c ': ok, ' "$tmp/many.send")"
expect "plain output has no terminal control bytes" 0 "$(grep -c $'\r\|\033' "$tmp/many.send")"
grep -q "offers 5 files" "$tmp/many.recv"; expect "the receiver shows the offer (5 files)" 0 $?

echo "no terminal, no --accept-from: refused"
transfer refuse "--json $tmp/refuse" --json "$tmp/src/photo.jpg" "$tmp/src/notes.txt"
expect "receive exits 1" 1 "$RRC"
expect "send exits 1" 1 "$SRC"
expect "nothing written" 0 "$(ls -A "$tmp/refuse" | wc -l)"
expect "the receiver says why" true \
  "$(jq -s 'any(.[]; .event == "refused" and (.reason | test("no terminal.*--accept-from")))' "$tmp/refuse.recv")"
expect "the offer was still shown" photo.jpg "$(jq -r '.files[0].name' <<<"$(event "$tmp/refuse.recv" offer)")"
expect "the sender hears: declined (2 files)" 2 \
  "$(jq -s 'map(select(.event == "file" and .status == "refused" and (.reason | test("declined")))) | length' "$tmp/refuse.send")"
expect "the sender is not left waiting (no failed event)" 0 "$(grep -c '"event":"failed"' "$tmp/refuse.send")"

if command -v script >/dev/null; then
  echo "on a terminal: the receiver asks"
  for answer in y n; do
    mkdir -p "$tmp/ask$answer"
    # script gives receive a terminal; its input is the answer (read once
    # the prompt is up: it waits in the terminal until then).
    printf '%s\n' "$answer" >"$tmp/answer"
    timeout 30 script -qfec "'$NP' receive ${common[*]} --key '$tmp/b' --json '$tmp/ask$answer' 2>'$tmp/ask$answer.recv'" \
      /dev/null <"$tmp/answer" >"$tmp/ask$answer.tty" & rp=$!; pids+=($rp)
    np_wait_log "$tmp/ask$answer.recv" listening $rp 10
    timeout 30 "$NP" send "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 --json \
      "$tmp/src/notes.txt" </dev/null >/dev/null 2>"$tmp/ask$answer.send"
    SRC=$?
    np_wait_exit $rp 15
    grep -q 'Accept? \[y/N\]' "$tmp/ask$answer.recv"; expect "answer $answer: the prompt was shown" 0 $?
    if [ "$answer" = y ]; then
      expect "answer y: send exits 0" 0 "$SRC"
      expect "answer y: the file arrived" "$(sum "$tmp/src/notes.txt")" "$(sum "$tmp/asky/notes.txt" 2>/dev/null)"
    else
      expect "answer n: send exits 1" 1 "$SRC"
      expect "answer n: nothing written" 0 "$(ls -A "$tmp/askn" | wc -l)"
      expect "answer n: the sender hears declined" declined \
        "$(jq -r '.reason | sub(" by the receiver"; "")' <<<"$(event "$tmp/askn.send" file)")"
    fi
  done
else
  echo "  skip the terminal prompt (no script(1))"
fi

echo "an existing file"
printf 'old content\n' >"$tmp/exist/photo.jpg"
chmod 0644 "$tmp/exist/photo.jpg"
transfer exist1 "--json --accept-from $A $tmp/exist" --json "$tmp/src/photo.jpg"
expect "without --force: receive exits 1" 1 "$RRC"
expect "without --force: send exits 1" 1 "$SRC"
expect "without --force: the old file is untouched" "old content" "$(cat "$tmp/exist/photo.jpg")"
expect "without --force: nothing else written" 1 "$(ls -A "$tmp/exist" | wc -l)"
expect "the sender is told it exists and about --force" true \
  "$(jq '.status == "refused" and (.reason | test("exists.*--force"))' <<<"$(event "$tmp/exist1.send" file)")"
transfer exist2 "--json --accept-from $A --force $tmp/exist" --json "$tmp/src/photo.jpg"
expect "with --force: receive exits 0" 0 "$RRC"
expect "with --force: send exits 0" 0 "$SRC"
expect "with --force: the file is replaced" "$(sum "$tmp/src/photo.jpg")" "$(sum "$tmp/exist/photo.jpg")"
expect "with --force: the sender's mode" 640 "$(stat -c %a "$tmp/exist/photo.jpg")"

echo "send to a peer that runs listen, not receive"
timeout 30 "$NP" listen "${common[@]}" --key "$tmp/b" --json </dev/null >/dev/null 2>"$tmp/l.log" & lp=$!; pids+=($lp)
np_wait_log "$tmp/l.log" listening $lp 10
timeout 30 "$NP" send "${common[@]}" --key "$tmp/a" --peer "$B" --timeout 10 --json "$tmp/src/notes.txt" \
  </dev/null >/dev/null 2>"$tmp/l.send"
expect "send exits 1" 1 $?
expect "send says the peer takes no files" true \
  "$(jq '.reason | test("receive")' <<<"$(event "$tmp/l.send" failed)")"
np_wait_exit $lp 10

echo "usage errors (exit 2), nothing sent"
usage() { # usage WHAT PATTERN CMD...: CMD exits 2 and its stderr matches PATTERN
  local what=$1 pat=$2; shift 2
  timeout 10 "$NP" "$@" </dev/null >/dev/null 2>"$tmp/err"
  expect "$what is a usage error" 2 $?
  grep -qE "$pat" "$tmp/err"; expect "$what: the error says why" 0 $?
}
printf 'x' >"$tmp/src/.hidden"
printf 'x' >"$tmp/src/bad"$'\n'"name"
mkdir -p "$tmp/src2" "$tmp/ro"
printf 'y' >"$tmp/src2/notes.txt"
usage "a hidden file (leading dot)" "leading dot" send "${common[@]}" --key "$tmp/a" --peer "$B" "$tmp/src/.hidden"
usage "a name with a newline" "control" send "${common[@]}" --key "$tmp/a" --peer "$B" "$tmp/src/bad"$'\n'"name"
usage "two files with one name" "also named" send "${common[@]}" --key "$tmp/a" --peer "$B" "$tmp/src/notes.txt" "$tmp/src2/notes.txt"
usage "a directory as FILE" "not a readable file" send "${common[@]}" --key "$tmp/a" --peer "$B" "$tmp/src"
usage "a missing FILE" "No such file" send "${common[@]}" --key "$tmp/a" --peer "$B" "$tmp/nope"
usage "no FILE" "no FILE" send "${common[@]}" --key "$tmp/a" --peer "$B"
usage "send without --peer" "no peer" send "${common[@]}" --key "$tmp/a" "$tmp/src/notes.txt"
usage "a missing DIR" "not a directory" receive "${common[@]}" --key "$tmp/b" "$tmp/nodir"
usage "a file as DIR" "not a directory" receive "${common[@]}" --key "$tmp/b" "$tmp/src/notes.txt"
usage "two DIRs" "unexpected argument" receive "${common[@]}" --key "$tmp/b" "$tmp/one" "$tmp/many"
usage "--force for send" "not for send" send "${common[@]}" --key "$tmp/a" --peer "$B" --force "$tmp/src/notes.txt"
usage "--accept-from for send" "not for send" send "${common[@]}" --key "$tmp/a" --peer "$B" --accept-from "$A" "$tmp/src/notes.txt"
usage "a bad --accept-from" "accept-from" receive "${common[@]}" --key "$tmp/b" --accept-from nobody "$tmp/one"
# The --help texts give the exit codes tested here.
"$NP" send --help >"$tmp/help.send"
"$NP" receive --help >"$tmp/help.recv"
grep -q "2 bad command line, config" "$tmp/help.send"; expect "send --help documents exit 2" 0 $?
grep -q "1 a file was" "$tmp/help.send"; expect "send --help documents exit 1" 0 $?
grep -q "or DIR is not a directory" "$tmp/help.recv"; expect "receive --help documents exit 2 for DIR" 0 $?
grep -q "no terminal" "$tmp/help.recv"; expect "receive --help says what happens without a terminal" 0 $?

if [ "$fails" -eq 0 ]; then echo "PASS"; exit 0; fi
for f in "$tmp"/*.send "$tmp"/*.recv; do echo "--- $(basename "$f")"; tail -n 12 "$f"; done
echo "FAIL: $fails check(s)"; exit 1
