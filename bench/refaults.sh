#!/usr/bin/env bash
# bench/refaults.sh: which of the allocator's give-backs came back as page faults.
#
# Runs CMD under LIB (LD_PRELOAD) with perf recording every page fault with its address, and
# every madvise(MADV_DONTNEED) and munmap with its call chain. Each fault is matched to the last
# such call that covered its OS page: a fault on a page that had faulted before is a refault,
# charged to the call chain (three allocator frames) that gave the page back. Prints the faults,
# the distinct pages, the refaults, and per chain the refaults against the pages it gave back:
# a chain whose pages nearly all come back only moved page faults (docs/performance.md, stop 31).
#
# Usage: bench/refaults.sh LIB CMD [ARGS...]      (needs perf and the syscall tracepoints: root)
#   bench/refaults.sh build/libnebulamem.so build/bench/wl-strbuild
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 LIB CMD [ARGS...]" >&2
  exit 2
fi
lib=$1
shift
command -v perf >/dev/null || { echo "$0: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
LD_PRELOAD=$lib perf record -q -o "$tmp/perf.data" -e page-faults -c 1 -d \
  -e 'syscalls:sys_enter_madvise/call-graph=dwarf/' -e 'syscalls:sys_enter_munmap/call-graph=dwarf/' \
  "$@" >/dev/null
perf script -i "$tmp/perf.data" -F event,addr,trace,ip,sym 2>/dev/null | python3 -c '
import collections, re, sys

PAGE = 12
given = collections.Counter()      # chain -> OS pages it gave back
refaults = collections.Counter()   # chain -> those faulted in again
last = {}                          # OS page -> chain that gave it back last
faulted = collections.Counter()    # OS page -> faults
call = None                        # (kind, start, length) of the give-back being read
frames = []

def short(frame):
    return frame.replace("nebula::", "").replace("(anonymous namespace)::", "")

def close():
    global call
    if call is None:
        return
    kind, start, length = call
    ours = [f for f in frames if "nebula::" in f]
    chain = kind + ": " + (" < ".join(short(f) for f in ours[1:4]) if ours else "(outside the allocator)")
    given[chain] += length >> PAGE
    for page in range(start >> PAGE, (start + length) >> PAGE):
        last[page] = chain
    call = None

for line in sys.stdin:
    if "sys_enter_madvise" in line or "sys_enter_munmap" in line:
        close()
        frames = []
        m = re.search(r"(?:start|addr): (0x[0-9a-f]+), len(?:_in)?: (0x[0-9a-f]+)(?:, behavior: (0x[0-9a-f]+))?", line)
        if m and m.group(3) in (None, "0x00000004"):  # munmap, or madvise(MADV_DONTNEED)
            call = ("madvise" if m.group(3) else "munmap", int(m.group(1), 16), int(m.group(2), 16))
    elif "page-faults" in line:
        close()
        page = int(line.split()[1], 16) >> PAGE
        faulted[page] += 1
        if faulted[page] > 1:
            refaults[last.get(page, "never given back (a read then a write, or another mapping)")] += 1
    elif call is not None and line.strip():
        parts = line.split(None, 1)
        if len(parts) > 1:
            frames.append(parts[1].split("+")[0].strip())
close()
print(f"page faults {sum(faulted.values())}, distinct OS pages {len(faulted)}, refaults {sum(refaults.values())}")
for chain, n in refaults.most_common(12):
    back = given.get(chain, 0)
    share = f" ({100 * n // back}%)" if back else ""
    print(f"  {n:8d} refaults of {back:8d} pages given back{share}  {chain}")
'
