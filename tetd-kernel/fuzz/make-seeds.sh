#!/usr/bin/env bash
# Rebuilds the fuzz seed corpus of real images: every example packed by
# tetd-pack, plus a signed one, into tetd-kernel/tests/data/seed-*.tetd
# (committed: the stable fuzz test tetd-kernel/tests/fuzz_stable.rs reads
# them and fails, saying so, when the image format moved on and they no
# longer parse — then run this script again).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT=tetd-kernel/tests/data
mkdir -p "$OUT"
cargo build -q -p tetd-pack
P=./target/debug/tetd-pack
for ex in echo sha256 faulty hostile registrar signer admin audit-log secure-echo; do
    $P build -q "examples/$ex" -o "$OUT/seed-$ex.tetd"
done
# A signed image (throwaway key; the signature block is what matters).
KEY=$(mktemp -d)
$P keygen -o "$KEY/seed.pk8" --force >/dev/null
cp "$OUT/seed-echo.tetd" "$OUT/seed-echo-signed.tetd"
$P sign "$OUT/seed-echo-signed.tetd" --key "$KEY/seed.pk8" >/dev/null
cp "$KEY/seed.pub" "$OUT/seed-signer.pub"
rm -rf "$KEY"
ls -l "$OUT"/seed-*
