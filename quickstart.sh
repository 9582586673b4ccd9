#!/usr/bin/env bash
# Builds rxvmm and the default guest, then boots a guest on this terminal.
# Extra arguments are passed to rxvmm (e.g. --cpus 2 --mem 512).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release
resources/build-guest.sh
# The TCG engine is not built yet: on this machine (PVM KVM) no stock kernel
# can boot, so boot the built-in demo kernel under KVM.
mkdir -p resources/cache
target/release/rxvmm guest hello -o resources/cache/hello.elf
exec target/release/rxvmm --accel kvm --kernel resources/cache/hello.elf --mem 64 "$@"
