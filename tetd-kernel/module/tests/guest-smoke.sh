#!/usr/bin/env bash
# Guest smoke test of tetdg.ko + tetdctl in a real Debian 6.1 kernel, under
# QEMU with software emulation (TCG) and the module's loopback transport.
#
# What it proves: the module loads into the distribution kernel; real .tetd
# images (examples/echo, sha256, faulty) load through the loader core, run in
# exclusive and collaborative mode with the right results; panics abort the
# call; faults inside a collaborative agent (write to code, stack overflow,
# #UD, reading kernel memory) end only that call; bad and duplicate images are
# refused with clear messages; the NMI watchdog ends a looping collaborative
# agent and NMIs that arrive earlier are re-raised; /proc/tetdg_info, list,
# unload, rmmod, tetdctl exit work.
#
# What it does NOT prove: anything about the host side. With
# transport=loopback the module answers its own hypercalls (zones are guest
# RAM, nothing is blocked). The end-to-end tests under the project's KVM VMM
# cover the host (port transport, blocking, violations).
#
# With --vmm the same checks run under the project's VMM (`tetd-vmm boot`)
# with TETD-H answering the hypercalls (uart transport on its QEMU/TCG engine,
# port I/O on its KVM engine): then the host side runs too (AGENT_ACCESS,
# windows, AGENT_FAULT, RTMR_EXTEND, AGENT_DISABLE, exit port).
#
# Usage: tetd-kernel/module/tests/guest-smoke.sh [--vmm]   (prints "N passed, M failed")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
MODE=qemu
[ "${1:-}" = "--vmm" ] && MODE=vmm
WORK="$ROOT/build/guest-smoke-$MODE"
mkdir -p "$WORK"

die() { echo "guest-smoke: error: $*" >&2; exit 2; }

if ! command -v qemu-system-x86_64 >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
    echo "guest-smoke: installing qemu-system-x86" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null \
        || die "apt-get install qemu-system-x86 failed"
fi
[ -f build/guest/KERNEL_VERSION ] || bash scripts/setup.sh
KVER="$(cat build/guest/KERNEL_VERSION)"
KERNEL="build/guest/kernel-$KVER/boot/vmlinuz-$KVER"
[ -f "$KERNEL" ] || die "$KERNEL missing (scripts/setup.sh)"

bash scripts/build-module.sh
cargo build -q -p tetd-pack -p tetd-kvm --bins
for ex in echo sha256 faulty; do
    ./target/debug/tetd-pack build -q "examples/$ex" -o "$WORK/$ex.tetd"
done
printf 'this is not a TETD image, just 48 bytes of text.' > "$WORK/bad.tetd"
# sha256 goes in signed: refused until its key is on the module's allow-list
./target/debug/tetd-pack keygen -o "$WORK/smoke.pk8" --force >/dev/null
./target/debug/tetd-pack sign "$WORK/sha256.tetd" --key "$WORK/smoke.pk8" >/dev/null
cp "$WORK/smoke.pub" "$WORK/allow.list"
printf 'ed25519:not-hex\n' > "$WORK/bad.list"

# RTMR3 after loading echo, sha256 (signed), faulty in this order, per tetd-pack
RTMR=$(./target/debug/tetd-pack measure "$WORK/echo.tetd" "$WORK/sha256.tetd" "$WORK/faulty.tetd" \
    | awk '$1=="RTMR3"{print $2}')
[ -n "$RTMR" ] || die "tetd-pack measure printed no RTMR3"

