#!/usr/bin/env bash
# Check that the TETD KVM patch applies to the upstream Linux release it is
# written against (v6.16, the first release with KVM TDX host support).
#
#   tetd-kvm/linux/check-patch.sh               fetch the files of tag v6.16
#                                               from kernel.org and check
#   tetd-kvm/linux/check-patch.sh --tree DIR    check against a local kernel
#                                               source tree instead
#
# Outcomes (last line, exit status):
#   PASS: ...                                   0  `git apply --check` accepts the patch
#   SKIP: cannot fetch upstream <url> ...       0  no network access to kernel.org
#   FAIL: ...                                   1  the upstream files do not accept it
#
# Environment: TETD_LINUX_TAG (default v6.16), TETD_LINUX_URL (default the
# kernel.org plain-file endpoint of torvalds/linux.git).
#
# No upstream file is stored in this repository; only their git blob ids,
# recorded below. They were checked like this (no network to kernel.org
# where this patch was written): the files were taken from a Linux 6.16.1
# source import and arch/x86/kvm/vmx/tdx.c was turned back into v6.16 by
# reverting the one 6.16.1 stable change to it (the tdx.c hunk of "KVM: x86:
# Convert vcpu_run()'s immediate exit param into a generic bitmap"); the
# 6.16.1 review diffstat shows no other change to these files. The resulting
# tdx.c blob ec79aacc446f is the pre-image ("index ec79aacc446f..d584c0e28692")
# of that very stable backport as posted, and d584c0e28692 is 6.16.1's
# blob, so the recorded ids are v6.16's. A mismatch when fetching prints a
# NOTE (the check itself only depends on `git apply --check`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
patch="$here/0001-KVM-TDX-TETD-vendor-TDVMCALL-and-zone-SEAM-ops.patch"
tag="${TETD_LINUX_TAG:-v6.16}"
base_url="${TETD_LINUX_URL:-https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/plain}"

# path                                   git blob id at v6.16
files=(
  "arch/x86/include/asm/tdx.h             7ddef3a698668fe9f32bc3b959d8ba99b0b796df"
  "arch/x86/include/uapi/asm/kvm.h        0f15d683817d6a77b0c7cdfe3fda2b6bef2e4172"
  "arch/x86/kvm/vmx/tdx.c                 ec79aacc446f080a68da1dc640f27dabf1894542"
  "arch/x86/kvm/vmx/tdx.h                 51f98443e8a255ef51a20d79e37fa28c899aac55"
  "arch/x86/virt/vmx/tdx/tdx.c            c7a9a087ccaf50d177557a70eeb269bbfd5b2845"
  "arch/x86/virt/vmx/tdx/tdx.h            82bb82be8567fd2574ac0f1b59b42e2227658758"
  "include/uapi/linux/kvm.h               7a4c35ff03fecde6032eb984b0d0e000089063c8"
)

tree=""
if [[ $# -gt 0 ]]; then
  if [[ $1 == --tree && $# -eq 2 ]]; then
    tree="$2"
  else
    echo "usage: $0 [--tree LINUX_SOURCE_DIR]" >&2
    exit 2
  fi
fi

[[ -f $patch ]] || { echo "FAIL: patch not found: $patch"; exit 1; }
command -v git >/dev/null || { echo "FAIL: git is needed for 'git apply --check'"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for entry in "${files[@]}"; do
  read -r path _ <<<"$entry"
  mkdir -p "$work/$(dirname "$path")"
  if [[ -n $tree ]]; then
    [[ -f $tree/$path ]] || { echo "FAIL: $tree/$path does not exist"; exit 1; }
    cp "$tree/$path" "$work/$path"
  else
    url="$base_url/$path?h=$tag"
    if ! command -v curl >/dev/null; then
      echo "SKIP: cannot fetch upstream $url (curl is not installed)"
      exit 0
    fi
    if ! curl -fsSL --max-time 30 -o "$work/$path" "$url" 2>"$work/.curl.err"; then
      echo "SKIP: cannot fetch upstream $url ($(tr '\n' ' ' <"$work/.curl.err" | cut -c1-160))"
      exit 0
    fi
  fi
done

source_name="${tree:-$tag from $base_url}"
mismatch=0
for entry in "${files[@]}"; do
  read -r path want <<<"$entry"
  got="$(git hash-object "$work/$path")"
  if [[ $got != "$want" ]]; then
    echo "NOTE: $path from $source_name is blob $got, recorded $want"
    mismatch=$((mismatch + 1))
  fi
done

if out="$(cd "$work" && git apply --check -v "$patch" 2>&1)"; then
  if [[ $mismatch -eq 0 ]]; then
    echo "PASS: the patch applies to $source_name (all ${#files[@]} files are the recorded v6.16 blobs)"
  else
    echo "PASS: the patch applies to $source_name ($mismatch of ${#files[@]} files differ from the recorded v6.16 blobs)"
  fi
  exit 0
fi
echo "$out" | grep -E "error|does not apply|patch failed" | head -20
echo "FAIL: the patch does not apply to $source_name"
exit 1
