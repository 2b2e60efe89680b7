#!/usr/bin/env bash
# bench/real-programs.sh: wall time and peak RSS of real programs under glibc, mimalloc and
# nebula-memory, runs alternated, medians of REPS (default 5).
#   python3: tests/programs/py_workload.py (dicts, strings, json, threads, sorting)
#   gcc:     -O2 compile of a generated 4000-function C file (cc1's own allocations)
#   clang:   clang++ -O2 of tests/unit/threads_test.cpp (LLVM's many small C++ objects)
#   sqlite3: bench/real/sqlite.sql (600,000 rows in memory, a 200 MB page cache)
#   perl:    bench/real/hashes.pl (a hash of 600,000 entries thinned and sorted, split strings)
#   python3-grow: bench/real/grow.py (two lists and a bytearray grown together to 48 MB each)
#   jq:      a 25 MB JSON array of 200,000 records mapped to new objects (values of 272 and 392 bytes)
#   lua:     bench/real/tables.lua (tables and strings; Lua allocates, grows and frees through realloc)
#   xz:      xz -T2 -2 of 12 MB of generated text lines (two threads compress a block each; every
#            block's encoder allocates and frees its match finder's tables of several MiB)
#   sort:    sort --parallel=2 -S 200M of 60 MB of generated lines (a 200 MB buffer written once,
#            two threads merge)
#   rg:      ripgrep -j2 over 1,000 files of 12 KB, the 12 MB and 60 MB line files and the 25 MB
#            JSON array (one line: the buffer it is read into doubles to 32 MiB)
# Usage: bench/real-programs.sh [BUILD_DIR] [REPS]     (run on an otherwise idle machine)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
reps="${2:-5}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mimalloc=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
if [ ! -e "$mimalloc" ]; then  # LD_PRELOAD of a missing file only warns: the column would be glibc's
  echo "real-programs.sh: $mimalloc is missing; install libmimalloc2.0 (./nebulamem bench installs it)" >&2
  exit 1
fi
for tool in jq lua5.4 xz rg; do
  if ! command -v $tool >/dev/null; then
    echo "real-programs.sh: $tool is missing; install it (./nebulamem bench installs it)" >&2
    exit 1
  fi
done
python3 - "$tmp/gen.c" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(4000):
        f.write(f"int f{i}(int x) {{ int a[8]; for (int k = 0; k < 8; k++) a[k] = x * {i} + k;"
                f" return a[x & 7] + {i % 97}; }}\n")
    f.write("int main(void) { int s = 0;\n")
    for i in range(0, 4000, 7):
        f.write(f"  s += f{i}({i});\n")
    f.write("  return s & 1; }\n")
PY
python3 - "$tmp/records.json" <<'PY'
import json, random, sys
random.seed(1)
json.dump([{"id": i, "name": "user%d" % i, "tags": ["t%d" % random.randrange(100) for _ in range(random.randrange(5))],
            "score": random.random(), "nested": {"a": i % 7, "b": str(i * 3)}} for i in range(200000)],
          open(sys.argv[1], "w"))
PY
echo '[.[] | {a: .id, b: (.score | tostring), t: (.tags | length)}] | length' >"$tmp/map.jq"
python3 - "$tmp/lines.txt" <<'PY'
import random, sys
random.seed(1)
with open(sys.argv[1], "w") as f:
    for i in range(1500000):
        f.write("%d %s %f\n" % (random.randrange(10**9), "x" * random.randrange(1, 40), random.random()))
PY
head -c 12000000 "$tmp/lines.txt" >"$tmp/lines12.txt"
mkdir "$tmp/rg"
split -n 1000 -d -a 4 "$tmp/lines12.txt" "$tmp/rg/part"
ln -s "$tmp/lines.txt" "$tmp/lines12.txt" "$tmp/records.json" "$tmp/rg/"
declare -A cmd
cmd[python3]="/usr/bin/python3 $root/tests/programs/py_workload.py"
cmd[gcc]="gcc -O2 -c $tmp/gen.c -o $tmp/gen.o"
cmd[clang]="clang++ -std=c++20 -O2 -I$root -I$root/include -c $root/tests/unit/threads_test.cpp -o $tmp/t.o"
cmd[sqlite3]="sqlite3 :memory: -init /dev/null -batch"
cmd[perl]="perl $root/bench/real/hashes.pl"
cmd[python3-grow]="/usr/bin/python3 $root/bench/real/grow.py"
cmd[jq]="jq -c -f $tmp/map.jq $tmp/records.json"
cmd[lua]="lua5.4 $root/bench/real/tables.lua"
cmd[xz]="xz -T2 -2 -c $tmp/lines12.txt"
cmd[sort]="sort --parallel=2 -S 200M $tmp/lines.txt"
cmd[rg]="rg -j2 -L -c 12345|user19 $tmp/rg"
declare -A input
input[sqlite3]="$root/bench/real/sqlite.sql"
progs=(python3 gcc clang sqlite3 perl python3-grow jq lua xz sort rg)
allocs=(glibc mimalloc nebula)
preload() {
  case $1 in glibc) echo "" ;; mimalloc) echo "$mimalloc" ;; nebula) echo "$build/libnebulamem.so" ;; esac
}
for prog in "${progs[@]}"; do
  for ((r = 0; r < reps; r++)); do
    for ((k = 0; k < ${#allocs[@]}; k++)); do
      a=${allocs[$(((k + r) % ${#allocs[@]}))]}
      /usr/bin/time -f "%e %M" -o "$tmp/t" env LD_PRELOAD="$(preload "$a")" ${cmd[$prog]} \
        <"${input[$prog]:-/dev/null}" >/dev/null 2>&1
      echo "$prog $a $(cat "$tmp/t")" >>"$tmp/runs"
    done
  done
done
python3 - "$tmp/runs" "${progs[@]}" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    prog, alloc, t, rss = line.split()
    rows.setdefault((prog, alloc), []).append((float(t), int(rss)))
print("| program | allocator | median wall s | median peak RSS MiB | time vs glibc | RSS vs glibc |")
print("|---|---|---|---|---|---|")
for prog in sys.argv[2:]:
    base_t = statistics.median(t for t, _ in rows[(prog, "glibc")])
    base_r = statistics.median(r for _, r in rows[(prog, "glibc")])
    for alloc in ("glibc", "mimalloc", "nebula"):
        ts = [t for t, _ in rows[(prog, alloc)]]
        rs = [r for _, r in rows[(prog, alloc)]]
        mt, mr = statistics.median(ts), statistics.median(rs)
        print(f"| {prog} | {alloc} | {mt:.2f} ({min(ts):.2f}-{max(ts):.2f}) | {mr/1024:.1f} | {mt/base_t:.2f} | {mr/base_r:.2f} |")
PY