cat > "$WORK/run.sh" <<'EOF'
#!/bin/sh
T=/tetd/tetdctl
pass() { echo "CHECK-PASS $1"; }
fail() { echo "CHECK-FAIL $1: $2"; }
check() { # name, actual, expected
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got [$2] want [$3]"; fi
}
contains() { # name, text, needle
    case "$2" in *"$3"*) pass "$1";; *) fail "$1" "[$2] lacks [$3]";; esac
}
insmod /tetd/tetdg.ko test_ioctl=1 @TRANSPORT@ && pass insmod || { fail insmod "rc $?"; exit 1; }
contains proc-module "$(cat /proc/tetdg_info)" "module: transport @TRANSPORT_NAME@"
contains load-echo "$($T load /tetd/echo.tetd 2>&1)" "1 agent(s): 1"
contains signed-untrusted "$($T load /tetd/sha256.tetd 2>&1)" "(E111)"
contains trust-bad "$($T trust /tetd/bad.list 2>&1)" "line 1"
contains trust "$($T trust /tetd/allow.list 2>&1)" "trusting 1 signer key(s)"
contains load-sha256-signed "$($T load /tetd/sha256.tetd 2>&1)" "1 agent(s): 2"
contains load-faulty "$($T load /tetd/faulty.tetd 2>&1)" "5 agent(s): 20 21 22 23 24"
out=$($T load /tetd/bad.tetd 2>&1); rc=$?
check bad-image-rc "$rc" 1
contains bad-image-msg "$out" "(bad magic) (E100)"
contains bad-image-dmesg "$(dmesg | grep 'image rejected' | tail -1)" "bad magic"
out=$($T load /tetd/echo.tetd 2>&1); rc=$?
check dup-rc "$rc" 1
contains dup-msg "$out" "agent id 1 is already registered"
check echo-exclusive "$($T call 1 --input 'hello exclusive')" "hello exclusive"
check echo-collaborative "$($T call 1 --input 'hello zone' --mode collaborative)" "hello zone"
abc=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
contains sha256-exclusive "$($T call 2 --input abc --json)" "\"output_hex\":\"$abc\""
contains sha256-collaborative "$($T call 2 --input abc --mode collaborative --json)" "\"output_hex\":\"$abc\""
contains ok-agent "$($T call 24 --input x --mode collaborative)" "fine"
out=$($T call 20 --input x 2>&1); rc=$?
check panic-exclusive-rc "$rc" 1
contains panic-exclusive "$out" "agent panicked (E4)"
contains panic-collaborative "$($T call 20 --input x --mode collaborative 2>&1)" "agent panicked (E4)"
out=$($T call 21 --input x --mode collaborative 2>&1); rc=$?
check write-code-rc "$rc" 1
contains write-code "$out" "agent faulted (E5): vector 14 error 0x3"
contains stack-overflow "$($T call 23 --input x --mode collaborative --json 2>&1)" "\"status_name\":\"StackOverflow\""
check alive-after-faults "$($T call 1 --input 'still alive' --mode collaborative)" "still alive"
contains proc-fault "$(cat /proc/tetdg_info)" "(stack-guard)"
out=$($T measurements)
contains measurement-count "$out" "measurements (RTMR3, load order): 3"
contains measurement-rtmr "$out" "rtmr3 expected: @RTMR@"
contains missing-agent "$($T call 99 --input x 2>&1)" "not found (E8)"
check blob-exclusive "$($T test-blob compute --arg 41)" "result 124"
check blob-collaborative "$($T test-blob compute --arg 41 --mode collaborative)" "result 124"
contains blob-ud "$($T test-blob ud --mode collaborative 2>&1)" "fault vector 6"
contains blob-read-unmapped "$($T test-blob read-unmapped --mode collaborative 2>&1)" "fault vector 14 address 0x7ff000000000"
contains blob-kernel-read-collab "$($T test-blob read-kernel --mode collaborative 2>&1)" "fault vector 14"
check blob-kernel-read-excl "$($T test-blob read-kernel)" "result 9114559304323458412"
contains blob-abort "$($T test-blob abort --arg 77 --mode collaborative 2>&1)" "status 77"
contains blob-ud-exclusive-refused "$($T test-blob ud 2>&1)" "permission denied (E7)"
# The kernel reading a zone outside a window: with the loopback transport
# nothing is blocked, so it reads the image's first bytes (the ELF-free flat
# image starts with code); under the VMM the host answers all-ones.
case "$($T test-blob peek-zone --arg 1)" in "zone read 0x"*) pass peek-zone;; *) fail peek-zone "no value";; esac
# Watchdog + NMIs: the hang agent loops with interrupts masked; sysrq-l sends
# NMIs to the other CPUs, once a second until the call returns. The first
# (before the 4 s budget) resumes the agent and is re-raised after the call;
# the next one (after the budget: the sender waits up to 10 s for the agent's
# CPU to answer the first) ends the call with Timeout.
rm -f /tmp/call-done
( i=0; while [ ! -e /tmp/call-done ] && [ $i -lt 60 ]; do
      sleep 1; echo l > /proc/sysrq-trigger; i=$((i + 1)); done ) &
