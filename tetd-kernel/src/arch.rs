//! The x86-64 call gate: run an agent entry on the agent's own stack, and
//! abort back out of it.
//!
//! Two assembly routines, usable in any context (host simulator thread,
//! kernel exclusive mode, or inside a collaborative zone switch):
//!
//! * [`enter`]`(entry, frame, stack_top, jmpbuf)` saves the callee-saved
//!   registers, the MXCSR and x87 control words and the stack pointer into
//!   `jmpbuf` (the registers themselves on the caller's stack), switches to
//!   `stack_top`, clears the other general-purpose registers (nothing of the
//!   runtime leaks into the agent), and calls `entry(frame)`. When the entry
//!   returns, the saved state is restored and [`EnterResult::Returned`] is
//!   reported.
//! * [`abort`]`(jmpbuf, code)` can be called (or jumped to, e.g. by a signal
//!   handler rewriting a context) from anywhere inside the agent call, on any
//!   stack: it reloads the saved stack pointer first, restores everything and
//!   makes [`enter`] return [`EnterResult::Aborted`]`(code)`. It never touches
//!   the stack it was entered on, so it works after a stack overflow too.
//!
//! The frames between `enter` and `abort` are discarded without running
//! destructors, so code that can be aborted (agents and the core's services)
//! must not own anything that needs dropping.
//!
//! The jump buffer pointer is kept in `rbx` across the agent call; the C ABI
//! obliges the agent to preserve it. An agent that breaks the ABI on purpose
//! is only contained where the platform isolates it (collaborative zone);
//! in the simulator and in exclusive mode an agent is trusted native code
//! (it was verified before loading).

use core::arch::global_asm;

/// Saved state of one [`enter`]: the runtime stack pointer. The callee-saved
/// registers live on the runtime stack below it.
#[repr(C)]
#[derive(Debug)]
pub struct JmpBuf {
    rsp: u64,
    reserved: [u64; 3],
}

impl JmpBuf {
    /// An empty buffer, filled by [`enter`].
    pub const fn new() -> Self {
        JmpBuf {
            rsp: 0,
            reserved: [0; 3],
        }
    }
}

impl JmpBuf {
    /// The runtime stack pointer [`enter`] saved; 0 before `enter` ran.
    /// Lets a fault handler tell whether an abort through this buffer is
    /// possible yet.
    pub fn saved_sp(&self) -> u64 {
        // SAFETY: reading a plain field; volatile because the assembly
        // routine writes it behind the compiler's back.
        unsafe { core::ptr::read_volatile(&self.rsp) }
    }
}

impl Default for JmpBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// How an [`enter`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterResult {
    /// The entry returned this status (0 = success).
    Returned(u32),
    /// [`abort`] was called with this code.
    Aborted(u32),
}

const ABORTED_BIT: u64 = 1 << 32;

// Layout of the runtime stack while an agent runs (top = higher addresses):
//
//   return address into Rust      <- rsp at entry of tetd_arch_enter
//   rbp, rbx, r12, r13, r14, r15  (pushed)
//   mxcsr (4 bytes), x87 cw (2)   <- jmpbuf.rsp
//
// `endbr64` marks both routines as indirect-branch targets (a no-op without
// CET/IBT; required by kernels built with IBT).
global_asm!(
    ".pushsection .text,\"ax\",@progbits",
    ".p2align 4",
    ".globl tetd_arch_enter",
    ".type tetd_arch_enter,@function",
    "tetd_arch_enter:",
    "endbr64",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "stmxcsr dword ptr [rsp]",
    "fnstcw word ptr [rsp + 4]",
    "mov qword ptr [rcx], rsp",
    "mov rbx, rcx",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rsp, rdx",
    "xor ebp, ebp",
    "xor ecx, ecx",
    "xor edx, edx",
    "xor esi, esi",
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "xor r12d, r12d",
    "xor r13d, r13d",
    "xor r14d, r14d",
    "xor r15d, r15d",
    "call rax",
    // Normal return: eax = status (upper half of rax is undefined for a u32
    // return, so zero-extend).
    "mov rsp, qword ptr [rbx]",
    "mov eax, eax",
    "jmp 2f",
    ".size tetd_arch_enter, . - tetd_arch_enter",
    "",
    ".p2align 4",
    ".globl tetd_arch_abort",
    ".type tetd_arch_abort,@function",
    "tetd_arch_abort:",
    "endbr64",
    "mov rsp, qword ptr [rdi]",
    "mov eax, esi",
    "bts rax, 32",
    "2:",
    "cld",
    "ldmxcsr dword ptr [rsp]",
    "fldcw word ptr [rsp + 4]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size tetd_arch_abort, . - tetd_arch_abort",
    ".popsection",
);

extern "C" {
    fn tetd_arch_enter(entry: u64, frame: u64, stack_top: u64, jmpbuf: *mut JmpBuf) -> u64;
    fn tetd_arch_abort(jmpbuf: *mut JmpBuf, code: u32) -> !;
}

/// Call `entry(frame)` on the stack ending at `stack_top`.
///
/// # Safety
/// * `entry` is the address of code following the agent ABI
///   ([`tetd::abi::AgentEntry`]), executable in the current address space;
/// * `stack_top` is 16-byte aligned and the top of writable memory large
///   enough for the agent;
/// * `frame` is what the entry expects (a valid `CallFrame` address);
/// * `jmpbuf` is valid for writes and stays valid until this returns; only
///   [`abort`] with this `jmpbuf`, called during this `enter`, may use it.
pub unsafe fn enter(entry: u64, frame: u64, stack_top: u64, jmpbuf: *mut JmpBuf) -> EnterResult {
    // SAFETY: forwarded contract; the routine saves and restores every
    // callee-saved register and the control words, as the C ABI requires.
    let r = unsafe { tetd_arch_enter(entry, frame, stack_top, jmpbuf) };
    if r & ABORTED_BIT != 0 {
        EnterResult::Aborted(r as u32)
    } else {
        EnterResult::Returned(r as u32)
    }
}

/// End the [`enter`] that filled `jmpbuf`: it returns
/// [`EnterResult::Aborted`]`(code)`.
///
/// # Safety
/// An [`enter`] with this `jmpbuf` must be in progress on this CPU/thread,
/// and the frames being discarded must not need dropping.
pub unsafe fn abort(jmpbuf: *mut JmpBuf, code: u32) -> ! {
    // SAFETY: forwarded contract.
    unsafe { tetd_arch_abort(jmpbuf, code) }
}

/// Address of the abort routine, for a fault handler that resumes an
/// interrupted agent there (with `rdi = jmpbuf`, `rsi = code`; the stack
/// pointer does not matter).
pub fn abort_address() -> u64 {
    tetd_arch_abort as *const () as usize as u64
}
