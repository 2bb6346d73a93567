#!/usr/bin/env bash
# Installs the Debian packages a target needs, and only those that are missing.
# Usage: scripts/deps.sh build|test|demo|bench
# Without root it cannot install: it names what is missing and how to get it,
# and fails only when the missing packages are needed to build at all.
set -euo pipefail

build_pkgs=(cmake make gcc pkg-config libgnutls28-dev zlib1g-dev libcjson-dev libsodium-dev libcmocka-dev
            libminiupnpc-dev libnatpmp-dev libngtcp2-dev libngtcp2-crypto-gnutls-dev)
test_pkgs=(clang libclang-rt-14-dev coturn iproute2 nftables conntrack procps jq
           miniupnpd-nftables libnetfilter-queue-dev iptables
           openssh-server openssh-client iperf3)
demo_pkgs=(iproute2 nftables conntrack procps jq)

case "${1:-build}" in
  build) want=("${build_pkgs[@]}") ;;
  test)  want=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  demo)  want=("${build_pkgs[@]}" "${demo_pkgs[@]}") ;;
  bench) want=("${build_pkgs[@]}" coturn iproute2 nftables iperf3 jq time libnetfilter-queue-dev) ;;
  *) echo "usage: $0 build|test|demo|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "natpunch: missing Debian packages: ${missing[*]}" >&2
  echo "natpunch: as root, run: apt-get install ${missing[*]}" >&2
  for p in "${missing[@]}"; do
    for b in "${build_pkgs[@]}"; do
      [ "$p" = "$b" ] && { echo "natpunch: cannot build without them" >&2; exit 1; }
    done
  done
  echo "natpunch: continuing; tests that need them will be skipped" >&2
  exit 0
fi

echo "natpunch: installing missing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when one of the missing packages is unknown
# to apt (a fresh image often has empty lists).
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/natpunch-apt.log 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
