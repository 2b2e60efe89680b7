# Sourced by the real-program tests: tests/programs/*_test.sh LIBRARY
# Each test runs a real program once with glibc's malloc (no LD_PRELOAD) and once under
# libnebulamem, compares the outputs exactly, and proves the preload was active by running the
# program with NEBULA_MEM_STATS=1 and finding the "nebula-memory:" summary line on stderr.
# A missing program is a failure, never a skip.
set -euo pipefail

test_name=$(basename "${0%.sh}")
fail() {
  echo "$test_name: FAIL: $*" >&2
  exit 1
}

[ $# -ge 1 ] || fail "usage: $0 LIBRARY"
[ -f "$1" ] || fail "library '$1' does not exist"
lib=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)

# The reference runs must not see the library, and no NEBULA_MEM_* option may leak in.
unset LD_PRELOAD
while IFS='=' read -r _name _; do
  case $_name in NEBULA_MEM_*) unset "$_name" ;; esac
done < <(env)
export LC_ALL=C
export TZ=UTC

work=$(mktemp -d "/tmp/nebula-$test_name.XXXXXX")
trap 'rm -rf "$work"' EXIT

need() {
  local p
  for p in "$@"; do
    command -v "$p" >/dev/null 2>&1 || fail "required program '$p' is not installed"
  done
}

# plain CMD...   : run without the library
# preloaded CMD...: run under the library
plain() { env -u LD_PRELOAD "$@"; }
preloaded() { env LD_PRELOAD="$lib" "$@"; }

# assert_active CMD... : the library is loaded and active in CMD (stats summary on stderr)
assert_active() {
  local err="$work/.active.err"
  if ! env LD_PRELOAD="$lib" NEBULA_MEM_STATS=1 "$@" </dev/null >/dev/null 2>"$err"; then
    cat "$err" >&2
    fail "'$*' failed under the library with NEBULA_MEM_STATS=1"
  fi
  if ! grep -q '^nebula-memory:' "$err"; then
    # Tell "not loaded" apart from "loaded, but the summary never reached stderr" (coreutils
    # programs close fd 2 in an atexit handler that runs before the library's exit hook; the
    # library has to keep its own duplicate of stderr to print there).
    local base
    base=$(basename "$lib")
    if env LD_PRELOAD="$lib" LD_DEBUG=files "$@" </dev/null 2>&1 >/dev/null | grep -q "calling init: .*$base"; then
      fail "'$*' with NEBULA_MEM_STATS=1: the library was loaded and initialised but no 'nebula-memory:' summary line reached stderr (does the program close stderr before exit? stderr was: $(head -c 300 "$err"))"
    fi
    fail "'$*' with NEBULA_MEM_STATS=1 printed no 'nebula-memory:' line and the library was not initialised: the preload is not active. stderr: $(head -c 500 "$err")"
  fi
}

# same_output WHAT FILE_PLAIN FILE_PRELOADED
same_output() {
  local what=$1 a=$2 b=$3
  [ -s "$a" ] || fail "$what: the reference run produced no output"
  if ! cmp -s "$a" "$b"; then
    echo "--- $what: glibc (-) vs libnebulamem (+), first differences:" >&2
    diff -u "$a" "$b" | head -40 >&2 || true
    fail "$what: output differs under the library"
  fi
}

ok() { echo "$test_name: ok ($*)"; }
