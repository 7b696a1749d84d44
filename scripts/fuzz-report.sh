#!/usr/bin/env bash
# What the `datagram` fuzz target's corpus reaches: replays every input of
# the corpus once (libFuzzer -runs=0) with FERROGUARD_FUZZ_REPORT set, and
# counts the receive outcomes by receiving side, message type and outcome
# (drop reason). Run scripts/fuzz.sh (or cargo fuzz run datagram) first to
# grow fuzz/corpus/datagram.
#
#   scripts/fuzz-report.sh [--check] [CORPUS_DIR]
#
# --check: exit 1 (with "0 passed, 1 failed") unless the corpus reaches the
# transport path (a transport message delivered, one refused as a replay)
# and the handshake (an initiation and a response handled), which the
# harness before this one never did.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
check=0; [ "${1:-}" = --check ] && { check=1; shift; }
corpus=${1:-corpus/datagram}
[ -d "$corpus" ] || { echo "fuzz-report: no corpus at $corpus (run scripts/fuzz.sh first)" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
report=$(mktemp)
trap 'rm -f "$report"' EXIT
cargo fuzz build -s none --release datagram
FERROGUARD_FUZZ_REPORT=$report cargo fuzz run -s none --release datagram "$corpus" -- -runs=0 >/dev/null 2>&1
echo "$(find "$corpus" -type f | wc -l) inputs, $(wc -l <"$report") datagrams received:"
sort "$report" | uniq -c | sort -rn
[ "$check" = 1 ] || exit 0
missing=()
for want in "type 4: Deliver" "type 4: Dropped(Replay)" "type 1: Handled" "type 2: Handled"; do
  grep -qF "$want" "$report" || missing+=("$want")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "ok - the datagram corpus reaches transport delivery, the replay window and both handshake messages"
  echo "1 passed, 0 failed"
else
  echo "not ok - the datagram corpus never reached: ${missing[*]}"
  echo "0 passed, 1 failed"; exit 1
fi
