# Helpers shared by the interop tests (sourced, not run).
# Everything stays on loopback; every wait is bounded.

# Prints a port that no UDP or TCP socket on this host uses, together with the next
# $2 ports (default 0), all free on 127.0.0.1 and 127.0.0.2 alike (we bind
# both). Two traps avoided: the ports are taken below the kernel's ephemeral
# range, where client connections of tests running in parallel take their
# local ports, and sockets in every state count (a port that is the local end
# of an established connection cannot be bound, even with SO_REUSEADDR).
# Starts from a number derived from our PID and a random offset, so tests
# running in parallel start apart; callers still retry on a bind race.
np_pick_ports() {
  local span=${1:-0} try p i used eph_lo
  read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || eph_lo=32768
  for try in $(seq 1 50); do
    p=$(( 10000 + ( ($$ * 7 + RANDOM) % (eph_lo - 10000 - 16) ) ))
    used=0
    for i in $(seq 0 "$span"); do
      if ss -Htuan "sport = :$((p + i))" 2>/dev/null | grep -q .; then used=1; break; fi
    done
    [ "$used" = 0 ] && { echo "$p"; return 0; }
  done
  echo "np_pick_ports: no free port found" >&2
  return 1
}

# np_wait_log FILE PATTERN PID [SECONDS]: waits until FILE contains PATTERN
# (grep -E), failing early if PID dies. Bounded: SECONDS (default 10).
np_wait_log() {
  local file=$1 pattern=$2 pid=$3 secs=${4:-10} i
  for i in $(seq 1 $((secs * 20))); do
    grep -qE "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# np_wait_exit PID [SECONDS]: waits for a child of this shell to exit and
# sets NP_RC to its status; kills it (status 137) if it does not exit in
# time. Not for $(...): a subshell cannot wait for its parent's children.
np_wait_exit() {
  local pid=$1 secs=${2:-10} i
  for i in $(seq 1 $((secs * 20))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  NP_RC=0
  wait "$pid" || NP_RC=$?
}

np_fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# np_wait_bound PID SECONDS ADDR...: waits until a UDP socket is bound to
# every ADDR ("127.0.0.1:3478"), failing early if PID dies.
np_wait_bound() {
  local pid=$1 secs=$2 i a ok; shift 2
  for i in $(seq 1 $((secs * 20))); do
    kill -0 "$pid" 2>/dev/null || return 1
    ok=1
    for a in "$@"; do
      ss -Hlun "src $a" 2>/dev/null | grep -q . || { ok=0; break; }
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}
