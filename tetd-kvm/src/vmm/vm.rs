//! VM creation and the vCPU run loops.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use tetd::abi::{
    Error as AbiError, SIM_EXIT_PORT, SIM_HYPERCALL_PORT, TETD_VMCALL_VENDOR, ZONE_GPA_BASE,
    ZONE_GPA_SIZE,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::console::{self, ConsoleBuffer, ConsoleVerdict, SerialDevice};
use super::error::{kvm_err, Result, VmmError};
use super::kick::{self, ImmediateExitGuard};
use super::layout::*;
use super::memctl::VmMemoryControl;
use super::{
    boot, cpuid, mptable, HypercallArgs, HypercallHandler, HypercallRet, StatusSource, Violation,
    VmConfig, VmExit, VmOutcome, VmStats,
};

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Whether `/dev/kvm` can be opened (tests use this to skip).
pub fn kvm_available() -> std::result::Result<(), String> {
    Kvm::new()
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm unusable: {e}"))
}

/// Whether this host's KVM emulates guest kernel-mode code instead of
/// running it on the CPU: the PVM backend (`kvm_pvm` module, KVM without
/// VMX/SVM, e.g. inside a cloud VM without nested virtualisation) runs guest
/// user mode natively but executes an unmodified guest kernel through KVM's
/// instruction emulator, roughly a thousand times slower than hardware.
/// Only PVM-enlightened guest kernels run at full speed there.
pub fn kvm_emulates_guest_kernel() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Why the run loop ended, before the console is consulted.
#[derive(Debug, Clone)]
enum EndEvent {
    PortStatus(u8),
    Shutdown,
    Stopped,
    Timeout,
    Error(String),
}

#[derive(Default)]
struct Counters {
    exits: AtomicU64,
    io_exits: AtomicU64,
    mmio_exits: AtomicU64,
    hypercalls: AtomicU64,
    violations: AtomicU64,
    kicks: AtomicU64,
}

struct VcpuControl {
    thread: Mutex<Option<libc::pthread_t>>,
    kick: AtomicBool,
}

struct Shared {
    stop: AtomicBool,
    end: Mutex<Option<EndEvent>>,
    end_cv: Condvar,
    vcpus: Vec<VcpuControl>,
    console: ConsoleBuffer,
    /// Bytes for the console's receive side, waiting for room in the UART
    /// FIFO ([`VmHandle::send_console`], fed by [`feed_console`]).
    input: Mutex<std::collections::VecDeque<u8>>,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Records the first end event and wakes the main thread.
    fn finish(&self, ev: EndEvent) {
        let mut end = lock(&self.end);
        if end.is_none() {
            *end = Some(ev);
        }
        self.end_cv.notify_all();
    }

    fn kick_thread(&self, vcpu: usize) -> Result<()> {
        let ctl = &self.vcpus[vcpu];
        let thread = lock(&ctl.thread);
        if let Some(t) = *thread {
            kick::signal_thread(t)?;
        }
        Ok(())
    }
}

/// Controls a VM from other threads: kick a vCPU, stop the VM, read the console.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<Shared>,
}

impl VmHandle {
    /// Forces vCPU `vcpu` out of `KVM_RUN`; its thread then calls
    /// [`HypercallHandler::kicked`]. Kicks before the VM runs are delivered
    /// at its start; kicks after it ended are ignored.
    pub fn kick(&self, vcpu: u32) -> Result<()> {
        let idx = vcpu as usize;
        let ctl = self.shared.vcpus.get(idx).ok_or_else(|| {
            VmmError::Config(format!(
                "kick: no vCPU {vcpu} (VM has {})",
                self.shared.vcpus.len()
            ))
        })?;
        ctl.kick.store(true, Ordering::SeqCst);
        self.shared.kick_thread(idx)
    }

    /// Stops the VM ([`VmExit::Stopped`] unless it already ended).
    pub fn stop(&self) {
        self.shared.finish(EndEvent::Stopped);
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.shared.vcpus.len() as u32
    }

