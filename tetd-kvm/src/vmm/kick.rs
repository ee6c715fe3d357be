//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! The kicker sets a flag and sends [`kick_signal`] to the vCPU thread. The
//! signal handler sets `kvm_run.immediate_exit` of the vCPU running on that
//! thread (found through a thread-local pointer), so the kick is not lost
//! even when the signal lands between the vCPU thread's flag check and its
//! `KVM_RUN` ioctl: KVM then returns `EINTR` at once (after completing any
//! pending port/MMIO emulation, as the KVM API documents), and the vCPU
//! thread looks at its flags.

use std::cell::Cell;
use std::sync::Once;

use super::error::{Result, VmmError};

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU this thread runs, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used for kicks (SIGRTMIN + 3).
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only async-signal-safe work: read a const-initialised thread-local and
    // do one volatile byte store.
    let ptr = IMMEDIATE_EXIT.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: the pointer was registered by this very thread with
        // `register_immediate_exit` and points into the vCPU's `kvm_run`
        // mapping, which outlives the registration (cleared by
        // `ImmediateExitGuard::drop` before the vCPU is dropped).
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; we fill in a handler with the SA_SIGINFO signature.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_kick as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `act.sa_mask` is a valid sigset_t to initialise, and
        // `act` a fully initialised sigaction for a real-time signal nobody
        // else in this process uses.
        let rc = unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(kick_signal(), &act, std::ptr::null_mut())
        };
        if rc != 0 {
            result = Err(VmmError::Os {
                op: "sigaction(kick signal)",
                source: std::io::Error::last_os_error(),
            });
        }
    });
    result
}

/// Registers `ptr` (a vCPU's `kvm_run.immediate_exit`) for the calling thread
/// until the guard is dropped.
pub struct ImmediateExitGuard(());

impl ImmediateExitGuard {
    pub fn register(ptr: *mut u8) -> ImmediateExitGuard {
        IMMEDIATE_EXIT.with(|p| p.set(ptr));
        ImmediateExitGuard(())
    }
}

impl Drop for ImmediateExitGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Sends the kick signal to a thread.
pub fn signal_thread(thread: libc::pthread_t) -> Result<()> {
    // SAFETY: callers only pass ids of live vCPU threads (the id is
    // unregistered under a lock before the thread exits).
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        return Err(VmmError::Os {
            op: "pthread_kill(kick)",
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(())
}

/// The calling thread's id.
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}
