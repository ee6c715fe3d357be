//! A small KVM virtual machine monitor built on the rust-vmm crates
//! (kvm-ioctls, kvm-bindings, vm-memory, linux-loader, vm-superio).
//!
//! It boots a stock Linux bzImage (the distribution kernel that
//! `scripts/setup.sh` unpacks into `build/guest/`) with an initramfs, gives
//! it 1..=[`MAX_VCPUS`] vCPUs (MP table, in-kernel LAPIC/IOAPIC/PIT), a
//! 16550A serial console on COM1, and reports how the guest ended
//! ([`VmExit`]) together with the console text.
//!
//! # Guest ↔ host transport (stand-in for TDG.VP.VMCALL)
//! The guest loads the `TDG.VP.VMCALL` registers of [`tetd::abi::regs`]
//! (R10 = [`TETD_VMCALL_VENDOR`], R11 = leaf, R12..R15 = arguments) and
//! executes `out %al, $SIM_HYPERCALL_PORT`. KVM exits with `KVM_EXIT_IO`
//! *before* retiring the `out` (RIP still points at it); the VMM reads the
//! registers, asks the [`HypercallHandler`], writes R10 (status) and
//! R11..R13 (results) with `KVM_SET_REGS` keeping RIP unchanged, and
//! re-enters. On re-entry KVM's `complete_fast_pio_out` sees the unchanged
//! linear RIP and skips the `out`, so the guest continues after it with the
//! answer in its registers (Linux `arch/x86/kvm/x86.c`, `kvm_fast_pio_out` /
//! `complete_fast_pio_out`). A wrong R10 is answered with
//! [`tetd::abi::Error::InvalidArgument`] without calling the handler.
//!
//! A byte written to [`SIM_EXIT_PORT`] ends the VM with that exit status.
//! Busybox-only guests can instead print `TETD-EXIT: <n>` ([`EXIT_SENTINEL`])
//! and `reboot -f` (the default command line has `reboot=t`, so the reboot
//! is a triple fault, i.e. `KVM_EXIT_SHUTDOWN`).
//!
//! # Zones
//! [`VmMemoryControl`] lets the handler install zone-pool memory (TETD-H's
//! [`crate::zone_alloc::HostPool`], the one home of zone memory) as KVM
//! memory slots inside the zone window ([`tetd::abi::ZONE_GPA_BASE`]) and
//! take it away again. A guest access to a removed slot exits as
//! `KVM_EXIT_MMIO`; the VMM reports it as a [`Violation`], answers reads
//! with all-ones, drops writes and keeps the guest running.
//!
//! # TETD-H
//! [`crate::hv::TetdHandler`] with [`crate::hv::KvmSeam`] is the
//! [`HypercallHandler`] that attaches TETD-H: hypercalls go to its
//! `TdState`, violations are counted against the agent whose zone was hit,
//! and the zone slots follow the TDX model (BLOCK = slot deleted). Where this
//! VMM cannot boot the guest kernel, [`crate::qemu`] runs it under QEMU/TCG
//! with the same handler (`docs/engines.md`).
//!
//! # Kicks
//! [`VmHandle::kick`] forces a vCPU out of `KVM_RUN` from any thread; the
//! vCPU thread then calls [`HypercallHandler::kicked`] with its registers
//! (e.g. for an agent watchdog).
//!
//! # Kernels
//! Both a bzImage (64-bit entry at +0x200 of the protected-mode part) and an
//! uncompressed ELF `vmlinux` (entry `startup_64` at its physical address)
//! boot, with the same zero page. `scripts/setup.sh` extracts the vmlinux
//! from the Debian bzImage; [`GuestKernel::boot_image`] prefers it.
//!
//! # Hosts that emulate guest kernels
//! Where `/dev/kvm` is the PVM backend ([`kvm_emulates_guest_kernel`]), an
//! unmodified guest kernel runs under KVM's instruction emulator (~0.6 M
//! instructions/s measured on the development machine) and the Debian 6.1
//! kernel cannot finish booting (the emulator cannot execute its INT3
//! self-test); see `tetd-kvm/guest/README.md`.
//!
//! # Debugging
//! `TETD_VMM_DEBUG=1` logs every VM exit and, when a vCPU is stopped, its
//! registers and the code bytes around RIP to stderr.
//!
//! Not implemented: console input (the UART only transmits), PCI, ACPI,
//! virtio devices.

mod boot;
mod console;
mod cpuid;
mod error;
pub mod initramfs;
mod kick;
mod layout;
mod memctl;
mod mptable;
mod vm;

