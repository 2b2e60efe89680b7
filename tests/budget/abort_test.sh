#!/usr/bin/env bash
# NEBULA_MEM_ON_OOM=abort: at the budget the process aborts with one line that names the
# request, the budget and the bytes in use.   abort_test.sh LIBRARY
set -uo pipefail
lib=$1
err=$(NEBULA_MEM_BUDGET=16M NEBULA_MEM_ON_OOM=abort LD_PRELOAD="$lib" python3 -c "bytearray(64 << 20)" 2>&1 >/dev/null)
rc=$?
[ $rc -eq 134 ] || { echo "abort_test: exit status $rc, expected 134 (SIGABRT): $err"; exit 1; }
echo "$err" | grep -qE '^nebula-memory: out of memory: requested [0-9]+ bytes, budget 16\.0 MiB, in use ' ||
  { echo "abort_test: message not found: $err"; exit 1; }
echo "abort_test: ok ($(echo "$err" | head -1))"
