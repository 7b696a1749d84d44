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
# cargo extracts the packaged ferroguard-proto from its temporary registry into
# $CARGO_HOME/registry/src/-<hash of the registry's path>/ and, when that
# directory already exists from an earlier run in a checkout at the same path,
# builds ferroguard-ffi against the stale copy (a CI machine that reuses its
# clone path and its cargo home failed this way). Those directories hold only
# our own packages, never anything downloaded: remove them first.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rm -rf "$cargo_home"/registry/src/-*/ferroguard-* "$cargo_home"/registry/cache/-*/ferroguard-*
# --allow-dirty: CI runs on a clean clone; a developer may have edits in progress.
check "cargo package ferroguard-proto ferroguard-ffi" \
  nice -n 10 cargo package --quiet --allow-dirty -p ferroguard-proto -p ferroguard-ffi
check "no API newer than rust-version (clippy incompatible_msrv)" \
  nice -n 10 cargo clippy --quiet --release -p ferroguard-proto -p ferroguard-ffi -- \
  -A clippy::all -D clippy::incompatible_msrv
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
