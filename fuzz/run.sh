#!/usr/bin/env bash
# One AFL++ campaign: fuzz/run.sh TARGET [EXECUTIONS] [SEEDS]  (default 10,000,000, corpus/TARGET)
# Builds the instrumented target, fuzzes from SEEDS until about EXECUTIONS runs, prints the
# campaign's numbers, and keeps AFL's output in fuzz/out/TARGET. JOBS=N (default 1) runs N
# instances sharing one queue (a main and N-1 secondaries), each with EXECUTIONS/N runs. Inputs are capped at a size
# that covers what rulegate accepts for the target (a longer input only repeats structure
# and makes every run slower).
# Needs cargo-afl (`cargo install cargo-afl --version 0.18.2`; it builds AFL++ on first use).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh sse|request|path|policy [EXECUTIONS]}
execs=${2:-10000000}
seeds=${3:-corpus/$target}
case "$target" in
  path) max_len=2048 ;;      # request lines are short; pingora refuses long ones
  sse) max_len=16384 ;;      # several events with every field kind
  request) max_len=65536 ;;  # a request body with many messages
  policy) max_len=16384 ;;   # a policy with every section
  *) echo "unknown target $target"; exit 2 ;;
esac
cargo afl build --release --bin "$target"
mkdir -p out
# Containers and CI machines have no core-dump pattern or CPU frequency control to tune.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
jobs=${JOBS:-1}
started=$(date +%s)
if [ "$jobs" -le 1 ]; then
  names=(default)
  cargo afl fuzz -i "$seeds" -o "out/$target" -G "$max_len" -E "$execs" "target/release/$target" > "out/$target.log" 2>&1
else
  names=(main); pids=()
  for i in $(seq 2 "$jobs"); do names+=("s$i"); done
  for name in "${names[@]}"; do
    role=-S; [ "$name" = main ] && role=-M
    cargo afl fuzz -i "$seeds" -o "out/$target" "$role" "$name" -G "$max_len" -E "$(( execs / jobs ))" \
      "target/release/$target" > "out/$target.$name.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
fi
total=0; crashes=0
for name in "${names[@]}"; do
  stats="out/$target/$name/fuzzer_stats"
  echo "target=$target instance=$name seconds=$(( $(date +%s) - started ))" \
    "$(grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg)' "$stats" | tr -s ' ' | tr '\n' ' ')"
  total=$(( total + $(awk '/^execs_done/ {print $3}' "$stats") ))
  crashes=$(( crashes + $(awk '/^saved_crashes/ {print $3}' "$stats") ))
done
echo "target=$target executions=$total crashes=$crashes"
# A found crash fails the run; its input is in out/TARGET/INSTANCE/crashes.
test "$crashes" = 0
