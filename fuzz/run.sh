#!/usr/bin/env bash
# One AFL++ campaign: fuzz/run.sh TARGET [EXECUTIONS]  (default 10,000,000)
# Builds the instrumented target, fuzzes from fuzz/corpus/TARGET until about EXECUTIONS
# runs, prints the campaign's numbers, and keeps AFL's output in fuzz/out/TARGET.
# Needs cargo-afl (`cargo install cargo-afl --version 0.18.2`; it builds AFL++ on first use).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh sse|request|path|policy [EXECUTIONS]}
execs=${2:-10000000}
cargo afl build --release --bin "$target"
mkdir -p out
# Containers and CI machines have no core-dump pattern or CPU frequency control to tune.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
started=$(date +%s)
cargo afl fuzz -i "corpus/$target" -o "out/$target" -E "$execs" "target/release/$target" > "out/$target.log" 2>&1
stats="out/$target/default/fuzzer_stats"
echo "target=$target seconds=$(( $(date +%s) - started ))" \
  "$(grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg)' "$stats" | tr -s ' ' | tr '\n' ' ')"
# A found crash fails the run; its input is in out/TARGET/default/crashes.
test "$(awk '/^saved_crashes/ {print $3}' "$stats")" = 0
