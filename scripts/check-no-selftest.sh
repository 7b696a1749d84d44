#!/usr/bin/env bash
# The self-test switch off: the daemon builds without the `selftest` feature,
# says so in --version, and `--selftest` refuses instead of pretending.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p ferroguard --release --no-default-features --target-dir target/variants
bin=target/variants/release/ferroguard
"$bin" --version | grep -q "features: none" || { echo "not ok - --version should list no features"; exit 1; }
if "$bin" --selftest 2>/dev/null; then echo "not ok - --selftest must fail without the feature"; exit 1; fi
echo "ok - daemon without self-tests builds and reports it"
echo "1 passed, 0 failed"
