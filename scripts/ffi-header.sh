#!/usr/bin/env bash
# Checks that crates/ffi/include/ferroguard.h is what cbindgen makes of
# crates/ffi/src (exit 1 and a diff if not); --write regenerates it.
# cbindgen comes from scripts/install-test-deps.sh (cargo install --locked).
set -euo pipefail
cd "$(dirname "$0")/../crates/ffi"
command -v cbindgen >/dev/null || { echo "cbindgen missing: run scripts/install-test-deps.sh" >&2; exit 1; }
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
cbindgen -q --config cbindgen.toml --crate ferroguard-ffi --output "$generated" .
if [ "${1:-}" = --write ]; then
  cp "$generated" include/ferroguard.h
  echo "1 passed, 0 failed (header written)"
elif diff -u include/ferroguard.h "$generated"; then
  echo "1 passed, 0 failed (header matches the code)"
else
  echo "0 passed, 1 failed: include/ferroguard.h differs from the code; run $0 --write" >&2
  exit 1
fi