pub use console::{
    scan as scan_console, ConsoleBuffer, ConsoleVerdict, CAPTURE_LIMIT, EXIT_SENTINEL,
};
pub use error::{Result, VmmError};
pub use kvm_bindings::kvm_regs;
pub use layout::{MAX_MEM_MIB, MIN_MEM_MIB};
pub use memctl::{VmMemoryControl, ZoneInfo, ZonePool, ZoneSlot};
pub use tetd::abi::regs::{HypercallArgs, HypercallRet};
pub use tetd::abi::{SIM_EXIT_PORT, SIM_HYPERCALL_PORT, TETD_VMCALL_VENDOR};
pub use vm::{kvm_available, kvm_emulates_guest_kernel, Vm, VmHandle};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 8;

/// Default kernel command line.
///
/// `console=ttyS0` (serial console), `reboot=t` (reboot = triple fault =
/// `KVM_EXIT_SHUTDOWN`), `panic=-1` (reboot at once on panic), `pci=off`
/// (there is no PCI bus), `no_timer_check` / `tsc=reliable` (skip slow
/// timer checks in a VM), `i8042.*` (no PS/2 controller: do not probe it).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 pci=off no_timer_check tsc=reliable \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on";

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Linux bzImage.
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, optionally compressed as the kernel supports).
    pub initrd: Option<PathBuf>,
    /// Full kernel command line. Where KVM emulates guest kernels
    /// ([`kvm_emulates_guest_kernel`]) the VMM appends `noxsave`.
    pub cmdline: String,
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest RAM in MiB, [`MIN_MEM_MIB`]..=[`MAX_MEM_MIB`].
    pub mem_mib: u64,
    /// Wall-clock limit; the VM is stopped and [`VmExit::Timeout`] reported after it.
    pub timeout: Duration,
    /// Echo the console to the host's stdout while running (it is always captured).
    pub echo_console: bool,
}

impl VmConfig {
    /// Defaults: 1 vCPU, 256 MiB, [`DEFAULT_CMDLINE`], 60 s, no echo.
    pub fn new(kernel: impl Into<PathBuf>, initrd: Option<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initrd,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: 1,
            mem_mib: 256,
            timeout: Duration::from_secs(60),
            echo_console: false,
        }
    }

    /// Appends words to the command line.
    pub fn append(mut self, extra: &str) -> VmConfig {
        let extra = extra.trim();
        if !extra.is_empty() {
            self.cmdline.push(' ');
            self.cmdline.push_str(extra);
        }
        self
    }

    /// Checks the numbers and that the files exist.
    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "vcpus = {}: must be 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        if self.mem_mib < MIN_MEM_MIB || self.mem_mib > MAX_MEM_MIB {
            return Err(VmmError::Config(format!(
                "mem_mib = {}: must be {MIN_MEM_MIB}..={MAX_MEM_MIB} (RAM stays below the 32-bit MMIO hole)",
                self.mem_mib
            )));
        }
        if self.timeout.is_zero() {
            return Err(VmmError::Config("timeout must be non-zero".into()));
        }
        if self.cmdline.bytes().any(|b| b == 0) {
            return Err(VmmError::Config(
                "kernel command line contains a NUL byte".into(),
            ));
        }
        check_file(&self.kernel, "kernel")?;
        if let Some(initrd) = &self.initrd {
            check_file(initrd, "initrd")?;
        }
        Ok(())
    }
}

