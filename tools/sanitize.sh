#!/usr/bin/env bash
# tools/sanitize.sh thread|undefined: the engine's unit tests (tests/unit, linked against the
# non-interposing engine libnebulacore.a) under ThreadSanitizer or UndefinedBehaviorSanitizer.
#
# Configures its own meson build directory next to the source tree (build-tsan, build-ubsan;
# reused when present), builds only the unit-test target and runs it:
#   thread     -Db_sanitize=thread,      TSAN_OPTIONS=halt_on_error=1 (plus second_deadlock_stack)
#   undefined  -Db_sanitize=undefined,   -fno-sanitize-recover=all,
#              UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# Exit status: the unit tests' (non-zero on the first sanitizer report). Meson runs both as the
# suite 'sanitize' (stress/meson.build). SANITIZE_BUILD_ROOT puts the build directories
# elsewhere; extra arguments go to the doctest runner (e.g. -tc='threads*').
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind="${1:-}"
[ $# -gt 0 ] && shift
case "$kind" in
  thread) dir=build-tsan ;;
  undefined) dir=build-ubsan ;;
  *) echo "usage: tools/sanitize.sh thread|undefined [DOCTEST ARGS...]" >&2; exit 2 ;;
esac
BUILD="${SANITIZE_BUILD_ROOT:-$ROOT}/$dir"

extra=()
if [ "$kind" = undefined ]; then
  extra=(-Dcpp_args=-fno-sanitize-recover=all -Dc_args=-fno-sanitize-recover=all
         -Dcpp_link_args=-fno-sanitize-recover=all -Dc_link_args=-fno-sanitize-recover=all)
fi

# One configure and build at a time in a directory (two runs of this script may overlap).
mkdir -p "$BUILD"
exec 9>"$BUILD/.sanitize.lock"
flock 9
if [ ! -f "$BUILD/build.ninja" ]; then
  echo "sanitize: configuring $BUILD (-Db_sanitize=$kind)"
  meson setup "$BUILD" "$ROOT" --buildtype=debugoptimized -Db_sanitize="$kind" -Db_lundef=false \
    -Dreal_programs=false "${extra[@]}" >"$BUILD/sanitize-setup.log" 2>&1 || {
      cat "$BUILD/sanitize-setup.log"
      echo "sanitize: meson setup of $BUILD failed" >&2
      exit 1
    }
fi
echo "sanitize: building tests/unit/unit_tests in $BUILD"
ninja -C "$BUILD" tests/unit/unit_tests >"$BUILD/sanitize-build.log" 2>&1 || {
  cat "$BUILD/sanitize-build.log"
  echo "sanitize: build failed" >&2
  exit 1
}
flock -u 9

# Test cases that cannot run under a sanitizer that replaces malloc: they hand blocks of the
# process's malloc to nebula_free and expect glibc's chunk layout (foreign pointers); under
# ThreadSanitizer malloc is TSan's own allocator, whose blocks are neither ours nor glibc's.
tsan_excluded="api: edge cases of the prefixed entry points"
case "$kind" in
  thread)
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
    if [ $# -eq 0 ]; then
      echo "sanitize: excluded under TSan (glibc's malloc is not the process malloc): $tsan_excluded"
      set -- "-tce=$tsan_excluded"
    fi
    ;;
  undefined)
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
    ;;
esac
echo "sanitize: running the unit tests under -fsanitize=$kind"
start=$(date +%s)
rc=0
"$BUILD/tests/unit/unit_tests" "$@" || rc=$?
echo "sanitize: $kind: unit tests exited $rc after $(( $(date +%s) - start )) s"
exit $rc
