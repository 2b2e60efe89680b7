#!/usr/bin/env bash
# bench/lockwaits.sh: where the allocator's threads wait for each other's locks.
#
# Our spin lock (core/base.hpp) yields the CPU (sched_yield) after 64 spins on a taken lock, so
# each sched_yield call the process makes from the allocator is a wait on a lock some other
# thread holds for longer than a few hundred cycles. Runs CMD under LIB (LD_PRELOAD) with perf
# recording every sched_yield call with its call chain, and prints the calls and, per call site
# (the first three allocator frames above the yield), how many (docs/performance.md, stop 38).
# Waits that remain with more threads than cores are often on a lock whose holder is off the CPU.
#
# Usage: bench/lockwaits.sh LIB CMD [ARGS...]     (needs perf and the syscall tracepoints: root)
#   bench/lockwaits.sh build/libnebulamem.so build/bench/wl-large --threads 8
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 LIB CMD [ARGS...]" >&2
  exit 2
fi
lib=$(readlink -f "$1")  # (ld.so ignores a relative LD_PRELOAD path without a slash)
shift
[ -f "$lib" ] || { echo "$0: no such library: $lib" >&2; exit 2; }
command -v perf >/dev/null || { echo "$0: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
LD_PRELOAD=$lib perf record -q -o "$tmp/perf.data" -e 'syscalls:sys_enter_sched_yield/call-graph=dwarf/' \
  "$@" >/dev/null
perf script -i "$tmp/perf.data" -F event,ip,sym 2>/dev/null | python3 -c '
import collections, re, sys

# perf script prints a sample per paragraph: the event line, then a frame per line
# ("address symbol+offset"), innermost first.
sites = collections.Counter()
for sample in sys.stdin.read().split("\n\n"):
    if "sys_enter_sched_yield" not in sample:
        continue
    syms = re.findall(r"^\s*[0-9a-f]+ (\S.*?)(?:\+0x[0-9a-f]+)?(?: \(.*\))?$", sample, re.M)
    ours = [f.replace("nebula::", "").replace("(anonymous namespace)::", "")
            for f in syms if "nebula::" in f and "os::yield" not in f]
    sites[" < ".join(ours[:3]) if ours else "(outside the allocator)"] += 1
print(f"sched_yield calls (lock waits) {sum(sites.values())}")
for site, n in sites.most_common(12):
    print(f"  {n:8d}  {site}")
'
