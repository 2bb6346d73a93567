#!/usr/bin/env bash
# Man pages from the --help texts, so that they cannot drift from the code:
# natpunch.1 from `natpunch --help` and natpunch-COMMAND.1 from each
# `natpunch COMMAND --help` (the commands are read from the first). No
# dependency beyond bash and awk (Debian's help2man handles one program, not
# a tool with subcommands).
# Usage: help2man.sh PATH/TO/natpunch OUTDIR VERSION
set -euo pipefail
np=${1:?usage: $0 PATH/TO/natpunch OUTDIR VERSION} out=${2:?} version=${3:?}
mkdir -p "$out"
# SOURCE_DATE_EPOCH, when set, makes the pages reproducible.
date=$(date -u ${SOURCE_DATE_EPOCH:+-d "@$SOURCE_DATE_EPOCH"} +%Y-%m-%d)

# to_man NAME SUMMARY SEEALSO < help text > page
# The help texts follow one layout: "Usage:" lines, paragraphs, an
# "Options:" block of "  -x, --long ARG   text" entries (continuations
# indented further), "Commands:" entries, and paragraphs that start with
# "Exit status:". Indented lines elsewhere are examples, kept as they are.
to_man() {
  awk -v name="$1" -v summary="$2" -v seealso="$3" -v version="$version" -v date="$date" '
  function esc(s) {
    gsub(/\\/, "\\e", s)
    gsub(/-/, "\\-", s)
    if (s ~ /^[.\047]/) s = "\\&" s
    return s
  }
  function flush_para(   n, i, l) {
    if (para == "") return
    n = split(para, l, "\n")
    for (i = 1; i <= n; i++) print esc(l[i])
    para = ""
  }
  BEGIN {
    up = toupper(name)
    printf ".TH %s 1 \"%s\" \"natpunch %s\" \"User Commands\"\n", up, date, version
    print ".SH NAME"
    print esc(name) " \\- " esc(summary)
    state = "usage"
  }
  # Usage block: every line up to the first blank one.
  state == "usage" {
    if ($0 == "") { print ".fi"; print ".SH DESCRIPTION"; state = "text"; next }
    if (!started) { print ".SH SYNOPSIS"; print ".nf"; started = 1 }
    line = $0
    sub(/^Usage: /, "", line)
    sub(/^       /, "", line)
    print esc(line)
    next
  }
  /^(Options|Commands):$/ {
    flush_para(); if (inex) { print ".RE"; print ".fi"; inex = 0 }
    print ".SH " toupper(substr($0, 1, length($0) - 1))
    state = "list"; next
  }
  state == "list" && /^ +-|^  [a-z][a-z-]+ +[a-z]/ {
    # "  -r, --rendezvous IP[:PORT]  text": the term ends at two blanks.
    line = $0; sub(/^ +/, "", line)
    term = line; desc = ""
    if (match(line, /   *[^ ]/)) { term = substr(line, 1, RSTART - 1); desc = substr(line, RSTART + RLENGTH - 1) }
    print ".TP"
    if (term ~ /^-/) print "\\fB" esc(term) "\\fR"
    else print "\\fB" esc(term) "\\fR (see \\fBnatpunch\\-" esc(term) "\\fR(1))"
    if (desc != "") print esc(desc)
    next
  }
  state == "list" && /^    +[^ ]/ { line = $0; sub(/^ +/, "", line); print esc(line); next }
  state == "list" && $0 == "" { state = "text"; print ".PP"; next }
  state == "list" { state = "text" }
  $0 == "" { flush_para(); if (inex) { print ".RE"; print ".fi"; inex = 0 } print ".PP"; next }
  /^Config file:/ {
    flush_para(); if (inex) { print ".RE"; print ".fi"; inex = 0 }
    print ".SH CONFIG FILE"
    line = $0; sub(/^Config file: */, "", line); para = line; next
  }
  /^Exit status:/ {
    flush_para(); if (inex) { print ".RE"; print ".fi"; inex = 0 }
    print ".SH EXIT STATUS"
    line = $0; sub(/^Exit status: */, "", line); para = line; next
  }
  /^natpunch [0-9]/ { next } # the version line of the main help
  /^  / {
    flush_para()
    if (!inex) { print ".nf"; print ".RS 4"; inex = 1 }
    line = $0; sub(/^  /, "", line); print esc(line); next
  }
  {
    if (inex) { print ".RE"; print ".fi"; inex = 0 }
    para = para == "" ? $0 : para "\n" $0
  }
  END {
    flush_para(); if (inex) { print ".RE"; print ".fi" }
    print ".SH FILES"
    print ".TP"
    print "\\fI$XDG_CONFIG_HOME/natpunch/config\\fR, \\fI~/.config/natpunch/config\\fR"
    print "the user config file: default servers, key, allow list, aliases"
    print ".TP"
    print "\\fI/etc/natpunch/config\\fR"
    print "the system-wide config file, read after the user one"
    print ".TP"
    print "\\fI~/.config/natpunch/key\\fR"
    print "the default identity key"
    print ".SH SEE ALSO"
    print seealso
  }'
}

main_help=$("$np" --help)
cmds=$(printf '%s\n' "$main_help" | awk '/^Commands:$/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {on = 0}')
[ -n "$cmds" ] || { echo "help2man.sh: no commands in 'natpunch --help'" >&2; exit 1; }
see=""
for c in $cmds; do see="$see${see:+,\n}.BR natpunch\\-${c//-/\\-} (1)"; done
printf '%s\n' "$main_help" |
  to_man natpunch "direct UDP paths between peers behind NATs" "$(printf "$see")" >"$out/natpunch.1"
for c in $cmds; do
  summary=$(printf '%s\n' "$main_help" | awk -v c="$c" '$1 == c {sub(/^ *[^ ]+ +/, ""); print; exit}')
  "$np" "$c" --help | to_man "natpunch-$c" "$summary" ".BR natpunch (1)" >"$out/natpunch-$c.1"
done
