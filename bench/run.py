#!/usr/bin/env python3
"""bench/run.py: run the allocator workloads under every allocator and print one table.

    bench/run.py [--build-dir DIR] [--quick | --smoke] [--only NAME[,NAME...]] [--reps N]
                 [--threads N] [--allocators LIST] [--nebula-lib PATH] [--out DIR] [--list]
    bench/run.py --scaling [--scaling-threads LIST] [--quick | --smoke] [--only NAME[,NAME...]]
                 [--reps N] [--allocators LIST] [--out DIR]
    bench/run.py --micro [--micro-filter REGEX] [--quick] [--allocators LIST]

Each workload (bench/workloads/, built as BUILD/bench/wl-*) runs once per repetition under each
allocator: glibc (no preload), jemalloc, mimalloc, tcmalloc (the Debian packages) and
nebula-memory (BUILD/libnebulamem.so), each through LD_PRELOAD. The order of the allocators
rotates from run to run, so no allocator always runs first or last after a given one. For each
run the driver measures the child's wall time (spawn to reap) and its peak RSS (ru_maxrss of
os.wait4), and parses the program's `time_s=` (and, for frag, `rss_after_kib=`) lines. A run
counts only if it exited 0 (the program verified its own result) and printed `allocator=NAME`
naming the allocator that was meant to be preloaded.

The table (markdown, ready to paste into docs/performance.md) gives, per workload and allocator,
the median wall time and median peak RSS as a ratio to mimalloc (to glibc when mimalloc is not
in the set), the median itself and the min-max spread, then the geometric mean of the ratios per
allocator. Results go to BUILD/bench-results/<time>/ (runs.csv, summary.csv, results.json,
table.md, chart.png when gnuplot is installed), and BUILD/bench-results/latest points there.

--quick: smaller sizes (a few tenths of a second each) and 3 repetitions; for checking that it
works, not for figures. --smoke: tiny sizes, one repetition, nebula-memory and glibc only, no
chart; exits non-zero unless every workload ran and verified under both (the meson test
`bench-smoke`). Standard library only.

--scaling: thread scaling instead. Only the workloads that take --threads (larson, cache-thrash,
cache-scratch, xmalloc, mstress, rptest, glibc-thread, large) run, at each thread count of
--scaling-threads (default 1,2), under each allocator (and, where built, the measuring stick
`ceiling`, bench/ceiling/ceiling.c: how far the program itself scales here), with the same
rotation and medians. Each run's work is known (printed by the program or derived from its
parameters: see SCALING_WORK), so throughput = work / median wall time is comparable across
thread counts, whether a workload splits a fixed total among its threads or gives each thread
the same amount. The table gives
per workload and allocator the median wall time at each count and the speed-up (throughput at N
threads / throughput at the lowest count, normally 1), then the geometric mean of the speed-ups
per allocator. Results go to BUILD/bench-results/<time>-scaling/ (runs.csv, summary.csv,
results.json, table.md; BUILD/bench-results/latest-scaling points there).
"""

import argparse
import csv
import datetime
import fnmatch
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, program, arguments, what it models. Full sizes are each program's defaults (about 1 to
# 5 s under glibc on a 2-core machine); QUICK holds the reduced sizes of --quick.
WORKLOADS = [
    ("larson", "wl-larson", [], True,
     "server: threads replace random blocks of a shared array; blocks die on other threads"),
    ("cfrac", "wl-cfrac", [], False,
     "bignum continued-fraction factoring: small immutable integers made and freed per step"),
    ("espresso", "wl-espresso", [], False,
     "logic minimisation: covers of small cube sets, cofactored and complemented recursively"),
    ("cache-thrash", "wl-false_sharing", ["--mode", "thrash"], True,
     "active false sharing: threads write small objects they allocate themselves"),
    ("cache-scratch", "wl-false_sharing", ["--mode", "scratch"], True,
     "passive false sharing: threads free neighbouring objects handed to them, then allocate"),
    ("xmalloc", "wl-xmalloc", [], True,
     "producer/consumer: one half of the threads allocates, the other half frees"),
    ("mstress", "wl-rand_bursts", ["--style", "mstress"], True,
     "skewed random sizes up to 4 MiB, bursts, transfers between threads, thread rounds"),
    ("rptest", "wl-rand_bursts", ["--style", "rptest"], True,
     "random-size batches freed in random order, 1/8 freed by the next thread"),
    ("large", "wl-large", [], False,
     "blocks of 5 to 25 MiB, every page written, some grown with realloc"),
    ("glibc-simple", "wl-glibc_bench", ["--style", "simple"], False,
     "glibc bench-malloc-simple: allocate n blocks of one size, free them all"),
    ("glibc-thread", "wl-glibc_bench", ["--style", "thread"], True,
     "glibc bench-malloc-thread: random replacement in a working set, sizes 4 B..32 KiB"),
    ("strbuild", "wl-strbuild", [], False,
     "string builder: realloc to the exact size on every append, strings up to 256 KiB"),
    ("frag", "wl-frag", [], False,
     "fragmentation: tree of 500k nodes, 90% freed at random, keep going; RSS at the end"),
]
QUICK = {
    "larson": ["--ops", "2000000"],
    "cfrac": ["--steps", "150000"],
    "espresso": ["--problems", "50"],
    "cache-thrash": ["--writes", "20000"],
    "cache-scratch": ["--writes", "20000"],
    "xmalloc": ["--blocks", "1000000"],
    "mstress": ["--ops", "1500000", "--rounds", "4"],
    "rptest": ["--batches", "1200"],
    "large": ["--iters", "150"],
    "glibc-simple": ["--ops", "1500000"],
    "glibc-thread": ["--ops", "2500000"],
    "strbuild": ["--appends", "600000"],
    "frag": ["--nodes", "100000", "--after", "100000"],
}

