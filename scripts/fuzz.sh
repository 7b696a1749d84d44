#!/usr/bin/env bash
# Builds every fuzz target (with the debug-checks feature, as fuzz/Cargo.toml
# sets) and runs each for SECONDS seconds (default 20). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); libFuzzer runs on the stable toolchain with
# `-s none` (no sanitizer) and RUSTC_BOOTSTRAP for the nightly-only flags.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-20}
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
pass=0; fail=0
for t in $targets; do
  cargo fuzz build -s none --release "$t"
  mkdir -p "corpus/$t"
  if cargo fuzz run -s none --release "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"/tmp/fuzz-$t.log" 2>&1; then
    echo "ok - fuzz $t ($(grep -Eo '#[0-9]+' "/tmp/fuzz-$t.log" | tail -1 | tr -d '#') runs)"; pass=$((pass+1))
  else
    echo "not ok - fuzz $t"; tail -30 "/tmp/fuzz-$t.log"; fail=$((fail+1))
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
