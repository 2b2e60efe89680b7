#!/bin/bash
# Environment options: without NEBULA_MEM_* variables the library prints nothing at all;
# NEBULA_MEM_STATS=1 prints a summary at exit whose line starts with "nebula-memory:" on
# stderr; NEBULA_MEM_VERBOSE=1 prints the options at start on stderr. stdout is never touched.
#   options_test.sh LIBRARY PROBE
set -euo pipefail
lib=$1
probe=$2
[ -f "$lib" ] || { echo "options_test: library $lib missing" >&2; exit 1; }
[ -x "$probe" ] || { echo "options_test: probe $probe missing" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# a clean environment: drop every NEBULA_MEM_* variable the caller may have set
clean_env=(env)
while IFS='=' read -r name _; do
  case $name in NEBULA_MEM_*) clean_env+=(-u "$name") ;; esac
done < <(env)

run() { # run OUTNAME [VAR=VALUE...]
  local out=$1
  shift
  "${clean_env[@]}" LD_PRELOAD="$lib" "$@" "$probe" >"$tmp/$out.out" 2>"$tmp/$out.err"
}

fail() { echo "options_test: FAIL: $*" >&2; exit 1; }

run quiet
[ "$(cat "$tmp/quiet.out")" = "probe-ok" ] || fail "stdout without options: $(head -c 300 "$tmp/quiet.out")"
[ ! -s "$tmp/quiet.err" ] || fail "the library printed without any option: $(head -c 300 "$tmp/quiet.err")"

run stats NEBULA_MEM_STATS=1
[ "$(cat "$tmp/stats.out")" = "probe-ok" ] || fail "NEBULA_MEM_STATS=1 wrote to stdout: $(head -c 300 "$tmp/stats.out")"
grep -q '^nebula-memory:' "$tmp/stats.err" || fail "NEBULA_MEM_STATS=1: no line starting with 'nebula-memory:' on stderr: $(head -c 300 "$tmp/stats.err")"

run verbose NEBULA_MEM_VERBOSE=1
[ "$(cat "$tmp/verbose.out")" = "probe-ok" ] || fail "NEBULA_MEM_VERBOSE=1 wrote to stdout: $(head -c 300 "$tmp/verbose.out")"
[ -s "$tmp/verbose.err" ] || fail "NEBULA_MEM_VERBOSE=1 printed nothing on stderr"

echo "options_test: ok (silent by default, stats summary and verbose output on stderr only)"
