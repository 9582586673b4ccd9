#!/usr/bin/env bash
# Runs the whole test suite from a clean checkout: installs the few Debian
# tools the tests use, builds the default guest once, then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v iasl >/dev/null || need+=(acpica-tools)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

resources/build-guest.sh
cargo test --release --workspace "$@"
