#!/usr/bin/env bash
# Builds rxvmm and the default guest, then boots it on this terminal
# (interactive shell; Ctrl-A x quits). Extra arguments go to rxvmm,
# e.g. ./quickstart.sh --cpus 2 --mem 512
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release
resources/build-guest.sh
# --accel auto: KVM on a hardware-KVM host, otherwise (no KVM, or PVM) TCG.
exec target/release/rxvmm "$@"
