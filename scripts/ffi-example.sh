#!/usr/bin/env bash
# Builds the C ABI (crates/ffi, `ffi` profile: release with panic=unwind),
# compiles crates/ffi/examples/two_engines.c with the system cc against the
# static and the shared library, runs both, then the static one under
# valgrind (any error or definite/indirect leak fails). Prints
# "N passed, N failed"; exits 1 if any check failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in cc valgrind cargo; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run scripts/install-test-deps.sh" >&2; exit 1; }
done
nice -n 10 cargo build --quiet --profile ffi -p ferroguard-ffi || { echo "0 passed, 1 failed (build)"; exit 1; }
lib="$root/target/ffi"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
check() { # NAME CMD...
  local name=$1; shift
  if timeout 120 "$@" >"$work/$name.log" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/    /' "$work/$name.log" | tail -40
  fi
}
cflags=(-std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -g -I crates/ffi/include)
check build-static cc "${cflags[@]}" crates/ffi/examples/two_engines.c "$lib/libferroguard_ffi.a" \
  -lpthread -ldl -lm -o "$work/two_engines"
check build-shared cc "${cflags[@]}" crates/ffi/examples/two_engines.c -L "$lib" -lferroguard_ffi \
  -Wl,-rpath,"$lib" -o "$work/two_engines_shared"
check run-static "$work/two_engines"
check run-shared "$work/two_engines_shared"
check valgrind valgrind -q --error-exitcode=1 --leak-check=full \
  --errors-for-leak-kinds=definite,indirect "$work/two_engines"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
