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
#   scripts/bench.sh --update-docs  full run, then the table in docs/performance.md
#                                   (between its bench-table markers) is replaced
#                                   by this run's target/bench/report.md
#
# Sections whose prerequisites are missing (no /dev/kvm, no guest kernel) are
# listed as not measured; run scripts/setup.sh first for the guest section.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bench.sh: $*" >&2; }

UPDATE_DOCS=0
if [ "${1:-}" = "--update-docs" ]; then
    UPDATE_DOCS=1
    shift
fi

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

rc=0
./target/release/tetd-vmm bench "$@" || rc=$?
if [ "$UPDATE_DOCS" = 1 ] && [ "$rc" = 0 ]; then
    DOC=docs/performance.md
    grep -q '<!-- bench-table:begin -->' "$DOC" || { log "$DOC has no bench-table markers"; exit 2; }
    # the report minus its title line, between the markers
    awk -v report=target/bench/report.md '
        /<!-- bench-table:begin -->/ { print; while ((getline l < report) > 0) if (l !~ /^# /) print l; skip = 1; next }
        /<!-- bench-table:end -->/ { skip = 0 }
        !skip { print }' "$DOC" > "$DOC.tmp" && mv "$DOC.tmp" "$DOC"
    log "updated $DOC from target/bench/report.md"
fi
exit "$rc"
