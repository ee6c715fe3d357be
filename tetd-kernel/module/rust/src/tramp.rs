//! The call trampolines (assembly) and the state they share.
//!
//! (Exclusive mode uses the loader core's gate, `tetd_kernel::arch`.)
//!
//! *Collaborative mode* (`tetdg_collab_enter`): code in its own page-aligned
//! section `.text.tetdg_tramp`, which the agent's page table maps at the
//! same virtual address as the kernel does. With interrupts masked it saves
//! CR3/CR4/GDTR/IDTR/RSP into [`TrampData`], clears CR4.PGE (flushing global
//! TLB entries, so no kernel translation survives into the agent's address
//! space), loads the agent's IDT and GDT, the agent's stack and CR3, clears
//! the general registers and calls the entry. Every IDT vector leads to a
//! 16-byte stub that pushes its vector number; the common path either
//! resumes the agent after an NMI (counted, re-raised by the kernel after the
//! call) or records vector, error code, RIP and CR2, switches back to the
//! kernel CR3 and leaves through the same exit path as a normal return, which
//! restores CR4, GDTR, IDTR and RSP. The exception stubs run on IST stacks
//! (IST1 for exceptions, IST2 for NMIs): the CPU reads the IST pointers from
//! the TSS at TR.base, a kernel address that the agent's page table maps to
//! the page [`FAKE_TSS`] holding our IST pointers; TR itself is never reloaded.
//!
//! The services of collaborative mode (`tetdg_cs_*`) are also in the
//! trampoline pages: log (into a buffer in the agent's I/O area, printed by the
//! kernel after the call), random (RDRAND), time (RDTSC scaled by a factor
//! the kernel computed), abort (leave through the exit path), admin's
//! `OwnMeasurement` (copied from the context, where the kernel put the
//! image's measurement before the call); the rest answer `Unsupported`.
//!
//! The trampoline data page is mapped read-only in the agent's address
//! space, the IST stacks page read-write; the agent can therefore not change
//! the kernel state the exit path restores.
use core::cell::UnsafeCell;
use core::mem::offset_of;

/// A page-aligned static the assembly and Rust both use.
#[repr(transparent)]
pub struct Shared<T>(UnsafeCell<T>);

// SAFETY: every access happens with the module mutex held (one call at a
// time) and, during a call, with preemption or interrupts disabled.
unsafe impl<T> Sync for Shared<T> {}

impl DescPtr {
    /// A descriptor-table pointer.
    pub const fn new(base: u64, limit: u16) -> Self {
        DescPtr {
            pad: [0; 3],
            limit,
            base,
        }
    }
}

