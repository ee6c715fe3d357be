#!/usr/bin/env bash
# Machine setup for TETD-rs on Debian 12 (run as root). Idempotent and quiet
# when everything is already present; prints what it installs.
#
# Installs:
#   * busybox-static, cpio, build-essential (guest initramfs, static test programs)
#   * qemu-system-x86 (the QEMU/TCG engine of tetd-vmm, for hosts whose /dev/kvm
#     is missing or emulates guest kernels; see tetd-kvm/src/qemu/mod.rs)
#   * the guest kernel: the current Debian 6.1 kernel image package, downloaded
#     (NOT installed on the host) and unpacked into build/guest/kernel-<ver>/,
#     plus the matching linux-headers-<ver> (installed; tetdg.ko builds against
#     /usr/src/linux-headers-<ver>). The chosen version is written to
#     build/guest/KERNEL_VERSION so every tool uses the same kernel.
#   * the Rust target x86_64-unknown-none (agent images).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GUEST_DIR="$ROOT/build/guest"

log() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "run as root (apt-get is needed)"
fi
command -v apt-get >/dev/null || die "apt-get not found: this script targets Debian 12"

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}

# The package lists are needed for apt-cache/apt-get download; refresh them if
# they are missing entirely.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt_update_once
fi

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_pkgs() {
    local missing=()
    local p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>"$ROOT/build/.apt-install.log"; then
        apt_update_once
        apt-get install -y -qq "${missing[@]}" >/dev/null 2>"$ROOT/build/.apt-install.log" \
            || { cat "$ROOT/build/.apt-install.log" >&2; die "apt-get install ${missing[*]} failed"; }
    fi
}

mkdir -p "$ROOT/build"
install_pkgs busybox-static cpio build-essential gcc xz-utils qemu-system-x86

# --- guest kernel -----------------------------------------------------------
resolve_kernel_version() {
    # linux-image-amd64 depends on linux-image-6.1.0-NN-amd64.
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1
}

KVER=""
if [ -f "$GUEST_DIR/KERNEL_VERSION" ]; then
    KVER="$(cat "$GUEST_DIR/KERNEL_VERSION")"
fi
if [ -z "$KVER" ]; then
    KVER="$(resolve_kernel_version)"
    if [ -z "$KVER" ]; then
        apt_update_once
        KVER="$(resolve_kernel_version)"
    fi
    [ -n "$KVER" ] || die "cannot resolve the Debian kernel version from 'apt-cache depends linux-image-amd64'"
fi

KDIR="$GUEST_DIR/kernel-$KVER"
if [ ! -f "$KDIR/boot/vmlinuz-$KVER" ]; then
    log "fetching guest kernel linux-image-$KVER (unpacked into build/guest, not installed)"
    mkdir -p "$GUEST_DIR"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download -qq "linux-image-$KVER" >/dev/null 2>&1); then
        apt_update_once
        (cd "$tmp" && apt-get download -qq "linux-image-$KVER" >/dev/null) \
            || die "apt-get download linux-image-$KVER failed"
    fi
    # apt downloads as _apt where possible; the file lands in $tmp either way.
    deb="$(ls "$tmp"/linux-image-"$KVER"_*.deb 2>/dev/null | head -n1)"
    [ -n "$deb" ] || die "downloaded package for linux-image-$KVER not found"
    rm -rf "$KDIR.partial"
    mkdir -p "$KDIR.partial"
    dpkg-deb -x "$deb" "$KDIR.partial"
    [ -f "$KDIR.partial/boot/vmlinuz-$KVER" ] || die "package has no boot/vmlinuz-$KVER"
    rm -rf "$KDIR"
    mv "$KDIR.partial" "$KDIR"
    rm -rf "$tmp"
    trap - EXIT
fi
# The uncompressed kernel (ELF vmlinux) next to the bzImage: the VMM boots
# either; vmlinux skips the in-guest decompressor, which matters where KVM
# emulates guest kernel code (e.g. the PVM backend) instead of running it.
VMLINUX="$KDIR/boot/vmlinux-$KVER"
if [ ! -f "$VMLINUX" ]; then
    bz="$KDIR/boot/vmlinuz-$KVER"
    u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
    u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
    setup_sects="$(u8 "$bz" 497)"
    [ "$setup_sects" -eq 0 ] && setup_sects=4
    off=$(( (setup_sects + 1) * 512 + $(u32 "$bz" $((0x248))) ))
    len="$(u32 "$bz" $((0x24c)))"
    magic="$(od -An -tx1 -j "$off" -N4 "$bz" | tr -d ' ')"
    case "$magic" in
        fd377a58) dec="xz -dc" ;;
        1f8b*) dec="gzip -dc" ;;
        28b52ffd) dec="zstd -dc" ;;
        *) die "unknown bzImage payload compression (magic $magic) in $bz" ;;
    esac
    log "extracting vmlinux-$KVER from the bzImage payload ($dec)"
    # The kernel's payload is the compressed stream followed by the
    # uncompressed size (le32); the decompressor reports the trailer as
    # garbage, so check the result by its size and ELF magic instead.
    want="$(u32 "$bz" $((off + len - 4)))"
    tail -c +"$((off + 1))" "$bz" | head -c "$len" | $dec > "$VMLINUX.partial" 2>/dev/null || true
    got="$(stat -c %s "$VMLINUX.partial")"
    [ "$got" = "$want" ] || die "decompressed payload of $bz has $got bytes, expected $want"
    [ "$(od -An -tx1 -N4 "$VMLINUX.partial" | tr -d ' ')" = 7f454c46 ] || die "payload of $bz is not an ELF vmlinux"
    mv "$VMLINUX.partial" "$VMLINUX"
fi

mkdir -p "$GUEST_DIR"
if [ "$(cat "$GUEST_DIR/KERNEL_VERSION" 2>/dev/null)" != "$KVER" ]; then
    echo "$KVER" > "$GUEST_DIR/KERNEL_VERSION"
fi

install_pkgs "linux-headers-$KVER"
[ -d "/usr/src/linux-headers-$KVER" ] || die "/usr/src/linux-headers-$KVER missing after install"

# --- Rust target for agent images -------------------------------------------
if command -v rustup >/dev/null; then
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
        log "rustup target add x86_64-unknown-none"
        rustup target add x86_64-unknown-none >/dev/null
    fi
else
    log "warning: rustup not found; install the x86_64-unknown-none target by hand"
fi
