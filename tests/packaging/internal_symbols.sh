#!/usr/bin/env bash
# Fails when the static library defines a global symbol with the public
# prefix (np_, one underscore) that natpunch.h does not declare NP_EXPORT:
# internal names take np__ (or stay static), so that linking libnatpunch.a
# into an application cannot collide with its own np_ names, and the public
# prefix means "documented in natpunch.h".
# Usage: internal_symbols.sh LIBNATPUNCH.a NATPUNCH.h
set -euo pipefail
lib=$1
header=$2
[ -f "$lib" ] || { echo "no static library at $lib" >&2; exit 1; }
[ -f "$header" ] || { echo "no header at $header" >&2; exit 1; }

# Declared public: each NP_EXPORT declaration's function name (declarations
# may wrap after the return type, so the header is read as one line).
public=$(tr '\n' ' ' <"$header" | grep -oE 'NP_EXPORT[^;(]*\bnp_[A-Za-z0-9_]+[[:space:]]*\(' |
         grep -oE 'np_[A-Za-z0-9_]+[[:space:]]*\($' | tr -d '( ' | sort -u)
[ -n "$public" ] || { echo "found no NP_EXPORT declaration in $header" >&2; exit 1; }

defined=$(nm -g --defined-only "$lib" | awk 'NF == 3 {print $3}' | sort -u)
[ -n "$defined" ] || { echo "nm found no symbol in $lib" >&2; exit 1; }

bad=$(comm -23 <(grep -E '^np_[A-Za-z0-9]' <<<"$defined" || true) <(echo "$public"))
if [ -n "$bad" ]; then
  echo "libnatpunch.a defines np_ symbols that natpunch.h does not export:" >&2
  echo "$bad" | sed 's/^/  /' >&2
  echo "rename them np__NAME (internal) or make them static; or declare them NP_EXPORT in natpunch.h" >&2
  exit 1
fi
# Every public declaration is defined, so the check above looked at the real library.
missing=$(comm -13 <(echo "$defined") <(echo "$public"))
if [ -n "$missing" ]; then
  echo "natpunch.h exports symbols that libnatpunch.a does not define:" >&2
  echo "$missing" | sed 's/^/  /' >&2
  exit 1
fi
echo "internal symbols: $(grep -c '^np__' <<<"$defined" || true) np__ names, $(wc -l <<<"$public") public np_ names, none leaked"