out=$($T call 22 --input x --mode collaborative --timeout-ms 4000 --json 2>&1)
touch /tmp/call-done
wait
contains watchdog-timeout "$out" "\"status_name\":\"Timeout\""
contains watchdog-dmesg "$(dmesg | grep watchdog)" "an NMI arrived after the 4000000000 ns budget"
contains nmi-resumed-and-reraised "$(dmesg | grep 're-raising')" "NMI(s) arrived during a collaborative call"
check alive-after-watchdog "$($T call 1 --input 'after watchdog' --mode collaborative)" "after watchdog"
contains unload "$($T unload 22)" "unloaded 5 agent(s)"
case "$($T list)" in *write-code*) fail list-after-unload "write-code still listed";; *) pass list-after-unload;; esac
contains info-json "$($T info --json)" "\"agents\":2"
rmmod tetdg && pass rmmod || fail rmmod "rc $?"
case "$(dmesg)" in *"BUG:"*|*"Oops"*|*"WARNING:"*) fail dmesg-clean "$(dmesg | grep -E 'BUG:|Oops|WARNING:' | head -3)";; *) pass dmesg-clean;; esac
# End the VM through the exit port (QEMU's isa-debug-exit sits on it here:
# it exits with status (5 << 1) | 1 = 11).
$T exit 5
echo "exit-port: tetdctl exit returned $?"
EOF

sed -i "s/@RTMR@/$RTMR/" "$WORK/run.sh"
if [ "$MODE" = qemu ]; then
    sed -i "s/@TRANSPORT@/transport=loopback/; s/@TRANSPORT_NAME@/loopback/" "$WORK/run.sh"
else
    sed -i "s/@TRANSPORT@//; s/@TRANSPORT_NAME@//" "$WORK/run.sh"
fi

./target/debug/tetd-vmm initramfs -o "$WORK/initrd.cpio" \
    --file build/module/tetdg.ko:/tetd/tetdg.ko \
    --file build/module/tetdctl:/tetd/tetdctl \
    --file "$WORK/run.sh:/tetd/run.sh" \
    --file "$WORK/echo.tetd:/tetd/echo.tetd" \
    --file "$WORK/sha256.tetd:/tetd/sha256.tetd" \
    --file "$WORK/faulty.tetd:/tetd/faulty.tetd" \
    --file "$WORK/bad.tetd:/tetd/bad.tetd" \
    --file "$WORK/allow.list:/tetd/allow.list" \
    --file "$WORK/bad.list:/tetd/bad.list" >/dev/null

qrc=0
if [ "$MODE" = qemu ]; then
    echo "guest-smoke: booting Linux $KVER under QEMU (TCG), 2 vCPUs, loopback transport" >&2
    timeout 600 qemu-system-x86_64 -machine q35 -cpu max -m 512 -smp 2 -nographic -no-reboot \
        -device isa-debug-exit,iobase=0xe44,iosize=1 \
        -kernel "$KERNEL" -initrd "$WORK/initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet" > "$WORK/console.log" 2>&1 || qrc=$?
    want=11 # isa-debug-exit: (5 << 1) | 1
else
    echo "guest-smoke: booting Linux $KVER under tetd-vmm (TETD-H attached), 2 vCPUs" >&2
    timeout 600 ./target/debug/tetd-vmm boot --kernel "$KERNEL" --initrd "$WORK/initrd.cpio" \
        --vcpus 2 --mem 512 --timeout 550 > "$WORK/console.log" 2>&1 || qrc=$?
    want=5
fi
if [ "$qrc" -eq "$want" ]; then
    echo "CHECK-PASS exit-port" >> "$WORK/console.log"
else
    echo "CHECK-FAIL exit-port: exit status $qrc, want $want (tetdctl exit 5)" >> "$WORK/console.log"
fi

tr -d '\r' < "$WORK/console.log" > "$WORK/console.txt"
passed=$(grep -c '^CHECK-PASS ' "$WORK/console.txt" || true)
failed=$(grep -c '^CHECK-FAIL ' "$WORK/console.txt" || true)
grep '^CHECK-' "$WORK/console.txt" || true
expected=48 # checks in run.sh above (one CHECK line each)
if [ "$((passed + failed))" -ne "$expected" ]; then
    echo "guest-smoke: only $((passed + failed)) of $expected checks reported (console: $WORK/console.txt)" >&2
    failed=$((failed + expected - passed - failed))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
