#!/usr/bin/env python3
"""Repeatable cost of a workload under each allocator: instructions and simulated cache misses.

    bench/cost.py [--build DIR] [--allocators LIST] [--only NAME[,NAME...]] [--quick | --smoke]
                  [--env K=V ...] [--ll BYTES] [-- PROGRAM ARGS...]

Runs each table workload (bench/run.py's, at its --quick or --smoke sizes with those) or the program given
after `--`, once per allocator, under `valgrind --tool=callgrind --cache-sim=yes --fair-sched=yes`,
and prints per allocator: the instructions of the whole process and of the allocator's own library,
first-level data misses (D1: 32 KiB, 8-way) and last-level data misses (LL: a private cache of
--ll bytes, default 512 KiB, this machine's L2 per core), both for the whole process and for the
allocator's library.

Why: the 2-core VM's wall times spread by 10-30% between runs, while these counts repeat within
0.3% from run to run: `--fair-sched=yes` makes valgrind hand its one lock to the program's threads
in turn, so a multi-threaded program runs the same interleaving each time (without it the D1
misses of `rptest` spread over 3.3-4.0 M in three runs; with it, 3.154-3.162 M). Valgrind runs
the threads one at a time, so these counts leave out what only happens with threads on two cores
at once (lines moving between the cores' caches), and a miss is a count, not a time: judge a
change by wall time too (bench/run.py). Stop 49 (docs/performance.md) shows both sides: a change
that took a fifth of `rptest`'s D1 misses away and added 5% of instructions was slower. Two more
limits (docs/performance.md, "Reproduce"): our maintenance is paced by the clock, so it runs
30-50 times as often per operation under valgrind (--env NEBULA_MEM_PURGE_DELAY=10000 paces it
about as natively), and the simulated caches are indexed by virtual address, which overstates
the last-level misses of our segment headers, 4 MiB apart.

Allocators: nebula (BUILD/libnebulamem.so; --env passes NEBULA_MEM_ options to it), glibc (no
preload), jemalloc, mimalloc, tcmalloc (the Debian packages, where installed).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: the workloads, their sizes, the peers' libraries)

EVENTS = ["Ir", "D1mr", "D1mw", "DLmr", "DLmw"]
# The allocation entry points where callgrind names no object for them (tcmalloc's, whose
# symbols it reads from the dynamic table only): counted as the allocator's.
ENTRY = re.compile(r"^\?\?\?:(malloc|free|calloc|realloc|memalign|posix_memalign|aligned_alloc|valloc|pvalloc"
                   r"|malloc_usable_size|operator new.*|operator delete.*|tc_.*) \[\?\?\?\]$")


def preload_for(alloc, build_dir):
    if alloc == "glibc":
        return None
    if alloc == "nebula":
        return os.path.realpath(os.path.join(build_dir, "libnebulamem.so"))
    path = bench.find_peer(bench.PEER_SONAMES[alloc][0])
    return os.path.realpath(path) if path else None  # (callgrind names the file, not the link)


def measure(argv, preload, env_extra, ll):
    """Totals and the preloaded library's own part: {event: (total, library)}."""
    env = dict(os.environ)
    env.update(env_extra)
    if preload:
        env["LD_PRELOAD"] = preload
    with tempfile.NamedTemporaryFile(prefix="cost.", suffix=".out", delete=False) as f:
        out = f.name
    try:
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--fair-sched=yes",
               "--D1=32768,8,64", f"--LL={ll},8,64", f"--callgrind-out-file={out}"] + argv
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed under valgrind:\n{r.stderr[-2000:]}")
        ann = subprocess.run(["callgrind_annotate", "--threshold=100", "--show=" + ",".join(EVENTS), out],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(out)
    totals, lib = None, [0] * len(EVENTS)
    cell = r"(\.|[\d,]+)(?:\s+\(\s*[\d.]+%\))?\s+"
    row = re.compile(r"^\s*" + cell * len(EVENTS) + r"(.*)$")
    for line in ann.splitlines():
        m = row.match(line)
        if not m:
            continue
        vals = [0 if v == "." else int(v.replace(",", "")) for v in m.groups()[:len(EVENTS)]]
        where = m.group(len(EVENTS) + 1)
        if where.startswith("PROGRAM TOTALS"):
            totals = vals
        elif preload and (where.endswith("[" + preload + "]") or ENTRY.match(where)):
            lib = [a + b for a, b in zip(lib, vals)]
    if totals is None or totals[0] == 0:
        raise RuntimeError("no totals in callgrind's output")
    if preload and lib[0] == 0:
        raise RuntimeError(f"no instructions counted in {preload}: callgrind_annotate's output not understood")
    return {e: (totals[i], lib[i]) for i, e in enumerate(EVENTS)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(bench.ROOT, "build"))
    ap.add_argument("--allocators", default="nebula,glibc,jemalloc,mimalloc,tcmalloc")
    ap.add_argument("--only", default="", help="table workloads to run (default: all, or the program after --)")
    ap.add_argument("--quick", action="store_true", help="the table's --quick sizes")
    ap.add_argument("--env", action="append", default=[], help="K=V for the nebula runs (repeatable)")
    ap.add_argument("--ll", type=int, default=512 * 1024, help="simulated last-level cache, bytes")
    ap.add_argument("--smoke", action="store_true", help="the workloads' --smoke sizes (the test suite's check)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    cases = []
    if cmd:
        cases.append((os.path.basename(cmd[0]), cmd))
    else:
        wanted = set(filter(None, args.only.split(",")))
        for name, prog, extra, _threads, _what in bench.WORKLOADS:
            if not wanted or name in wanted:
                cases.append((name, bench.workload_argv(args.build, name, prog, extra,
                                                        "smoke" if args.smoke else "quick" if args.quick else "full",
                                                        None)))
    print("| workload | allocator | instructions | in the allocator | D1 misses | in the allocator "
          "| LL misses | in the allocator |")
    print("|---|---|---|---|---|---|---|---|")
    for name, argv in cases:
        for alloc in args.allocators.split(","):
            preload = preload_for(alloc, args.build)
            if alloc != "glibc" and not preload:
                print(f"| {name} | {alloc} | (not installed) | | | | | |")
                continue
            c = measure(argv, preload, env_extra if alloc == "nebula" else {}, args.ll)
            d1 = (c["D1mr"][0] + c["D1mw"][0], c["D1mr"][1] + c["D1mw"][1])
            ll = (c["DLmr"][0] + c["DLmw"][0], c["DLmr"][1] + c["DLmw"][1])
            lib = lambda v: f"{v:,}" if preload else "-"
            print(f"| {name} | {alloc} | {c['Ir'][0]:,} | {lib(c['Ir'][1])} | {d1[0]:,} | {lib(d1[1])} "
                  f"| {ll[0]:,} | {lib(ll[1])} |", flush=True)


if __name__ == "__main__":
    main()
