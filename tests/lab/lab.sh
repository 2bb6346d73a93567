# shellcheck shell=bash
# natpunch NAT lab: a simulated internet with NATs of known behaviour, built
# from network namespaces, veth pairs, a bridge and nftables. Source it from
# bash (it uses associative arrays), then:
#
#   lab_require_root                  exit 77 (ctest SKIP) unless root + tools
#   lab_init                          public segment + cleanup trap
#   lab_servers                       s1 = 203.0.113.1 + .2, s2 = 203.0.113.3
#   lab_nat_host cone alice           host "alice" behind a port-preserving NAT
#   lab_nat_host symmetric bob        another host, behind its own NAT
#   lab_nat_join alice carol          carol on alice's LAN, behind her NAT
#   lab_start_natpunch_servers CLI DIR    (or lab_start_coturn DIR)
#   lab_exec alice natpunch probe ...
#   lab_spawn bob LOGFILE CMD...      background CMD in bob's namespace
#   lab_wait_udp s1 3478 [PID]        bounded wait for a listening UDP socket
#   lab_conntrack alice               dump the conntrack table of alice's NAT(s)
#   lab_loss PCT / lab_delay MS       impair the public segment (see there)
#   lab_udp_send / _recv / _echo / _rtt / _ttl   python UDP tools (see there)
#   lab_down                          (also runs from the EXIT/INT/TERM trap)
#
# Names: every namespace of a lab is "nplab<PID>-<name>" (PID of the shell
# that ran lab_init), so labs run in parallel; lab_init also removes the
# namespaces of labs whose shell died without cleaning up (SIGKILL, e.g. a
# ctest timeout). A script that overrides the EXIT trap must call lab_down.
# Keep long commands killable: a foreground command delays bash's TERM trap
# until it ends, so bound it (`timeout 60 ...`) or run it with & and `wait`.
#
# Topology. One namespace "nplab<PID>-pub" holds bridge br0, the public internet
# 203.0.113.0/24 (no IP of its own, it is only a switch). Every other machine
# is a namespace with a veth into it (or into a NAT's LAN):
#
#   server hosts   203.0.113.1-9      given by the caller
#   NAT / open     203.0.113.(10+i)   public IP of NAT number i (or the host)
#   CGNAT segment  100.64.i.0/24      between the two NATs of a stacked kind
#   LAN i          10.i.0.0/24        router 10.i.0.1 (bridge "lan" of the
#                                     router), host 10.i.0.2, joined hosts
#                                     10.i.0.3, .4, ... (lab_nat_join)
#
# Core router hop. On the internet at least one router sits between two home
# NATs, so a packet sent with a small TTL dies before it reaches the far NAT
# (and creates no state there). The bridge does not decrement TTLs, so the
# public namespace drops IPv4 packets arriving with TTL <= 1 as they cross
# the bridge (nftables bridge family, forward hook: only traffic between two
# machines): a NATed host's packet sent with TTL 2 leaves its NAT with TTL
# 1 and dies there; with TTL 1 it dies in the host's own NAT router, which
# answers ICMP time exceeded from its LAN address (10.i.0.1; for a stacked
# NAT, TTL 2 dies in the outer NAT: 100.64.i.1). No ICMP comes from the core.
#
# Flat segment. With LAB_FLAT=1 in the environment of lab_init there is no
# core hop: the public bridge lets every TTL through, like two gateways on
# one building network or data-centre VLAN with no router between them. A
# priming packet (TTL = NAT depth + 1) then reaches the far NAT with TTL 1
# and, on a rude NAT, leaves the UNREPLIED entry that priming is meant to
# avoid; it also reaches the discovery servers, which answer it. The
# default (LAB_FLAT unset or 0) keeps the core hop.
#
# Nothing is connected to the root namespace: no veth end, no route, no
# forwarding there. IP forwarding is switched on only inside NAT routers.
# Every interface is created inside a lab namespace (`ip -n A link add X type
# veth peer name Y netns B`), so nothing appears in the root namespace.
#
# NAT kinds (a kind may be "INNER+OUTER" to stack two). Every call of
# lab_nat_host makes a new NAT with its own state (mappings, the symmetric
# port counter); lab_nat_join puts more hosts behind an existing one, and
# the kinds' inbound rules are per mapping, so they work for every host:
#   open       host on the public segment, no NAT
#   cone       masquerade: conntrack keeps the host's port when it can, and
#              one source maps to one public port for every destination
#              (EIM); replies only from the exact remote address:port (APDF)
#   addr       cone + inbound from any port of a remote IP the mapping has
#              sent to (EIM, ADF), via a dynamic nft map remote IP . public
#              port -> LAN host . port (refreshed by outbound, 120 s)
#   fullcone   cone + inbound from anyone to a mapped port (EIM, EIF), via a
#              dynamic nft map public port -> LAN host . port
#   symmetric  every new conntrack (i.e. every new remote address:port) gets
#              the next port of a counter starting at 20000 (APDM, APDF,
#              sequential ports 20000, 20001, ...: predictable deltas)
#   seq7 seq300 seqneg seqwrap
#              symmetric with another stride on the ring 1024..65535: 7 and
#              300 from 20000, -5 from 60000, 20011 from 50000 (wraps past
#              65535 every few mappings)
#   random     masquerade fully-random: a random port per remote
#              address:port (APDM, APDF)
#   double     cone+cone: home NAT behind a CGNAT (100.64.i.0/24)
# Mapping is endpoint-independent for cone, addr and fullcone only as far as
# Linux conntrack goes: a host keeps its port unless that tuple is taken, so
# two LAN hosts sending from the same port to the same remote address:port
# get different public ports (and a rude NAT's state can take a port too).
#
# Rude or quiet. Like a real Linux NAT without an input firewall, every lab
# NAT is rude by default: an unsolicited inbound UDP packet that no mapping
# lets in reaches the router's own input (answered with ICMP port
# unreachable) and leaves an UNREPLIED conntrack entry remote -> public
# IP:port. While it lasts (30 s), a host's first packet from that port to
# that same remote address:port cannot keep the port: the NAT picks another
# public port (the tuple is taken). Run lab_nat_host with LAB_QUIET=1 in its
# environment (`LAB_QUIET=1 lab_nat_host cone h`) for a quiet NAT, which
# drops unsolicited UDP in its input chain: no ICMP, no state.
#
# After lab_nat_host KIND NAME:
#   LAB_NS[NAME]     the host's namespace        (lab_ns NAME)
#   LAB_IP[NAME]     the host's own IP           (lab_ip NAME)
#   LAB_PUBIP[NAME]  the public IP it appears as (lab_pubip NAME)
#   LAB_KIND[NAME]   the kind
#   LAB_NS[NAME-r], LAB_NS[NAME-r2]   its NAT routers (inner, outer)
#   LAB_LAN[NAME]    i, the number of its NAT and LAN (not for open hosts)

