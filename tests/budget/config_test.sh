#!/usr/bin/env bash
# Configuration errors: every bad value class gives one clear line naming the option and the
# value, and the default stays (checked with nebulamem-options, which prints the value in
# force).   config_test.sh LIBRARY OPTIONS_TOOL
set -uo pipefail
lib=$1
tool=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "config_test: FAIL: $*"; exit 1; }
expect() {  # expect 'grep pattern' 'option line pattern' VAR=VALUE...
  local pattern=$1 force=$2
  shift 2
  env "$@" "$tool" >"$tmp/out" 2>"$tmp/err"
  grep -qE "$pattern" "$tmp/err" || fail "$*: stderr lacks /$pattern/: $(cat "$tmp/err")"
  [ "$(grep -cE "$pattern" "$tmp/err")" -eq 1 ] || fail "$*: message printed more than once"
  grep -qE "$force" "$tmp/out" || fail "$*: value in force not /$force/: $(cat "$tmp/out")"
}
expect "bad value 'lots' for option budget" '^NEBULA_MEM_BUDGET +budget +none +none ' NEBULA_MEM_BUDGET=lots
expect "bad value '-5M' for option budget" '^NEBULA_MEM_BUDGET +budget +none +none ' NEBULA_MEM_BUDGET=-5M
expect "bad value '99999999999999999999' for option retain" '^NEBULA_MEM_RETAIN +bytes +32.0 MiB +32.0 MiB ' NEBULA_MEM_RETAIN=99999999999999999999
expect "bad value '16E' for option retain" '^NEBULA_MEM_RETAIN +bytes +32.0 MiB +32.0 MiB ' NEBULA_MEM_RETAIN=16E
expect "bad value '0%' for option budget" '^NEBULA_MEM_BUDGET +budget +none +none ' NEBULA_MEM_BUDGET=0%
expect "bad value '150' for option pressure_low" '^NEBULA_MEM_PRESSURE_LOW +int +70 +70 ' NEBULA_MEM_PRESSURE_LOW=150
expect "bad value 'maybe' for option on_oom" '^NEBULA_MEM_ON_OOM +choice .* null ' NEBULA_MEM_ON_OOM=maybe
expect "bad value 'yes please' for option stats" '^NEBULA_MEM_STATS +bool +off +off ' "NEBULA_MEM_STATS=yes please"
expect "unknown option 'NEBULA_MEM_BUDGIT' in the environment" '^NEBULA_MEM_BUDGET +budget +none +none ' NEBULA_MEM_BUDGIT=1G
expect "cannot read NEBULA_MEM_CONF file '/nonexistent/nebula.conf'" '^NEBULA_MEM_RETAIN +bytes +32.0 MiB +32.0 MiB ' NEBULA_MEM_CONF=/nonexistent/nebula.conf
# a file with good and bad lines: the good ones apply, the environment wins over the file
cat >"$tmp/conf" <<'CONF'
# comment
retain = 8M          # trailing comment
purge_delay = 10ms
budget = nonsense
colour = blue
no equals sign here
CONF
env NEBULA_MEM_CONF="$tmp/conf" NEBULA_MEM_PURGE_DELAY=20 "$tool" >"$tmp/out" 2>"$tmp/err"
grep -qE '^NEBULA_MEM_RETAIN +bytes +32.0 MiB +8.0 MiB \*' "$tmp/out" || fail "file value not applied: $(cat "$tmp/out")"
grep -qE '^NEBULA_MEM_PURGE_DELAY +ms +250 ms +20 ms \*' "$tmp/out" || fail "environment did not win: $(cat "$tmp/out")"
grep -q "bad value 'nonsense' for option budget (NEBULA_MEM_CONF)" "$tmp/err" || fail "bad file value: $(cat "$tmp/err")"
grep -q "unknown option 'colour' in NEBULA_MEM_CONF" "$tmp/err" || fail "unknown file name: $(cat "$tmp/err")"
grep -q "line without '=': 'no equals sign here'" "$tmp/err" || fail "bad file line: $(cat "$tmp/err")"
# good values of each form are accepted silently
env NEBULA_MEM_BUDGET=50% NEBULA_MEM_RETAIN=1g NEBULA_MEM_ON_OOM=ABORT NEBULA_MEM_PURGE_DELAY=2s "$tool" >"$tmp/out" 2>"$tmp/err"
[ ! -s "$tmp/err" ] || fail "good values produced messages: $(cat "$tmp/err")"
grep -qE '^NEBULA_MEM_BUDGET .*50% of physical memory \*' "$tmp/out" || fail "50%: $(cat "$tmp/out")"
grep -qE '^NEBULA_MEM_PURGE_DELAY .* 2000 ms \*' "$tmp/out" || fail "2s: $(cat "$tmp/out")"
# the library itself reports under preload too, once
err=$(NEBULA_MEM_BUDGET=lots LD_PRELOAD="$lib" /bin/true 2>&1)
[ "$(echo "$err" | grep -c "bad value 'lots' for option budget")" -eq 1 ] || fail "preloaded: $err"
echo "config_test: ok (bad numbers, negatives, overflow, bad suffix, out of range, bad words, unknown names, unreadable file, bad file lines)"
