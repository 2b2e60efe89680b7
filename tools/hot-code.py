#!/usr/bin/env python3
"""tools/hot-code.py: regenerate platform/hot-code.ld, the list of the drop-in library's functions
that ordinary programs run, which the link puts first in the library's code.

Why: the kernel maps a page fault's neighbours in 64 KiB windows (fault-around), so a program
that runs one function in each of the library's code windows has all of the library's code
resident (100 KiB at the time of writing), though it runs less than half of it. With the
functions that programs run packed at the start of the code, and the code aligned to a window,
a program maps one window of our code; the rest (the C API, statistics and messages, secure
mode, the wait wrappers' split, the option parser's error paths...) stays on disk until
something runs it. docs/performance.md (log, stop 29) has the figures.

How: runs each program below under `valgrind --tool=callgrind` with the library preloaded,
collects the functions of the library that ran, and orders them by how many programs ran
them (then by name). Needs valgrind and a release build (`./nebulamem build`).

    tools/hot-code.py [--build DIR]... [--out FILE] [--check]

--build (repeatable, default build/): each build's library is profiled and the lists joined, so
that the one list serves each compiler's names (g++ and clang++ inline and clone differently:
a function one inlines is a symbol of its own under the other).

--check: exit 1 if FILE differs from what would be written (nothing is written).
Programs that are not installed (python3, perl, sqlite3, g++) are left out of the run.
Standard library only.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each entry: a command (relative names are in the build's bench/ directory), whether its
# children are traced too and, optionally, variables for its environment. The bench workloads at
# their smoke sizes cover the engine's paths (threads, remote frees, huge blocks, realloc); four
# of bench/patterns.c's patterns add aligned requests, shrinking realloc, calloc of big blocks
# and 4-8 KiB buffers; the system programs add what real programs do (an interpreter, a compiler
# driver and its children, a database).
# Each run's functions count once; the list is ordered by how many runs ran a function.
PROGRAMS = [
    (["wl-larson", "--smoke", "--threads", "2"], False),
    (["wl-cfrac", "--smoke"], False),
    (["wl-espresso", "--smoke"], False),
    (["wl-false_sharing", "--mode", "thrash", "--smoke", "--threads", "2"], False),
    (["wl-false_sharing", "--mode", "scratch", "--smoke", "--threads", "2"], False),
    (["wl-xmalloc", "--smoke", "--threads", "2"], False),
    (["wl-rand_bursts", "--style", "mstress", "--smoke", "--threads", "2"], False),
    (["wl-rand_bursts", "--style", "rptest", "--smoke", "--threads", "2"], False),
    (["wl-large", "--smoke", "--threads", "2"], False),
    (["wl-glibc_bench", "--style", "simple", "--smoke"], False),
    (["wl-glibc_bench", "--style", "thread", "--smoke", "--threads", "2"], False),
    (["wl-strbuild", "--smoke"], False),
    (["wl-frag", "--smoke"], False),
    (["patterns", "memalign-page"], False),
    (["patterns", "mid-replace"], False),
    (["patterns", "shrink"], False),
    (["patterns", "calloc-1m"], False),
    (["python3", "-c", "import json, time; time.sleep(0.01); "
      "print(len(json.dumps({i: str(i) for i in range(10000)})))"], False),
    (["perl", "-e", "my %h; $h{$_} = $_ x 3 for 1..10000; print scalar(keys %h)"], False),
    (["sqlite3", ":memory:", "create table t(a); insert into t values(1); select * from t;"],
     False),
    (["ls", "-la", "/usr/lib"], False),
    (["g++", "-O2", "-c", "{src}", "-o", "{obj}"], True),
    # The test that checks the layout: its ordinary work also sleeps and polls.
    (["{build}/tests/nebula-code_footprint_test"], False),
    # ... and with options set, as its code_footprint_options_test sets them: the option parser's
    # paths for set values (a time, a percentage, a switch), and a budget's accounting (stop 49).
    (["{build}/tests/nebula-code_footprint_test"], False,
     {"CODE_FOOTPRINT_KEEP_OPTIONS": "1", "NEBULA_MEM_PURGE_DELAY": "250ms", "NEBULA_MEM_BUDGET": "50%",
      "NEBULA_MEM_MEDIUM_RUNS": "0"}),
]

# Functions that run when threads contend for one of the engine's locks: the waiter's spin and
# sleep, the unlock's wake, the flag waits' yield. Threaded programs run them, but under
# callgrind, which runs one thread at a time, a lock is seldom found taken, so the profile
# misses them (stop 39: the code of two threads starting together mapped a second window). They
# are listed after the profiled functions. Mangled names are the same under g++ and clang++.
CONTENDED = [
    "_ZN6nebula4Lock14lock_contendedEv",
    "_ZN6nebula2os7wait_onEPSt6atomicIjEj",
    "_ZN6nebula2os8wake_oneEPSt6atomicIjE",
    "_ZN6nebula2os5yieldEv",
]

# Functions that only the profiled test itself calls (code_footprint_test's check that the preload
# took, nebula_mem_is_active, and what it calls): ordinary programs do not, and whether the run
# under valgrind reaches that last line depends on where valgrind puts the arena (stop 50: two of
# four profiles listed them), so they are left out, 125 bytes of the window with g++.
TEST_ONLY = {
    "nebula_mem_is_active",
    "_ZN6nebula4ownsEPKv",
}

CXX_SOURCE = """#include <string>
#include <vector>
int f() { std::vector<std::string> v; for (int i = 0; i < 100; i++) v.push_back(std::to_string(i));
          return static_cast<int>(v.size()); }