LAB_KINDS="open cone addr fullcone symmetric seq7 seq300 seqneg seqwrap random double"

declare -gA LAB_NS=() LAB_IP=() LAB_PUBIP=() LAB_KIND=() LAB_LAN=() LAB_LAN_NEXT=()
declare -ga LAB_ALL_NS=() LAB_PIDS=() LAB_PUBLINKS=()
declare -gA LAB_DELAY_PIDS=()
LAB_DELAY_MS=0 LAB_LOSS_PCT=0 LAB_DELAY_HOW=""
LAB_NP_DELAY=${LAB_NP_DELAY:-}
LAB_ID=""
LAB_UP=0
LAB_NEXT_NAT=0     # NAT/host index i (public IP 203.0.113.(10+i), LAN 10.i.0.0/24)
LAB_NEXT_PORT=0    # bridge port counter in the public namespace
LAB_PUBNET=203.0.113
LAB_VERBOSE=${LAB_VERBOSE:-0}
LAB_FLAT=${LAB_FLAT:-0}   # 1: no core router hop (see "Flat segment")
# Symmetric NAT: ports 20000..24095, used in turn. Large enough that a
# matrix run (hundreds of sessions on one lab) never wraps around: a real
# sequential NAT wraps too, but not within one session's prediction window,
# and a wrap in the lab made a cone-symmetric sweep miss.
LAB_SYM_PORTS=4096

lab_log() { [ "$LAB_VERBOSE" = 1 ] && echo "lab: $*" >&2; return 0; }
lab_die() { echo "lab: error: $*" >&2; exit 1; }

# Exit 77 (ctest's skip code) with a reason unless we can build the lab.
# Assertions for lab tests: lab_check WHAT GOT WANT prints ok/FAIL and
# counts failures in LAB_FAILS, which a test turns into its exit status.
LAB_FAILS=0
lab_check() {
  if [ "$2" = "$3" ]; then
    echo "  ok   $1: $2"
  else
    echo "  FAIL $1: got '$2', want '$3'"
    LAB_FAILS=$((LAB_FAILS + 1))
  fi
}

lab_require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "lab: SKIP: the NAT lab needs root (network namespaces, nftables); run as root" >&2
    exit 77
  fi
  local t
  for t in ip nft ss; do
    command -v "$t" >/dev/null 2>&1 || { echo "lab: SKIP: '$t' not found (apt-get install iproute2 nftables)" >&2; exit 77; }
  done
  if ! ip netns add "nplab${BASHPID}check-ns" 2>/dev/null; then
    echo "lab: SKIP: cannot create network namespaces here" >&2
    exit 77
  fi
  # Not fatal: a test's verdict must not hang on removing a probe namespace
  # (one CI run failed here in 0.02 s, silently, while other labs started).
  ip netns del "nplab${BASHPID}check-ns" 2>/dev/null ||
    { sleep 0.2; ip netns del "nplab${BASHPID}check-ns" 2>/dev/null; } || true
}

# lab_init [ID]: create the public segment and install the cleanup trap.
lab_init() {
  LAB_ID=${1:-nplab$BASHPID}
  _lab_reap_stale
  LAB_UP=1
  trap 'lab_down' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  _lab_mkns "$LAB_ID-pub"
  _lab_bridge "$LAB_ID-pub" br0
  # The core: see "Core router hop" at the top (none with LAB_FLAT=1: see
  # "Flat segment"). Chain impair is for lab_loss and lab_delay.
  local core='ether type ip ip ttl < 2 drop'
  [ "$LAB_FLAT" = 1 ] && core='# flat segment: no core router hop'
  ip netns exec "$LAB_ID-pub" nft -f - <<EOF || lab_die "nft rules of the public segment"
table bridge lab {
  chain forward {
    type filter hook forward priority filter; policy accept;
    $core
    jump impair
  }
  chain impair {
  }
}
EOF
  lab_log "public segment $LAB_ID-pub ($LAB_PUBNET.0/24, flat $LAB_FLAT)"
}

