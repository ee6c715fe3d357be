#!/usr/bin/env bash
# The guest attack suite (docs/threat-model.md): the Debian guest kernel with
# tetdg.ko (test_ioctl=1) attacks TETD-H and the module under the project's
# VMM, TETD-H attached. The guest half is attack-guest.sh (runs as
# /tetd/run.sh); the host half, which boots the guest and judges what TETD-H
# saw and was left with, is tetd-kvm/tests/attack_guest.rs.
#
# Usage:
#   tetd-kernel/module/tests/attack.sh --prepare   build the module, tetdctl and the
#                                               images into build/ (scripts/test.sh
#                                               runs this before `cargo test`)
#   tetd-kernel/module/tests/attack.sh             prepare, then run the suite (~1 min)
# TETD_ATTACK_REBUILD=0 keeps an existing build/module/tetdg.ko (scripts/test.sh
# has just built it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
OUT=build/attack
mkdir -p "$OUT"

[ -f build/module/tetdg.ko ] && [ "${TETD_ATTACK_REBUILD:-1}" = 0 ] || bash scripts/build-module.sh >&2
cargo build -q -p tetd-pack
for ex in echo hostile; do
    ./target/debug/tetd-pack build -q "examples/$ex" -o "$OUT/$ex.tetd"
done
echo "attack: prepared build/module/{tetdg.ko,tetdctl}, $OUT/{echo,hostile}.tetd" >&2
[ "${1:-}" = "--prepare" ] && exit 0

exec cargo test -p tetd-kvm --test attack_guest -- --nocapture