"""

NAME_RE = re.compile(r"^(ob|fn|cob|cfn)=\((\d+)\)(?: (.*))?$")


def functions_run(path, lib_name):
    """The library's functions that have cost in one callgrind output file (mangled names)."""
    objects, names, run = {}, {}, set()
    current_object = None
    with open(path, errors="replace") as f:
        for line in f:
            m = NAME_RE.match(line.rstrip("\n"))
            if not m:
                continue
            kind, ident, name = m.groups()
            table = objects if kind in ("ob", "cob") else names
            if name:
                table[ident] = name
            if kind == "ob":
                current_object = objects.get(ident)
            elif kind == "fn" and current_object and lib_name in current_object:
                # A recursive call's cycle is named f'2, f'3, ... (stop 49: parse_option_value,
                # which parses a percentage by calling itself): the function is f. The quote
                # in a linker script made GNU ld refuse the script, and a fresh configure then
                # built without the layout.
                run.add(re.sub(r"'\d+$", "", names[ident]))
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append")
    ap.add_argument("--out", default=os.path.join(ROOT, "platform", "hot-code.ld"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    counts = collections.Counter()
    ran = 0
    split = set()
    for build in args.build or [os.path.join(ROOT, "build")]:
        ran += profile(os.path.abspath(build), counts)
        split |= split_functions(os.path.abspath(build))
    return emit(args, counts, ran, split)


def split_functions(build):
    """The functions of build's library that the compiler split in two, X and its cold part X.cold
    (in section .text.unlikely.X, the section where g++ puts the whole of a function it judges
    cold)."""
    lib = os.path.realpath(os.path.join(build, "libnebulamem.so"))
    out = subprocess.run(["nm", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1][:-len(".cold")] for line in out.splitlines() if line.endswith(".cold")}


def profile(build, counts):
    """Runs PROGRAMS under callgrind with build's library; adds each run's functions to counts."""
    lib = os.path.realpath(os.path.join(build, "libnebulamem.so"))
    bench = os.path.join(build, "bench")
    if not os.path.exists(lib) or not shutil.which("valgrind"):
        sys.exit(f"hot-code: needs valgrind and a built library in {build} (./nebulamem build)")
    ran = 0
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cpp")
        with open(src, "w") as f:
            f.write(CXX_SOURCE)
        for i, (cmd, children, *extra) in enumerate(PROGRAMS):
            subst = {"{src}": src, "{obj}": os.path.join(tmp, "t.o")}
            cmd = [subst.get(c, c).replace("{build}", build) for c in cmd]
            local = os.path.join(bench, cmd[0])
            # The system's programs before the PATH's: a version manager's shim (pyenv's python3
            # is a bash script) would have bash profiled in the program's place.
            system = shutil.which(cmd[0], path="/usr/bin:/bin")
            if os.path.exists(local):
                cmd[0] = local
            elif system:
                cmd[0] = system
            elif not shutil.which(cmd[0]):
                print(f"hot-code: {cmd[0]} not found, left out", file=sys.stderr)
                continue
            out = os.path.join(tmp, f"cg.{i}.%p")
            vg = ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}"]
            if children:
                vg.append("--trace-children=yes")
            env = dict(os.environ, LD_PRELOAD=lib, **(extra[0] if extra else {}))
            subprocess.run(vg + cmd, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=tmp, timeout=600, check=False)
            for name in os.listdir(tmp):
                if name.startswith(f"cg.{i}."):
                    run = functions_run(os.path.join(tmp, name), os.path.basename(lib))
                    if run:
                        counts.update(run)
                        ran += 1
    return ran


def emit(args, counts, ran, split):
    if ran == 0:
        sys.exit("hot-code: no program ran the library")
    lines = [
        "/* Generated by tools/hot-code.py: do not edit. The drop-in library's functions that",
        f"   ordinary programs run ({ran} runs), most used first, at the start of its .text",
        "   (meson.build; docs/performance.md, log, stop 29). The statement replaces the default",
        "   script's .text, whose patterns it ends with (GNU ld 2.40's, in its order): one .text",
        "   section, as debuggers and valgrind expect (valgrind reads symbols only in .text: a",
        "   second code section had callgrind report our functions as bare addresses). */",
        "SECTIONS {",
        "  .text : {",
        "    *crtbeginS.o(.text .text.*)",
        "    *libc_nonshared.a:*(.text .text.*)",
    ]
    # The contended-lock functions first: the profile does not count them, and threaded programs
    # run them (last in the list, they were the first functions past the window once the list
    # outgrew it, stop 47).
    names = list(CONTENDED)
    names += [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
              if name not in CONTENDED and name not in TEST_ONLY]
    # A function's cold part (g++ splits the paths it expects never to run into X.cold, in
    # .text.unlikely.X) comes after every listed function, in the same order, unless it ran in
    # the profile itself: the cold parts took 1.5 KiB of the window between the functions (stop
    # 47), yet some run outside the profile (thread_done's, when threads exit together). A
    # function judged cold as a whole lives in .text.unlikely.X, and is listed with its name.
    cold_parts = []
    for name in names:
        if name.startswith("0x"):
            continue  # no symbol (crtbegin's helpers, placed above)
        if name.endswith(".cold"):
            lines.append(f"    *(.text.unlikely.{name[:-len('.cold')]})")
        elif name in split:
            lines.append(f"    *(.text.{name} .text.hot.{name} .text.startup.{name} .text.exit.{name})")
            if name + ".cold" not in counts:
                cold_parts.append(f"    *(.text.unlikely.{name})")
        else:
            lines.append(f"    *(.text.{name} .text.unlikely.{name} .text.hot.{name} "
                         f".text.startup.{name} .text.exit.{name})")
    lines += cold_parts
    lines += [
        "    HIDDEN(nebula_hot_code_end = .);",
        "    *(.text.unlikely .text.*_unlikely .text.unlikely.*)",
        "    *(.text.exit .text.exit.*)",
        "    *(.text.startup .text.startup.*)",
        "    *(.text.hot .text.hot.*)",
        "    *(SORT(.text.sorted.*))",
        "    *(.text .stub .text.* .gnu.linkonce.t.*)",
        "    *(.gnu.warning)",
        "  }",
        "} INSERT BEFORE .text;",
        "",
    ]
    text = "\n".join(lines)
    if args.check:
        with open(args.out) as f:
            same = f.read() == text
        print("hot-code: " + ("up to date" if same else f"{args.out} differs"))
        sys.exit(0 if same else 1)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"hot-code: {len(counts)} functions from {ran} runs written to {args.out}")


if __name__ == "__main__":
    main()
