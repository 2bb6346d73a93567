#!/usr/bin/env bash
# natpunch keygen / natpunch id, as a user meets them: exit codes, file mode,
# refusals, the default key created on first use.
# Usage: test_keygen_id.sh PATH/TO/natpunch
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
expect() { # expect WHAT WANT GOT
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got '$3', want '$2'"; fails=$((fails + 1)); fi
}
is_id() { [[ $1 =~ ^[a-z2-7]{52}$ ]] && echo yes || echo "no ($1)"; }

id1=$("$NP" keygen "$tmp/k" 2>/dev/null); expect "keygen exits 0" 0 $?
expect "keygen prints a peer ID" yes "$(is_id "$id1")"
expect "key file mode" 600 "$(stat -c %a "$tmp/k")"
expect "id --key prints the same ID" "$id1" "$("$NP" id --key "$tmp/k" 2>/dev/null)"

"$NP" keygen "$tmp/k" >/dev/null 2>"$tmp/err"; expect "keygen refuses to overwrite (exit 1)" 1 $?
grep -q -- --force "$tmp/err"; expect "the refusal names --force" 0 $?
expect "refused keygen left the key alone" "$id1" "$("$NP" id --key "$tmp/k" 2>/dev/null)"
id2=$("$NP" keygen --force "$tmp/k" 2>/dev/null); expect "keygen --force exits 0" 0 $?
[ "$id2" != "$id1" ]; expect "--force made a new key" 0 $?

chmod 640 "$tmp/k"
"$NP" id --key "$tmp/k" >/dev/null 2>"$tmp/err"; expect "group-readable key refused (exit 1)" 1 $?
grep -q "chmod 600" "$tmp/err"; expect "the refusal says how to fix it" 0 $?
printf 'not a key\n' > "$tmp/bad"; chmod 600 "$tmp/bad"
"$NP" id --key "$tmp/bad" >/dev/null 2>&1; expect "malformed key file (exit 1)" 1 $?
"$NP" id --key "$tmp/missing" >/dev/null 2>&1; expect "missing key file (exit 1)" 1 $?
"$NP" id --bogus >/dev/null 2>&1; expect "unknown option (exit 2)" 2 $?
"$NP" keygen a b >/dev/null 2>&1; expect "two files (exit 2)" 2 $?

# Default key: created on first use under $XDG_CONFIG_HOME, then reused.
d1=$(XDG_CONFIG_HOME="$tmp/cfg" "$NP" id 2>"$tmp/err"); expect "id without a key exits 0" 0 $?
expect "default key created" 600 "$(stat -c %a "$tmp/cfg/natpunch/key" 2>/dev/null)"
grep -q "created" "$tmp/err"; expect "creation announced on stderr" 0 $?
expect "default key reused" "$d1" "$(XDG_CONFIG_HOME="$tmp/cfg" "$NP" id 2>/dev/null)"
expect "default key dir mode" 700 "$(stat -c %a "$tmp/cfg/natpunch")"

# Key-file errors in listen/connect are as clear as id's, not a bare
# "malformed or unexpected message" / "authentication failed".
mkdir "$tmp/kdir"
printf 'garbage\n' >"$tmp/garbage"; chmod 600 "$tmp/garbage"
"$NP" keygen "$tmp/open" >/dev/null 2>&1; chmod 644 "$tmp/open"
peer=$("$NP" keygen "$tmp/peer" 2>/dev/null)
keyerr() { # keyerr WHAT CMD FILE REGEX
  "$NP" "$2" -r 127.0.0.1:9 --key "$3" $([ "$2" = connect ] && echo --peer "$peer") \
    --no-portmap --timeout 1 </dev/null >/dev/null 2>"$tmp/err"
  expect "$1: exit 1" 1 $?
  grep -Eq "$4" "$tmp/err"; expect "$1: says '$4'" 0 $?
  grep -q "malformed or unexpected\|authentication failed" "$tmp/err"; expect "$1: not the bare library error" 1 $?
}
keyerr "connect --key DIR" connect "$tmp/kdir" "is a directory"
keyerr "connect --key garbage" connect "$tmp/garbage" "not a natpunch key file"
keyerr "connect --key 0644" connect "$tmp/open" "chmod 600"
"$NP" listen -r 127.0.0.1:9 --key "$tmp/garbage" --no-portmap </dev/null >/dev/null 2>"$tmp/err"
expect "listen --key garbage: exit 1" 1 $?
grep -q "not a natpunch key file" "$tmp/err"; expect "listen --key garbage: says so" 0 $?
"$NP" id --key "$tmp/kdir" >/dev/null 2>"$tmp/err"; expect "id --key DIR: exit 1" 1 $?
grep -q "is a directory" "$tmp/err"; expect "id --key DIR: says it is a directory" 0 $?
"$NP" keygen "$tmp/kdir" --force >/dev/null 2>"$tmp/err"; expect "keygen DIR --force: exit 1" 1 $?
grep -q "is a directory.*kdir/key" "$tmp/err"; expect "keygen DIR --force: says it is a directory and what to give" 0 $?

"$NP" keygen --help | grep -q "Exit status"; expect "keygen --help documents exit codes" 0 $?
[ "$fails" -eq 0 ] && { echo "PASS"; exit 0; }
echo "FAIL: $fails check(s)"; exit 1
