#!/usr/bin/env bash
# Ferroguard's whole test suite: what CI runs (.ci/run calls this). Run as
# root: the platform tests create TUN devices, and the network-namespace
# suite creates namespaces, veths and tunnels. Installs the Debian packages,
# cargo-fuzz and cargo-deny it needs first (scripts/install-test-deps.sh).
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    unit/property tests and the quick netns set
#
# Every step is bounded in time; the last line sums all test counts as
# "N passed, N failed, N skipped", after the names of the skipped checks.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT
passed=0; failed=0; skipped=0; steps_failed=(); skipped_names=(); step_times=()

# step NAME TIMEOUT CMD...: runs a step, adds its test counts to the totals.
step() {
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  local began=$SECONDS
  local out="$LOG/$(echo "$name" | tr -c 'a-zA-Z0-9' _).log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  # cargo test: "test result: ok. 12 passed; 0 failed; ..."
  local p f
  p=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$out" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
  # the netns suite and other scripts: a final "N passed, N failed" line
  if grep -Eq '^[0-9]+ passed, [0-9]+ failed' "$out"; then
    p=$((p + $(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1 | awk '{print $1}')))
    f=$((f + $(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1 | awk '{print $3}')))
  fi
  # skips: cargo's "N ignored", a script's ", N skipped", named by their TAP "# SKIP" lines
  local sk
  sk=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored' "$out" | grep -Eo '[0-9]+ ignored' | awk '{s+=$1} END {print s+0}')
  if grep -Eq '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$out"; then
    sk=$((sk + $(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$out" | tail -1 | awk '{print $5}')))
  fi
  while IFS= read -r line; do skipped_names+=("$name: $line"); done < <(grep -E '^ok [0-9]+ - .* # SKIP|NOT CHECKED|^test .* \.\.\. ignored' "$out" | sed -E 's/^ok [0-9]+ - //; s/^test //')
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + sk))
  step_times+=("$(printf '%5d s  %s' $((SECONDS - began)) "$name")")
  if [ "$rc" != 0 ]; then
    steps_failed+=("$name (exit $rc)")
    [ "$f" = 0 ] && failed=$((failed + 1))
  fi
}

export CARGO_TERM_COLOR=never
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (TUN devices, network namespaces)" >&2; exit 1; }
# A dependency that cannot be installed fails the run (a failed step), it does not shrink it.
step "install test dependencies" 1800 scripts/install-test-deps.sh
step "format" 120 cargo fmt --all -- --check
step "clippy (all targets, warnings are errors)" 900 cargo clippy --workspace --all-targets --release -- -D warnings
step "supply chain (cargo deny; advisories only if their database is reachable)" 300 scripts/deny.sh
step "build (release)" 1200 cargo build --release --workspace --lib --bins --examples
step "unit, property and integration tests" 1200 cargo test --workspace --release
step "feature: proto without self-tests" 900 cargo test -p ferroguard-proto --release --no-default-features --lib
step "feature: debug checks alone" 900 cargo test -p ferroguard-proto --release --no-default-features --features debug-checks --lib
# The C ABI (crates/ffi): the header is what cbindgen makes of the code; the C example runs two
# engines over loopback (handshake, data, rekey, network change), also under valgrind.
step "C ABI header matches the code" 120 scripts/ffi-header.sh
step "C ABI example with cc, and under valgrind" 900 scripts/ffi-example.sh
# cargo package of the published crates (a debug build of each, ~5 min on 2 shared cores) and the MSRV API check.
step "cargo package: ferroguard-proto, ferroguard-ffi; rust-version" 1200 scripts/package.sh
step "self-tests from the binary" 60 target/release/ferroguard --selftest
# Built apart, so that target/release/ferroguard stays the default build.
step "feature: daemon without self-tests" 900 scripts/check-no-selftest.sh
if [ "$QUICK" = 0 ]; then
  step "fuzz targets (build, then 12 s each)" 1500 scripts/fuzz.sh 12
  step "fuzz: what the datagram corpus reaches" 300 scripts/fuzz-report.sh --check
  # Three pairs (ferroguard/ferroguard and both interop directions), about 12 minutes on 2 cores.
  step "network-namespace suite" 2400 env FGT_TOTAL_TIMEOUT=2200 tests/netns/run.sh
  step "network-namespace suite without TUN offloads (quick)" 900 env FERROGUARD_NO_OFFLOAD=1 tests/netns/run.sh --quick
  # The defaults on 2 cores are one crypto thread and one I/O thread; this covers the defaults of a
  # machine with more cores end to end: the shared (pool) crypto path and one I/O thread per descriptor.
  step "network-namespace suite with two crypto threads and per-source I/O threads (quick)" 900 \
    env FERROGUARD_CRYPTO_THREADS=2 FERROGUARD_IO_THREADS=per-source tests/netns/run.sh --quick
  # ~20 rekeys in 60 s: engine clock at 40x (cargo feature test-clock, built in target/variants like the above).
  step "soak with a sped-up clock (60 s)" 1200 scripts/soak.sh --seconds 60 --min-rekeys 10
else
  step "network-namespace suite (quick)" 900 tests/netns/run.sh --quick
fi

echo
echo "time per step (total $SECONDS s):"; printf '  %s\n' "${step_times[@]}"
if [ ${#steps_failed[@]} -gt 0 ]; then
  echo "failed steps:"; printf '  %s\n' "${steps_failed[@]}"
fi
if [ ${#skipped_names[@]} -gt 0 ]; then
  echo "skipped:"; printf '  %s\n' "${skipped_names[@]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ ${#steps_failed[@]} = 0 ] && [ "$failed" = 0 ]
