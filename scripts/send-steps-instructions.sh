#!/usr/bin/env bash
# Instructions per packet of the engine's send steps (prepare + complete, no AEAD), counted by valgrind's
# cachegrind: a count that does not depend on the machine's load, unlike a timing. Compares this tree
# (the one-lane path `plain` and the several-lane path `held`, crates/proto/examples/send_steps.rs) with
# BASE (a git revision, default main), whose `plain` it builds in a temporary worktree with its own target
# directory, target/send-steps-base (kept for the next run: a first run compiles the dependencies once more).
# Not this tree's target directory: cargo names both trees' crates alike and would take one build for the other.
#
#   scripts/send-steps-instructions.sh [BASE] [ROUNDS]
#
# Each mode runs ROUNDS (default 2000) and 2 × ROUNDS batches of 64 packets; the difference divided by
# ROUNDS × 64 is the cost per packet without the set-up (key generation, handshake).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-main}
ROUNDS=${2:-2000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
TMP=$(mktemp -d /tmp/send-steps-XXXXXX)
cleanup() {
	git -C "$REPO" worktree remove --force "$TMP/base" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

build() { # DIR TARGET_DIR OUT
	local exe
	exe=$(cd "$1" && CARGO_TARGET_DIR="$2" nice -n 10 cargo build --quiet --release \
		-p ferroguard-proto --features test-support --example send_steps --message-format=json |
		grep -o '"executable":"[^"]*send_steps[^"]*"' | tail -1 | cut -d'"' -f4)
	[[ -n $exe ]] || { echo "no send_steps executable built in $1" >&2; exit 1; }
	cp "$exe" "$3"
}

build "$REPO" "$REPO/target" "$TMP/new"
git -C "$REPO" worktree add --quiet --detach "$TMP/base" "$BASE"
# The base has no holds: drop the held functions and use the stand-ins marked #[cfg(any())].
sed -e '/held-begin/,/held-end/d' -e '/^#\[cfg(any())\]$/d' \
	"$REPO/crates/proto/examples/send_steps.rs" >"$TMP/base/crates/proto/examples/send_steps.rs"
grep -q 'name = "send_steps"' "$TMP/base/crates/proto/Cargo.toml" ||
	printf '\n[[example]]\nname = "send_steps"\nrequired-features = ["test-support"]\n' \
		>>"$TMP/base/crates/proto/Cargo.toml"
build "$TMP/base" "$REPO/target/send-steps-base" "$TMP/base-bin"

irefs() { # BIN ROUNDS MODE
	valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$1" "$2" "$3" 2>&1 >/dev/null |
		awk '/I[[:space:]]+refs:/ { gsub(",", "", $NF); print $NF }'
}

per_packet() { # BIN MODE
	local one two
	one=$(irefs "$1" "$ROUNDS" "$2")
	two=$(irefs "$1" $((2 * ROUNDS)) "$2")
	awk -v a="$one" -v b="$two" -v n=$((ROUNDS * 64)) 'BEGIN { printf "%.1f", (b - a) / n }'
}

base=$(per_packet "$TMP/base-bin" plain)
plain=$(per_packet "$TMP/new" plain)
held=$(per_packet "$TMP/new" held)
echo "instructions per packet, prepare + complete of 64-packet batches of 20-byte packets ($ROUNDS/$((2 * ROUNDS)) rounds):"
printf '| %s | %s |\n|---|---|\n' "build, path" "instructions / packet"
printf '| %s (%s), plain | %s |\n' "base" "$(git -C "$REPO" rev-parse --short "$BASE")" "$base"
printf '| this tree, plain (one lane) | %s |\n' "$plain"
printf '| this tree, held (several lanes) | %s |\n' "$held"
awk -v b="$base" -v p="$plain" -v h="$held" \
	'BEGIN { printf "ratios: plain/base %.3f, held/base %.3f, held/plain %.3f\n", p / b, h / b, h / p }'
