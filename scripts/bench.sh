#!/usr/bin/env bash
# Benchmarks of TETD-rs, every figure a ratio against a baseline measured in
# the same run (docs/performance.md). Builds what it needs (release
# binaries, the guest module and tetdctl), then runs `tetd-vmm bench`, which
# prints a markdown table and writes target/bench/report.json and
# target/bench/report.md.
#
#   scripts/bench.sh              full run (a few minutes on a 2-core machine)
#   scripts/bench.sh --quick      tiny iteration counts (smoke run)
#   scripts/bench.sh --only sim   one section (tools, sim, host, kvm, guest); repeatable
#
# Sections whose prerequisites are missing (no /dev/kvm, no guest kernel) are
# listed as not measured; run scripts/setup.sh first for the guest section.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bench.sh: $*" >&2; }

log "building release binaries (tetd-vmm, tetd-pack)"
cargo build -q --release -p tetd-kvm -p tetd-pack --bins

# The guest section needs the module and a tetdctl that knows `bench`.
if [ -f build/guest/KERNEL_VERSION ] && [ -f scripts/build-module.sh ]; then
    log "building the guest module and tetdctl (scripts/build-module.sh)"
    if ! bash scripts/build-module.sh >target/bench-build-module.log 2>&1; then
        log "build-module.sh failed (see target/bench-build-module.log); the guest section will say why it is skipped"
    fi
else
    log "no guest kernel (scripts/setup.sh): the guest section will be skipped"
fi

exec ./target/release/tetd-vmm bench "$@"
