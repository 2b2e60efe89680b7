#!/usr/bin/env bash
# fuzz/build.sh [OUT_DIR]: build the libFuzzer target OUT_DIR/alloc_fuzzer (default build/fuzz)
# with clang++ from the engine's sources (core/*.cpp, platform/linux.cpp, interpose/prefixed.cpp:
# the prefixed entry points, no interposition) and fuzz/alloc_fuzzer.cpp.
#
# Sanitizers: FUZZ_SANITIZE (default fuzzer,address,undefined). The engine gets the flags that
# meson gives it (engine_args in the root meson.build). The result is reused while the sources,
# the headers, this script and the flags are unchanged (a hash of them is kept in OUT/stamp).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/build/fuzz}" && cd "${1:-$ROOT/build/fuzz}" && pwd)"
CXX="${FUZZ_CXX:-clang++}"
SANITIZE="${FUZZ_SANITIZE:-fuzzer,address,undefined}"

if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "fuzz/build.sh: $CXX not found: install clang and libclang-rt-14-dev (./nebulamem build does)" >&2
  exit 1
fi

cd "$ROOT"
ENGINE_SRC=(core/*.cpp platform/linux.cpp interpose/prefixed.cpp)
COMMON=(-std=c++20 -I. -Iinclude -g -O1 -fno-omit-frame-pointer "-fsanitize=$SANITIZE" -fno-sanitize-recover=all)
# engine_args of the root meson.build (what the engine is built with), minus the LTO-like ones
ENGINE=(-fno-exceptions -fno-rtti -ftls-model=initial-exec -fno-plt -fvisibility=hidden
        -fno-semantic-interposition -fno-stack-protector -fno-builtin-malloc -fno-builtin-free)
TARGET=(-D_GNU_SOURCE)

stamp=$( { "$CXX" --version; echo "${COMMON[*]} ${ENGINE[*]} ${TARGET[*]}";
           cat "${ENGINE_SRC[@]}" core/*.hpp platform/*.hpp interpose/*.hpp include/nebula/*.h \
               fuzz/alloc_fuzzer.cpp fuzz/pattern.cpp fuzz/pattern.hpp fuzz/build.sh; } | sha256sum | cut -d' ' -f1)

exec 9>"$OUT/.lock"
flock 9
if [ -x "$OUT/alloc_fuzzer" ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ]; then
  echo "fuzz/build.sh: $OUT/alloc_fuzzer is up to date"
  exit 0
fi

echo "fuzz/build.sh: building $OUT/alloc_fuzzer with $CXX -fsanitize=$SANITIZE"
mkdir -p "$OUT/obj"
rm -f "$OUT/stamp" "$OUT/obj"/*.o
jobs=$(nproc 2>/dev/null || echo 2)
pids=()
for src in "${ENGINE_SRC[@]}"; do
  obj="$OUT/obj/$(echo "$src" | tr / _).o"
  "$CXX" "${COMMON[@]}" "${ENGINE[@]}" -c "$src" -o "$obj" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
"$CXX" "${COMMON[@]}" "${TARGET[@]}" -c fuzz/alloc_fuzzer.cpp -o "$OUT/obj/alloc_fuzzer.o" &
pids+=($!)
# the pattern loops: the same sanitizers but no coverage instrumentation (see fuzz/pattern.cpp)
plain="${SANITIZE//fuzzer,/}"
plain="${plain//fuzzer/}"
"$CXX" -std=c++20 -I. -Iinclude -g -O1 ${plain:+"-fsanitize=$plain" -fno-sanitize-recover=all} "${TARGET[@]}" \
  -c fuzz/pattern.cpp -o "$OUT/obj/pattern.o" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
"$CXX" "${COMMON[@]}" "$OUT"/obj/*.o -o "$OUT/alloc_fuzzer.tmp" -lpthread -ldl
mv "$OUT/alloc_fuzzer.tmp" "$OUT/alloc_fuzzer"
echo "$stamp" > "$OUT/stamp"
echo "fuzz/build.sh: built $OUT/alloc_fuzzer"
