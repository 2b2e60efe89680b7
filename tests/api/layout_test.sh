#!/bin/bash
# The drop-in library's globals (docs/performance.md, log): the small ones, which every process
# touches, sit together in .bss; the big zero arrays that a process touches in one or two places
# (the 32 MiB segment map, the arena table) sit after them, in .lbss on x86-64 ELF. With the
# segment map in the middle of .bss, a small program touched 6 OS pages of our globals; now 3.
# Fails if a large array lands in .bss again, the segment map leaves .lbss, or .lbss holds its
# zeros in the file.
set -euo pipefail
lib=$1
if [ "$(uname -m)" != x86_64 ]; then
  echo "layout_test: the .lbss placement is for x86-64 ELF only; this is $(uname -m)"
  exit 0
fi
sections=$(readelf -SW "$lib")
field() {  # field SECTION COLUMN: type (0), address (1) or size (3, hex) of a section
  awk -v s="$1" -v c="$2" '{ for (i = 1; i <= NF; i++) if ($i == s) { print $(i + 1 + c); exit } }' <<<"$sections"
}
for s in .bss .lbss; do
  if [ -z "$(field $s 3)" ]; then echo "FAIL: no $s section in $lib"; exit 1; fi
done
# Zero sections take no room in the file: with .lbss a data section (clang 14 marks it so unless
# the definitions sit between NEBULA_SPARSE_BSS_BEGIN and _END), the library file held the
# 32 MiB of zeros.
for s in .bss .lbss; do
  if [ "$(field $s 0)" != NOBITS ]; then
    echo "FAIL: $s is $(field $s 0), not NOBITS: its zeros are in the file ($(stat -c %s "$lib") bytes)"
    exit 1
  fi
done
bss_size=$((16#$(field .bss 3)))
lbss_addr=$((16#$(field .lbss 2)))
lbss_size=$((16#$(field .lbss 3)))
echo "layout_test: .bss $bss_size bytes, .lbss $lbss_size bytes at $lbss_addr"
if [ "$bss_size" -gt 16384 ]; then
  echo "FAIL: .bss is $bss_size bytes (at most 16 KiB: large arrays belong in NEBULA_SPARSE_BSS)"
  nm -S --size-sort -C "$lib" | grep -i ' b ' | tail -5
  exit 1
fi
segmap=$(nm -C "$lib" | awk '$3 == "nebula::g_segmap" { print $1 }')
if [ -z "$segmap" ]; then echo "FAIL: nebula::g_segmap not found"; exit 1; fi
segmap=$((16#$segmap))
if [ "$segmap" -lt "$lbss_addr" ] || [ "$segmap" -ge $((lbss_addr + lbss_size)) ]; then
  echo "FAIL: the segment map is not in .lbss"
  exit 1
fi
echo "layout_test: ok"
