#!/usr/bin/env bash
# Doc drift check: every relative link in README.md and docs/*.md points at a file that exists,
# and every NEBULA_MEM_ variable the docs name is an option of the table (core/options.hpp).
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
status=0
for f in "$root"/README.md "$root"/docs/*.md "$root"/core/README.md; do
  [ -f "$f" ] || continue
  dir=$(dirname "$f")
  while IFS= read -r link; do
    target="${link%%#*}"
    [ -z "$target" ] && continue
    case "$target" in http*|mailto:*) continue ;; esac
    if [ ! -e "$dir/$target" ]; then
      echo "$f: broken link: $link"
      status=1
    fi
  done < <(awk '/^```/ {code = !code; next} !code' "$f" | sed -E 's/`[^`]*`//g' |
            grep -oE '\]\([^)]+\)' | sed -E 's/^\]\(//; s/\)$//')
done
names=$(grep -ohE 'NEBULA_MEM_[A-Z_]+' "$root"/README.md "$root"/docs/*.md 2>/dev/null | sort -u)
for n in $names; do
  # not options: the config-file variable, C API constants, and the misspelt name the docs
  # show as an example of an unknown option
  case "$n" in NEBULA_MEM_CONF|NEBULA_MEM_H|NEBULA_MEM_VERSION_*|NEBULA_MEM_PRESSURE_NONE|NEBULA_MEM_PRESSURE_CRITICAL|NEBULA_MEM_BUDGIT) continue ;; esac
  opt=$(echo "${n#NEBULA_MEM_}" | tr 'A-Z' 'a-z')
  if ! grep -q "\"$opt\"" "$root"/core/options.hpp; then
    echo "docs name $n but core/options.hpp has no option \"$opt\""
    status=1
  fi
done
# The README's options table is the one the option table prints (tools/options.cpp --markdown).
tool="${1:-}"
if [ -n "$tool" ] && [ -x "$tool" ]; then
  if ! diff <("$tool" --markdown) <(sed -n '/^| variable | type | default | meaning |$/,/^$/p' "$root/README.md" | sed '/^$/d') >/dev/null; then
    echo "README.md: the options table differs from 'nebulamem-options --markdown'; paste its output"
    status=1
  fi
fi
[ $status -eq 0 ] && echo "docs ok: links resolve, every NEBULA_MEM_ variable named is an option"
exit $status