# Namespaces of earlier labs whose shell is gone (killed with SIGKILL, e.g. by
# a ctest timeout, so its trap never ran): "nplab<PID>-*" with PID dead.
_lab_reap_stale() {
  local ns pid p
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^nplab[0-9]+[a-z]*-' || true); do
    pid=${ns#nplab}; pid=${pid%%[!0-9]*}
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null && lab_log "removed stale namespace $ns"
  done
  return 0
}

_lab_mkns() {
  ip netns add "$1" || lab_die "cannot create namespace $1"
  LAB_ALL_NS+=("$1")
  ip -n "$1" link set lo up
  # No IPv6 in the lab: no DAD delays, no router solicitations, less noise.
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
}

# _lab_link_pub NS IFNAME: veth from NS (named IFNAME) into the public bridge.
# Recorded for lab_delay, which applies at once to links made after it.
_lab_link_pub() {
  local ns=$1 ifn=$2 port
  LAB_NEXT_PORT=$((LAB_NEXT_PORT + 1))
  port="p$LAB_NEXT_PORT"
  ip -n "$ns" link add "$ifn" type veth peer name "$port" netns "$LAB_ID-pub" || lab_die "veth $ns/$ifn"
  ip -n "$LAB_ID-pub" link set "$port" master br0 up
  ip -n "$ns" link set "$ifn" up
  LAB_PUBLINKS+=("$ns $ifn")
  if [ "$LAB_DELAY_MS" -gt 0 ]; then _lab_delay_link "$ns" "$ifn"; fi
}

# _lab_link NS_A IF_A NS_B IF_B: veth pair between two namespaces.
_lab_link() {
  ip -n "$1" link add "$2" type veth peer name "$4" netns "$3" || lab_die "veth $1/$2 - $3/$4"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}

# lab_server_host NAME IP [IP...]: a host on the public segment with these
# addresses (the first is primary).
lab_server_host() {
  local name=$1 ns="$LAB_ID-$1" ip
  shift
  [ $# -ge 1 ] || lab_die "lab_server_host NAME IP..."
  _lab_mkns "$ns"
  _lab_link_pub "$ns" eth0
  for ip in "$@"; do
    ip -n "$ns" addr add "$ip/24" dev eth0
  done
  LAB_NS[$name]=$ns; LAB_IP[$name]=$1; LAB_PUBIP[$name]=$1; LAB_KIND[$name]=server
  lab_log "server $name: $* ($ns)"
}

# _lab_nat_rules NS KIND PUBIP: nftables of a NAT router whose public side
# is interface "wan" with address PUBIP. Inbound state is per mapping (the
# LAN host and port come from the conntrack entry that made it), so any
# number of LAN hosts may share the NAT.
_lab_nat_rules() {
  local ns=$1 kind=$2 pub=$3 snat sets="" rec="" dnat="" input=""
  # Rude by default: unsolicited inbound UDP that no mapping lets in is
  # delivered to the router itself (ICMP port unreachable) and leaves an
  # UNREPLIED conntrack entry, which takes that tuple for a later mapping.
  # Quiet (LAB_QUIET=1): dropped in the input chain before conntrack confirms
  # it, so no state and no ICMP.
  if [ "${LAB_QUIET:-0}" = 1 ]; then
    input='iifname "wan" meta l4proto udp ct state new drop'
  fi
  case "$kind" in
    cone)
      snat="masquerade" ;;
    symmetric | seq7 | seq300 | seqneg | seqwrap)
      # NAT chains see only the first packet of a conntrack, so the counter
      # moves once per new mapping: ports 20000, 20001, ... in order. (A
      # plain "numgen inc offset 20000" as the port comes out byte-swapped
      # in nft 1.0.6 -- steps of 256 -- so the port goes through a typed map.)
      # The seq kinds take other strides on the ring 1024..65535, where
      # real NATs allocate: n -> 1024 + (start - 1024 + n * stride) mod
      # 64512. Each stride's period on the ring exceeds LAB_SYM_PORTS, so
      # the map's ports are distinct.
      local m="" n start=20000 stride=1 ring=64512
      case "$kind" in
        seq7) stride=7 ;;
        seq300) stride=300 ;;          # above the seed's limit of 64; wraps after ~150
        seqneg) start=60000 stride=-5 ;;
        seqwrap) start=50000 stride=20011 ;; # wraps every third mapping or so
      esac
      for ((n = 0; n < LAB_SYM_PORTS; n++)); do
        m+="$n : $((1024 + (((start - 1024 + n * stride) % ring) + ring) % ring)), "
      done
      snat="meta l4proto udp snat to $pub : numgen inc mod $LAB_SYM_PORTS map { ${m%, } }
      masquerade" ;;
    random)
      snat="masquerade fully-random" ;;
    addr)
      # remote IP . public port -> LAN host . its port. After SNAT (priority
      # srcnat+10) the packet carries its public port; the conntrack entry
      # knows the LAN side.
      snat="masquerade"
      sets="map peers { type ipv4_addr . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 120s; }"
      rec="oifname \"wan\" meta l4proto udp update @peers { ip daddr . udp sport : ct original ip saddr . ct original proto-src }"
      dnat="iifname \"wan\" meta l4proto udp dnat ip to ip saddr . udp dport map @peers" ;;
    fullcone)
      # public port -> LAN host . its port.
      snat="masquerade"
      sets="map ports { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 120s; }"
      rec="oifname \"wan\" meta l4proto udp update @ports { udp sport : ct original ip saddr . ct original proto-src }"
      dnat="iifname \"wan\" meta l4proto udp dnat ip to udp dport map @ports" ;;
    *) lab_die "unknown NAT kind '$kind' (kinds: $LAB_KINDS)" ;;
  esac
  ip netns exec "$ns" nft -f - <<EOF || lab_die "nft rules for $kind in $ns"
