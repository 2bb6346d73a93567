#!/usr/bin/env bash
# The config file and aliases, end to end on loopback: with servers, key,
# allow list and aliases in config files found through XDG_CONFIG_HOME,
# `natpunch connect bob` calls the listener and data crosses both ways; a
# flag beats the config; --config replaces it; probe takes its discovery
# servers from it; a caller the config does not allow gets 403; no server
# anywhere, an unknown alias and a bad config line are usage errors that
# say what to do, quoting file and line.
# Usage: test_config.sh PATH/TO/natpunch
set -uo pipefail
NP=${1:?usage: $0 PATH/TO/natpunch}
. "$(dirname "$0")/../interop/lib.sh"
for t in jq ss timeout; do
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

for k in a b c; do "$NP" keygen "$tmp/$k" >/dev/null 2>&1 || np_fail "keygen $k"; done
A=$("$NP" id --key "$tmp/a") B=$("$NP" id --key "$tmp/b") C=$("$NP" id --key "$tmp/c")

base=$(np_pick_ports 3) || np_fail "no free ports"
rdv=127.0.0.1:$base stun1=127.0.0.1:$((base + 1)) stun2=127.0.0.2:$((base + 1))
dead=127.0.0.1:$((base + 3)) # nothing listens there
"$NP" rendezvous-server --listen "$rdv" 2>"$tmp/rs.log" & pids+=($!)
np_wait_log "$tmp/rs.log" "listening on" "${pids[-1]}" || np_fail "rendezvous server did not start"
"$NP" discovery-server --listen "$stun1" --alt-ip 127.0.0.2 --alt-port $((base + 2)) --threads 1 2>"$tmp/ds.log" & pids+=($!)
np_wait_log "$tmp/ds.log" "listening on" "${pids[-1]}" || np_fail "discovery server did not start"

# Each peer has its own XDG_CONFIG_HOME; HOME points to an empty directory
# so that the user's own ~/.config plays no part.
mkdir -p "$tmp/home" "$tmp/xa/natpunch" "$tmp/xb/natpunch" "$tmp/xc/natpunch" "$tmp/empty"
cat >"$tmp/xa/natpunch/config" <<CFG
# A's daily settings
rendezvous = $rdv
discovery = $stun1
discovery = $stun2   # the second view, for the delta
key = $tmp/a
alias bob = $B
CFG
cat >"$tmp/xb/natpunch/config" <<CFG
rendezvous = $rdv
discovery = $stun1
discovery = $stun2
key = $tmp/b
alias alice = $A
allow = alice
CFG
# C's config names a dead server: the -r flag must win over it.
printf 'rendezvous = %s\nkey = %s\nalias bob = %s\n' "$dead" "$tmp/c" "$B" >"$tmp/xc/natpunch/config"
export HOME=$tmp/home

mkfifo "$tmp/b.in"
exec 7<>"$tmp/b.in"
XDG_CONFIG_HOME=$tmp/xb "$NP" listen --json --no-portmap --keep <"$tmp/b.in" >"$tmp/b.out" 2>"$tmp/b.log" 7>&- &
listener=$!; pids+=($listener)
np_wait_log "$tmp/b.log" '"event":"listening"' $listener 15 || np_fail "listener did not register: $(cat "$tmp/b.log")"
expect "listener's key from key = (its ID is B)" "$B" "$(event "$tmp/b.log" listening | jq -r .id)"

echo "hello from A" | XDG_CONFIG_HOME=$tmp/xa timeout 20 "$NP" connect --json --no-portmap --timeout 10 bob \
  >"$tmp/a.out" 2>"$tmp/a.log" 7>&- & caller=$!; pids+=($caller)
np_wait_log "$tmp/a.log" '"event":"connected"' $caller 12; expect "'connect bob' connects (servers and key from the config)" 0 $?
echo "hello from B" >&7
exec 7>&-
np_wait_exit $caller 10
expect "'connect bob' exits 0" 0 "$NP_RC"
expect "A called B (bob)" "$B" "$(event "$tmp/a.log" connected | jq -r .peer)"
expect "A's key from key = (B saw A)" "$A" "$(event "$tmp/b.log" call | jq -r .from)"
expect "no warning about missing discovery servers" 0 "$(grep -c 'discovery server' "$tmp/a.log")"
expect "B got A's line" "hello from A" "$(cat "$tmp/b.out")"
expect "A got B's line" "hello from B" "$(cat "$tmp/a.out")"

# C: -r beats C's config (a dead server); B's config allows only alice.
XDG_CONFIG_HOME=$tmp/xc timeout 20 "$NP" connect -r "$rdv" --json --no-portmap --timeout 5 --peer bob \
  </dev/null >/dev/null 2>"$tmp/c.log"
