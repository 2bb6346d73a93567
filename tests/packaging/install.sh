#!/usr/bin/env bash
# Installs the build into a scratch prefix and builds examples/probe.c and
# examples/connect.c the way a user would: with pkg-config, against the
# shared library, and again statically. Then runs the results to prove they
# link and load.
set -euo pipefail
build=$1 src=$2 kind=${3:-plain}
# A sanitizer build's library needs the ASan runtime loaded first, so the
# example is built the same way.
cflags=(-std=c11 -Wall -Wextra -Werror)
[ "$kind" = sanitize ] && cflags+=(-fsanitize=address,undefined)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(find "$prefix" -name natpunch.pc -printf '%h\n' | head -1)
[ -n "$libdir" ] || { echo "FAIL: natpunch.pc not installed"; exit 1; }
[ -f "$prefix/include/natpunch.h" ] || { echo "FAIL: natpunch.h not installed"; exit 1; }
[ -x "$prefix/bin/natpunch" ] || { echo "FAIL: natpunch CLI not installed"; exit 1; }
export PKG_CONFIG_PATH=$libdir
pc() { pkg-config --define-variable=prefix="$prefix" "$@" natpunch; }
case "$(pc --libs)" in *"-L$prefix/"*-lnatpunch*) ;; *) echo "FAIL: pkg-config gives: $(pc --libs)"; exit 1 ;; esac
cc "${cflags[@]}" "$src/examples/probe.c" $(pc --cflags) $(pc --libs) \
   -o "$prefix/probe_shared"
out=$(LD_LIBRARY_PATH=$libdir/.. "$prefix/probe_shared" 2>&1 || true)
case "$out" in *usage:*) ;; *) echo "FAIL: example did not run: $out"; exit 1 ;; esac
# Static: the archive plus its dependencies as shared libraries, as the
# pkg-config file lists them (Requires.private, Libs.private).
# (not --static: that recurses into the dependencies' own private libraries.)
requires=$(pc --print-requires-private | awk '{print $1}')
static_libs="$libdir/../libnatpunch.a $(pkg-config --libs $requires) $(sed -n 's/^Libs.private: *//p' "$libdir/natpunch.pc")"
cc "${cflags[@]}" "$src/examples/probe.c" $(pc --cflags) $static_libs -o "$prefix/probe_static"
out=$("$prefix/probe_static" 1.2.3.4:x 2>&1 || true)
case "$out" in *"not a numeric address"*) ;; *) echo "FAIL: static example: $out"; exit 1 ;; esac
# examples/connect.c (the agent: connect/listen) the same two ways.
cc "${cflags[@]}" "$src/examples/connect.c" $(pc --cflags) $(pc --libs) \
   -o "$prefix/connect_shared"
out=$(LD_LIBRARY_PATH=$libdir/.. "$prefix/connect_shared" 2>&1 || true)
case "$out" in *usage:*) ;; *) echo "FAIL: connect example did not run: $out"; exit 1 ;; esac
cc "${cflags[@]}" "$src/examples/connect.c" $(pc --cflags) $static_libs -o "$prefix/connect_static"
out=$("$prefix/connect_static" 1.2.3.4:x 1.2.3.4 1.2.3.5 "$prefix/key" 2>&1 || true)
case "$out" in *"addresses are numeric"*) ;; *) echo "FAIL: static connect example: $out"; exit 1 ;; esac
libpath=$libdir/..
# Only the np_ API is exported from the shared library.
leaked=$(nm -D --defined-only "$libpath/libnatpunch.so" | awk '$2 ~ /[TDB]/ {print $3}' | grep -v '^np_' || true)
[ -z "$leaked" ] || { echo "FAIL: non-np_ symbols exported: $leaked"; exit 1; }
internal=$(nm -D --defined-only "$libpath/libnatpunch.so" | awk '{print $3}' | grep -E '^np_(stun|nat_probe|udp|log)_' || true)
[ -z "$internal" ] || { echo "FAIL: internal symbols exported: $internal"; exit 1; }
echo "install: header, CLI, pkg-config file, shared and static library all usable"
