#!/usr/bin/env python3
"""Memory under two kernel settings that distributions differ on, for each allocator (root only).

    bench/kernel_modes.py [--build DIR] [--reps N] [--only NAME[,NAME...]] [--extra LABEL=LIB ...]
                          [thp | commit | both]

thp:    switches /sys/kernel/mm/transparent_hugepage/enabled to `always` (the default of several
        distributions; Debian's is `madvise`) and prints the peak RSS (KiB, median of --reps runs)
        of each table workload at bench/run.py's --quick sizes under each allocator, with the
        geometric means; then the same under `madvise`, for comparison.
commit: switches /proc/sys/vm/overcommit_memory to 2 (the kernel charges every writable private
        mapping in full against a limit for the whole system) and prints how much of that limit
        (Committed_AS in /proc/meminfo) a python3 process that builds 100,000 strings holds while
        it sleeps, under each allocator.

Both settings are put back as they were, also when a run fails. They change the whole machine
while the script runs: run nothing else meanwhile. docs/performance.md (stop 50) has the figures
and what they showed. Allocators: glibc (no preload), Debian's jemalloc, mimalloc and tcmalloc
where installed, ours (BUILD/libnebulamem.so), and any --extra LABEL=path/to/lib.so (an older
build of ours, say).
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: the workloads, their sizes, the peers' libraries)

THP = "/sys/kernel/mm/transparent_hugepage/enabled"
OVERCOMMIT = "/proc/sys/vm/overcommit_memory"
PYTHON = ["/usr/bin/python3", "-c", "import time; x = [str(i) for i in range(100000)]; time.sleep(1.5)"]


def allocators(build, extra):
    libs = {"glibc": None}
    for name in ("jemalloc", "mimalloc", "tcmalloc"):
        path = bench.find_peer(bench.PEER_SONAMES[name][0])
        if path:
            libs[name] = os.path.realpath(path)
    libs["nebula"] = os.path.realpath(os.path.join(build, "libnebulamem.so"))
    for item in extra:
        label, _, path = item.partition("=")
        libs[label] = os.path.realpath(path)
    return libs


def env_for(lib):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if lib:
        env["LD_PRELOAD"] = lib
    return env


class Setting:
    """Writes value to a kernel setting file, and the old value back on exit."""

    def __init__(self, path, value):
        self.path, self.value = path, value

    def __enter__(self):
        with open(self.path) as f:
            text = f.read().strip()
        # THP's file reads "always [madvise] never": the word in brackets is the one in force.
        self.old = text[text.index("[") + 1:text.index("]")] if "[" in text else text
        with open(self.path, "w") as f:
            f.write(self.value)
        return self

    def __exit__(self, *exc):
        with open(self.path, "w") as f:
            f.write(self.old)


def peak_rss_table(libs, build, reps, only):
    programs = os.path.join(build, "bench")
    print("row\t" + "\t".join(libs))
    logs = {k: [] for k in libs}
    for name, prog, args, _, _ in bench.WORKLOADS:
        if only and name not in only:
            continue
        row = []
        for label, lib in libs.items():
            values = []
            for _ in range(reps):
                out = subprocess.run([os.path.join(programs, prog)] + args + bench.QUICK.get(name, []),
                                     env=env_for(lib), capture_output=True, text=True, check=True).stdout
                kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
                values.append(int(kv["peak_rss_kib"]))
            v = statistics.median(values)
            logs[label].append(math.log(v))
            row.append(f"{v:.0f}")
        print(name + "\t" + "\t".join(row), flush=True)
    print("geomean\t" + "\t".join(f"{math.exp(sum(v) / len(v)):.0f}" for v in logs.values()))


def committed_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Committed_AS:"):
                return int(line.split()[1])
    return 0


def commit_table(libs):
    print("allocator\tCommitted_AS added, KiB")
    for label, lib in libs.items():
        before = committed_kib()
        proc = subprocess.Popen(PYTHON, env=env_for(lib))
        time.sleep(1.0)
        added = committed_kib() - before
        rc = proc.wait()
        print(f"{label}\t{added}" + ("" if rc == 0 else f"\t(exit {rc})"), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(bench.ROOT, "build"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--extra", action="append", default=[])
    ap.add_argument("what", nargs="?", default="both", choices=["thp", "commit", "both"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("kernel_modes: changes kernel settings, run it as root")
    libs = allocators(args.build, args.extra)
    only = set(filter(None, args.only.split(",")))
    if args.what in ("thp", "both"):
        for mode in ("always", "madvise"):
            print(f"# peak RSS, KiB, transparent huge pages `{mode}`, medians of {args.reps}")
            with Setting(THP, mode):
                peak_rss_table(libs, args.build, args.reps, only)
    if args.what in ("commit", "both"):
        print("# vm.overcommit_memory = 2")
        with Setting(OVERCOMMIT, "2"):
            commit_table(libs)


if __name__ == "__main__":
    main()
