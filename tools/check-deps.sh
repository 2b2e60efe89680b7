#!/usr/bin/env bash
# tools/check-deps.sh LIBRARY: the drop-in library must not pull the C++ runtime (libstdc++,
# libm, libgcc_s) into the programs that preload it: a C program would map about 1.3 MiB of
# them for nothing (interpose/new_delete.cpp references the runtime weakly, see there). Nor
# libunwind and liblzma (about 110 KiB): the fatal path loads libunwind when it needs it.
set -euo pipefail
lib="$1"
needed=$(readelf -d "$lib" | awk '/\(NEEDED\)/ {gsub(/[\[\]]/, "", $5); print $5}')
echo "NEEDED: $(echo $needed)"
status=0
for bad in libstdc++ libm.so libgcc_s libc++ libunwind liblzma; do
  if echo "$needed" | grep -q "^$bad"; then
    echo "FAIL: $lib needs $bad"
    status=1
  fi
done
# No strong undefined reference may point into the C++ runtime either: it would fail to load.
strong=$(nm -D --undefined-only "$lib" | awk '$1 == "U" && ($2 ~ /^_ZSt|^_ZNSt|^_ZTISt|^_ZTVSt|^__cxa_|^__gxx_/) && $2 !~ /@GLIBC_/ {print $2}')
if [ -n "$strong" ]; then
  echo "FAIL: strong references to the C++ runtime: $strong"
  status=1
fi
[ $status -eq 0 ] && echo "ok: no C++ runtime or unwinder dependency"
exit $status
