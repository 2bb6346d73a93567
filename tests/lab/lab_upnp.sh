# shellcheck shell=bash
# The lab's variables and helpers come from lab.sh, sourced first; checked
# alone this file would see its arrays as unassigned or as plain arrays.
# shellcheck disable=SC2004,SC2034,SC2153
# natpunch NAT lab, port-mapping gateway: a host behind a NAT router that runs
# the real miniupnpd (nftables flavour) with UPnP IGD, NAT-PMP and PCP.
# Source it after lab.sh, then:
#
#   lab_upnp_require                  exit 77 (ctest SKIP) without miniupnpd
#   lab_upnp_host NAME                host NAME behind a miniupnpd gateway
#   LAB_UPNP_NATPMP=no lab_upnp_host NAME   the same with NAT-PMP and PCP off
#                                     (a UPnP-only gateway: udp/5351 closed)
#   LAB_UPNP_MIN_LIFETIME=S LAB_UPNP_MAX_LIFETIME=T lab_upnp_host NAME
#                                     leases granted within S..T seconds
#                                     (default 60..86400)
#   lab_upnp_routes                   (again) on-link routes to LAB_UPNP_NET
#                                     in every public-side namespace
#   lab_upnp_rules NAME               miniupnpd's nft table in NAME's router
#   lab_upnp_log NAME                 path of miniupnpd's log (stdout+stderr)
#   lab_upnp_cleanup                  remove this lab's config directories
#                                     (after lab_down, which kills miniupnpd);
#                                     those of labs whose shell is gone are
#                                     removed by the next lab_upnp_host anyway
#
# After lab_upnp_host NAME (index i = the next NAT index, as lab_nat_host):
#   LAB_NS[NAME]      host namespace, eth0 10.i.0.2/24, default via 10.i.0.1
#   LAB_NS[NAME-r]    the gateway: lan 10.i.0.1/24, wan $LAB_UPNP_NET.(10+i)/24
#                     on the public bridge, on-link route to 203.0.113.0/24
#   LAB_IP[NAME]      10.i.0.2
#   LAB_PUBIP[NAME]   $LAB_UPNP_NET.(10+i), the gateway's WAN address
#   LAB_KIND[NAME]    upnp
#   LAB_UPNP_PID[NAME]  miniupnpd's pid (also in LAB_PIDS, so lab_down kills it)
#
# Why another public prefix: miniupnpd refuses to work with an external
# address in a reserved range (203.0.113.0/24 is TEST-NET-3), so the gateway's
# WAN gets LAB_UPNP_NET.0/24 (default 11.0.113.0/24). That prefix exists only
# inside the lab's namespaces, which have no route out, and sits on the same
# bridge as everything else: every public-side interface needs an on-link
# route to it, which lab_upnp_routes adds (lab.sh may add them as well; the
# route is "replace"d, so both together are fine). Hosts created after
# lab_upnp_host need another lab_upnp_routes call.
#
# NAT otherwise as the lab's "cone" kind: the router's ruleset is
# _lab_nat_rules' cone ruleset, unchanged; miniupnpd gets its own table
# "inet miniupnpd" whose base chains accept by default and only jump to the
# chains miniupnpd fills with its DNAT and forward rules. The lab's forward
# chain already lets in what was DNATed ("ct status dnat").

LAB_UPNP_NET=${LAB_UPNP_NET:-11.0.113}
LAB_UPNP_BIN=${LAB_UPNP_BIN:-/usr/sbin/miniupnpd}
LAB_UPNP_HTTP_PORT=${LAB_UPNP_HTTP_PORT:-2189}
declare -gA LAB_UPNP_PID=() LAB_UPNP_DIR=()

lab_upnp_require() {
  if [ ! -x "$LAB_UPNP_BIN" ]; then
    echo "lab: SKIP: $LAB_UPNP_BIN not found (apt-get install miniupnpd-nftables)" >&2
    exit 77
  fi
  if ! "$LAB_UPNP_BIN" --version 2>&1 | grep -q nftables; then
    echo "lab: SKIP: $LAB_UPNP_BIN is not the nftables flavour" >&2
    exit 77
  fi
}

# lab_upnp_routes: an on-link route to LAB_UPNP_NET.0/24 in every lab
# namespace whose eth0 or wan carries a public address (servers, open hosts,
# NAT WANs on the bridge; not the stacked NATs' inner "wan", which has a
# 100.64 address).
lab_upnp_routes() {
  local ns dev addrs
  for ns in "${LAB_ALL_NS[@]}"; do
    for dev in eth0 wan; do
      # Into a variable, not "| grep -q": under pipefail an early grep exit
      # can fail the pipeline.
      addrs=$(ip -n "$ns" -4 -o addr show dev "$dev" 2>/dev/null || true)
      if [[ $addrs == *" inet $LAB_PUBNET."* ]]; then
        ip -n "$ns" route replace "$LAB_UPNP_NET.0/24" dev "$dev" ||
          lab_die "route to $LAB_UPNP_NET.0/24 in $ns"
      fi
    done
  done
}