expect "C (not in B's allow =) exits 1" 1 $?
expect "C reached the server given by -r and got 403" true "$(event "$tmp/c.log" failed | jq '.reason | test("403")')"
# Without -r, C's config's dead server is used: a failure about the rendezvous server.
start=$(date +%s%N)
XDG_CONFIG_HOME=$tmp/xc timeout 20 "$NP" connect --json --no-portmap --timeout 1 bob </dev/null 2>"$tmp/c2.log"
expect "C with its config's dead server exits 1" 1 $?
expect "... and says rendezvous" true "$(event "$tmp/c2.log" failed | jq '.reason | test("rendezvous")')"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$ms" -lt 4000 ]; expect "... within --timeout 1 (${ms} ms)" 0 $?
# --config replaces XDG's file: A's config (alias bob, key a) from C's
# environment. BOB: names match in any case (ssh lowercases %h).
XDG_CONFIG_HOME=$tmp/xc timeout 20 "$NP" connect --config "$tmp/xa/natpunch/config" --json --no-portmap \
  --timeout 10 BOB </dev/null >/dev/null 2>"$tmp/a2.log"
expect "--config FILE: connect BOB as A exits 0 (--keep listener)" 0 $?
expect "--config FILE: B saw A again" "$A" "$(event "$tmp/b.log" call | jq -r .from)"

# probe: discovery servers from the config.
XDG_CONFIG_HOME=$tmp/xa timeout 20 "$NP" probe --json >"$tmp/probe.json" 2>"$tmp/probe.log"
expect "probe with servers from the config exits 0" 0 $?
expect "probe asked both configured servers" 2 "$(jq '.mapped | length' "$tmp/probe.json")"

usage() { # usage WHAT PATTERN ENV... -- ARGS...: exit 2 and stderr matches PATTERN
  local what=$1 pattern=$2; shift 2
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout 10 "$NP" "$@" </dev/null >/dev/null 2>"$tmp/err"
  expect "$what: exit 2" 2 $?
  grep -qE -- "$pattern" "$tmp/err"; expect "$what: says '$pattern'" 0 $?
}
usage "no server anywhere" "no rendezvous server: give --rendezvous IP:PORT or set rendezvous = in $tmp/empty/natpunch/config" \
  XDG_CONFIG_HOME=$tmp/empty -- connect --key "$tmp/a" "$B"
usage "no server (listen)" "no rendezvous server" XDG_CONFIG_HOME=$tmp/empty -- listen --key "$tmp/b"
usage "no discovery server (probe)" "no discovery server: give --discovery" XDG_CONFIG_HOME=$tmp/empty -- probe
usage "unknown alias" "'carol' is not a peer ID .* nor an alias in '$tmp/xa/natpunch/config'" \
  XDG_CONFIG_HOME=$tmp/xa -- connect carol
usage "unknown alias, no config file" "no config file with aliases \\(write 'alias NAME = PEERID' in $tmp/empty/natpunch/config\\)" \
  XDG_CONFIG_HOME=$tmp/empty -- connect -r "$rdv" carol
usage "--allow unknown alias" "--allow: 'carol'" XDG_CONFIG_HOME=$tmp/xb -- listen --allow carol
usage "peer given twice" "give the peer once: 'bob' and --peer bob" XDG_CONFIG_HOME=$tmp/xa -- connect --peer bob bob
usage "two positional peers" "unexpected argument 'bob'" XDG_CONFIG_HOME=$tmp/xa -- connect bob bob
usage "a positional for listen" "unexpected argument 'alice'" XDG_CONFIG_HOME=$tmp/xb -- listen alice
usage "--config missing" "cannot open config file '$tmp/nope'" -- connect --config "$tmp/nope" bob
mkdir -p "$tmp/xbad/natpunch"
printf '# ok\nrendezvous = %s\nalias %s = %s\n' "$rdv" "$A" "$B" >"$tmp/xbad/natpunch/config"
usage "a name that is a peer ID" "$tmp/xbad/natpunch/config line 3: alias name '$A' is a peer ID" \
  XDG_CONFIG_HOME=$tmp/xbad -- connect "$B"
printf 'rendezvous = %s\nrendevous = 1.2.3.4\n' "$rdv" >"$tmp/xbad/natpunch/config"
usage "a typo in the config, even with all flags" "line 2: unknown setting 'rendevous'" \
  XDG_CONFIG_HOME=$tmp/xbad -- connect -r "$rdv" -d "$stun1" --key "$tmp/a" "$B"
printf 'rendezvous = %s\n' "$rdv" >"$tmp/xbad/natpunch/config"
chmod 0666 "$tmp/xbad/natpunch/config"
usage "a config others may write (it names who may call)" "writable by others .*chmod go-w" \
  XDG_CONFIG_HOME=$tmp/xbad -- connect --key "$tmp/a" "$B"
chmod 0644 "$tmp/xbad/natpunch/config"
printf 'key = relative\n' >"$tmp/xbad/natpunch/config"
usage "probe with a bad config" "line 1: key: 'relative' is not an absolute path" \
  XDG_CONFIG_HOME=$tmp/xbad -- probe -d "$stun1"

kill -TERM $listener 2>/dev/null; np_wait_exit $listener 10
expect "listener exits 0 on SIGTERM" 0 "$NP_RC"
if [ "$fails" -ne 0 ]; then
  echo "--- listener log"; cat "$tmp/b.log"; echo "--- A's log"; cat "$tmp/a.log"
  echo "FAIL: $fails check(s)"; exit 1
fi
echo "config: all checks passed"
