#!/usr/bin/env bash
# Bad input, in the default mode and in secure mode (NEBULA_MEM_SECURE=1): which inputs abort
# with the one-line message naming the pointer.  bad_input_test.sh LIBRARY BAD_INPUT_PROGRAM
#   default mode: double free (owner), double free of large and huge blocks, interior, stack
#                 and global pointers, realloc of a freed block are detected
#   secure mode:  all of those, plus the double free by another thread and free_sized with a
#                 wrong size
set -uo pipefail
lib=$1
prog=$2
fail() { echo "bad_input_test: FAIL: $*"; exit 1; }
detected=0
expect_abort() {  # mode case pattern
  local mode=$1 case=$2 pattern=$3 env=()
  [ "$mode" = secure ] && env=(NEBULA_MEM_SECURE=1)
  local err rc
  err=$(env "${env[@]}" LD_PRELOAD="$lib" "$prog" "$case" 2>&1 >/dev/null)
  rc=$?
  [ $rc -eq 134 ] || fail "$mode $case: exit status $rc (expected SIGABRT): $err"
  local first
  first=$(echo "$err" | head -1)
  echo "$first" | grep -qE "^nebula-memory: (free|realloc|free_sized)\(0x[0-9a-f]+\): .*$pattern" ||
    fail "$mode $case: message: $first"
  detected=$((detected + 1))
  echo "  $mode $case: $first"
}
expect_survive() {  # mode case
  local mode=$1 case=$2 env=()
  [ "$mode" = secure ] && env=(NEBULA_MEM_SECURE=1)
  env "${env[@]}" LD_PRELOAD="$lib" "$prog" "$case" >/dev/null 2>&1 || fail "$mode $case: did not exit 0"
}
for mode in default secure; do
  expect_survive "$mode" ok
  expect_abort "$mode" double-owner "double free"
  expect_abort "$mode" double-large "not a live block"
  expect_abort "$mode" double-huge "not a live block"
  expect_abort "$mode" interior "middle of a 64-byte block"
  expect_abort "$mode" stack "stack"
  expect_abort "$mode" global "global"
  expect_abort "$mode" realloc-freed "freed already"
done
expect_abort secure double-remote "double free"
expect_abort secure sized-wrong "free_sized with size 24"
echo "bad_input_test: ok ($detected bad inputs detected across both modes)"
