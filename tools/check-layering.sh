#!/usr/bin/env bash
# The layering rule (core/README.md): core/ is platform-free. It reaches the OS only through
# platform/os.hpp, so it must not include OS headers nor test OS macros. Fails and names the
# lines that break the rule.
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
bad=$(grep -nE '#include <(sys/|unistd\.h|pthread\.h|dlfcn\.h|fcntl\.h|windows\.h|mach/)|__linux__|_WIN32|__APPLE__' \
      "$root"/core/*.hpp "$root"/core/*.cpp 2>/dev/null)
# interpose/ may only include core/engine.hpp from the engine, not its internals.
bad2=$(grep -nE '#include "core/(arena|segment|page|heap)' "$root"/interpose/*.cpp 2>/dev/null)
if [ -n "$bad$bad2" ]; then
  echo "layering broken:"
  printf '%s\n' "$bad" "$bad2" | sed '/^$/d'
  exit 1
fi
echo "layering ok: core/ includes no OS header, interpose/ uses core/engine.hpp"
