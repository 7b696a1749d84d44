#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (configuration: deny.toml at the root), for the workspace and for
# the fuzz project (a workspace of its own):
#   - licenses, bans (duplicate versions are warnings) and sources: always; a finding fails;
#   - advisories (the RustSec database, cloned from github.com): only when the database can be fetched,
#     or a copy fetched earlier is on disk (then it is used as it is, and its date is printed). Without
#     either the check is reported as not run, which does not fail: some machines (this project's CI
#     among them) cannot reach GitHub.
# The last line is "N passed, N failed[, N skipped]" (scripts/test.sh adds it to its totals).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
passed=0 failed=0 skipped=0

# check NAME COMMAND...: one counted check.
check() {
	local name=$1
	shift
	echo "--- $name"
	if "$@"; then
		echo "ok: $name"
		passed=$((passed + 1))
	else
		echo "FAILED: $name"
		failed=$((failed + 1))
	fi
}

WORKSPACE=(--locked --workspace)
FUZZ=(--locked --config deny.toml --manifest-path fuzz/Cargo.toml)

if ! command -v cargo-deny >/dev/null 2>&1; then
	echo "deny.sh: cargo-deny is not installed (scripts/install-test-deps.sh installs it)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi

# The NCSA exception is for fuzz/ only.
check "workspace: licenses, bans, sources" cargo deny "${WORKSPACE[@]}" check -A license-exception-not-encountered \
	licenses bans sources
check "fuzz: licenses, bans, sources" cargo deny "${FUZZ[@]}" check licenses bans sources

# The database directory cargo-deny keeps under $CARGO_HOME (advisory-dbs/advisory-db-<hash>).
local_db() {
	local dir
	for dir in "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-*/; do
		[[ -d $dir/.git ]] && { printf '%s' "$dir"; return 0; }
	done
	return 1
}

if timeout 120 cargo deny --locked fetch db >/dev/null 2>&1; then
	echo "advisories: database fetched from github.com/rustsec/advisory-db"
	db_ok=1
elif db=$(local_db); then
	echo "advisories: the database cannot be fetched; using the copy on disk of" \
		"$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo 'unknown date') ($db)"
	db_ok=1
else
	echo "advisories: NOT CHECKED: the RustSec database (github.com/rustsec/advisory-db) cannot be" \
		"fetched from this machine and there is no copy on disk; run scripts/deny.sh where GitHub is reachable"
	db_ok=0
	skipped=$((skipped + 2))
fi
if ((db_ok)); then
	check "workspace: advisories" cargo deny "${WORKSPACE[@]}" check --disable-fetch advisories
	check "fuzz: advisories" cargo deny "${FUZZ[@]}" check --disable-fetch advisories
fi

summary="$passed passed, $failed failed"
((skipped)) && summary+=", $skipped skipped"
echo "$summary"
((failed == 0))
