#!/usr/bin/env bash
# Build the TETD-G guest module tetdg.ko and the guest CLI tetdctl.
#
#   scripts/build-module.sh            -> build/module/tetdg.ko, build/module/tetdctl
#
# Steps (flags explained in docs/kernel-module.md):
#   1. the Rust part (tetd-kernel/module/rust) as a staticlib for
#      x86_64-unknown-none: soft-float, no red zone, code-model=kernel,
#      relocation-model=static, relro-level=off, panic=abort, opt-level=s;
#   2. ld -r --gc-sections: one relocatable object with only what the C glue
#      reaches (the exported tetdg_rs_* functions), debug info stripped;
#   3. tetdg-objfix: private GOT for the GOTPCREL relocations of the
#      precompiled `core`, then a check that only relocation types the Linux
#      6.1 x86-64 module loader accepts remain;
#   4. checks: no SSE/AVX/MMX/x87 register use (objdump), every undefined
#      symbol is a C helper of the glue or exported by the kernel;
#   5. Kbuild against /usr/src/linux-headers-$(cat build/guest/KERNEL_VERSION);
#   6. tetdctl: static (crt-static) x86_64-unknown-linux-gnu binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/build/module"
TGT_DIR="$ROOT/target/tetdg-module"

die() { echo "build-module: error: $*" >&2; exit 1; }
log() { echo "build-module: $*" >&2; }

[ -f build/guest/KERNEL_VERSION ] || die "build/guest/KERNEL_VERSION missing: run scripts/setup.sh first"
KVER="$(cat build/guest/KERNEL_VERSION)"
KDIR="/usr/src/linux-headers-$KVER"
[ -f "$KDIR/Makefile" ] || die "$KDIR missing: run scripts/setup.sh (installs linux-headers-$KVER)"
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none \
    || die "Rust target x86_64-unknown-none missing: rustup target add x86_64-unknown-none"

mkdir -p "$OUT"

# ---- 1. Rust staticlib --------------------------------------------------------
log "rust part (x86_64-unknown-none, staticlib)"
export CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS="-C relocation-model=static -C code-model=kernel -C relro-level=off"
CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
CARGO_PROFILE_RELEASE_PANIC=abort \
CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_PROFILE_RELEASE_LTO=false \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_TARGET_DIR="$TGT_DIR" \
    cargo rustc -q -p tetdg --release --target x86_64-unknown-none --crate-type staticlib
LIB="$TGT_DIR/x86_64-unknown-none/release/libtetdg.a"
[ -f "$LIB" ] || die "cargo did not produce $LIB"

# Lints for the kernel-only code (the host clippy run cannot see it).
CARGO_TARGET_DIR="$TGT_DIR" cargo clippy -q -p tetdg --target x86_64-unknown-none -- -D warnings \
    || die "clippy (x86_64-unknown-none) found problems in tetd-kernel/module/rust"

# ---- 2. one relocatable object ------------------------------------------------
EXPORTS=(tetdg_rs_init tetdg_rs_exit tetdg_rs_ioctl tetdg_rs_proc_show)
KEEP=()
for s in "${EXPORTS[@]}"; do KEEP+=(-u "$s"); done
ld -r --gc-sections --strip-debug "${KEEP[@]}" -o "$OUT/tetdg_rust_linked.o" "$LIB"
# Only the entry points stay global: core/compiler_builtins symbols (memcpy,
# core::fmt, ...) become local to the Rust object, invisible to the module.
objcopy --wildcard --keep-global-symbol='tetdg_rs_*' --remove-section=.llvmbc --remove-section=.llvmcmd \
    "$OUT/tetdg_rust_linked.o" "$OUT/tetdg_rust_combined.o"
# (readelf, not nm: nm loads the LLVM bfd plugin, which rejects Rust objects)
defined_globals() { readelf -sW "$1" | awk '$5=="GLOBAL" && $7!="UND" {print $8}'; }
undefined_syms() { readelf -sW "$1" | awk '$7=="UND" && $8!="" {print $8}' | sort -u; }
for s in "${EXPORTS[@]}"; do
    defined_globals "$OUT/tetdg_rust_combined.o" | grep -qx "$s" \
        || die "Rust object does not define $s"
done

# ---- 3. GOT rewrite + relocation check ---------------------------------------
log "relocations"
cargo build -q -p tetdg-objfix
"$ROOT/target/debug/tetdg-objfix" "$OUT/tetdg_rust_combined.o" "$OUT/tetdg_rust.o_shipped"

# ---- 4. instruction and symbol checks -------------------------------------------
DIS="$OUT/tetdg_rust.dis"
objdump -d --no-show-raw-insn "$OUT/tetdg_rust.o_shipped" > "$DIS"
if grep -nE '%(x|y|z)mm[0-9]+|%mm[0-7]|%st(\(|\b)|\bk[0-7]\b' "$DIS" > "$OUT/simd.txt"; then
    head -20 "$OUT/simd.txt" >&2
    die "the Rust object uses SSE/AVX/MMX/x87 registers (see $OUT/simd.txt); the kernel forbids them outside kernel_fpu_begin/end"
fi
missing=()
while read -r sym; do
    case "$sym" in
        tetdg_k_*) grep -qE "^[a-z].*[ *]$sym\(" tetd-kernel/module/tetdg_main.c \
                       || missing+=("$sym (C helper)");;
        *) awk -v s="$sym" '$2==s{f=1} END{exit !f}' "$KDIR/Module.symvers" || missing+=("$sym");;
    esac
done < <(undefined_syms "$OUT/tetdg_rust.o_shipped")
[ "${#missing[@]}" -eq 0 ] || die "undefined symbols neither in tetdg_main.c nor exported by Linux $KVER: ${missing[*]}"

# ---- 5. Kbuild -------------------------------------------------------------------
log "tetdg.ko (Kbuild, $KDIR)"
cp tetd-kernel/module/Kbuild tetd-kernel/module/tetdg_main.c "$OUT/"
# Kbuild copies the prebuilt object from tetdg_rust.o_shipped but writes no
# .cmd file for it; modpost (srcversion for MODULE_VERSION) reads one.
echo "cmd_$OUT/tetdg_rust.o := cat $OUT/tetdg_rust.o_shipped > $OUT/tetdg_rust.o" > "$OUT/.tetdg_rust.o.cmd"
make -s -C "$KDIR" M="$OUT" modules > "$OUT/kbuild.log" 2>&1 || { cat "$OUT/kbuild.log" >&2; die "Kbuild failed"; }
if grep -E "WARNING|warning:" "$OUT/kbuild.log" >&2; then
    die "Kbuild warnings (see above)"
fi
[ -f "$OUT/tetdg.ko" ] || die "Kbuild produced no tetdg.ko"

# ---- 6. tetdctl -------------------------------------------------------------------
if [ -f tetd-kernel/tetdctl/Cargo.toml ]; then
    log "tetdctl (static)"
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$ROOT/target/tetdctl-static" \
        cargo build -q -p tetdctl --release --target x86_64-unknown-linux-gnu
    cp "$ROOT/target/tetdctl-static/x86_64-unknown-linux-gnu/release/tetdctl" "$OUT/tetdctl"
    # static (-pie): no program interpreter, no shared-library dependencies
    if readelf -lW "$OUT/tetdctl" | grep -q "INTERP" || readelf -dW "$OUT/tetdctl" | grep -q "(NEEDED)"; then
        die "tetdctl is not statically linked"
    fi
fi

log "ok: $OUT/tetdg.ko ($(stat -c %s "$OUT/tetdg.ko") bytes) for Linux $KVER"
