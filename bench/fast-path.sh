#!/usr/bin/env bash
# bench/fast-path.sh: instructions per allocate+free iteration, counted with callgrind.
#
#   bench/fast-path.sh PAIR_BINARY [LIBRARY]            print "mode size instructions" lines
#   bench/fast-path.sh --check PAIR_BINARY LIBRARY GOLDEN
#        fail when a count grew more than 2% (+1) over the golden file; update the golden file
#        in the same commit as any change of the fast paths.
# LIBRARY is preloaded (ours, or a peer's for comparison); none means glibc.
set -euo pipefail
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
pair="$1"; lib="${2:-}"; golden="${3:-}"
iters=100000
cases="malloc:16 malloc:32 malloc:128 malloc:1024 malloc:4096 calloc:64 new:32 sized-delete:32 aligned:64"
count() {  # mode size iterations -> total instructions
  local out
  out=$(LD_PRELOAD="$lib" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$pair" "$1" "$2" "$3" 2>&1)
  echo "$out" | grep -o "Collected : [0-9]*" | awk '{print $3}'
}
status=0
for c in $cases; do
  mode=${c%%:*}; size=${c##*:}
  a=$(count "$mode" "$size" 0); b=$(count "$mode" "$size" "$iters")
  per=$(( (b - a + iters / 2) / iters ))
  if [ $check -eq 0 ]; then
    echo "$mode $size $per"
    continue
  fi
  want=$(awk -v m="$mode" -v s="$size" '$1==m && $2==s {print $3}' "$golden")
  if [ -z "$want" ]; then echo "no golden count for $mode $size (measured $per)"; status=1; continue; fi
  limit=$(( want + want / 50 + 1 ))
  if [ "$per" -gt "$limit" ]; then
    echo "FAIL $mode $size: $per instructions per iteration, golden $want (limit $limit)"; status=1
  else
    echo "ok   $mode $size: $per (golden $want)"
  fi
done
exit $status
