#!/usr/bin/env bash
# fuzz/run.sh [--seconds N] [--out DIR] [-- LIBFUZZER ARGS...]: build the fuzz target if needed
# (fuzz/build.sh) and run it for N seconds (default 50) on the seed corpus fuzz/corpus/ plus the
# working corpus OUT/corpus (new inputs go there, never into the source tree). Crash inputs are
# written to OUT/artifacts/. The exit status is libFuzzer's: 0 when nothing was found, non-zero
# on a crash, a failed check, a timeout or a leak, so a meson test that runs this fails then.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=50
out="$ROOT/build/fuzz"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#--seconds=}"; shift ;;
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --) shift; break ;;
    *) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
"$ROOT/fuzz/build.sh" "$out"
mkdir -p "$out/corpus" "$out/artifacts"
log="$out/last-run.log"
echo "fuzz/run.sh: fuzzing for $seconds s (corpus $out/corpus + fuzz/corpus, crashes to $out/artifacts/)"
rc=0
rm -f "$out/current-input"
FUZZ_CURRENT_INPUT="$out/current-input" \
ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}" \
  "$out/alloc_fuzzer" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=6144 -max_len=2048 \
  -print_final_stats=1 -artifact_prefix="$out/artifacts/" "$@" "$out/corpus" "$ROOT/fuzz/corpus" \
  >"$log" 2>&1 || rc=$?
# the summary: executions, corpus, coverage; the whole log on failure
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' "$log" | tail -1)
if [ $rc -ne 0 ]; then
  cat "$log"
  # killed without libFuzzer's handler (the engine's own abort): keep the input that did it
  if [ -f "$out/current-input" ] && ! grep -q "Test unit written to" "$log"; then
    keep="$out/artifacts/crash-$(sha1sum "$out/current-input" | cut -c1-40)"
    cp "$out/current-input" "$keep"
    echo "fuzz/run.sh: the process was killed outside libFuzzer; the input that ran is $keep"
    echo "fuzz/run.sh: replay it with: FUZZ_TRACE=1 $out/alloc_fuzzer $keep"
  fi
  # An input alone often does not fail: the engine's state carries over from the inputs before
  # it. In the first pass over the corpus (before libFuzzer's INITED line) they run in the order
  # libFuzzer shuffled them with its seed, and the same seed over the same corpus replays it.
  seed=$(sed -n 's/^INFO: Seed: *//p' "$log" | head -1)
  if ! grep -q "INITED" "$log"; then
    echo "fuzz/run.sh: it failed in the first pass over the corpus; to replay that pass, traced:" \
         "FUZZ_TRACE=1 ASAN_OPTIONS=allocator_may_return_null=1 $out/alloc_fuzzer -seed=${seed:-?} -runs=0 -max_len=2048 $out/corpus $ROOT/fuzz/corpus"
  fi
  echo "fuzz: FAILED (exit $rc) after ${execs:-?} executions; the input is in $out/artifacts/"
  exit $rc
fi
tail -n 3 "$log" | grep -v '^stat::' || true
echo "fuzz: ${execs:-?} executions in $seconds s (${rate:-?}/s), ${cov:-no coverage line}, 0 crashes"
echo "RESULT name=fuzz ops=${execs:-0} errors=0 seconds=$seconds"
