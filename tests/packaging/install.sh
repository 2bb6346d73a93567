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

# `make install` into a DESTDIR, as a packager runs it: man pages (one per
# subcommand, made from the --help texts) and the bash completion land where
# man and bash-completion look for them.
dest=$(mktemp -d)
trap 'rm -rf "$prefix" "$dest"' EXIT
if [ -f "$build/Makefile" ]; then
  make -s -C "$build" install DESTDIR="$dest" >/dev/null
else
  DESTDIR=$dest cmake --install "$build" >/dev/null
fi
inst=$dest$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
np=$inst/bin/natpunch
man1=$inst/share/man/man1
compl=$inst/share/bash-completion/completions/natpunch
[ -x "$np" ] || { echo "FAIL: make install DESTDIR: no $np"; exit 1; }
[ -f "$man1/natpunch.1" ] || { echo "FAIL: make install DESTDIR: no natpunch.1 in $man1"; exit 1; }
[ -f "$compl" ] || { echo "FAIL: make install DESTDIR: no bash completion at $compl"; exit 1; }
cmds=$("$np" --help | awk '/^Commands:$/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {on = 0}')
[ "$(wc -w <<<"$cmds")" -ge 7 ] || { echo "FAIL: natpunch --help lists too few commands: $cmds"; exit 1; }
# options: every -x and --long of the Options block of a help text (read to
# the end: an awk that left early would SIGPIPE natpunch under pipefail).
options() {
  awk '/^Options:$/ {on = 1; next} on && /^$/ {on = 0} on && /^ +-/ {
    for (i = 1; i <= NF; i++) { if ($i !~ /^-/) break; o = $i; sub(/,$/, "", o); print o } }'
}
checked=0
for c in $cmds; do
  page=$man1/natpunch-$c.1
  [ -f "$page" ] || { echo "FAIL: no man page natpunch-$c.1"; exit 1; }
  text=$(sed 's/\\-/-/g' "$page")
  opts=$("$np" "$c" --help | options)
  [ -n "$opts" ] || { echo "FAIL: no options read from 'natpunch $c --help'"; exit 1; }
  for o in $opts; do
    grep -qF -- "$o" <<<"$text" || { echo "FAIL: natpunch-$c.1 does not mention $o"; exit 1; }
    checked=$((checked + 1))
  done
  sed 's/\\-/-/g' "$man1/natpunch.1" | grep -q "natpunch-$c" || { echo "FAIL: natpunch.1 does not point to natpunch-$c(1)"; exit 1; }
  if command -v groff >/dev/null; then
    warn=$(groff -man -z -wmac "$page" 2>&1)
    [ -z "$warn" ] || { echo "FAIL: natpunch-$c.1: $warn"; exit 1; }
  fi
done
grep -q '^\.SH CONFIG FILE' "$man1/natpunch.1" || { echo "FAIL: natpunch.1 has no CONFIG FILE section"; exit 1; }
# The completion, sourced by a plain bash (no bash-completion package
# needed): subcommands, options, and alias names from the config file.
cfgdir=$dest/xdg
mkdir -p "$cfgdir/natpunch"
printf 'alias laptop = %s\n  alias nas.home=%s # x\n# alias hidden = y\n' \
  AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPQ AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPQ \
  >"$cfgdir/natpunch/config"
complete_line() { # complete_line WORD...: what TAB offers for the last word
  XDG_CONFIG_HOME=$cfgdir bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _natpunch
    [ ${#COMPREPLY[@]} -eq 0 ] || printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' _ "$compl" "$np" "$@"
}
want() { # want WHAT GOT EXPECTED
  [ "$2" = "$3" ] || { echo "FAIL: completion of $1: got '$2', want '$3'"; exit 1; }
}
want "'natpunch co'" "$(complete_line co)" "connect "
want "'natpunch connect ' (aliases)" "$(complete_line connect "")" "laptop nas.home "
want "'natpunch connect --peer n'" "$(complete_line connect --peer n)" "nas.home "
want "'natpunch listen --allow '" "$(complete_line listen --allow "")" "laptop nas.home "
want "'natpunch connect --con'" "$(complete_line connect --con)" "--config "
want "'natpunch probe --'" "$(complete_line probe --t)" "--timeout "
want "'natpunch connect -r ' (an address: nothing)" "$(complete_line connect -r "")" ""
echo "install: header, CLI, pkg-config file, shared and static library all usable;" \
     "man pages for $(wc -w <<<"$cmds") subcommands mention all $checked options; bash completion works"
