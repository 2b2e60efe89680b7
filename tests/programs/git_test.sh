#!/bin/bash
# git under the library: init, 1000 generated files, add, commit, modify, second commit, gc,
# fsck. With fixed identities and dates the object ids, pack statistics, log and fsck output are
# deterministic and must be identical to the glibc run.
source "$(dirname "$0")/common.sh"
need git sha256sum

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME="Nebula Test" GIT_AUTHOR_EMAIL="nebula@example.invalid"
export GIT_COMMITTER_NAME="Nebula Test" GIT_COMMITTER_EMAIL="nebula@example.invalid"
export GIT_AUTHOR_DATE="2024-01-02T03:04:05+0000" GIT_COMMITTER_DATE="2024-01-02T03:04:05+0000"
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY

scenario() { # scenario RUNNER DIR  -> deterministic report on stdout
  local run=$1 dir=$2 i
  mkdir -p "$dir"
  export HOME=$dir
  $run git init -q -b main "$dir/repo"
  local g=(git -C "$dir/repo" -c core.fsync=none -c pack.threads=1 -c gc.auto=0 -c core.autocrlf=false)
  mkdir -p "$dir/repo/src/a" "$dir/repo/src/b" "$dir/repo/doc"
  for i in $(seq 1 1000); do
    case $((i % 3)) in
      0) printf 'int f%d(int x) { return x * %d + %d; }\n' "$i" "$i" $((i * 7 % 13)) >"$dir/repo/src/a/f$i.c" ;;
      1) printf 'line %d\n%.0s' "$i" $(seq 1 $((i % 17 + 1))) >"$dir/repo/src/b/g$i.txt" ;;
      2) printf '# doc %d\n\nsome text %d %s\n' "$i" $((i * i)) "$(printf '%*s' $((i % 50)) '' | tr ' ' x)" >"$dir/repo/doc/d$i.md" ;;
    esac
  done
  $run "${g[@]}" add -A
  $run "${g[@]}" commit -q -m "add 1000 generated files"
  for i in $(seq 3 30 1000); do
    echo "changed $i" >>"$dir/repo/doc/d$((i - (i % 3) + 2)).md" 2>/dev/null || true
  done
  rm -f "$dir/repo/src/a/f3.c" "$dir/repo/src/a/f6.c"
  $run "${g[@]}" add -A
  $run "${g[@]}" commit -q -m "modify some files"
  $run "${g[@]}" tag -a v1 -m "tag v1"
  $run "${g[@]}" gc -q --prune=now
  echo "HEAD $($run "${g[@]}" rev-parse HEAD)"
  echo "tree $($run "${g[@]}" rev-parse 'HEAD^{tree}')"
  $run "${g[@]}" count-objects -v | grep -E '^(count|size|in-pack|packs|size-pack|prune-packable|garbage|size-garbage):'
  $run "${g[@]}" fsck --full --strict 2>&1
  echo "log $($run "${g[@]}" log --stat --format='%H %an %ad %s' | sha256sum | cut -d' ' -f1)"
  echo "ls-tree $($run "${g[@]}" ls-tree -r -l HEAD | sha256sum | cut -d' ' -f1)"
  echo "files $($run "${g[@]}" ls-files | wc -l)"
  $run "${g[@]}" diff --stat HEAD~1 HEAD | tail -1
  $run "${g[@]}" describe
}

assert_active git --version
scenario plain "$work/plain" >"$work/plain.out"
scenario preloaded "$work/pre" >"$work/pre.out"
same_output "git scenario" "$work/plain.out" "$work/pre.out"
grep -q '^files 998$' "$work/pre.out" || fail "unexpected file count: $(grep '^files' "$work/pre.out")"
grep -q '^packs: 1$' "$work/pre.out" || fail "git gc did not produce one pack"
ok "$(git --version): $(head -1 "$work/pre.out")"