table ip lab {
  $sets
  chain input {
    type filter hook input priority filter; policy accept;
    $input
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    # Nothing unsolicited reaches the LAN unless the NAT kind let it in (dnat).
    iifname "wan" ct state new ct status dnat accept
    iifname "wan" ct state new drop
  }
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    $dnat
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" $snat
  }
  chain record {
    type filter hook postrouting priority srcnat + 10; policy accept;
    $rec
  }
}
EOF
}

# lab_nat_host KIND NAME: a host namespace behind a NAT of KIND (see top).
lab_nat_host() {
  local kind=$1 name=$2 i ns="$LAB_ID-$2" pub inner outer
  [ "$LAB_UP" = 1 ] || lab_die "lab_init first"
  LAB_NEXT_NAT=$((LAB_NEXT_NAT + 1))
  i=$LAB_NEXT_NAT
  [ "$i" -le 200 ] || lab_die "too many NATs"
  pub="$LAB_PUBNET.$((10 + i))"
  [ "$kind" = double ] && kind="cone+cone"
  _lab_mkns "$ns"
  LAB_NS[$name]=$ns; LAB_PUBIP[$name]=$pub
  # shellcheck disable=SC2034  # LAB_KIND is for the callers
  LAB_KIND[$name]=$1
  if [ "$kind" = open ]; then
    _lab_link_pub "$ns" eth0
    ip -n "$ns" addr add "$pub/24" dev eth0
    LAB_IP[$name]=$pub
    lab_log "host $name: open, $pub"
    return 0
  fi
  inner=${kind%%+*}
  outer=""
  [ "$inner" != "$kind" ] && outer=${kind#*+}
  # The (inner) NAT router, its LAN (bridge "lan", 10.i.0.1) and the host.
  local r="$ns-r"
  _lab_mkns "$r"
  LAB_NS[$name-r]=$r
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  _lab_bridge "$r" lan
  ip -n "$r" addr add "10.$i.0.1/24" dev lan
  LAB_LAN[$name]=$i
  LAB_LAN_NEXT[$i]=2
  _lab_lan_host "$name" "$i"
  if [ -z "$outer" ]; then
    _lab_link_pub "$r" wan
    ip -n "$r" addr add "$pub/24" dev wan
    _lab_nat_rules "$r" "$inner" "$pub"
    lab_log "host $name: 10.$i.0.2 behind $inner NAT $pub"
  else
    # Stacked: host -> inner NAT (100.64.i.2) -> outer NAT (CGNAT) -> public.
    local r2="$ns-r2"
    _lab_mkns "$r2"
    LAB_NS[$name-r2]=$r2
    ip netns exec "$r2" sysctl -qw net.ipv4.ip_forward=1
    _lab_link "$r2" lan "$r" wan
    ip -n "$r2" addr add "100.64.$i.1/24" dev lan
    ip -n "$r" addr add "100.64.$i.2/24" dev wan
    ip -n "$r" route add default via "100.64.$i.1"
    _lab_link_pub "$r2" wan
    ip -n "$r2" addr add "$pub/24" dev wan
    _lab_nat_rules "$r" "$inner" "100.64.$i.2"
    _lab_nat_rules "$r2" "$outer" "$pub"
    lab_log "host $name: 10.$i.0.2 behind $inner NAT 100.64.$i.2 behind $outer NAT $pub"
  fi
}

# _lab_bridge NS NAME: a bridge that forwards at once (no STP, no forwarding
# delay) and is plain layer 2: bridged IPv4 does not go through the IP
# hooks (br_netfilter off in that namespace, where the kernel allows it).
_lab_bridge() {
  ip -n "$1" link add "$2" type bridge || lab_die "bridge $2 in $1"
  ip -n "$1" link set "$2" type bridge stp_state 0 forward_delay 0 2>/dev/null || true
  ip netns exec "$1" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
  ip -n "$1" link set "$2" up
}

# _lab_lan_host NAME I: put host NAME (namespace LAB_ID-NAME, made here) on
# LAN I of router LAB_NS[NAME-r] as 10.I.0.J, J the LAN's next number.
_lab_lan_host() {
  local name=$1 i=$2 j ns="$LAB_ID-$1" r=${LAB_NS[$1-r]}
  j=${LAB_LAN_NEXT[$i]}
  [ "$j" -le 254 ] || lab_die "LAN $i is full"
  LAB_LAN_NEXT[$i]=$((j + 1))
  [ -n "${LAB_NS[$name]:-}" ] || { _lab_mkns "$ns"; LAB_NS[$name]=$ns; }
  ip -n "$r" link add "h$j" type veth peer name eth0 netns "$ns" || lab_die "veth $r/h$j"
  ip -n "$r" link set "h$j" master lan up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" addr add "10.$i.0.$j/24" dev eth0
  ip -n "$ns" route add default via "10.$i.0.1"
  LAB_IP[$name]="10.$i.0.$j"
}

# lab_nat_join OWNER NAME: another host NAME on the LAN of OWNER's NAT
# (10.i.0.3, .4, ... in join order), sharing its NAT(s) and public IP:
# LAB_PUBIP, LAB_KIND and LAB_NS[NAME-r] (and -r2) are OWNER's. OWNER is a
# host made by lab_nat_host (not open) or another joined host.
lab_nat_join() {
  local owner=$1 name=$2 i
  [ "$LAB_UP" = 1 ] || lab_die "lab_init first"
  [ -z "${LAB_NS[$name]:-}" ] || lab_die "lab host '$name' exists"
  i=${LAB_LAN[$owner]:-}
  [ -n "$i" ] || lab_die "lab_nat_join: '$owner' is not a host behind a lab NAT"
  LAB_NS[$name-r]=${LAB_NS[$owner-r]}
  [ -z "${LAB_NS[$owner-r2]:-}" ] || LAB_NS[$name-r2]=${LAB_NS[$owner-r2]}
  LAB_PUBIP[$name]=${LAB_PUBIP[$owner]}
  # shellcheck disable=SC2034  # LAB_KIND is for the callers
  LAB_KIND[$name]=${LAB_KIND[$owner]}
  LAB_LAN[$name]=$i
  _lab_lan_host "$name" "$i"
  lab_log "host $name: ${LAB_IP[$name]} behind the NAT of $owner (${LAB_PUBIP[$name]})"
}

lab_ns()    { [ -n "${LAB_NS[$1]:-}" ] || lab_die "no lab host '$1'"; echo "${LAB_NS[$1]}"; }
lab_ip()    { echo "${LAB_IP[$1]}"; }
lab_pubip() { echo "${LAB_PUBIP[$1]}"; }

# lab_exec NAME CMD...: run CMD inside host NAME's namespace.
lab_exec() {
  local ns
  ns=$(lab_ns "$1") || exit 1
  shift
  ip netns exec "$ns" "$@"
}

# lab_spawn NAME LOGFILE CMD...: start CMD in the background in NAME's
# namespace; lab_down kills it. Sets LAB_LAST_PID.
lab_spawn() {
  local ns log=$2
  ns=$(lab_ns "$1") || exit 1
  shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 &
  LAB_LAST_PID=$!
  LAB_PIDS+=("$LAB_LAST_PID")
  lab_log "spawned pid $LAB_LAST_PID in $ns: $*"
}

# lab_wait_udp NAME PORT [PID]: wait (at most 5 s) until something listens on
# UDP PORT in NAME's namespace; fail early if PID died.
lab_wait_udp() {
  local ns n
  ns=$(lab_ns "$1") || exit 1
  for ((n = 0; n < 50; n++)); do
    if ip netns exec "$ns" ss -Hlun "sport = :$2" 2>/dev/null | grep -q .; then
      return 0
    fi
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
      echo "lab: process $3 in $ns exited before listening on udp/$2" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "lab: nothing listens on udp/$2 in $ns after 5 s" >&2
  return 1
}

# lab_servers: the two discovery server hosts every test uses:
#   s1 203.0.113.1 + 203.0.113.2 (RFC 5780 needs an alternate address)
#   s2 203.0.113.3
LAB_S1=203.0.113.1 LAB_S1_ALT=203.0.113.2 LAB_S2=203.0.113.3
lab_servers() {
  lab_server_host s1 "$LAB_S1" "$LAB_S1_ALT"
  lab_server_host s2 "$LAB_S2"
}

# lab_start_natpunch_servers CLI LOGDIR: our discovery servers on s1 (with
# alternate IP and port, for RFC 5780) and s2, listening on 3478.
# With LAB_SERVER_DOWN=1 or 2 that server is not started: its host is up
# and answers with ICMP port unreachable, as a crashed server's would. Its
# kernel's ICMP rate limit (one per destination IP a second) is lifted
# there: two hosts behind one NAT share that destination, and the second
# one's query would then wait out its timeout (1.5 s) — real behaviour, but
# not what lab.server_down measures (that an ICMP error ends a query).
lab_start_natpunch_servers() {
  local cli=$1 dir=$2 p1="" p2="" down=${LAB_SERVER_DOWN:-0}
  if [ "$down" = 1 ] || [ "$down" = 2 ]; then
    ip netns exec "${LAB_NS[s$down]}" sysctl -qw net.ipv4.icmp_ratelimit=0 || return 1
  fi
  if [ "$down" != 1 ]; then
    lab_spawn s1 "$dir/server-s1.log" "$cli" discovery-server --listen "$LAB_S1:3478" \
      --alt-ip "$LAB_S1_ALT" --alt-port 3479
    p1=$LAB_LAST_PID
  fi
  if [ "$down" != 2 ]; then
    lab_spawn s2 "$dir/server-s2.log" "$cli" discovery-server --listen "$LAB_S2:3478"
    p2=$LAB_LAST_PID
  fi
  { [ "$down" = 1 ] || { lab_wait_udp s1 3478 "$p1" && lab_wait_udp s1 3479 "$p1"; }; } &&
    { [ "$down" = 2 ] || lab_wait_udp s2 3478 "$p2"; } || {
    echo "lab: natpunch discovery servers did not start; logs:" >&2
    tail -n 20 "$dir"/server-s*.log >&2
    return 1
  }
}

# lab_start_coturn LOGDIR: coturn STUN-only servers (RFC 5780 on s1, with
# 203.0.113.2 and alternate port 3479; plain on s2). The system's
# /etc/turnserver.conf (Debian's says no-rfc5780) is ignored (-n).
lab_start_coturn() {
  local dir=$1 p1 p2
  command -v turnserver >/dev/null 2>&1 || { echo "lab: turnserver not found (apt-get install coturn)" >&2; return 77; }
  lab_spawn s1 "$dir/coturn-s1.log" turnserver -n -S \
    -L "$LAB_S1" -L "$LAB_S1_ALT" --listening-port 3478 --alt-listening-port 3479 \
    --no-tls --no-dtls --no-tcp --no-cli --log-file stdout --simple-log \
    --pidfile "$dir/coturn-s1.pid" --db "$dir/coturn-s1.db" --relay-threads 1
  p1=$LAB_LAST_PID
  lab_spawn s2 "$dir/coturn-s2.log" turnserver -n -S \
    -L "$LAB_S2" --listening-port 3478 \
    --no-tls --no-dtls --no-tcp --no-cli --log-file stdout --simple-log \
    --pidfile "$dir/coturn-s2.pid" --db "$dir/coturn-s2.db" --relay-threads 1
  p2=$LAB_LAST_PID
  lab_wait_udp s1 3478 "$p1" && lab_wait_udp s1 3479 "$p1" && lab_wait_udp s2 3478 "$p2" || {
    echo "lab: coturn did not start; logs:" >&2
    tail -n 20 "$dir"/coturn-s*.log >&2
    return 1
  }
}

# UDP tools for lab tests (python3; no socat/ping needed). Every one is
# bounded in time and count. Run inside host NAME's namespace:
#   lab_udp_send NAME SPORT DST DPORT [TTL [COUNT [GAP_MS]]]
#       COUNT datagrams (default 1) from local port SPORT (0 = any) with
#       IP TTL (default 64), GAP_MS apart.
#   lab_udp_recv NAME PORT SECONDS [DST DPORT]   count datagrams arriving
#       on PORT for SECONDS (stops early after 1 s of silence once one
#       arrived); prints the count. With DST DPORT it first sends one
#       datagram there from PORT (opening a mapping from that socket). Run it
#       with & and lab_wait_udp NAME PORT before sending to it.
#   lab_udp_echo NAME PORT SECONDS [DST DPORT]   echo every datagram on PORT
#       back (for SECONDS; with DST DPORT, first one datagram there).
#   lab_udp_rtt NAME DST DPORT COUNT   COUNT request/replies, one at a time,
#       1 s timeout each; prints "sent received min_ms median_ms max_ms".
#   lab_udp_ttl NAME DST DPORT TTL     one datagram with IP TTL; prints the
#       ICMP error that came back within 1 s (IP_RECVERR) as
#       "icmp TYPE CODE OFFENDER", or "none".
LAB_PY=${LAB_PY:-$(command -v /usr/bin/python3 python3 2>/dev/null | head -n1)}
_LAB_PYTOOL='
import select, socket, struct, sys, time
cmd, a = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
def wait(t):
    return select.select([s], [], [], max(t, 0))[0]
if cmd == "send":
    sport, dst, dport, ttl, count, gap = int(a[0]), a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]) / 1000
    s.bind(("", sport))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    for i in range(count):
        s.sendto(b"lab %d" % i, (dst, dport))
        if gap:
            time.sleep(gap)