fn check_file(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmmError::Config(format!(
            "{what} {} is not a regular file",
            path.display()
        ))),
        Err(source) => Err(VmmError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The guest kernel `scripts/setup.sh` prepared under `build/guest/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// Debian kernel ABI version, e.g. `6.1.0-57-amd64` (`build/guest/KERNEL_VERSION`).
    pub version: String,
    /// The distribution's bzImage.
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel extracted from it, if present.
    pub vmlinux: Option<PathBuf>,
    /// `/usr/src/linux-headers-<version>` (for building modules).
    pub headers: PathBuf,
}

impl GuestKernel {
    /// Finds the kernel under `<repo_root>/build/guest`.
    pub fn locate(repo_root: &Path) -> Result<GuestKernel> {
        let dir = repo_root.join("build/guest");
        let vfile = dir.join("KERNEL_VERSION");
        let version = std::fs::read_to_string(&vfile)
            .map_err(|source| VmmError::Io {
                path: vfile.clone(),
                source: std::io::Error::new(
                    source.kind(),
                    format!("{source} (run scripts/setup.sh as root)"),
                ),
            })?
            .trim()
            .to_string();
        if version.is_empty() || version.contains('/') {
            return Err(VmmError::Config(format!(
                "{}: bad kernel version {version:?}",
                vfile.display()
            )));
        }
        let boot = dir.join(format!("kernel-{version}/boot"));
        let bzimage = boot.join(format!("vmlinuz-{version}"));
        check_file(&bzimage, "guest kernel (run scripts/setup.sh)")?;
        let vmlinux = Some(boot.join(format!("vmlinux-{version}"))).filter(|p| p.is_file());
        let headers = PathBuf::from(format!("/usr/src/linux-headers-{version}"));
        Ok(GuestKernel {
            version,
            bzimage,
            vmlinux,
            headers,
        })
    }

    /// What to boot: the ELF vmlinux when present (no in-guest
    /// decompression), else the bzImage.
    pub fn boot_image(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.bzimage)
    }
}

/// How the exit status was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSource {
    /// A byte written to [`SIM_EXIT_PORT`].
    Port,
    /// A `TETD-EXIT: n` console line followed by a shutdown.
    Sentinel,
}

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reported an exit status.
    Status {
        /// The status byte.
        code: u8,
        /// Port write or console sentinel.
        via: StatusSource,
    },
    /// The guest shut down / rebooted without reporting a status.
    Shutdown,
    /// The guest kernel panicked (the console's panic line).
    Panic(String),
    /// The wall-clock timeout expired; the VM was stopped.
    Timeout,
    /// [`VmHandle::stop`] was called.
    Stopped,
    /// The VMM failed (KVM error, entry failure, internal emulation error).
    Error(String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Status {
                code,
                via: StatusSource::Port,
            } => write!(f, "exit status {code} (exit port)"),
            VmExit::Status {
                code,
                via: StatusSource::Sentinel,
            } => write!(f, "exit status {code} (console sentinel)"),
            VmExit::Shutdown => write!(f, "guest shut down without an exit status"),
            VmExit::Panic(line) => write!(f, "guest kernel panic: {line}"),
            VmExit::Timeout => write!(f, "timeout: guest stopped"),
            VmExit::Stopped => write!(f, "stopped by the host"),
            VmExit::Error(e) => write!(f, "VMM error: {e}"),
        }
    }
}

/// Counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmStats {
    /// All VM exits seen by the VMM.
    pub exits: u64,
    /// Port I/O exits.
    pub io_exits: u64,
    /// MMIO exits.
    pub mmio_exits: u64,
    /// Hypercalls (valid or not).
    pub hypercalls: u64,
    /// Zone-window accesses reported as violations.
    pub violations: u64,
    /// Kicks delivered to the handler.
    pub kicks: u64,
}

/// Result of [`Vm::run`].
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// How the guest ended.
    pub exit: VmExit,
    /// Captured console output (lossy UTF-8).
    pub console: String,
    /// Wall-clock time from the first `KVM_RUN` to the end.
    pub elapsed: Duration,
    /// Counters.
    pub stats: VmStats,
}

impl VmOutcome {
    /// The exit status, if the guest reported one.
    pub fn status(&self) -> Option<u8> {
        match self.exit {
            VmExit::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A guest access to the zone window that no memory slot backs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// vCPU index.
    pub vcpu: u32,
    /// Guest-physical address accessed.
    pub gpa: u64,
    /// Access size in bytes.
    pub len: u32,
    /// Write (true) or read.
    pub write: bool,
    /// For writes: the (dropped) value, little endian, zero-extended.
    pub value: u64,
    /// Guest RIP of the accessing instruction.
    pub rip: u64,
}

/// The host side of the TETD hypercalls (implemented by the TETD-H core).
///
/// One handler serves all vCPUs; calls are serialised by the VMM.
pub trait HypercallHandler: Send {
    /// Called once before any vCPU runs (e.g. to pre-map zones).
    fn start(&mut self, mem: &mut VmMemoryControl) -> Result<()> {
        let _ = mem;
        Ok(())
    }

    /// A hypercall with R10 == [`TETD_VMCALL_VENDOR`] from vCPU `vcpu`.
    fn hypercall(
        &mut self,
        mem: &mut VmMemoryControl,
        vcpu: u32,
        call: HypercallArgs,
    ) -> HypercallRet;

    /// A guest access to an unbacked part of the zone window.
    fn violation(&mut self, mem: &mut VmMemoryControl, v: Violation) {
        let _ = (mem, v);
    }

    /// vCPU `vcpu` was kicked out of `KVM_RUN` ([`VmHandle::kick`]); `regs`
    /// are its registers, written back if changed. Any port/MMIO access the
    /// vCPU exited for has been completed by KVM, so the state is
    /// consistent.
    fn kicked(&mut self, mem: &mut VmMemoryControl, vcpu: u32, regs: &mut kvm_regs) {
        let _ = (mem, vcpu, regs);
    }
}

/// A handler without TETD-H: every hypercall fails with
/// [`tetd::abi::Error::Unsupported`]; violations are counted only.
#[derive(Debug, Default)]
pub struct NoHypercalls;

impl HypercallHandler for NoHypercalls {
    fn hypercall(&mut self, _: &mut VmMemoryControl, _: u32, _: HypercallArgs) -> HypercallRet {
        HypercallRet::err(tetd::abi::Error::Unsupported)
    }
}

/// Boots `config` with `handler` and waits for the end.
pub fn run_vm<H: HypercallHandler>(config: VmConfig, handler: H) -> Result<(VmOutcome, H)> {
    Vm::new(config)?.run(handler)
}
