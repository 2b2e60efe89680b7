#!/bin/bash
# Validates the test suite itself against glibc's malloc, without libnebulamem.
#
#   tests/glibc_baseline.sh [test-name-filter]
#
# Builds every C/C++ test under tests/api and tests/process with -DNEBULA_TEST_AGAINST_GLIBC
# (CHECK_PRELOAD() then asserts the library is ABSENT) and runs it without LD_PRELOAD. Then runs
# the real-program scripts with a stub preload library that only prints a "nebula-memory:" line
# at exit under NEBULA_MEM_STATS=1, so the scripts' comparison logic is exercised against glibc.
# Not registered with meson: it is a tool for whoever edits the tests.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
filter=${1:-}
work=$(mktemp -d /tmp/nebula-glibc-baseline.XXXXXX)
trap 'rm -rf "$work"' EXIT

cflags=(-O2 -g -std=c11 -D_GNU_SOURCE -fno-builtin -Wall -Wextra -pthread -DNEBULA_TEST_AGAINST_GLIBC)
cxxflags=(-O2 -g -std=c++20 -D_GNU_SOURCE -fno-builtin -Wall -Wextra -pthread -DNEBULA_TEST_AGAINST_GLIBC)
if g++ -fno-allocation-dce -x c++ -c /dev/null -o /dev/null 2>/dev/null; then
  cxxflags+=(-fno-allocation-dce)
fi

fails=0
passes=0
report() { # NAME STATUS START
  local ms=$(( (${EPOCHREALTIME/./} - ${3/./}) / 1000 ))
  printf '%-28s %s (%d.%03ds)\n' "$1" "$2" $((ms / 1000)) $((ms % 1000))
}
for src in "$here"/api/*.c "$here"/api/*.cpp "$here"/process/*.c "$here"/process/*.cpp; do
  [ -e "$src" ] || continue
  name=$(basename "${src%.*}")
  if [ -n "$filter" ] && [[ $name != *$filter* ]]; then continue; fi
  exe="$work/$name"
  case "$src" in
    *.c) gcc "${cflags[@]}" "$src" -o "$exe" -ldl ;;
    *.cpp) g++ "${cxxflags[@]}" "$src" -o "$exe" -ldl ;;
  esac
  start=$EPOCHREALTIME
  if (cd "$work" && env -u LD_PRELOAD timeout 120 "$exe"); then
    passes=$((passes + 1))
    status=PASS
  else
    fails=$((fails + 1))
    status=FAIL
  fi
  report "$name" "$status" "$start"
done

# Real programs, against a stub that only proves the "is the preload active" plumbing.
cat > "$work/stub.c" <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Keeps its own duplicate of stderr, as the real library must: coreutils programs close fd 2 in
 * an atexit handler that runs before library destructors. */
static int stub_fd = -1;
__attribute__((constructor)) static void stub_init(void) {
  const char *s = getenv("NEBULA_MEM_STATS"), *v = getenv("NEBULA_MEM_VERBOSE");
  if (s && *s == '1') stub_fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
  if (v && *v == '1') fprintf(stderr, "nebula-memory: glibc-baseline stub, no options\n");
}
__attribute__((destructor)) static void stub_stats(void) {
  static const char msg[] = "nebula-memory: glibc-baseline stub, no statistics\n";
  if (stub_fd >= 0 && write(stub_fd, msg, strlen(msg)) < 0) _exit(3);
}
EOF
gcc -shared -fPIC -O2 "$work/stub.c" -o "$work/libstub.so"
for script in "$here"/api/*_test.sh "$here"/programs/*_test.sh; do
  [ -e "$script" ] || continue
  name=$(basename "${script%.sh}")
  extra=()
  [ "$name" = options_test ] && extra=("$work/options_probe")
  if [ -n "$filter" ] && [[ $name != *$filter* ]]; then continue; fi
  start=$EPOCHREALTIME
  if env -u LD_PRELOAD timeout 300 bash "$script" "$work/libstub.so" "${extra[@]}"; then
    passes=$((passes + 1))
    status=PASS
  else
    fails=$((fails + 1))
    status=FAIL
  fi
  report "$name" "$status" "$start"
done

echo "glibc baseline: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
