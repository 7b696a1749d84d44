#!/usr/bin/env bash
# The crates others depend on: `cargo package` (metadata, licence, readme, no
# path-only dependencies, and a build of each packaged crate on its own) for
# ferroguard-proto and ferroguard-ffi together (the ffi package resolves
# ferroguard-proto from the one packaged beside it), then the declared minimum
# Rust version as far as one toolchain can check it: clippy's
# incompatible_msrv lint, which refuses standard-library APIs newer than
# rust-version. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0
check() { # NAME CMD...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
# --allow-dirty: CI runs on a clean clone; a developer may have edits in progress.
check "cargo package ferroguard-proto ferroguard-ffi" \
  nice -n 10 cargo package --quiet --allow-dirty -p ferroguard-proto -p ferroguard-ffi
check "no API newer than rust-version (clippy incompatible_msrv)" \
  nice -n 10 cargo clippy --quiet --release -p ferroguard-proto -p ferroguard-ffi -- \
  -A clippy::all -D clippy::incompatible_msrv
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
