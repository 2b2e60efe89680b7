#!/usr/bin/env bash
# python3 under a 128 MiB budget: a 512 MiB bytearray raises MemoryError (exit status 1,
# MemoryError on stderr), the process is not killed; a program that catches it goes on and
# allocates within the budget.   python_test.sh LIBRARY
set -uo pipefail
lib=$1
py=/usr/bin/python3
err=$(NEBULA_MEM_BUDGET=128M LD_PRELOAD="$lib" $py -c "bytearray(512 << 20)" 2>&1)
rc=$?
[ $rc -eq 1 ] || { echo "python_test: exit status $rc, expected 1: $err"; exit 1; }
echo "$err" | grep -q MemoryError || { echo "python_test: no MemoryError: $err"; exit 1; }
out=$(NEBULA_MEM_BUDGET=128M NEBULA_MEM_STATS=1 LD_PRELOAD="$lib" $py -c "
try:
    bytearray(512 << 20)
    print('no error')
except MemoryError:
    print('caught')
x = bytearray(64 << 20)
print(len(x))" 2>/tmp/python_budget_stats.$$)
rc=$?
stats=$(cat /tmp/python_budget_stats.$$); rm -f /tmp/python_budget_stats.$$
[ $rc -eq 0 ] && [ "$out" = "$(printf 'caught\n67108864')" ] || { echo "python_test: rc $rc, output: $out"; exit 1; }
echo "$stats" | grep -q '^nebula-memory: budget 128.0 MiB' || { echo "python_test: no budget line in stats: $stats"; exit 1; }
echo "python_test: ok (MemoryError at a 128 MiB budget; caught and recovered)"
