#!/bin/bash
# GNU sort under the library: a generated 200k-line file sorted several ways (whole line, numeric
# key, unique on a field, reverse, a tiny buffer forcing temporary files and merges, several
# threads, a UTF-8 locale). Every output identical to sort's output with glibc's malloc.
source "$(dirname "$0")/common.sh"
need sort awk cmp

awk 'BEGIN {
  x = 4242
  for (i = 0; i < 200000; i++) {
    x = (x * 1103515245 + 12345) % 2147483648
    w = ""
    for (j = 0; j < 3 + x % 9; j++) w = w substr("abcdefghijklmnopqrstuvwxyzABC", 1 + (x + j * 7) % 29, 1)
    printf "%s %d %d.%03d %s%d\n", w, x % 100000, x % 977, x % 1000, substr("xyz", 1 + i % 3, 1), i % 5000
  }
}' >"$work/input.txt"
[ "$(wc -l <"$work/input.txt")" -eq 200000 ] || fail "input generation failed"

variants=(
  "plainsort|"
  "numeric|-n -k2,2 -s"
  "float-reverse|-g -r -k3,3"
  "unique-field|-u -k4,4"
  "multikey|-k4,4 -k1,1r -k2,2n"
  "tinybuffer|-S 64K -T $work"
  "parallel|--parallel=4 -S 20M"
  "check-stable|-s -k2,2n -k1,1"
)

assert_active sort /dev/null
n=0
for v in "${variants[@]}"; do
  name=${v%%|*}
  args=${v#*|}
  # shellcheck disable=SC2086
  plain sort $args "$work/input.txt" >"$work/$name.plain"
  # shellcheck disable=SC2086
  preloaded sort $args "$work/input.txt" >"$work/$name.pre"
  same_output "sort $args" "$work/$name.plain" "$work/$name.pre"
  n=$((n + 1))
done
# the UTF-8 collation path (strxfrm/strcoll allocate)
LC_ALL=C.UTF-8 plain sort -f "$work/input.txt" >"$work/utf8.plain"
LC_ALL=C.UTF-8 preloaded sort -f "$work/input.txt" >"$work/utf8.pre"
same_output "LC_ALL=C.UTF-8 sort -f" "$work/utf8.plain" "$work/utf8.pre"
n=$((n + 1))
# and the result is really sorted
preloaded sort -c "$work/plainsort.pre" || fail "sort -c: the preloaded output is not sorted"
ok "$(sort --version | head -1): $n variants on 200000 lines"