    /// Console output so far.
    pub fn console(&self) -> String {
        self.shared.console.text()
    }

    /// Console output from absolute byte offset `pos` on, and the offset of
    /// its end ([`ConsoleBuffer::read_from`]).
    pub fn console_from(&self, pos: u64) -> (Vec<u8>, u64) {
        self.shared.console.read_from(pos)
    }

    /// Queues `bytes` for the console's receive side (COM1): a thread of
    /// the run moves them into the UART's FIFO as the guest reads it and
    /// raises its interrupt. Errors with `NotConnected` once the VM ended.
    pub fn send_console(&self, bytes: &[u8]) -> std::io::Result<()> {
        if self.ended() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the VM is not running (console input unavailable)",
            ));
        }
        lock(&self.shared.input).extend(bytes);
        Ok(())
    }

    /// True once the VM has ended (or is ending).
    pub fn ended(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst) || lock(&self.shared.end).is_some()
    }
}

/// Moves queued console input into the UART FIFO until the VM stops
/// (vm-superio raises the receive interrupt when the guest enabled it; a
/// polling guest sees LSR.DR).
fn feed_console(shared: &Shared, serial: &Mutex<SerialDevice>) {
    while !shared.stop.load(Ordering::SeqCst) {
        {
            let mut input = lock(&shared.input);
            if !input.is_empty() {
                let mut uart = lock(serial);
                let room = uart.fifo_capacity().min(input.len());
                if room > 0 {
                    let chunk: Vec<u8> = input.iter().take(room).copied().collect();
                    // Err only when the FIFO is full or the interrupt
                    // eventfd failed; the bytes stay queued then.
                    if let Ok(n) = uart.enqueue_raw_bytes(&chunk) {
                        input.drain(..n);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A configured VM, ready to [`run`](Vm::run).
pub struct Vm {
    // Field order = drop order: vCPUs, then the VM, then guest memory.
    vcpus: Vec<VcpuFd>,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    serial: Mutex<SerialDevice>,
    shared: Arc<Shared>,
    max_slots: u32,
    timeout: Duration,
}

fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| VmmError::NoKvm(std::io::Error::from_raw_os_error(e.errno())))
}

impl Vm {
    /// Creates the VM: memory, kernel, initrd, boot tables, irqchip, PIT,
    /// serial, vCPUs.
    pub fn new(config: VmConfig) -> Result<Vm> {
        config.validate()?;
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::Config(format!("the host KVM lacks {name}")));
            }
        }
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let mem_size = config.mem_mib << 20;
        let mem = boot::create_guest_memory(mem_size)?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| VmmError::Memory(format!("host address of RAM: {e}")))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host+mem_size` is the single mmap region of `mem`,
        // which the `Vm` (and any `VmMemoryControl` clone of it) keeps alive
        // at least as long as the VM fd (field drop order).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (RAM)"))?;

        // PVM derives most of CPUID leaf 1 from the host and ignores a cleared
        // XSAVE bit, so tell the guest kernel on its command line instead:
        // KVM's emulator cannot execute the XRSTOR of Linux' FPU set-up.
        let emulated = kvm_emulates_guest_kernel();
        let mut cmdline = config.cmdline.clone();
        if emulated && !cmdline.split_whitespace().any(|w| w == "noxsave") {
            cmdline.push_str(" noxsave");
        }
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, &kernel, mem_size)?),
            None => None,
        };
        boot::write_boot_structures(&mem, &kernel, &cmdline, initrd, mem_size)?;
        mptable::write(&mem, config.vcpus)?;

        let irq = EventFd::new(EFD_NONBLOCK).map_err(|source| VmmError::Os {
            op: "eventfd (serial irq)",
            source,
        })?;
        vm.register_irqfd(&irq, COM1_GSI)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let console = ConsoleBuffer::default();
        let serial = console::new_serial(irq, console.clone(), config.echo_console);

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(&cpuid::vcpu_cpuid(&supported, id, config.vcpus, emulated))
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            setup_msrs(&vcpu)?;
            setup_lapic(&vcpu)?;
            vcpu.set_fpu(&boot::boot_fpu())
                .map_err(kvm_err("KVM_SET_FPU"))?;
            if id == 0 {
                let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
                vcpu.set_sregs(&boot::boot_sregs(sregs))
                    .map_err(kvm_err("KVM_SET_SREGS"))?;
                vcpu.set_regs(&boot::boot_regs(kernel.entry))
                    .map_err(kvm_err("KVM_SET_REGS"))?;
            }
            vcpus.push(vcpu);
        }
        kick::install_handler()?;

        let max_slots = u32::try_from(kvm.get_nr_memslots()).unwrap_or(32).max(2);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            end: Mutex::new(None),
            end_cv: Condvar::new(),
            vcpus: (0..config.vcpus)
                .map(|_| VcpuControl {
                    thread: Mutex::new(None),
                    kick: AtomicBool::new(false),
                })
                .collect(),
            console,
            input: Mutex::new(std::collections::VecDeque::new()),
            counters: Counters::default(),
        });
        Ok(Vm {
            vcpus,
            vm,
            mem,
            serial: Mutex::new(serial),
            shared,
            max_slots,
            timeout: config.timeout,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs the guest until it ends, the timeout expires or [`VmHandle::stop`]
    /// is called. Returns the outcome and the handler.
    pub fn run<H: HypercallHandler>(self, mut handler: H) -> Result<(VmOutcome, H)> {
        let Vm {
            vcpus,
            vm,
            mem,
            serial,
            shared,
            max_slots,
            timeout,
        } = self;
        let mut memctl = VmMemoryControl::new(
            Arc::clone(&vm),
            mem.clone(),
            1,
            max_slots,
            shared.vcpus.len() as u32,
        );
        handler.start(&mut memctl)?;
        let handler = Mutex::new((handler, memctl));
        let debug = std::env::var_os("TETD_VMM_DEBUG").is_some();
        let start = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let mut threads = Vec::new();
            for (id, vcpu) in vcpus.into_iter().enumerate() {
                let ctx = RunCtx {
                    id: id as u32,
                    shared: &shared,
                    serial: &serial,
                    handler: &handler,
                    debug,
                };
                let t = std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn_scoped(scope, move || ctx.run(vcpu))
                    .map_err(|source| VmmError::Os {
                        op: "spawn vCPU thread",
                        source,
                    });
                match t {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        shared.finish(EndEvent::Error(e.to_string()));
                        break;
                    }
                }
            }
            let feeder = std::thread::Builder::new()
                .name("console-in".into())
                .spawn_scoped(scope, || feed_console(&shared, &serial));
            if let Err(e) = feeder {
                shared.finish(EndEvent::Error(format!("spawn console input thread: {e}")));
            }
            wait_for_end(&shared, start + timeout);
            shared.stop.store(true, Ordering::SeqCst);
            for i in 0..shared.vcpus.len() {
                // A failed signal only means the thread is already gone.
                let _ = shared.kick_thread(i);
            }
            for t in threads {
                if t.join().is_err() {
                    shared.finish(EndEvent::Error("a vCPU thread panicked".into()));
                }
            }
            Ok(())
        })?;
        let elapsed = start.elapsed();
        let (handler, memctl) = handler.into_inner().unwrap_or_else(|p| p.into_inner());
        drop(memctl);
        let end = lock(&shared.end)
            .clone()
            .unwrap_or(EndEvent::Error("VM ended without a reason".into()));
        let console = shared.console.text();
        let exit = match end {
            EndEvent::PortStatus(code) => VmExit::Status {
                code,
                via: StatusSource::Port,
            },
            EndEvent::Shutdown => match console::scan(&console) {
                ConsoleVerdict::Status(code) => VmExit::Status {
                    code,
                    via: StatusSource::Sentinel,
                },
                ConsoleVerdict::Panic(line) => VmExit::Panic(line),
                ConsoleVerdict::None => VmExit::Shutdown,
            },
            EndEvent::Stopped => VmExit::Stopped,
            EndEvent::Timeout => VmExit::Timeout,
            EndEvent::Error(e) => VmExit::Error(e),
        };
        let c = &shared.counters;
        let stats = VmStats {
            exits: c.exits.load(Ordering::Relaxed),
            io_exits: c.io_exits.load(Ordering::Relaxed),
            mmio_exits: c.mmio_exits.load(Ordering::Relaxed),
            hypercalls: c.hypercalls.load(Ordering::Relaxed),
            violations: c.violations.load(Ordering::Relaxed),
            kicks: c.kicks.load(Ordering::Relaxed),
        };
        Ok((
            VmOutcome {
                exit,
                console,
                elapsed,
                stats,
            },
            handler,
        ))
    }
}

fn wait_for_end(shared: &Shared, deadline: Instant) {
    let mut end = lock(&shared.end);
    while end.is_none() {
        let now = Instant::now();
        if now >= deadline {
            *end = Some(EndEvent::Timeout);
            break;
        }
        end = shared
            .end_cv
            .wait_timeout(end, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = [
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        kvm_bindings::kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WB,
            ..Default::default()
        },
    ];
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| VmmError::Config(format!("MSR list: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(VmmError::Config(format!(
            "KVM accepted only {n} of {} boot MSRs",
            entries.len()
        )));
    }
    Ok(())
}

fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *x as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}

/// What a vCPU exit asks for after the `kvm_run` borrow ends.
enum Pending {
    None,
    Hypercall,
    Violation {
        gpa: u64,
        len: u32,
        write: bool,
        value: u64,
    },
    End(EndEvent),
    InternalError,
}

struct RunCtx<'a, H> {
    id: u32,
    shared: &'a Shared,
    serial: &'a Mutex<SerialDevice>,
    handler: &'a Mutex<(H, VmMemoryControl)>,
    debug: bool,
}

fn in_zone_window(gpa: u64) -> bool {
    (ZONE_GPA_BASE..ZONE_GPA_BASE + ZONE_GPA_SIZE).contains(&gpa)
}

impl<H: HypercallHandler> RunCtx<'_, H> {
    fn run(&self, mut vcpu: VcpuFd) {
        let ie: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        let _guard = ImmediateExitGuard::register(ie);
        *lock(&self.shared.vcpus[self.id as usize].thread) = Some(kick::current_thread());
        let end = self.run_loop(&mut vcpu);
        // Unregister before the thread (and its pthread id) goes away.
        *lock(&self.shared.vcpus[self.id as usize].thread) = None;
        if let Some(ev) = end {
            self.shared.finish(ev);
        }
    }

    fn run_loop(&self, vcpu: &mut VcpuFd) -> Option<EndEvent> {
        let ctl = &self.shared.vcpus[self.id as usize];
        let c = &self.shared.counters;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                if std::env::var_os("TETD_VMM_DEBUG").is_some() {
                    if let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) {
                        eprintln!(
                            "tetd-vmm: vCPU {} stopped at rip={:#x} rsp={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                            self.id, r.rip, r.rsp, s.cr0, s.cr3, s.cr4, s.efer
                        );
                        eprintln!("tetd-vmm: regs {r:x?}");
                        if let Ok(t) = vcpu.translate_gva(r.rip.saturating_sub(32)) {
                            let mut code = [0u8; 64];
                            let _ = lock(self.handler)
                                .1
                                .read_guest(t.physical_address, &mut code);
                            eprintln!(
                                "tetd-vmm: code at rip-32 (gpa {:#x}): {code:02x?}",
                                t.physical_address
                            );
                        }
                    }
                }
                return None;
            }
            if ctl.kick.swap(false, Ordering::SeqCst) {
                c.kicks.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.deliver_kick(vcpu) {
                    return Some(EndEvent::Error(e));
                }
            }
            let pending = match vcpu.run() {
                Ok(exit) => {
                    c.exits.fetch_add(1, Ordering::Relaxed);
                    self.classify(exit)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    vcpu.set_kvm_immediate_exit(0);
                    Pending::None
                }
                Err(e) => Pending::End(EndEvent::Error(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.id
                ))),
            };
            match pending {
                Pending::None => {}
                Pending::End(ev) => return Some(ev),
                Pending::InternalError => return Some(EndEvent::Error(self.internal_error(vcpu))),
                Pending::Hypercall => {
                    c.hypercalls.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.hypercall(vcpu) {
                        return Some(EndEvent::Error(e));
                    }
                }
                Pending::Violation {
                    gpa,
                    len,
                    write,
                    value,
                } => {
                    c.violations.fetch_add(1, Ordering::Relaxed);
                    let rip = match vcpu.get_regs() {
                        Ok(r) => r.rip,
                        Err(e) => {
                            return Some(EndEvent::Error(format!(
                                "vCPU {}: KVM_GET_REGS: {e}",
                                self.id
                            )))
                        }
                    };
                    let v = Violation {
                        vcpu: self.id,
                        gpa,
                        len,
                        write,
                        value,
                        rip,
                    };
                    if let Err(e) = self.with_handler("violation", |h, mem| h.violation(mem, v)) {
                        return Some(EndEvent::Error(e));
                    }
                }
            }
        }
    }

    fn classify(&self, exit: VcpuExit<'_>) -> Pending {
        let c = &self.shared.counters;
        if self.debug {
            eprintln!("tetd-vmm: vCPU {} exit {:?}", self.id, exit);
        }
        match exit {
            VcpuExit::IoOut(port, data) => {
                c.io_exits.fetch_add(1, Ordering::Relaxed);
                match port {
                    p if (COM1_BASE..COM1_BASE + 8).contains(&p) => {
                        // A serial error is an interrupt-eventfd write failure; the
                        // byte itself is captured, so keep going.
                        let _ = lock(self.serial).write((p - COM1_BASE) as u8, data[0]);
                        Pending::None
                    }
                    SIM_EXIT_PORT => Pending::End(EndEvent::PortStatus(data[0])),
                    SIM_HYPERCALL_PORT => Pending::Hypercall,
                    _ => Pending::None,
                }
            }
            VcpuExit::IoIn(port, data) => {
                c.io_exits.fetch_add(1, Ordering::Relaxed);
                if (COM1_BASE..COM1_BASE + 8).contains(&port) {
                    data[0] = lock(self.serial).read((port - COM1_BASE) as u8);
                } else {
                    // No device: the bus floats high.
                    data.fill(0xff);
                }
                Pending::None
            }
            VcpuExit::MmioRead(addr, data) => {
                c.mmio_exits.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
                if in_zone_window(addr) {
                    Pending::Violation {
                        gpa: addr,
                        len: data.len() as u32,
                        write: false,
                        value: 0,
                    }
                } else {
                    Pending::None
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                c.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if in_zone_window(addr) {
                    let mut v = [0u8; 8];
                    let n = data.len().min(8);
                    v[..n].copy_from_slice(&data[..n]);
                    Pending::Violation {
                        gpa: addr,
                        len: data.len() as u32,
                        write: true,
                        value: u64::from_le_bytes(v),
                    }
                } else {
                    Pending::None
                }
            }
            VcpuExit::Shutdown | VcpuExit::Hlt => Pending::End(EndEvent::Shutdown),
            VcpuExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_CRASH => {
                    Pending::End(EndEvent::Shutdown)
                }
                other => Pending::End(EndEvent::Error(format!(
                    "vCPU {}: unexpected system event {other}",
                    self.id
                ))),
            },
            VcpuExit::FailEntry(reason, cpu) => Pending::End(EndEvent::Error(format!(
                "vCPU {}: VM entry failed (hardware reason {reason:#x}, host cpu {cpu})",
                self.id
            ))),
            VcpuExit::InternalError => Pending::InternalError,
            other => Pending::End(EndEvent::Error(format!(
                "vCPU {}: unexpected exit {other:?}",
                self.id
            ))),
        }
    }

    /// Runs `f` on the handler under the lock; a panicking handler ends the VM.
    fn with_handler<R>(
        &self,
        what: &str,
        f: impl FnOnce(&mut H, &mut VmMemoryControl) -> R,
    ) -> std::result::Result<R, String> {
        let mut guard = lock(self.handler);
        let (h, mem) = &mut *guard;
        catch_unwind(AssertUnwindSafe(|| f(h, mem)))
            .map_err(|_| format!("the {what} handler panicked"))
    }

    fn hypercall(&self, vcpu: &VcpuFd) -> std::result::Result<(), String> {
        let mut regs = vcpu
            .get_regs()
            .map_err(|e| format!("vCPU {}: KVM_GET_REGS: {e}", self.id))?;
        let ret = if regs.r10 != TETD_VMCALL_VENDOR {
            HypercallRet::err(AbiError::InvalidArgument)
        } else {
            let call = HypercallArgs {
                leaf: regs.r11,
                args: [regs.r12, regs.r13, regs.r14, regs.r15],
            };
            self.with_handler("hypercall", |h, mem| h.hypercall(mem, self.id, call))?
        };
        if self.debug {
            eprintln!(
                "tetd-vmm: vCPU {} hypercall r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x} -> {ret:x?}",
                self.id, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15
            );
        }
        regs.r10 = ret.status;
        regs.r11 = ret.results[0];
        regs.r12 = ret.results[1];
        regs.r13 = ret.results[2];
        // RIP is unchanged, so KVM still skips the `out` when it completes the
        // port write on the next KVM_RUN (see the module documentation).
        vcpu.set_regs(&regs)
            .map_err(|e| format!("vCPU {}: KVM_SET_REGS: {e}", self.id))
    }

    /// Describes a `KVM_EXIT_INTERNAL_ERROR` (suberror, data, RIP, code bytes).
    fn internal_error(&self, vcpu: &mut VcpuFd) -> String {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the kvm_run exit union.
        let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let what = match internal.suberror {
            1 => "instruction emulation failed",
            2 => "simultaneous exceptions",
            3 => "delivery event failed",
            4 => "unexpected exit reason",
            _ => "unknown",
        };
        let mut msg = format!(
            "vCPU {}: KVM internal error {} ({what}), data {:x?}",
            self.id,
            internal.suberror,
            &internal.data[..n]
        );
        if let Ok(r) = vcpu.get_regs() {
            msg.push_str(&format!(", rip {:#x}", r.rip));
            if let Ok(t) = vcpu.translate_gva(r.rip) {
                let mut code = [0u8; 16];
                if lock(self.handler)
                    .1
                    .read_guest(t.physical_address, &mut code)
                    .is_ok()
                {
                    msg.push_str(&format!(", code {code:02x?}"));
                }
            }
        }
        msg
    }

    fn deliver_kick(&self, vcpu: &VcpuFd) -> std::result::Result<(), String> {
        let regs = vcpu
            .get_regs()
            .map_err(|e| format!("vCPU {}: KVM_GET_REGS: {e}", self.id))?;
        let mut new = regs;
        self.with_handler("kick", |h, mem| h.kicked(mem, self.id, &mut new))?;
        if new != regs {
            vcpu.set_regs(&new)
                .map_err(|e| format!("vCPU {}: KVM_SET_REGS: {e}", self.id))?;
        }
        Ok(())
    }
}
