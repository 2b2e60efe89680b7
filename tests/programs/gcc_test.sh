#!/bin/bash
# gcc under the library (the driver, cc1, as, collect2 and ld all inherit LD_PRELOAD): compile a
# generated C file of a few thousand lines with -O2. The object file must be byte-identical to
# the one built with glibc's malloc (nm output compared too, for a readable diff), and the
# linked program must print the same output.
source "$(dirname "$0")/common.sh"
need gcc nm awk cmp

gen() { # a deterministic C program: 180 functions with loops, switches, arrays, recursion
  awk 'BEGIN {
    n = 180
    print "#include <stdio.h>"
    print "#include <string.h>"
    print "typedef unsigned long long u64;"
    print "struct pair { u64 a; u64 b; char tag[16]; };"
    for (i = 0; i < n; i++) {
      print "static u64 fn" i "(u64 x, int depth) {"
      print "  u64 acc = " (i * 2654435761 % 1000003) "ULL;"
      print "  struct pair p[" (i % 13 + 3) "];"
      print "  memset(p, 0, sizeof p);"
      print "  for (int k = 0; k < " (i % 29 + 5) "; k++) {"
      print "    acc = acc * 6364136223846793005ULL + x + (u64)k;"
      print "    p[k % " (i % 13 + 3) "].a ^= acc >> " (i % 31 + 1) ";"
      print "    p[k % " (i % 13 + 3) "].b += acc & 0xffff;"
      print "    switch ((acc >> 7) % 5) {"
      print "      case 0: acc ^= x << " (i % 11 + 1) "; break;"
      print "      case 1: acc += p[0].a; break;"
      print "      case 2: acc -= p[k % " (i % 13 + 3) "].b * " (i + 1) "; break;"
      print "      case 3: p[0].tag[k % 16] = (char)(acc & 0x7f); break;"
      print "      default: acc = (acc << 3) | (acc >> 61); break;"
      print "    }"
      print "  }"
      if (i > 0) print "  if (depth > 0) acc ^= fn" (i - 1) "(x ^ acc, depth - 1);"
      print "  for (unsigned j = 0; j < sizeof p / sizeof p[0]; j++) acc += p[j].a ^ p[j].b ^ (u64)p[j].tag[j % 16];"
      print "  return acc;"
      print "}"
    }
    print "int main(void) {"
    print "  u64 total = 0;"
    for (i = 0; i < n; i++) {
      print "  total ^= fn" i "(" i "ULL, " (i % 4) ");"
      if (i % 50 == 49) print "  printf(\"after fn" i ": %016llx\\n\", total);"
    }
    print "  printf(\"total: %016llx\\n\", total);"
    print "  return 0;"
    print "}"
  }'
}

gen >"$work/gen.c"
lines=$(wc -l <"$work/gen.c")
[ "$lines" -ge 3000 ] || fail "generated source has only $lines lines"

assert_active gcc --version
for mode in plain preloaded; do
  mkdir -p "$work/$mode"
  $mode gcc -O2 -c "$work/gen.c" -o "$work/$mode/gen.o"
  $mode gcc -O2 "$work/$mode/gen.o" -o "$work/$mode/gen"
  $mode nm "$work/$mode/gen.o" >"$work/$mode/nm.out"
  "$work/$mode/gen" >"$work/$mode/run.out" # the output of the compiled program itself
done
same_output "nm of the object file" "$work/plain/nm.out" "$work/preloaded/nm.out"
cmp "$work/plain/gen.o" "$work/preloaded/gen.o" || fail "object files differ under the library"
same_output "compiled program output" "$work/plain/run.out" "$work/preloaded/run.out"
ok "$(gcc -dumpfullversion), $lines lines: $(tail -1 "$work/preloaded/run.out")"
