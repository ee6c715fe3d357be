#!/usr/bin/env bash
# Runs every test of TETD-rs: formatting, lints, unit/property tests, the
# packer/simulator end-to-end tests and the guest end-to-end tests (a real
# Debian guest with tetdg.ko under tetd-vmm with TETD-H attached; engine auto:
# KVM where /dev/kvm runs guest kernels, else QEMU/TCG — docs/engines.md; they
# say SKIP with the reason where no engine is usable). Installs what it needs
# first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (packages, guest kernel, rust target)"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all --check
for ex in examples/*/; do
  [ -f "$ex/Cargo.toml" ] && cargo fmt --manifest-path "$ex/Cargo.toml" --check
done

step "cargo clippy (workspace, all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings
for ex in examples/*/; do
  [ -f "$ex/Cargo.toml" ] || continue
  # The cfgs tetd-pack build passes too (AGENT_RUSTFLAGS): portable AES/GHASH
  # for encrypted agents (docs/encryption.md, "Building agents").
  CARGO_TARGET_DIR=target/examples-clippy \
    CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS="--cfg aes_force_soft --cfg polyval_force_soft" \
    cargo clippy --manifest-path "$ex/Cargo.toml" --target x86_64-unknown-none -- -D warnings
done

# The real-TDX SEAMCALL executor only builds with this feature (docs/tdx-hardware.md).
cargo clippy -p tetd-kvm --features tdx-hw --all-targets -- -D warnings

if [ -f scripts/build-module.sh ]; then
  step "guest module tetdg.ko and tetdctl"
  bash scripts/build-module.sh
fi

# Images of the guest attack suite (tetd-kvm/tests/attack_guest.rs boots the
# guest with them during cargo test; docs/threat-model.md).
step "guest attack suite: tetd-kernel/module/tests/attack.sh --prepare"
TETD_ATTACK_REBUILD=0 bash tetd-kernel/module/tests/attack.sh --prepare

# Guest end-to-end tests: a Debian 6.1 guest under tetd-vmm with TETD-H
# attached (48 checks of tetdg.ko/tetdctl). The demo's own end-to-end test
# (tetd-kvm/tests/demo_e2e.rs) runs with cargo test below.
step "guest end-to-end: tetd-kernel/module/tests/guest-smoke.sh --vmm"
mkdir -p target
smoke_rc=0
bash tetd-kernel/module/tests/guest-smoke.sh --vmm 2>&1 | tee target/guest-smoke-output.txt || smoke_rc=$?

step "cargo test (workspace)"
cargo_rc=0
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt || cargo_rc=$?

# The last line is one summary of both runners: cargo's "test result:" lines
# summed, plus the guest smoke test's "N passed, M failed". A run that failed
# without a failed count (a build error) counts as one failure.
sum() { # file, sed expression printing "passed failed" per line
    sed -n "$2" "$1" | awk '{p += $1; f += $2} END {printf "%d %d\n", p, f}'
}
read -r cp cf < <(sum target/test-output.txt \
    's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed;.*/\1 \2/p')
read -r sp sf < <(sum target/guest-smoke-output.txt 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
if [ "$cargo_rc" -ne 0 ] && [ "$cf" -eq 0 ]; then cf=1; fi
if [ "$smoke_rc" -ne 0 ] && [ "$sf" -eq 0 ]; then sf=1; fi
echo "summary: cargo test $cp passed, $cf failed; guest smoke (--vmm) $sp passed, $sf failed" >&2
echo "$((cp + sp)) passed, $((cf + sf)) failed"
[ "$cargo_rc" -eq 0 ] && [ "$smoke_rc" -eq 0 ]
