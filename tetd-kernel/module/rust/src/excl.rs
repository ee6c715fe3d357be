//! Exclusive mode of the TEST path: the agent runs as kernel code (the
//! zone mapped RX/RW in the kernel's own page tables) on its zone stack
//! through the loader core's gate (`tetd_kernel::arch`), with preemption
//! disabled and the FPU state saved; services are Rust functions of the
//! module. Also the agent log printer shared by both modes.
use core::ffi::c_void;
use core::fmt::Write;

use tetd::abi::{Error, Services, ABI_VERSION};

use tetd_kernel::arch::{self, EnterResult, JmpBuf};

use crate::kapi::{self, Level};
use crate::state;
use crate::tramp::{kind, Shared};

/// Jump buffer of the exclusive TEST call in progress (module mutex held).
static TEST_JB: Shared<JmpBuf> = Shared::new(JmpBuf::new());

/// Log line buffer (no allocation).
pub struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    /// Empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; 200],
            len: 0,
        }
    }
    /// Text so far.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Print agent log text (lines separated by '\n'), lossy for non-UTF-8.
pub fn print_agent_log(agent: u32, text: &[u8]) {
    for line in text.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let mut l = Line::new();
        let _ = write!(l, "agent {agent}: ");
        for chunk in line.utf8_chunks() {
            let _ = l.write_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                let _ = l.write_str("\u{fffd}");
            }
        }
        kapi::log(Level::Info, l.as_str());
    }
}

unsafe extern "C" fn svc_log(_ctx: *mut c_void, msg: *const u8, len: usize) {
    let len = len.min(1024);
    // SAFETY: the agent passes a buffer of `len` bytes in its zone (exclusive
    // agents are trusted kernel code; see docs/kernel-module.md).
    let text = unsafe { core::slice::from_raw_parts(msg, len) };
    print_agent_log(state::stats().current_agent, text);
}

unsafe extern "C" fn svc_random(_ctx: *mut c_void, buf: *mut u8, len: usize) -> u32 {
    if len > (1 << 20) {
        return Error::InvalidInput as u32;
    }
    // SAFETY: agent buffer of `len` bytes (see svc_log).
    kapi::random(unsafe { core::slice::from_raw_parts_mut(buf, len) });
    0
}

unsafe extern "C" fn svc_time(_ctx: *mut c_void) -> u64 {
    kapi::time_ns()
}

unsafe extern "C" fn svc_abort(_ctx: *mut c_void, code: u32) -> ! {
    // SAFETY: only reachable from inside run() below (the services table
    // exists only for the duration of an exclusive TEST call), so TEST_JB
    // holds that call's saved state.
    unsafe { arch::abort(TEST_JB.get(), code) }
}

unsafe extern "C" fn svc_register(
    _ctx: *mut c_void,
    _id: u32,
    _name: *const u8,
    _len: usize,
    _entry: tetd::abi::AgentEntry,
) -> u32 {
    Error::Unsupported as u32
}

unsafe extern "C" fn svc_admin(
    _ctx: *mut c_void,
    _op: u32,
    _arg: u64,
    _out: *mut u8,
    _cap: usize,
    _len: *mut usize,
) -> u32 {
    Error::Unsupported as u32
}

/// The services table of an exclusive TEST call.
pub fn services() -> Services {
    Services {
        abi_version: ABI_VERSION,
        size: core::mem::size_of::<Services>() as u32,
        ctx: core::ptr::null_mut(),
        log: svc_log,
        random: svc_random,
        time_ns: svc_time,
        abort: svc_abort,
        register_entry: svc_register,
        admin: svc_admin,
    }
}

/// Run `entry(frame)` on `stack_top` as kernel code. Returns the
/// trampoline's `kind << 32 | code`.
///
/// # Safety
/// `entry` is executable (RX) in the kernel mapping, `frame` a valid call
/// frame, `stack_top` the 16-byte aligned top of a writable stack; the FPU
/// is claimed (kernel_fpu_begin) and preemption is disabled by the caller.
pub unsafe fn run(entry: u64, frame: u64, stack_top: u64) -> u64 {
    // SAFETY: forwarded contract; TEST_JB is only used by this call (module
    // mutex held) and by svc_abort during it.
    match unsafe { arch::enter(entry, frame, stack_top, TEST_JB.get()) } {
        EnterResult::Returned(c) => (kind::RETURNED << 32) | c as u64,
        EnterResult::Aborted(c) => (kind::ABORT << 32) | c as u64,
    }
}
