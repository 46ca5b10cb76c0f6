#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60), starting from the seeds in fuzz/seeds.
# Stable Rust: cargo-fuzz builds with `-s none` (coverage-guided libFuzzer, no sanitizer;
# Rust's own bounds checks and overflow checks (debug assertions on) catch memory errors).
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in request_parser reply_scanner config_parser; do
  mkdir -p "corpus/$target"
  echo "== fuzzing $target for ${seconds}s"
  cargo fuzz run -s none --debug-assertions "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | grep -E 'Done|stat::number_of_executed_units|ERROR|panicked' || true
  if [ -d "artifacts/$target" ] && [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "crash found: fuzz/artifacts/$target"; exit 1
  fi
done
