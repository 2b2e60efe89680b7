#!/usr/bin/env bash
# bench/lockwaits.sh: where the allocator's threads wait for each other's locks.
#
# Our lock (core/base.hpp) spins briefly on a taken lock, then sleeps on it (futex wait) until
# its holder's unlock wakes it (futex wake); before stop 39 it yielded the CPU (sched_yield) in a
# loop instead. A few state waits (a flag another thread clears) still yield. Runs CMD under LIB
# (LD_PRELOAD) with perf recording every futex and sched_yield call with its call chain, and
# prints per call site (the first three allocator frames above the call) the waits on a lock
# (futex waits from Lock::lock_contended), the wakes an unlock made (futex calls from the
# allocator's other frames) and the yields (the program's own futex calls, outside the allocator,
# are counted apart). Waits that remain with more threads than cores are often on a lock whose
# holder is off the CPU (docs/performance.md, stops 38 and 39).
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
  -e 'syscalls:sys_enter_futex/call-graph=dwarf/' "$@" >/dev/null
perf script -i "$tmp/perf.data" -F event,ip,sym 2>/dev/null | python3 -c '
import collections, re, sys

# perf script prints a sample per paragraph: the event line, then a frame per line
# ("address symbol+offset"), innermost first.
kinds = {"wait": collections.Counter(), "wake": collections.Counter(), "yield": collections.Counter()}
outside = 0
for sample in sys.stdin.read().split("\n\n"):
    is_yield = "sys_enter_sched_yield" in sample
    if not is_yield and "sys_enter_futex" not in sample:
        continue
    syms = re.findall(r"^\s*[0-9a-f]+ (\S.*?)(?:\+0x[0-9a-f]+)?(?: \(.*\))?$", sample, re.M)
    frames = [f.replace("nebula::", "").replace("(anonymous namespace)::", "") for f in syms if "nebula::" in f]
    if not frames:
        outside += 1
        continue
    kind = "yield" if is_yield else ("wait" if any("lock_contended" in f for f in frames) else "wake")
    ours = [f for f in frames if "os::" not in f and "lock_contended" not in f]
    kinds[kind][" < ".join(ours[:3])] += 1
total = {k: sum(c.values()) for k, c in kinds.items()}
print("lock waits (futex waits) %d, wakes %d, yields %d; futex calls outside the allocator %d"
      % (total["wait"], total["wake"], total["yield"], outside))
for kind in ("wait", "wake", "yield"):
    for site, n in kinds[kind].most_common(8):
        print(f"  {kind:5s} {n:8d}  {site}")
'
