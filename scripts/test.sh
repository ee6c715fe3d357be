#!/usr/bin/env bash
# Runs every test of TETD-rs: formatting, lints, unit/property tests, the
# packer/simulator end-to-end tests and the guest end-to-end tests (real Linux
# guest under the project's own KVM VMM; they say SKIP with the reason where
# /dev/kvm is missing). Installs what it needs first (scripts/setup.sh).
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

if [ -f scripts/build-module.sh ]; then
  step "guest module tetdg.ko and tetdctl"
  bash scripts/build-module.sh
fi

step "cargo test (workspace)"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