# _lab_upnp_nft NS: miniupnpd's table and chains (what its nft_init.sh would
# create, but with accepting base chains: the lab's table decides).
_lab_upnp_nft() {
  ip netns exec "$1" nft -f - <<'EOF' || lab_die "miniupnpd nft table in $1"
table inet miniupnpd {
  chain forward {
    type filter hook forward priority filter; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
EOF
}

# Config directories /tmp/nplab<PID>-upnp-* of labs whose shell is gone
# (no lab_upnp_cleanup: killed, or a script that never called it), as
# lab_init does for namespaces.
_lab_upnp_reap_stale() {
  local d pid
  for d in /tmp/nplab[0-9]*-upnp-*; do
    [ -d "$d" ] || continue
    pid=${d#/tmp/nplab}; pid=${pid%%[!0-9]*}
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      rm -rf "$d"
    fi
  done
  return 0
}

# lab_upnp_host NAME: see the top of this file.
lab_upnp_host() {
  local name=$1 i ns r pub host dir pid n
  [ "$LAB_UP" = 1 ] || lab_die "lab_init first"
  [ -n "$name" ] || lab_die "lab_upnp_host NAME"
  [ -x "$LAB_UPNP_BIN" ] || lab_die "$LAB_UPNP_BIN not found (lab_upnp_require skips)"
  _lab_upnp_reap_stale
  LAB_NEXT_NAT=$((LAB_NEXT_NAT + 1))
  i=$LAB_NEXT_NAT
  [ "$i" -le 200 ] || lab_die "too many NATs"
  pub="$LAB_UPNP_NET.$((10 + i))"
  host="10.$i.0.2"
  ns="$LAB_ID-$name"
  r="$ns-r"
  _lab_mkns "$ns"
  _lab_mkns "$r"
  LAB_NS[$name]=$ns; LAB_NS[$name-r]=$r
  LAB_IP[$name]=$host; LAB_PUBIP[$name]=$pub
  # shellcheck disable=SC2034  # LAB_KIND is for the callers
  LAB_KIND[$name]=upnp
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  _lab_link "$r" lan "$ns" eth0
  ip -n "$r" addr add "10.$i.0.1/24" dev lan
  ip -n "$ns" addr add "$host/24" dev eth0
  ip -n "$ns" route add default via "10.$i.0.1"
  _lab_link_pub "$r" wan
  # noprefixroute + replace: the same route whether or not lab.sh already
  # put one there for every bridge interface.
  ip -n "$r" addr add "$pub/24" dev wan noprefixroute
  ip -n "$r" route replace "$LAB_UPNP_NET.0/24" dev wan
  ip -n "$r" route replace "$LAB_PUBNET.0/24" dev wan
  _lab_nat_rules "$r" cone "$pub" "$host"
  _lab_upnp_nft "$r"
  lab_upnp_routes

  dir=$(mktemp -d "/tmp/$LAB_ID-upnp-$name.XXXXXX") || lab_die "mktemp"
  LAB_UPNP_DIR[$name]=$dir
  # enable_natpmp also enables PCP in builds with PCP support (this one
  # has: "Listening for NAT-PMP/PCP traffic"). secure_mode: a client may
  # only map to itself. Ports: what an unprivileged program asks for.
  cat >"$dir/miniupnpd.conf" <<EOF
ext_ifname=wan
listening_ip=lan
http_port=$LAB_UPNP_HTTP_PORT
enable_upnp=yes
enable_natpmp=${LAB_UPNP_NATPMP:-yes}
secure_mode=yes
system_uptime=no
notify_interval=60
clean_ruleset_interval=600
min_lifetime=${LAB_UPNP_MIN_LIFETIME:-60}
max_lifetime=${LAB_UPNP_MAX_LIFETIME:-86400}
lease_file=$dir/leases
uuid=$(cat /proc/sys/kernel/random/uuid)
friendly_name=natpunch lab gateway $name
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 10.$i.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
  # -d: foreground (stays in the router's namespace, so lab_down's
  # per-namespace kill finds it even if LAB_PIDS were lost).
  lab_spawn "$name-r" "$dir/miniupnpd.log" "$LAB_UPNP_BIN" -d -f "$dir/miniupnpd.conf" \
    -P "$dir/miniupnpd.pid"
  pid=$LAB_LAST_PID
  LAB_UPNP_PID[$name]=$pid
  # Ready when NAT-PMP/PCP (udp 5351, if enabled) and the HTTP server
  # both listen.
  if [ "${LAB_UPNP_NATPMP:-yes}" = yes ] && ! lab_wait_udp "$name-r" 5351 "$pid"; then
    echo "lab: miniupnpd did not start in $r; log:" >&2
    tail -n 30 "$dir/miniupnpd.log" >&2
    return 1
  fi
  for ((n = 0; n < 50; n++)); do
    [ -n "$(ip netns exec "$r" ss -Hltn "sport = :$LAB_UPNP_HTTP_PORT" 2>/dev/null)" ] && break
    sleep 0.1
  done
  if [ "$n" -ge 50 ]; then
    echo "lab: miniupnpd's HTTP server did not listen on $LAB_UPNP_HTTP_PORT; log:" >&2
    tail -n 30 "$dir/miniupnpd.log" >&2
    return 1
  fi
  lab_log "host $name: $host behind miniupnpd gateway $pub (pid $pid, $dir)"
}

lab_upnp_rules() {
  lab_exec "$1-r" nft list table inet miniupnpd
}

lab_upnp_log() {
  echo "${LAB_UPNP_DIR[$1]}/miniupnpd.log"
}

lab_upnp_cleanup() {
  local d
  for d in "${LAB_UPNP_DIR[@]}"; do
    case "$d" in /tmp/nplab*-upnp-*) rm -rf "$d" ;; esac
  done
  LAB_UPNP_DIR=()
}