# --scaling: how much work one run of a threaded workload does, so that throughput (work / median
# wall time) compares runs at different thread counts. Some workloads split a fixed total among
# their threads (the time should fall as 1/T), others give every thread the same amount (the time
# should stay flat); the speed-up is throughput at T threads over throughput at the lowest count,
# which from 1 thread is time(1)/time(T) for the first kind and T*time(1)/time(T) for the second.
# From each program's source, with T = --threads and the other names its options:
#
#   workload       split       work of one run                          unit            source
#   larson         fixed       ops / (rounds*T) * rounds*T              replacements    ops= line
#   cache-thrash   per thread  T * iters * writes                       write passes    parameters
#   cache-scratch  per thread  T * iters * writes                       write passes    parameters
#   xmalloc        fixed       blocks / P * P, P = T/2 (1 when T < 2)   blocks          blocks= token
#   mstress        fixed       ops / (rounds*T) * rounds*T              loop steps      parameters
#   rptest         per thread  T * batches * batch                      batch blocks    parameters
#   glibc-thread   fixed       ops / T * T                              replacements    parameters
#   large          per thread  T * iters                                5-25 MiB blocks parameters
#
# The divisions truncate, so a "fixed" total moves by a few units with T; the exact figure is used.
# What the rule leaves out is either per thread as well (rptest's 8 working-set replacements per
# batch and its initial working set, large's page writes), so it cancels in the ratio, or a small
# per-thread set-up in a fixed-split workload (glibc-thread's 1024-block working set, mstress's
# blocks freed when a round's thread exits: about 1% of the work or less at --quick and full
# sizes, more at --smoke).
# xmalloc runs at least one producer and one consumer, so --threads 1 runs two threads like
# --threads 2: against a one-thread base it has no speed-up to give ("min_threads"), and the table
# says so instead of printing one. glibc-simple is not here: its program accepts --threads, but
# --style simple ignores it. The parameter defaults are each program's (full, --smoke) defaults;
# where the program prints the figure itself the printed one is used and a mismatch is reported.
SCALING_WORK = {
    "larson": {"split": "fixed", "unit": "replacements", "printed": "ops",
               "params": {"ops": (12000000, 20000), "rounds": (8, 2)},
               "rule": lambda t, p: p["ops"] // (p["rounds"] * t) * p["rounds"] * t},
    "cache-thrash": {"split": "per thread", "unit": "write passes",
                     "params": {"iters": (1000, 20), "writes": (150000, 500)},
                     "rule": lambda t, p: t * p["iters"] * p["writes"]},
    "cache-scratch": {"split": "per thread", "unit": "write passes",
                      "params": {"iters": (1000, 20), "writes": (150000, 500)},
                      "rule": lambda t, p: t * p["iters"] * p["writes"]},
    "xmalloc": {"split": "fixed", "unit": "blocks", "printed": "blocks", "min_threads": 2,
                "caveat": "--threads 1 runs one producer and one consumer, two threads as "
                          "--threads 2 does, so there is no speed-up over one thread to give",
                "params": {"blocks": (6000000, 20000)},
                "rule": lambda t, p: p["blocks"] // max(1, t // 2) * max(1, t // 2)},
    "mstress": {"split": "fixed", "unit": "loop steps",
                "params": {"ops": (10000000, 20000), "rounds": (10, 2)},
                "rule": lambda t, p: p["ops"] // (p["rounds"] * t) * p["rounds"] * t},
    "rptest": {"split": "per thread", "unit": "batch blocks",
               "params": {"batches": (8000, 40), "batch": (500, 100)},
               "rule": lambda t, p: t * p["batches"] * p["batch"]},
    "glibc-thread": {"split": "fixed", "unit": "replacements",
                     "params": {"ops": (16000000, 200000)},
                     "rule": lambda t, p: p["ops"] // t * t},
    "large": {"split": "per thread", "unit": "large blocks",
              "params": {"iters": (1000, 8)},
              "rule": lambda t, p: t * p["iters"]},
}
NOT_SCALED = {"glibc-simple": "--style simple ignores --threads"}

# The micro benchmarks the smoke run tries (one of each kind, the threaded ones at 2 threads).
SMOKE_MICRO = ("^BM_(malloc_free/64|batch_random/n:64/size:128|calloc/4096|realloc_grow/limit:4096/step:16"
               "|posix_memalign/64|new_sized_delete/32|threads_local/64/real_time/threads:2"
               "|cross_thread_free/64/real_time/threads:2)$")

ALLOCATORS = ["glibc", "jemalloc", "mimalloc", "tcmalloc", "nebula"]
# `ceiling` (BUILD/bench/libceiling.so, bench/ceiling/ceiling.c), a measuring stick for --scaling,
# which runs it where it is built (the main table only when --allocators names it): thread-local
# free lists and memory, no lock, no atomic, nothing shared between threads, nothing given back.
# Its speed-ups are what each workload reaches on this machine when the allocator never makes
# threads meet.
OPTIONAL_ALLOCATORS = ["ceiling"]
ALLOCATOR_TITLES = {"glibc": "glibc", "jemalloc": "jemalloc", "mimalloc": "mimalloc",
                    "tcmalloc": "tcmalloc", "nebula": "**nebula**", "ceiling": "ceiling (stick)"}
PEER_SONAMES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc2.0"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---- machine and versions -----------------------------------------------------------------------
def find_peer(soname):
    """Path of a peer allocator's library: from the loader cache, else the usual directories."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    found = []
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m and m.group(1) == soname and os.path.exists(m.group(3)):
            found.append((0 if "64" in m.group(2) else 1, m.group(3)))
    if found:
        return sorted(found)[0][1]
    for d in glob.glob("/usr/lib/*-linux-gnu") + ["/usr/lib64", "/usr/lib", "/usr/local/lib"]:
        p = os.path.join(d, soname)
        if os.path.exists(p):
            return p
    return None


def dpkg_version(pkg):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                           text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
    except OSError:
        return None


def machine_info(build_dir):
    info = {"nproc": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0))}
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu"] = model or platform.processor() or "unknown"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        info["memory_gib"] = round(kib / 1048576, 1)
    except (OSError, ValueError, IndexError):
        pass
    info["kernel"] = platform.release()
    try:
        info["os"] = platform.freedesktop_os_release().get("PRETTY_NAME")
    except (OSError, AttributeError):
        info["os"] = None
    try:
        info["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        info["glibc"] = None
    for name, (_, pkg) in PEER_SONAMES.items():
        info[name] = dpkg_version(pkg)
    version = None
    try:
        with open(os.path.join(build_dir, "meson-info", "intro-projectinfo.json")) as f:
            version = json.load(f).get("version")
    except (OSError, ValueError):
        pass
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        rev = ""
    info["nebula"] = " ".join(x for x in (version, rev) if x) or None
    try:
        info["compiler"] = subprocess.run(["c++", "--version"], capture_output=True, text=True,
                                          check=False).stdout.splitlines()[0]
    except (OSError, IndexError):
        info["compiler"] = None
    try:
        info["load_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# ---- one run ------------------------------------------------------------------------------------
def run_once(argv, preload, timeout):
    """Runs argv with LD_PRELOAD=preload (None: unset); returns a dict of measurements."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as tmp:
        out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        ]
        killed = []
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)

        def kill():
            killed.append(True)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        with open(out_path, errors="replace") as f:
            out = f.read()
        with open(err_path, errors="replace") as f:
            err = f.read()
    code = os.waitstatus_to_exitcode(status)
    kv = dict(m.groups() for m in re.finditer(r"^([a-z_]+)=(\S+)$", out, re.M))
    r = {
        "wall_s": wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        # Peak RSS: the program's own VmHWM when it printed one; wait4's ru_maxrss otherwise.
        # ru_maxrss also holds the driver's resident set at the moment of exec (Linux keeps the
        # larger of the old and the new address space's peaks), a floor of about 17 MiB here.
        "peak_rss_kib": int(kv["peak_rss_kib"]) if "peak_rss_kib" in kv else ru.ru_maxrss,
        "ru_maxrss_kib": ru.ru_maxrss,
        "exit": code,
        "allocator_seen": kv.get("allocator"),
        "time_s": float(kv["time_s"]) if "time_s" in kv else None,
        "rss_after_kib": int(kv["rss_after_kib"]) if "rss_after_kib" in kv else None,
        "reported": {k: v for k, v in kv.items() if k != "allocator"},
        "stdout": out,
        "stderr": err,
        "timed_out": bool(killed),
    }
    return r


def problem(r, alloc):
    if r["timed_out"]:
        return "timed out"
    if r["exit"] != 0:
        tail = (r["stderr"].strip().splitlines() or ["(no stderr)"])[-1]
        return f"exit status {r['exit']}: {tail}"
    if r["allocator_seen"] != alloc:
        return f"expected allocator {alloc}, the program found {r['allocator_seen']!r} mapped"
    if r["time_s"] is None:
        return "no time_s= line"
    return None


# ---- summary ------------------------------------------------------------------------------------
def fmt_time(s):
    if s >= 100:
        return f"{s:.0f}"
    if s >= 10:
        return f"{s:.1f}"
    if s >= 0.1:
        return f"{s:.2f}"
    return f"{s:.3f}"


def fmt_mib(kib):
    mib = kib / 1024
    return f"{mib:.0f}" if mib >= 100 else f"{mib:.1f}"


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarise(runs, workloads, allocs):
    """Per (workload, metric, allocator): median, min, max, ratio to the baseline's median."""
    base = "mimalloc" if "mimalloc" in allocs else ("glibc" if "glibc" in allocs else allocs[0])
    metrics = [("time", "wall_s"), ("peak RSS", "peak_rss_kib"), ("RSS after", "rss_after_kib")]
    rows = []
    for w in workloads:
        for label, key in metrics:
            cells = {}
            for a in allocs:
                vals = [r[key] for r in runs if r["workload"] == w and r["allocator"] == a
                        and r["ok"] and r[key] is not None]
                if vals:
                    cells[a] = cell_stats(vals)
            if not cells:
                continue
            b = cells.get(base)
            for a, c in cells.items():
                c["ratio"] = c["median"] / b["median"] if b and b["median"] > 0 else None
            rows.append({"workload": w, "metric": label, "key": key, "cells": cells})
    geo = {}
    for label in ("time", "peak RSS"):
        geo[label] = {a: geomean([row["cells"][a]["ratio"] for row in rows
                                  if row["metric"] == label and a in row["cells"]])
                      for a in allocs}
    return base, rows, geo


def machine_line(info):
    vers = ", ".join(f"{a} {info.get(a)}" for a in ("jemalloc", "mimalloc", "tcmalloc") if info.get(a))
    return (f"Machine: {info.get('nproc')} CPUs ({info.get('cpu')}), "
            f"{info.get('memory_gib', '?')} GiB, {info.get('os') or 'Linux'}, kernel "
            f"{info.get('kernel')}; {info.get('glibc')}; {vers}; nebula-memory "
            f"{info.get('nebula')}; {info.get('compiler')}.")


def cell_stats(vals):
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def markdown(base, rows, geo, allocs, reps, info, mode, threads):
    names = ALLOCATOR_TITLES
    out = [machine_line(info)]
    out.append(f"Mode: {mode}, {reps} run(s) per workload and allocator, allocators alternating "
               f"run by run, threaded workloads at {threads} threads. Cells: ratio to {base} of the "
               f"median (lower is better), then the median and the min-max over the runs.")
    out.append("")
    out.append("| workload | metric | " + " | ".join(names.get(a, a) for a in allocs) + " |")
    out.append("|---|---|" + "---|" * len(allocs))
    for row in rows:
        cells = []
        for a in allocs:
            c = row["cells"].get(a)
            if not c:
                cells.append("failed")
                continue
            ratio = f"{c['ratio']:.2f}" if c["ratio"] is not None else "-"
            if row["key"] == "wall_s":
                cells.append(f"{ratio} ({fmt_time(c['median'])} s; "
                             f"{fmt_time(c['min'])}-{fmt_time(c['max'])})")
            else:
                cells.append(f"{ratio} ({fmt_mib(c['median'])} MiB; "
                             f"{fmt_mib(c['min'])}-{fmt_mib(c['max'])})")
        out.append(f"| {row['workload']} | {row['metric']} | " + " | ".join(cells) + " |")
    for label in ("time", "peak RSS"):
        cells = [f"**{geo[label][a]:.2f}**" if geo[label].get(a) else "-" for a in allocs]
        out.append(f"| **geometric mean** | {label} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("`RSS after` (frag only) is the resident memory the program reads from "
               "/proc/self/status at its end, after freeing 90% of its tree and running on; it is "
               "not in the geometric mean.")
    return "\n".join(out)


# ---- outputs ------------------------------------------------------------------------------------
def write_runs_csv(out_dir, runs, extra_fields):
    """runs.csv: one line per run; extra_fields (the scaling mode's threads and work) follow the
    allocator."""
    fields = (["workload", "allocator"] + extra_fields +
              ["rep", "ok", "wall_s", "time_s", "user_s", "sys_s", "peak_rss_kib", "ru_maxrss_kib",
               "rss_after_kib", "exit", "allocator_seen", "problem"])
    with open(os.path.join(out_dir, "runs.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        for r in runs:
            wr.writerow(r)


def write_outputs(out_dir, runs, base, rows, geo, allocs, info, table, args, gnuplot):
    os.makedirs(out_dir, exist_ok=True)
    write_runs_csv(out_dir, runs, [])
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["workload", "metric", "allocator", "median", "min", "max", "runs",
                     f"ratio_to_{base}"])
        for row in rows:
            for a in allocs:
                c = row["cells"].get(a)
                if c:
                    wr.writerow([row["workload"], row["key"], a, c["median"], c["min"], c["max"],
                                 c["n"], c["ratio"]])
        for label in geo:
            for a in allocs:
                wr.writerow(["geometric_mean", label, a, "", "", "", "", geo[label].get(a)])
    doc = {
        "machine": info, "baseline": base, "allocators": allocs,
        "command": sys.argv, "mode": args.mode, "reps": args.reps, "threads": args.threads,
        "summary": [{"workload": r["workload"], "metric": r["key"], "cells": r["cells"]} for r in rows],
        "geometric_mean": geo,
        "runs": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in runs],
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    chart = None
    if gnuplot:
        chart = draw_chart(out_dir, rows, allocs, base, gnuplot)
    return chart


def draw_chart(out_dir, rows, allocs, base, gnuplot):
    for label, fname in (("time", "time.dat"), ("peak RSS", "rss.dat")):
        with open(os.path.join(out_dir, fname), "w") as f:
            f.write("workload " + " ".join(allocs) + "\n")
            for row in rows:
                if row["metric"] != label:
                    continue
                vals = []
                for a in allocs:
                    c = row["cells"].get(a)
                    vals.append(f"{c['ratio']:.4f}" if c and c["ratio"] else "NaN")
                f.write(row["workload"] + " " + " ".join(vals) + "\n")
    cols = ", ".join(
        ("'{f}' using {i}:xtic(1) title columnheader({i})" if i == 2 else "'' using {i} title columnheader({i})")
        .format(f="{f}", i=i) for i in range(2, len(allocs) + 2))
    script = f"""
set terminal pngcairo size 1500,1000 font ",10"
set output 'chart.png'
set multiplot layout 2,1 title "nebula-memory beside its peers: ratio to {base} (lower is better, log scale)"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y 2
set yrange [0.125:*]
set grid ytics
set key outside right top
set xtics rotate by -25 nomirror
set ylabel "median wall time / {base}"
plot {cols.format(f='time.dat')}, 1 notitle dt 2 lc rgb "black"
set ylabel "median peak RSS / {base}"
plot {cols.format(f='rss.dat')}, 1 notitle dt 2 lc rgb "black"
unset multiplot
"""
    with open(os.path.join(out_dir, "chart.gp"), "w") as f:
        f.write(script)
    r = subprocess.run([gnuplot, "chart.gp"], cwd=out_dir, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(os.path.join(out_dir, "chart.png")):
        say(f"gnuplot failed: {r.stderr.strip()[:500]}")
        return None
    return os.path.join(out_dir, "chart.png")


# ---- thread scaling -----------------------------------------------------------------------------
def option_value(argv, name):
    """The integer value of --name in argv (`--name V` or `--name=V`); None when absent."""
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith(f"--{name}="):
            return int(a.split("=", 1)[1])
    return None


def derived_work(name, threads, argv, smoke):
    """The work of one run by the rule of SCALING_WORK: its parameters from argv, else defaults."""
    spec = SCALING_WORK[name]
    p = {}
    for k, (full, tiny) in spec["params"].items():
        v = option_value(argv, k)
        p[k] = v if v is not None else (tiny if smoke else full)
    return spec["rule"](threads, p)


def printed_values(stdout):
    """Every key=value token of a program's output, those that share a line too (xmalloc prints
    `blocks=N producers=P consumers=C` on one line, which run_once's parse leaves out)."""
    return dict(re.findall(r"(?:^|\s)([a-z_]+)=(\S+)", stdout))


def scaling_summary(runs, names, allocs, counts):
    """Per (workload, allocator) and thread count: the wall time's median, min and max, the work,
    throughput = work / median, its ratio to the lowest count's, and that ratio as the speed-up
    where the workload's lowest count is what it says (see min_threads). Then per allocator and
    count above the lowest, the geometric mean of the speed-ups."""
    base_t = counts[0]
    rows = []
    for w in names:
        spec = SCALING_WORK[w]
        comparable = base_t >= spec.get("min_threads", 1)
        for a in allocs:
            cells = {}
            for t in counts:
                ok = [r for r in runs if r["workload"] == w and r["allocator"] == a
                      and r["threads"] == t and r["ok"]]
                if not ok:
                    continue
                c = cell_stats([r["wall_s"] for r in ok])
                c["time_s"] = statistics.median(r["time_s"] for r in ok)
                c["work"] = statistics.median(r["work"] for r in ok)  # the same in every run
                c["throughput"] = c["work"] / c["median"] if c["median"] > 0 else None
                # The same over the program's own timed part, which leaves out its start-up and
                # single-threaded set-up: in the CSV and JSON only.
                c["throughput_timed"] = c["work"] / c["time_s"] if c["time_s"] > 0 else None
                cells[t] = c
            b = cells.get(base_t)
            for c in cells.values():
                for key in ("throughput", "throughput_timed"):
                    ratio = (c[key] / b[key]) if b and b[key] and c[key] else None
                    c["ratio" if key == "throughput" else "ratio_timed"] = ratio
                c["speedup"] = c["ratio"] if comparable else None
            rows.append({"workload": w, "allocator": a, "comparable": comparable, "cells": cells})
    geo, geo_n = {}, {}
    for a in allocs:
        geo[a], geo_n[a] = {}, {}
        for t in counts[1:]:
            xs = [row["cells"][t]["speedup"] for row in rows if row["allocator"] == a
                  and t in row["cells"] and row["cells"][t]["speedup"]]
            geo[a][t], geo_n[a][t] = geomean(xs), len(xs)
    return rows, geo, geo_n


def scaling_markdown(rows, geo, geo_n, allocs, counts, reps, info, mode):
    base_t = counts[0]
    ncpu = os.cpu_count()
    allowed = info.get("cpus_allowed")
    names = list(dict.fromkeys(row["workload"] for row in rows))
    out = [machine_line(info)]
    ideal = "N" if base_t == 1 else f"N/{base_t}"
    out.append(f"Mode: thread scaling, {mode}, {reps} run(s) per workload, allocator and thread "
               f"count, allocators alternating run by run; threads {', '.join(map(str, counts))} on "
               f"a machine with {ncpu} CPUs (os.cpu_count()"
               + (f"; {allowed} allowed to this process" if allowed and allowed != ncpu else "")
               + f"). Cells: median wall time in seconds (min-max), then the speed-up: throughput "
               f"(the run's work / the median wall time) at N threads over throughput at {base_t} "
               f"thread{'s' if base_t > 1 else ''}; higher is better, {ideal} is ideal. Work: "
               f"*fixed* = one total split among the threads (ideal: the time falls as 1/N), *per "
               f"thread* = the same work on every thread (ideal: the time stays flat).")
    over = [t for t in counts if ncpu and t > ncpu]
    if over:
        out.append("")
        out.append(f"**Warning:** {', '.join(map(str, over))} threads exceed the machine's {ncpu} "
                   f"CPUs: there the threads share cores, so the speed-up measures oversubscription, "
                   f"not parallel scaling.")
    out.append("")
    out.append("| workload | work | allocator | "
               + " | ".join(f"time, {t} thread{'s' if t > 1 else ''}" for t in counts) + " | "
               + " | ".join(f"speed-up, {t} threads" for t in counts[1:]) + " |")
    out.append("|---|---|---|" + "---|" * (2 * len(counts) - 1))
    for row in rows:
        cells = []
        for t in counts:
            c = row["cells"].get(t)
            cells.append(f"{fmt_time(c['median'])} ({fmt_time(c['min'])}-{fmt_time(c['max'])})"
                         if c else "failed")
        for t in counts[1:]:
            c = row["cells"].get(t)
            if not row["comparable"]:
                cells.append("n/a †")
            elif c and c["speedup"]:
                cells.append(f"{c['speedup']:.2f}")
            else:
                cells.append("-")
        title = ALLOCATOR_TITLES.get(row["allocator"], row["allocator"])
        out.append(f"| {row['workload']} | {SCALING_WORK[row['workload']]['split']} | {title} | "
                   + " | ".join(cells) + " |")
    for a in allocs:
        cells = [""] * len(counts) + [f"**{geo[a][t]:.2f}**" if geo[a].get(t) else "-"
                                      for t in counts[1:]]
        out.append(f"| **geometric mean** | | {ALLOCATOR_TITLES.get(a, a)} | "
                   + " | ".join(cells) + " |")
    out.append("")
    left_out = [w for w in names if not any(row["comparable"] for row in rows if row["workload"] == w)]
    for t in counts[1:]:
        per = ", ".join(f"{a} {geo[a][t]:.2f}" if geo[a].get(t) else f"{a} -" for a in allocs)
        n = max((geo_n[a][t] for a in allocs), default=0)
        why = f"; {', '.join(left_out)} left out, see †" if left_out else ""
        out.append(f"Geometric mean of the speed-ups at {t} threads over {base_t}: {per} "
                   f"({n} workload{'s' if n != 1 else ''}{why}).")
    out.append("")
    out.append("Work of one run (the same under every allocator):")
    for w in names:
        spec = SCALING_WORK[w]
        works = []
        for t in counts:
            c = next((row["cells"][t] for row in rows
                      if row["workload"] == w and t in row["cells"]), None)
            works.append(f"{c['work']:,.0f} at {t}" if c else f"? at {t}")
        out.append(f"- {w} ({spec['split']}): {spec['unit']}, " + ", ".join(works) + " threads")
    for w in left_out:
        caveat = SCALING_WORK[w].get("caveat", "its lowest thread count is not what it says")
        out.append(f"\n† {w}: {caveat}; it is left out of the geometric mean (summary.csv keeps "
                   f"its throughput ratio).")
    out.append("")
    out.append("Wall time is spawn to reap, as in the normal table, so each program's start-up and "
               "single-threaded set-up count; summary.csv also gives the ratio over the programs' "
               "own timed part (time_s).")
    return "\n".join(out)


def write_scaling_outputs(out_dir, runs, rows, geo, allocs, counts, info, table, args):
    os.makedirs(out_dir, exist_ok=True)
    write_runs_csv(out_dir, runs, ["threads", "work"])
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["workload", "allocator", "threads", "split", "unit", "work", "runs",
                     "median_wall_s", "min_wall_s", "max_wall_s", "median_time_s",
                     "throughput_per_s", f"throughput_ratio_to_{counts[0]}", f"speedup_vs_{counts[0]}",
                     f"timed_throughput_ratio_to_{counts[0]}"])
        for row in rows:
            spec = SCALING_WORK[row["workload"]]
            for t in counts:
                c = row["cells"].get(t)
                if c:
                    wr.writerow([row["workload"], row["allocator"], t, spec["split"], spec["unit"],
                                 c["work"], c["n"], c["median"], c["min"], c["max"], c["time_s"],
                                 c["throughput"], c["ratio"], c["speedup"], c["ratio_timed"]])
        for a in allocs:
            for t in counts[1:]:
                wr.writerow(["geometric_mean", a, t, "", "", "", "", "", "", "", "", "", "",
                             geo[a].get(t), ""])
    doc = {
        "machine": info, "allocators": allocs, "command": sys.argv, "mode": args.mode,
        "reps": args.reps, "thread_counts": counts, "base_threads": counts[0],
        "cpu_count": os.cpu_count(),
        "work_rules": {w: {k: v for k, v in spec.items() if k != "rule"}
                       for w, spec in SCALING_WORK.items() if any(r["workload"] == w for r in rows)},
        "summary": [{"workload": r["workload"], "allocator": r["allocator"],
                     "comparable": r["comparable"],
                     "cells": {str(t): c for t, c in r["cells"].items()}} for r in rows],
        "geometric_mean_speedup": {a: {str(t): v for t, v in geo[a].items()} for a in allocs},
        "runs": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in runs],
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")


def run_scaling(args, build_dir, preloads, allocs, selected, info):
    counts = args.thread_counts
    ncpu = os.cpu_count() or 1
    say(f"scaling: {len(selected)} workloads x threads {','.join(map(str, counts))} x {len(allocs)} "
        f"allocators x {args.reps} runs ({args.mode}); {ncpu} CPUs; load average at start "
        f"{info.get('load_at_start')}")
    over = [t for t in counts if t > ncpu]
    if over:
        say(f"warning: {', '.join(map(str, over))} threads exceed the {ncpu} CPUs (os.cpu_count()): "
            f"those runs measure oversubscription, not parallel scaling")
    argvs = {(name, t): workload_argv(build_dir, name, prog, extra, args.mode, t)
             for name, prog, extra, _, _ in selected for t in counts}

    def cases_for_rep(rep):
        # Counts ascending in even repetitions, descending in odd ones, so that a drift over the
        # run (heat, someone else's load) does not always favour the same end of the list.
        ts = counts if rep % 2 == 0 else counts[::-1]
        return [{"label": f"{name} at {t} thread{'s' if t > 1 else ''}", "argv": argvs[(name, t)],
                 "fields": {"workload": name, "threads": t}}
                for name, _, _, _, _ in selected for t in ts]

    runs, failures = run_cases(cases_for_rep, allocs, preloads, args)

    # Each run's work: the figure the program printed where it prints one, else the rule's.
    reported_mismatch = set()
    for r in runs:
        w, t = r["workload"], r["threads"]
        spec = SCALING_WORK[w]
        r["work"] = derived_work(w, t, argvs[(w, t)], args.smoke)
        printed = printed_values(r["stdout"]).get(spec.get("printed", "")) if r["ok"] else None
        if printed is not None and printed.isdigit():
            if int(printed) != r["work"] and (w, t) not in reported_mismatch:
                reported_mismatch.add((w, t))
                say(f"{w} at {t} thread{'s' if t > 1 else ''} printed {spec['printed']}={printed}, "
                    f"the rule in SCALING_WORK gives {r['work']}: using the printed figure (update "
                    f"the table)")
            r["work"] = int(printed)

    names = [w[0] for w in selected]
    rows, geo, geo_n = scaling_summary(runs, names, allocs, counts)
    table = scaling_markdown(rows, geo, geo_n, allocs, counts, args.reps, info, MODE_TEXT[args.mode])
    print(table)
    out_dir = results_dir(args, build_dir, "-scaling")
    write_scaling_outputs(out_dir, runs, rows, geo, allocs, counts, info, table, args)
    point_latest(args, build_dir, out_dir, "latest-scaling")
    say(f"results in {out_dir}: runs.csv summary.csv results.json table.md")

    for name in names:
        for a in allocs:
            for t in counts:
                if not any(r["workload"] == name and r["allocator"] == a and r["threads"] == t
                           and r["ok"] for r in runs):
                    failures.append(f"{name} under {a} at {t} thread{'s' if t > 1 else ''}: "
                                    f"no successful run")
    if failures:
        say(f"{len(failures)} failure(s):")
        for f in dict.fromkeys(failures):
            say("  " + f)
        return 1
    return 0


# ---- micro benchmarks ---------------------------------------------------------------------------
def run_micro(args, build_dir, preloads, allocs):
    exe = os.path.join(build_dir, "bench", "nebula-micro")
    if not os.path.exists(exe):
        say(f"{exe} not built (Google Benchmark, libbenchmark-dev, missing at meson setup?)")
        return 1
    results = {}
    min_time = "0.05" if args.mode != "full" else "0.5"
    if args.mode == "smoke":
        min_time = "0.002"
    for a in allocs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
            path = tf.name
        argv = [exe, f"--benchmark_filter={args.micro_filter}", f"--benchmark_min_time={min_time}",
                "--benchmark_format=json", f"--benchmark_out={path}", "--benchmark_out_format=json"]
        say(f"micro under {a}")
        r = run_once(argv, preloads[a], args.timeout * 20)
        p = problem(r, a) if r["exit"] != 0 or r["timed_out"] else None
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = None
        os.unlink(path)
        if p or not doc:
            say(f"micro under {a}: {p or 'no JSON output'}")
            return 1
        seen = doc.get("context", {}).get("allocator")
        if seen != a:
            say(f"micro under {a}: the program found {seen!r} mapped")
            return 1
        results[a] = {b["name"]: 1e9 / b["items_per_second"] for b in doc["benchmarks"]
                      if b.get("items_per_second")}
    base = "mimalloc" if "mimalloc" in allocs else allocs[0]
    names = list(results[allocs[0]].keys())
    print(f"ns per allocation + free (real time for the threaded ones); ratio to {base} in "
          "parentheses, lower is better\n")
    print("| benchmark | " + " | ".join(allocs) + " |")
    print("|---|" + "---|" * len(allocs))
    ratios = {a: [] for a in allocs}
    for n in names:
        b = results.get(base, {}).get(n)
        cells = []
        for a in allocs:
            v = results[a].get(n)
            if v is None:
                cells.append("-")
                continue
            ratio = v / b if b else None
            if ratio:
                ratios[a].append(ratio)
            cells.append(f"{v:.1f} ({ratio:.2f})" if ratio else f"{v:.1f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("| **geometric mean** | " + " | ".join(
        f"**{geomean(ratios[a]):.2f}**" if geomean(ratios[a]) else "-" for a in allocs) + " |")
    return 0


# ---- the runs -----------------------------------------------------------------------------------
MODE_TEXT = {"full": "full sizes", "quick": "--quick (reduced sizes)", "smoke": "--smoke (tiny sizes)"}


def workload_argv(build_dir, name, prog, extra, mode, threads):
    """The command line of one workload: its sizes for the mode, --threads when threads is set."""
    argv = [os.path.join(build_dir, "bench", prog)] + extra
    if mode == "smoke":
        argv.append("--smoke")
    elif mode == "quick":
        argv += QUICK.get(name, [])
    if threads:
        argv += ["--threads", str(threads)]
    return argv


def run_cases(cases_for_rep, allocs, preloads, args):
    """Runs each case under each allocator, args.reps times; returns (runs, failures).

    cases_for_rep(rep) gives the cases of repetition rep (0-based), each a dict with "argv", a
    "label" for the messages and "fields" copied into every run record it makes."""
    runs, failures = [], []
    order = list(allocs)
    for rep in range(args.reps):
        cases = cases_for_rep(rep)
        for ci, case in enumerate(cases):
            label = case["label"]
            # Rotate the order: run by run each allocator moves one place.
            k = (rep * len(cases) + ci) % len(order)
            for a in order[k:] + order[:k]:
                r = run_once(case["argv"], preloads[a], args.timeout)
                p = problem(r, a)
                r.update(case["fields"])
                r.update({"allocator": a, "rep": rep + 1, "ok": p is None, "problem": p})
                runs.append(r)
                if p:
                    failures.append(f"{label} under {a} (run {rep + 1}): {p}")
                    say(f"FAIL {label} under {a}: {p}")
                    if r["stderr"].strip():
                        sys.stderr.write(r["stderr"][-2000:])
            say(f"run {rep + 1}/{args.reps}: {label} done")
    return runs, failures


def results_dir(args, build_dir, suffix):
    """--out, else BUILD/bench-results/smoke<suffix> or BUILD/bench-results/<time><suffix>."""
    if args.out:
        return os.path.abspath(args.out)
    root = os.path.join(build_dir, "bench-results")
    if args.smoke:
        return os.path.join(root, "smoke" + suffix)
    return os.path.join(root, datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + suffix)


def point_latest(args, build_dir, out_dir, name):
    """BUILD/bench-results/<name> -> out_dir, for full and quick runs into the default place."""
    if args.out or args.smoke:
        return
    latest = os.path.join(build_dir, "bench-results", name)
    try:
        if os.path.islink(latest) or os.path.exists(latest):
            os.unlink(latest)
        os.symlink(os.path.basename(out_dir), latest)
    except OSError:
        pass


# ---- main ---------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=next(p for p in __doc__.split("\n\n") if p.startswith("--scaling")),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("NEBULA_BUILD_DIR", os.path.join(ROOT, "build")))
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="reduced sizes, 3 runs: checks it works")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, 1 run, nebula and glibc only (CI)")
    ap.add_argument("--only", help="comma-separated workload names (shell patterns allowed)")
    ap.add_argument("--reps", type=int, help="runs per workload and allocator (default 5, quick 3, smoke 1)")
    ap.add_argument("--threads", type=int, help="threads for the threaded workloads (default 2)")
    ap.add_argument("--scaling", action="store_true",
                    help="thread scaling: the threaded workloads at each count of --scaling-threads, "
                         "speed-up over the lowest count")
    ap.add_argument("--scaling-threads", default="1,2", metavar="LIST",
                    help="comma-separated thread counts for --scaling (default 1,2)")
    ap.add_argument("--allocators", help="comma-separated subset of " + ",".join(ALLOCATORS)
                    + ", or ceiling (the measuring stick for --scaling, bench/ceiling/ceiling.c)")
    ap.add_argument("--nebula-lib", help="library to preload as nebula (default BUILD/libnebulamem.so)")
    ap.add_argument("--out", help="results directory (default BUILD/bench-results/<time>)")
    ap.add_argument("--timeout", type=float, help="seconds before a run is killed (120; smoke 20)")
    ap.add_argument("--micro", action="store_true", help="run the Google Benchmark programs instead")
    ap.add_argument("--micro-filter", default=".", help="--benchmark_filter for --micro")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = ap.parse_args()
    args.mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    if args.reps is None:
        args.reps = {"smoke": 1, "quick": 3, "full": 5}[args.mode]
    if args.timeout is None:
        args.timeout = 20.0 if args.smoke else 120.0
    if args.scaling:
        if args.threads is not None:
            ap.error("--scaling runs the counts of --scaling-threads; --threads does not apply")
        if args.micro:
            ap.error("--scaling and --micro do not go together")
        try:
            args.thread_counts = sorted({int(x) for x in args.scaling_threads.split(",") if x.strip()})
        except ValueError:
            ap.error(f"--scaling-threads: not a comma-separated list of integers: {args.scaling_threads}")
        if len(args.thread_counts) < 2 or args.thread_counts[0] < 1:
            ap.error("--scaling-threads needs at least two distinct thread counts, each at least 1")
    if args.threads is None:
        args.threads = 2
    if args.reps < 1 or args.threads < 1:
        ap.error("--reps and --threads must be at least 1")

    if args.list:
        if args.scaling:
            for name, spec in SCALING_WORK.items():
                params = ", ".join(f"--{k} {full} (smoke {tiny})" for k, (full, tiny) in spec["params"].items())
                print(f"{name:14} {spec['split']:10} {spec['unit']}; {params}")
            return 0
        for name, prog, extra, threaded, what in WORKLOADS:
            print(f"{name:14} {prog} {' '.join(extra)}{' (threads)' if threaded else ''}\n{'':14} {what}")
        return 0

    build_dir = os.path.abspath(args.build_dir)
    # The libraries this build makes: ours (or --nebula-lib) and the measuring stick.
    built = {"nebula": os.path.abspath(args.nebula_lib) if args.nebula_lib
             else os.path.join(build_dir, "libnebulamem.so"),
             "ceiling": os.path.join(build_dir, "bench", "libceiling.so")}
    if args.allocators:
        allocs = [a.strip() for a in args.allocators.split(",") if a.strip()]
        bad = [a for a in allocs if a not in ALLOCATORS + OPTIONAL_ALLOCATORS]
        if bad:
            ap.error(f"unknown allocator(s) {', '.join(bad)}; known: "
                     f"{', '.join(ALLOCATORS + OPTIONAL_ALLOCATORS)}")
    else:
        allocs = ["glibc", "nebula"] if args.smoke else list(ALLOCATORS)
        # A scaling run carries the measuring stick where it is built: each row then shows how far
        # the program itself scales on the machine next to what the allocators reach.
        if args.scaling and not args.smoke and os.path.exists(built["ceiling"]):
            allocs.append("ceiling")

    preloads = {"glibc": None}
    missing = []
    for a in allocs:
        if a in built:
            preloads[a] = built[a] if os.path.exists(built[a]) else None
            if not preloads[a]:
                missing.append(f"{a} ({built[a]} not built)")
        elif a in PEER_SONAMES:
            preloads[a] = find_peer(PEER_SONAMES[a][0])
            if not preloads[a]:
                missing.append(f"{a} ({PEER_SONAMES[a][0]}, Debian package {PEER_SONAMES[a][1]})")
    if missing:
        if args.allocators or args.smoke:
            say("missing: " + "; ".join(missing))
            return 2
        say("skipping, not installed: " + "; ".join(missing) + " (./nebulamem bench installs them)")
        allocs = [a for a in allocs if preloads.get(a) or a == "glibc"]

    if args.micro:
        return run_micro(args, build_dir, preloads, allocs)

    selected = WORKLOADS
    if args.only:
        pats = [p.strip() for p in args.only.split(",") if p.strip()]
        selected = [w for w in WORKLOADS if any(fnmatch.fnmatch(w[0], p) for p in pats)]
        unknown = [p for p in pats if not any(fnmatch.fnmatch(w[0], p) for w in WORKLOADS)]
        if unknown or not selected:
            ap.error(f"no workload named {', '.join(unknown) or args.only}; "
                     f"known: {', '.join(w[0] for w in WORKLOADS)}")
    if args.scaling:
        # Only the workloads that take --threads; say which of those --only chose are left out.
        left_out = [w[0] for w in selected if w[0] not in SCALING_WORK]
        selected = [w for w in selected if w[0] in SCALING_WORK]
        if not selected:
            ap.error(f"--scaling: none of {', '.join(left_out)} takes --threads; the threaded "
                     f"workloads are {', '.join(SCALING_WORK)}")
        if left_out and args.only:
            say("--scaling leaves out " + ", ".join(
                f"{n} ({NOT_SCALED.get(n, 'single-threaded')})" for n in left_out))
    for _, prog, _, _, _ in selected:
        if not os.path.exists(os.path.join(build_dir, "bench", prog)):
            say(f"{build_dir}/bench/{prog} is missing: build first (./nebulamem build)")
            return 2

    info = machine_info(build_dir)
    if args.scaling:
        return run_scaling(args, build_dir, preloads, allocs, selected, info)
    say(f"{len(selected)} workloads x {len(allocs)} allocators x {args.reps} runs ({args.mode}); "
        f"load average at start {info.get('load_at_start')}")
    cases = [{"label": name, "fields": {"workload": name},
              "argv": workload_argv(build_dir, name, prog, extra, args.mode,
                                    args.threads if threaded else None)}
             for name, prog, extra, threaded, _ in selected]
    runs, failures = run_cases(lambda rep: cases, allocs, preloads, args)

    names = [w[0] for w in selected]
    base, rows, geo = summarise(runs, names, allocs)
    table = markdown(base, rows, geo, allocs, args.reps, info, MODE_TEXT[args.mode], args.threads)
    print(table)

    out_dir = results_dir(args, build_dir, "")
    gnuplot = None if args.smoke else shutil.which("gnuplot")
    chart = write_outputs(out_dir, runs, base, rows, geo, allocs, info, table, args, gnuplot)
    point_latest(args, build_dir, out_dir, "latest")
    say(f"results in {out_dir}: runs.csv summary.csv results.json table.md"
        + (" chart.png" if chart else " (no chart: gnuplot not installed)" if not args.smoke and not gnuplot else ""))

    # Every workload must have run and verified under every allocator.
    for name in names:
        for a in allocs:
            if not any(r["workload"] == name and r["allocator"] == a and r["ok"] for r in runs):
                failures.append(f"{name} under {a}: no successful run")
    if args.smoke:
        # The micro benchmark binary too: a few of its benchmarks, briefly, under each allocator.
        if os.path.exists(os.path.join(build_dir, "bench", "nebula-micro")):
            args.micro_filter = SMOKE_MICRO
            if run_micro(args, build_dir, preloads, allocs) != 0:
                failures.append("nebula-micro failed")
        else:
            say("nebula-micro not built (no Google Benchmark): micro smoke skipped")
    if failures:
        say(f"{len(failures)} failure(s):")
        for f in dict.fromkeys(failures):
            say("  " + f)
        return 1
    if args.smoke:
        say(f"smoke ok: {len(names)} workloads verified under {', '.join(allocs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
