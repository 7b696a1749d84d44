#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine (root): the tools the
# namespace suite drives, cargo-fuzz and cargo-deny. Does nothing for what is present.
set -euo pipefail
need=()
for tool in ip:iproute2 ping:iputils-ping iperf3:iperf3 nft:nftables wg:wireguard-tools \
  wireguard-go:wireguard-go setpriv:util-linux pkill:procps python3:python3 curl:curl \
  cc:gcc valgrind:valgrind; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz --quiet
# cargo-deny (scripts/deny.sh) from crates.io: one build, 11 min on this 2-core machine while others
# compiled (3 min of CPU).
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny --quiet
# cbindgen (scripts/ffi-header.sh checks crates/ffi/include/ferroguard.h): a tool, not a build-dependency,
# so that building the C ABI crate never pays for it. One build: 13 min wall on this 2-core machine while
# others compiled (3 min of CPU).
command -v cbindgen >/dev/null 2>&1 || cargo install --locked cbindgen --quiet
