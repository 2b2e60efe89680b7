#!/bin/bash
# CPython under the library: dicts, strings, json round trips, threads, sorting
# (py_workload.py); output identical to the glibc run.
source "$(dirname "$0")/common.sh"
need python3
py=$(python3 -c 'import sys; print(sys.executable)') # the real interpreter, not a wrapper
[ -x "$py" ] || fail "cannot locate the python3 interpreter"
export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1

assert_active "$py" -c 'print(len({i: str(i) for i in range(1000)}))'
plain "$py" "$here/py_workload.py" >"$work/plain.out"
preloaded "$py" "$here/py_workload.py" >"$work/pre.out"
same_output "python3 workload" "$work/plain.out" "$work/pre.out"
grep -q '^digest: [0-9a-f]\{64\}$' "$work/pre.out" || fail "no digest line in the python output"
ok "python3 $("$py" -c 'import platform; print(platform.python_version())'): $(tail -1 "$work/pre.out")"