impl<T> Shared<T> {
    pub(crate) const fn new(v: T) -> Self {
        Shared(UnsafeCell::new(v))
    }
    /// Raw pointer to the contents.
    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Operand of LGDT/LIDT (at `limit`) with padding so `base` is aligned.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DescPtr {
    // (pad first so that `limit` is at +6 and `base` 8-aligned)
    pad: [u16; 3],
    /// Limit (size - 1).
    pub limit: u16,
    /// Linear base.
    pub base: u64,
}

/// Kernel and agent CPU state of a collaborative call (one page).
#[repr(C, align(4096))]
pub struct TrampData {
    /// Kernel CR3 (with PCID bits) to restore.
    pub kernel_cr3: u64,
    /// Kernel CR4 to restore.
    pub kernel_cr4: u64,
    /// Kernel RSP at entry (after pushing the callee-saved registers).
    pub kernel_rsp: u64,
    /// Agent CR3 (root page table, PCID 0).
    pub agent_cr3: u64,
    /// Agent stack top (16-byte aligned).
    pub agent_rsp: u64,
    /// Agent entry (virtual address in both address spaces).
    pub entry: u64,
    /// Call frame pointer passed in RDI.
    pub frame: u64,
    /// Vector of the exception that ended the call.
    pub fault_vector: u64,
    /// Its error code (or 0).
    pub fault_error: u64,
    /// RIP of the faulting instruction.
    pub fault_rip: u64,
    /// CR2 at the fault.
    pub fault_cr2: u64,
    /// TSC deadline of the call (0 = none): an NMI after it ends the call
    /// with a timeout instead of resuming the agent. In this read-only page
    /// so the agent cannot move it.
    pub deadline_tsc: u64,
    /// Kernel GDTR.
    pub kernel_gdtr: DescPtr,
    /// Kernel IDTR.
    pub kernel_idtr: DescPtr,
    /// Agent GDTR (points at `gdt`).
    pub agent_gdtr: DescPtr,
    /// Agent IDTR (points at [`IDT`]).
    pub agent_idtr: DescPtr,
    /// The agent's GDT: a copy of the kernel's (same selectors).
    pub gdt: [u64; GDT_QWORDS],
}

/// Qwords of the agent GDT copy (covers Linux' 16 GDT entries).
pub const GDT_QWORDS: usize = 32;

/// The agent's IDT: 256 16-byte gates.
#[repr(C, align(4096))]
pub struct Idt(pub [u64; 512]);

/// Read-write page plus the two IST stacks (mapped RW for the agent).
#[repr(C, align(4096))]
pub struct TrampRw {
    /// NMIs that arrived while an agent ran (re-raised afterwards).
    pub nmi_count: u64,
    pad: [u64; 511],
    /// IST1: exceptions.
    pub ist1: [u8; 4096],
    /// IST2: NMI.
    pub ist2: [u8; 4096],
}

/// What the agent's page table maps at the kernel TSS address: a TSS whose
/// IST1/IST2 point at our stacks.
#[repr(C, align(4096))]
pub struct FakeTss(pub [u8; 4096]);

/// Trampoline data (RO for the agent).
pub static DATA: Shared<TrampData> = Shared::new(TrampData {
    kernel_cr3: 0,
    kernel_cr4: 0,
    kernel_rsp: 0,
    agent_cr3: 0,
    agent_rsp: 0,
    entry: 0,
    frame: 0,
    fault_vector: 0,
    fault_error: 0,
    fault_rip: 0,
    fault_cr2: 0,
    deadline_tsc: 0,
    kernel_gdtr: DescPtr {
        pad: [0; 3],
        limit: 0,
        base: 0,
    },
    kernel_idtr: DescPtr {
        pad: [0; 3],
        limit: 0,
        base: 0,
    },
    agent_gdtr: DescPtr {
        pad: [0; 3],
        limit: 0,
        base: 0,
    },
    agent_idtr: DescPtr {
        pad: [0; 3],
        limit: 0,
        base: 0,
    },
    gdt: [0; GDT_QWORDS],
});
/// The agent IDT (RO for the agent).
pub static IDT: Shared<Idt> = Shared::new(Idt([0; 512]));
/// NMI counter and IST stacks (RW for the agent).
pub static RW: Shared<TrampRw> = Shared::new(TrampRw {
    nmi_count: 0,
    pad: [0; 511],
    ist1: [0; 4096],
    ist2: [0; 4096],
});
/// Fake TSS page (RO for the agent).
pub static FAKE_TSS: Shared<FakeTss> = Shared::new(FakeTss([0; 4096]));

/// Agent-side context of the collaborative services (lives in the agent's
/// I/O area; `Services::ctx` points at it).
#[repr(C)]
pub struct CollabCtx {
    /// Log buffer (agent VA).
    pub log_buf: u64,
    /// Its capacity.
    pub log_cap: u64,
    /// Bytes used.
    pub log_len: u64,
    /// ns = ns0 + ((tsc - tsc0) * tsc_mult) >> 32.
    pub tsc_mult: u64,
    /// TSC at the start of the call.
    pub tsc0: u64,
    /// ktime (ns) at the start of the call.
    pub ns0: u64,
    /// Bytes of `measurement` that are valid: [`MEASUREMENT_LEN`] for an
    /// image's agent, 0 for a TEST blob (no image).
    pub measurement_len: u64,
    /// The image's measurement: what `admin(OwnMeasurement)` answers (the
    /// one admin operation open to every agent; encrypted agents bind
    /// their sessions to it).
    pub measurement: [u8; MEASUREMENT_LEN],
}

/// Length of an image measurement (SHA-384).
pub const MEASUREMENT_LEN: usize = tetd::image::MEASUREMENT_LEN;

/// Result kinds of the trampolines (bits 32.. of their return value).
pub mod kind {
    /// The agent returned; low 32 bits = its status.
    pub const RETURNED: u64 = 0;
    /// An exception ended the call (collaborative); details in [`super::DATA`].
    pub const FAULT: u64 = 1;
    /// The agent called `abort`; low 32 bits = its code.
    pub const ABORT: u64 = 2;
    /// The watchdog ended the call (an NMI after the deadline).
    pub const TIMEOUT: u64 = 3;
}

core::arch::global_asm!(
    // ---------------- collaborative mode (own pages) ----------------
    ".pushsection .text.tetdg_tramp,\"ax\",@progbits",
    ".balign 4096",
    ".globl tetdg_tramp_start",
    "tetdg_tramp_start:",
    // The 256 exception stubs, 16 bytes apart: stub(v) = start + 16 * v.
    ".set tetdg_vec, 0",
    ".rept 256",
    ".balign 16",
    ".if (tetdg_vec == 8) || (tetdg_vec == 10) || (tetdg_vec == 11) || (tetdg_vec == 12) || (tetdg_vec == 13) || (tetdg_vec == 14) || (tetdg_vec == 17) || (tetdg_vec == 21) || (tetdg_vec == 29) || (tetdg_vec == 30)",
    ".else",
    "    pushq $0",
    ".endif",
    "    pushq $tetdg_vec",
    "    jmp tetdg_exc_common",
    ".set tetdg_vec, tetdg_vec + 1",
    ".endr",
    ".balign 16",
    // Stack: vector, error, rip, cs, rflags, rsp, ss.
    "tetdg_exc_common:",
    "    cmpq $2, (%rsp)",
    "    jne 3f",
    // NMI (IST2). Past the call's deadline: the watchdog ends the call (the
    // frame's RIP is redirected, then IRETQ, which also unblocks NMIs).
    // Otherwise count it and resume the agent; the kernel re-raises it.
    "    push %rax",
    "    push %rdx",
    "    push %rcx",
    "    mov {data}+{deadline}(%rip), %rcx",
    "    test %rcx, %rcx",
    "    jz 12f",
    "    rdtsc",
    "    shl $32, %rdx",
    "    or %rdx, %rax",
    "    cmp %rcx, %rax",
    "    jb 12f",
    "    lea tetdg_collab_timeout(%rip), %rax",
    "    mov %rax, 40(%rsp)", // 3 saved registers + vector + error code
    "    jmp 13f",
    "12:",
    "    lock incq {rw}+{rw_nmi}(%rip)",
    "13:",
    "    pop %rcx",
    "    pop %rdx",
    "    pop %rax",
    "    add $16, %rsp",
    "    iretq",
    "tetdg_collab_timeout:",
    "    mov ${k_timeout}, %eax",
    "    shl $32, %rax",
    "    jmp tetdg_collab_exit",
    "3:",
    "    pop %rcx",
    "    pop %rdx",
    "    pop %rsi",
    "    mov %cr2, %r8",
    "    lea {data}(%rip), %r11",
    "    mov {kcr3}(%r11), %rax",
    "    mov %rax, %cr3",
    // kernel address space: the data page is writable again
    "    mov %rcx, {fvec}(%r11)",
    "    mov %rdx, {ferr}(%r11)",
    "    mov %rsi, {frip}(%r11)",
    "    mov %r8, {fcr2}(%r11)",
    "    mov ${k_fault}, %eax",
    "    shl $32, %rax",
    "    jmp tetdg_collab_exit",
    // u64 tetdg_collab_enter(void): everything else is in DATA.
    ".globl tetdg_collab_enter",
    ".type tetdg_collab_enter,@function",
    "tetdg_collab_enter:",
    "    push %rbx",
    "    push %rbp",
    "    push %r12",
    "    push %r13",
    "    push %r14",
    "    push %r15",
    "    lea {data}(%rip), %r11",
    "    mov %rsp, {krsp}(%r11)",
    "    mov %cr3, %rax",
    "    mov %rax, {kcr3}(%r11)",
    "    sgdt {kgdtr}+6(%r11)",
    "    sidt {kidtr}+6(%r11)",
    "    mov %cr4, %rax",
    "    mov %rax, {kcr4}(%r11)",
    "    and $~0x80, %rax", // CR4.PGE off: flushes all TLB entries incl. global ones
    "    mov %rax, %cr4",
    "    lidt {aidtr}+6(%r11)",
    "    lgdt {agdtr}+6(%r11)",
    "    mov {entry}(%r11), %rbx",
    "    mov {frame}(%r11), %rdi",
    "    mov {acr3}(%r11), %rax",
    "    mov {arsp}(%r11), %rsp",
    "    mov %rax, %cr3",
    // agent address space: no kernel values in registers
    "    xor %eax, %eax",
    "    xor %ecx, %ecx",
    "    xor %edx, %edx",
    "    xor %esi, %esi",
    "    xor %ebp, %ebp",
    "    xor %r8d, %r8d",
    "    xor %r9d, %r9d",
    "    xor %r10d, %r10d",
    "    xor %r11d, %r11d",
    "    xor %r12d, %r12d",
    "    xor %r13d, %r13d",
    "    xor %r14d, %r14d",
    "    xor %r15d, %r15d",
    "    call *%rbx",
    "    mov %eax, %eax",
    // rax = kind << 32 | status; may still be in the agent's address space.
    ".globl tetdg_collab_exit",
    "tetdg_collab_exit:",
    "    lea {data}(%rip), %r11",
    "    mov {kcr3}(%r11), %rcx",
    "    mov %rcx, %cr3",
    "    mov {kcr4}(%r11), %rcx",
    "    mov %rcx, %cr4",
    "    lgdt {kgdtr}+6(%r11)",
    "    lidt {kidtr}+6(%r11)",
    "    mov {krsp}(%r11), %rsp",
    "    xor %r11d, %r11d",
    "    pop %r15",
    "    pop %r14",
    "    pop %r13",
    "    pop %r12",
    "    pop %rbp",
    "    pop %rbx",
    "    ret",
    ".size tetdg_collab_enter, .-tetdg_collab_enter",
    // ---- collaborative services (run in the agent's address space) ----
    // void log(ctx: rdi, msg: rsi, len: rdx)
    ".globl tetdg_cs_log",
    "tetdg_cs_log:",
    "    mov {c_cap}(%rdi), %rcx",
    "    mov {c_len}(%rdi), %r8",
    "    cmp %rcx, %r8",
    "    jae 5f",
    "    sub %r8, %rcx", // room
    "    cmp %rdx, %rcx",
    "    cmova %rdx, %rcx", // n = min(room, len)
    "    mov %rcx, %r9",
    "    mov {c_buf}(%rdi), %rax",
    "    add %r8, %rax",
    "    add %rcx, {c_len}(%rdi)",
    "    mov %rdi, %r10",
    "    mov %rax, %rdi",
    "    rep movsb",
    // newline separator when there is room
    "    mov {c_len}(%r10), %r8",
    "    cmp {c_cap}(%r10), %r8",
    "    jae 5f",
    "    movb $10, (%rdi)",
    "    incq {c_len}(%r10)",
    "5:",
    "    ret",
    // u32 random(ctx: rdi, buf: rsi, len: rdx)
    ".globl tetdg_cs_random",
    "tetdg_cs_random:",
    "    mov %rsi, %rdi",
    "    mov %rdx, %rcx",
    "6:",
    "    test %rcx, %rcx",
    "    jz 9f",
    "    mov $32, %r8d",
    "7:",
    "    rdrand %rax",
    "    jc 8f",
    "    dec %r8d",
    "    jnz 7b",
    "    mov ${e_internal}, %eax",
    "    ret",
    "8:",
    "    cmp $8, %rcx",
    "    jb 4f",
    "    mov %rax, (%rdi)",
    "    add $8, %rdi",
    "    sub $8, %rcx",
    "    jmp 6b",
    "4:",
    "    mov %al, (%rdi)",
    "    inc %rdi",
    "    shr $8, %rax",
    "    dec %rcx",
    "    jnz 4b",
    "9:",
    "    xor %eax, %eax",
    "    ret",
    // u64 time_ns(ctx: rdi)
    ".globl tetdg_cs_time",
    "tetdg_cs_time:",
    "    rdtsc",
    "    shl $32, %rdx",
    "    or %rdx, %rax",
    "    sub {c_tsc0}(%rdi), %rax",
    "    mulq {c_mult}(%rdi)",
    "    shrd $32, %rdx, %rax",
    "    add {c_ns0}(%rdi), %rax",
    "    ret",
    // noreturn abort(ctx: rdi, code: esi)
    ".globl tetdg_cs_abort",
    "tetdg_cs_abort:",
    "    mov %esi, %eax",
    "    mov ${k_abort}, %ecx",
    "    shl $32, %rcx",
    "    or %rcx, %rax",
    "    jmp tetdg_collab_exit",
    // u32 admin(ctx: rdi, op: esi, arg: rdx, out: rcx, out_cap: r8,
    // out_len: r9): OwnMeasurement only (the same answers as the core's
    // admin service: 48 bytes, OutputTooLarge if they do not fit, *out_len
    // = bytes written when out_len is not null). `out` and `out_len` are
    // agent pointers used in the agent's own address space: a bad one
    // faults like any agent access and ends the call.
    ".globl tetdg_cs_admin",
    "tetdg_cs_admin:",
    "    cmp ${op_own}, %esi",
    "    jne 23f",
    "    cmpq ${mlen}, {c_mlen}(%rdi)",
    "    jne 23f",
    "    xor %eax, %eax",
    "    cmp ${mlen}, %r8",
    "    jb 21f",
    "    lea {c_meas}(%rdi), %rsi",
    "    mov %rcx, %rdi",
    "    mov ${mlen}, %ecx",
    "    rep movsb",
    "    mov ${mlen}, %eax",
    "    jmp 22f",
    "21:",
    // out_len = 0, status OutputTooLarge
    "    test %r9, %r9",
    "    jz 20f",
    "    movq $0, (%r9)",
    "20:",
    "    mov ${e_too_large}, %eax",
    "    ret",
    "22:",
    "    test %r9, %r9",
    "    jz 24f",
    "    mov %rax, (%r9)",
    "24:",
    "    xor %eax, %eax",
    "    ret",
    // u32 register_entry(...), other admin operations: not available
    // inside the zone
    ".globl tetdg_cs_register_entry",
    ".globl tetdg_cs_random_unsupported",
    "23:",
    "tetdg_cs_register_entry:",
    "tetdg_cs_random_unsupported:",
    "    mov ${e_unsupported}, %eax",
    "    ret",
    ".balign 4096",
    ".globl tetdg_tramp_end",
    "tetdg_tramp_end:",
    ".popsection",
    data = sym DATA,
    rw = sym RW,
    rw_nmi = const offset_of!(TrampRw, nmi_count),
    deadline = const offset_of!(TrampData, deadline_tsc),
    kcr3 = const offset_of!(TrampData, kernel_cr3),
    kcr4 = const offset_of!(TrampData, kernel_cr4),
    krsp = const offset_of!(TrampData, kernel_rsp),
    acr3 = const offset_of!(TrampData, agent_cr3),
    arsp = const offset_of!(TrampData, agent_rsp),
    entry = const offset_of!(TrampData, entry),
    frame = const offset_of!(TrampData, frame),
    fvec = const offset_of!(TrampData, fault_vector),
    ferr = const offset_of!(TrampData, fault_error),
    frip = const offset_of!(TrampData, fault_rip),
    fcr2 = const offset_of!(TrampData, fault_cr2),
    kgdtr = const offset_of!(TrampData, kernel_gdtr),
    kidtr = const offset_of!(TrampData, kernel_idtr),
    agdtr = const offset_of!(TrampData, agent_gdtr),
    aidtr = const offset_of!(TrampData, agent_idtr),
    c_buf = const offset_of!(CollabCtx, log_buf),
    c_cap = const offset_of!(CollabCtx, log_cap),
    c_len = const offset_of!(CollabCtx, log_len),
    c_mult = const offset_of!(CollabCtx, tsc_mult),
    c_tsc0 = const offset_of!(CollabCtx, tsc0),
    c_ns0 = const offset_of!(CollabCtx, ns0),
    c_mlen = const offset_of!(CollabCtx, measurement_len),
    c_meas = const offset_of!(CollabCtx, measurement),
    mlen = const MEASUREMENT_LEN,
    op_own = const tetd::abi::AdminOp::OwnMeasurement as u32,
    e_too_large = const tetd::abi::Error::OutputTooLarge as u32,
    k_fault = const kind::FAULT,
    k_abort = const kind::ABORT,
    k_timeout = const kind::TIMEOUT,
    e_internal = const tetd::abi::Error::Internal as u32,
    e_unsupported = const tetd::abi::Error::Unsupported as u32,
    options(att_syntax)
);

extern "C" {
    /// Collaborative call (state in [`DATA`]): returns `kind << 32 | status`.
    pub fn tetdg_collab_enter() -> u64;
    /// First byte of the trampoline pages (exception stub 0).
    pub static tetdg_tramp_start: u8;
    /// End of the trampoline pages.
    pub static tetdg_tramp_end: u8;
    /// Collaborative services.
    pub fn tetdg_cs_log(ctx: *mut core::ffi::c_void, msg: *const u8, len: usize);
    /// RDRAND-based random.
    pub fn tetdg_cs_random(ctx: *mut core::ffi::c_void, buf: *mut u8, len: usize) -> u32;
    /// `random` on a CPU without RDRAND: answers `Unsupported`.
    pub fn tetdg_cs_random_unsupported(
        ctx: *mut core::ffi::c_void,
        buf: *mut u8,
        len: usize,
    ) -> u32;
    /// TSC-based time.
    pub fn tetdg_cs_time(ctx: *mut core::ffi::c_void) -> u64;
    /// Abort through the exit path.
    pub fn tetdg_cs_abort(ctx: *mut core::ffi::c_void, code: u32) -> !;
    /// `register_entry` inside a zone: answers `Unsupported`.
    pub fn tetdg_cs_register_entry(
        ctx: *mut core::ffi::c_void,
        id: u32,
        name: *const u8,
        name_len: usize,
        entry: tetd::abi::AgentEntry,
    ) -> u32;
    /// `admin` inside a zone: `OwnMeasurement` from the context, anything
    /// else `Unsupported`.
    pub fn tetdg_cs_admin(
        ctx: *mut core::ffi::c_void,
        op: u32,
        arg: u64,
        out: *mut u8,
        out_cap: usize,
        out_len: *mut usize,
    ) -> u32;
}

/// Address of exception stub `v`.
pub fn stub_addr(v: usize) -> u64 {
    let base = core::ptr::addr_of!(tetdg_tramp_start) as u64;
    base + 16 * v as u64
}

/// The trampoline pages `[start, end)`.
pub fn tramp_range() -> (u64, u64) {
    (
        core::ptr::addr_of!(tetdg_tramp_start) as u64,
        core::ptr::addr_of!(tetdg_tramp_end) as u64,
    )
}
