#!/usr/bin/env bash
# The README's first command: the whole of TETD-rs, end to end, in a real
# Linux guest.
#
#   bash scripts/demo.sh [--json] [--engine auto|kvm|qemu] [other tetd-vmm demo options]
#
# 1. scripts/setup.sh (as root): packages (busybox-static, cpio, gcc,
#    qemu-system-x86), the Debian 6.1 guest kernel and its headers, the Rust
#    target x86_64-unknown-none;
# 2. cargo build --release: tetd-pack and tetd-vmm;
# 3. scripts/build-module.sh: tetdg.ko and the static tetdctl;
# 4. tetd-vmm demo --tetd-pack target/release/tetd-pack:
#    builds the example agents (tetd-pack build), creates a signing key
#    (tetd-pack keygen) and signs them, writes the guest's allow-list, builds
#    the initramfs, boots the guest with TETD-H attached, loads the agents
#    through tetdg.ko, calls each in both modes, and prints the results with
#    the host's view (details: tetd-kvm/src/demo.rs).
#
# Files: build/demo/ (images, key, allow-list, run.sh, initrd.cpio,
# console.log, report.json). Progress goes to stderr, the tables (or the
# JSON with --json) to stdout.
#
# Exit status: 0 every result as expected; 1 something did not match; 2 an
# error (build, missing file); 3 no way to run a guest here (neither a usable
# /dev/kvm nor QEMU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { echo "demo.sh: $*" >&2; }
die() { echo "demo.sh: error: $*" >&2; exit 2; }
T0=$SECONDS
phase() { say "$* (+$((SECONDS - T0)) s)"; }

# --- 1. setup ------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
    phase "scripts/setup.sh: packages, guest kernel + headers, QEMU, Rust target"
    bash scripts/setup.sh >&2 || die "scripts/setup.sh failed (see above)"
elif [ -f build/guest/KERNEL_VERSION ]; then
    say "not root: skipping scripts/setup.sh (build/guest is there; run as root to update)"
else
    die "run as root the first time: scripts/setup.sh installs packages, the guest kernel and its headers"
fi

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"

# Fail before the long builds if no engine can run the guest at all (the demo
# checks again and says exactly why).
kvm_ok=0
if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then kvm_ok=1; fi
qemu_ok=0
if [ -n "${TETD_QEMU:-}" ] && [ -f "$TETD_QEMU" ]; then qemu_ok=1; fi
if command -v qemu-system-x86_64 >/dev/null; then qemu_ok=1; fi
if [ "$kvm_ok" -eq 0 ] && [ "$qemu_ok" -eq 0 ]; then
    cat >&2 <<'EOF'
demo.sh: no way to run a guest on this machine: /dev/kvm is missing or not
usable, and qemu-system-x86_64 is not installed (as root, scripts/setup.sh
installs it). Without either, run the agents in the host simulator instead:

  cargo run --release -p tetd-pack -- build examples/echo -o echo.tetd
  cargo run --release -p tetd-pack -- run echo.tetd --agent 1 --input hello
EOF
    exit 3
fi

# --- 2. host tools -------------------------------------------------------------
phase "cargo build --release -p tetd-pack -p tetd-kvm (the first build takes a few minutes)"
cargo build --release -q -p tetd-pack -p tetd-kvm --bins || die "cargo build --release failed (see above)"

# --- 3. guest module -----------------------------------------------------------
phase "scripts/build-module.sh: tetdg.ko + tetdctl"
bash scripts/build-module.sh >&2 || die "scripts/build-module.sh failed (see above)"

# --- 4. the demo -----------------------------------------------------------------
phase "tetd-vmm demo"
rc=0
./target/release/tetd-vmm demo --repo "$ROOT" --tetd-pack ./target/release/tetd-pack "$@" || rc=$?
say "done in $((SECONDS - T0)) s (exit $rc)"
exit "$rc"