elif cmd in ("recv", "echo"):
    s.bind(("", int(a[0])))
    if len(a) >= 4:
        s.sendto(b"open", (a[2], int(a[3])))
    end = time.monotonic() + float(a[1])
    n, last = 0, None
    while time.monotonic() < end:
        limit = end if last is None else min(end, last + 1.0)
        if not wait(limit - time.monotonic()):
            if last is not None and cmd == "recv":
                break
            continue
        data, peer = s.recvfrom(2048)
        n, last = n + 1, time.monotonic()
        if cmd == "echo":
            s.sendto(data, peer)
    print(n)
elif cmd == "rtt":
    dst, dport, count = a[0], int(a[1]), int(a[2])
    rtts = []
    for i in range(count):
        tag = b"rtt %d" % i
        t0 = time.monotonic()
        s.sendto(tag, (dst, dport))
        while True:
            left = t0 + 1.0 - time.monotonic()
            if left <= 0 or not wait(left):
                break
            if s.recv(2048) == tag:
                rtts.append((time.monotonic() - t0) * 1000)
                break
    rtts.sort()
    if rtts:
        print("%d %d %.1f %.1f %.1f" % (count, len(rtts), rtts[0], rtts[len(rtts) // 2], rtts[-1]))
    else:
        print("%d 0 - - -" % count)
elif cmd == "ttl":
    dst, dport, ttl = a[0], int(a[1]), int(a[2])
    IP_RECVERR = 11
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.sendto(b"ttl", (dst, dport))
    end = time.monotonic() + 1.0
    out = "none"
    while time.monotonic() < end:
        select.select([], [], [s], max(end - time.monotonic(), 0))
        try:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        for level, typ, data in anc:
            if level == socket.IPPROTO_IP and typ == IP_RECVERR and len(data) >= 24:
                errno_, origin, itype, icode = struct.unpack_from("=IBBB", data)
                out = "icmp %d %d %s" % (itype, icode, socket.inet_ntoa(data[20:24]))
        break
    print(out)
'
lab_udp_send() { lab_exec "$1" timeout 60 "$LAB_PY" -c "$_LAB_PYTOOL" send "$2" "$3" "$4" "${5:-64}" "${6:-1}" "${7:-0}"; }
lab_udp_recv() { lab_exec "$1" timeout $((${3%.*} + 5)) "$LAB_PY" -c "$_LAB_PYTOOL" recv "$2" "$3" "${@:4}"; }
lab_udp_echo() { lab_exec "$1" timeout $((${3%.*} + 5)) "$LAB_PY" -c "$_LAB_PYTOOL" echo "$2" "$3" "${@:4}"; }
lab_udp_rtt()  { lab_exec "$1" timeout $(($4 * 2 + 10)) "$LAB_PY" -c "$_LAB_PYTOOL" rtt "$2" "$3" "$4"; }
lab_udp_ttl()  { lab_exec "$1" timeout 10 "$LAB_PY" -c "$_LAB_PYTOOL" ttl "$2" "$3" "$4"; }

# lab_loss PCT: from now on every IPv4 packet that crosses the public
# segment (between two machines on it: servers, open hosts, NAT routers'
# WANs) is dropped with probability PCT% (0..100), independently per packet
# and per direction; 0 ends it. The pub namespace's bridge-family forward
# hook (chain impair) does it: nftables `meta protocol ip numgen random mod
# 100 < PCT drop`. ARP is spared: on the lab's one segment every first
# packet to a new address waits for ARP, a hop that on the internet is the
# router's always-warm neighbour entry for its upstream; losing it cost a
# second or more per miss (seen as a discovery server "timing out" in 3 %
# of first contacts).
lab_loss() {
  local pct=${1:-}
  [[ $pct =~ ^[0-9]+$ ]] && [ "$pct" -le 100 ] || lab_die "lab_loss PCT (0..100), not '$pct'"
  [ "$LAB_UP" = 1 ] || lab_die "lab_init first"
  ip netns exec "$LAB_ID-pub" nft flush chain bridge lab impair || lab_die "lab_loss: flush"
  if [ "$pct" -gt 0 ]; then
    ip netns exec "$LAB_ID-pub" nft add rule bridge lab impair meta protocol ip numgen random mod 100 '<' "$pct" drop ||
      lab_die "lab_loss: rule"
  fi
  LAB_LOSS_PCT=$pct
  lab_log "loss $pct% on the public segment"
}

# lab_delay MS: from now on every packet that crosses the public segment
# arrives MS milliseconds late (0..60000; 0 ends it), so the RTT between any
# two machines on it (NAT routers, servers, open hosts) grows by 2*MS, and
# so does the RTT between hosts behind them. Links made later get it too.
# How: each machine holds what it receives on its public interface, before
# conntrack sees it (prerouting, priority -310: a NAT's state is not touched
# while packets wait), in NFQUEUE queue 0 of its namespace, served by one
# np_delay per namespace (LAB_NP_DELAY = its path; lab_delay returns 77
# without it). The rule has `bypass`: if np_delay dies, traffic flows
# undelayed rather than not at all. lab_down stops them. The rule is
# nftables' `queue` where the kernel has it (CONFIG_NFT_QUEUE); otherwise
# iptables' NFQUEUE target in table raw (through nft's xtables compat, or
# legacy iptables), the same hook and priority (-300) -- so lab_delay also
# returns 77 if neither works (apt-get install iptables).
lab_delay() {
  local ms=${1:-} link
  [[ $ms =~ ^[0-9]+$ ]] && [ "$ms" -le 60000 ] || lab_die "lab_delay MS (0..60000), not '$ms'"
  [ "$LAB_UP" = 1 ] || lab_die "lab_init first"
  if [ "$ms" -gt 0 ] && [ ! -x "$LAB_NP_DELAY" ]; then
    echo "lab: lab_delay needs np_delay (set LAB_NP_DELAY to its path; it needs libnetfilter_queue)" >&2
    return 77
  fi
  if [ "$ms" -gt 0 ] && [ -z "$LAB_DELAY_HOW" ]; then
    LAB_DELAY_HOW=$(_lab_delay_how) || {
      echo "lab: lab_delay: this kernel has no nftables queue and iptables (NFQUEUE) is missing or fails (apt-get install iptables)" >&2
      return 77
    }
  fi
  _lab_delay_stop
  LAB_DELAY_MS=$ms
  [ "$ms" -gt 0 ] || return 0
  for link in "${LAB_PUBLINKS[@]}"; do
    # shellcheck disable=SC2086  # "NS IFNAME"
    _lab_delay_link $link || return 1
  done
  lab_log "delay $ms ms per crossing of the public segment"
}

# _lab_delay_how: "nft" if nftables can queue here, else the iptables
# command that can (tried in a scratch namespace), else fail.
_lab_delay_how() {
  local t="$LAB_ID-qprobe" how=""
  _lab_mkns "$t"
  if ip netns exec "$t" nft -f - 2>/dev/null <<'EOF'
table ip labdelay { chain pre { type filter hook prerouting priority -310; queue num 0 bypass; } }
EOF
  then
    how=nft
  else
    for how in iptables iptables-nft iptables-legacy ""; do
      [ -n "$how" ] || break
      command -v "$how" >/dev/null 2>&1 || continue
      ip netns exec "$t" "$how" -t raw -A PREROUTING -i lo -j NFQUEUE --queue-num 0 --queue-bypass \
        2>/dev/null && break
    done
  fi
  ip netns del "$t" 2>/dev/null || true
  [ -n "$how" ] && echo "$how"
}

# _lab_delay_link NS IFNAME: queue what NS receives on IFNAME; start NS's
# np_delay if it has none yet (bounded wait until it has bound the queue).
_lab_delay_link() {
  local ns=$1 ifn=$2 log pid n
  if [ "$LAB_DELAY_HOW" = nft ]; then
    ip netns exec "$ns" nft -f - <<EOF || lab_die "lab_delay: nft in $ns"
table ip labdelay {
  chain pre {
    type filter hook prerouting priority -310; policy accept;
    iifname "$ifn" queue num 0 bypass
  }
}
EOF
  else
    ip netns exec "$ns" "$LAB_DELAY_HOW" -t raw -A PREROUTING -i "$ifn" -j NFQUEUE --queue-num 0 --queue-bypass ||
      lab_die "lab_delay: $LAB_DELAY_HOW in $ns"
  fi
  [ -z "${LAB_DELAY_PIDS[$ns]:-}" ] || return 0
  mkdir -p "/tmp/$LAB_ID-delay"
  log="/tmp/$LAB_ID-delay/$ns.log"
  # Not a child of this shell (so a caller's bare `wait` does not wait for
  # it); lab_down kills it by pid and again as a process of the namespace.
  pid=$( (ip netns exec "$ns" "$LAB_NP_DELAY" --queue 0 --delay-ms "$LAB_DELAY_MS" \
    </dev/null >"$log" 2>&1 & echo $!) )
  LAB_PIDS+=("$pid")
  LAB_DELAY_PIDS[$ns]=$pid
  for ((n = 0; n < 50; n++)); do
    grep -q ' ready' "$log" 2>/dev/null && return 0
    lab_alive "$pid" || break
    sleep 0.1
  done
  echo "lab: np_delay did not start in $ns; log:" >&2
  cat "$log" >&2
  return 1
}

_lab_delay_stop() {
  local ns pid n
  for ns in "${!LAB_DELAY_PIDS[@]}"; do
    pid=${LAB_DELAY_PIDS[$ns]}
    kill -TERM "$pid" 2>/dev/null || true
    for ((n = 0; n < 20; n++)); do lab_alive "$pid" || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    if [ "$LAB_DELAY_HOW" = nft ]; then
      ip netns exec "$ns" nft delete table ip labdelay 2>/dev/null || true
    else
      ip netns exec "$ns" "$LAB_DELAY_HOW" -t raw -F PREROUTING 2>/dev/null || true
    fi
  done
  LAB_DELAY_PIDS=()
  LAB_DELAY_MS=0
}

# lab_conntrack NAME: the conntrack table of host NAME's NAT router(s).
lab_conntrack() {
  local r
  for r in "${LAB_NS[$1-r]:-}" "${LAB_NS[$1-r2]:-}"; do
    [ -n "$r" ] || continue
    echo "--- conntrack in $r"
    ip netns exec "$r" conntrack -L -p udp 2>/dev/null || ip netns exec "$r" cat /proc/net/nf_conntrack 2>/dev/null || true
  done
}

# lab_alive PID: PID runs (a zombie does not count).
lab_alive() {
  local st
  st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# lab_down: kill everything started in the lab, delete every namespace.
lab_down() {
  [ "$LAB_UP" = 1 ] || return 0
  LAB_UP=0
  local ns pid pids=() n
  for pid in "${LAB_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Anything else still running inside our namespaces (children, strays).
  for ns in "${LAB_ALL_NS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    done
  done
  pids+=("${LAB_PIDS[@]}")
  for ((n = 0; n < 20; n++)); do
    local alive=0
    for pid in "${pids[@]}"; do
      lab_alive "$pid" && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ns in "${LAB_ALL_NS[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  LAB_ALL_NS=(); LAB_PIDS=(); LAB_PUBLINKS=(); LAB_DELAY_PIDS=(); LAB_DELAY_MS=0
  # shellcheck disable=SC2034  # LAB_LOSS_PCT is for the callers
  LAB_LOSS_PCT=0
  case "$LAB_ID" in nplab*) rm -rf "/tmp/$LAB_ID-delay" ;; esac
  lab_log "lab $LAB_ID down"
}

# lab_leftovers: namespaces of this lab still present (empty if clean).
lab_leftovers() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${LAB_ID}-" || true
}
