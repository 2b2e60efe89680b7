#!/usr/bin/env bash
# The API and process tests again, in secure mode.  secure_suite.sh LIBRARY TEST_PROGRAM...
set -uo pipefail
lib=$1
shift
for t in "$@"; do
  out=$(NEBULA_MEM_SECURE=1 NEBULA_MEM_ZERO_ON_FREE=1 LD_PRELOAD="$lib" "$t" 2>&1) ||
    { echo "secure_suite: FAIL: $t in secure mode:"; echo "$out" | tail -5; exit 1; }
  echo "  $(echo "$out" | tail -1)"
done
echo "secure_suite: ok ($# programs passed in secure mode)"
