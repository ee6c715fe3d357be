//! Fault capture and the watchdog for agent calls in the simulator.
//!
//! How a misbehaving agent is stopped without taking the runner down:
//!
//! 1. Once per process, handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE,
//!    SIGTRAP and the watchdog signal ([`watchdog_signal`], `SIGRTMIN+2`)
//!    are installed with `SA_SIGINFO | SA_ONSTACK` (the previous handlers
//!    are kept and chained to for faults that are not ours).
//! 2. Once per thread that runs agents: an alternate signal stack (64 KiB +
//!    guard page; a stack overflow in the agent leaves no stack to run a
//!    handler on) and a POSIX timer that signals exactly this thread
//!    (`SIGEV_THREAD_ID`).
//! 3. Around each call, a thread-local points to the call's [`Guard`] (jump
//!    buffer, zone range, deadline) and the timer is armed.
//! 4. The handler, if the thread is inside a call: for a fault raised by the
//!    CPU (`si_code > 0`) it records vector, error code, address and RIP;
//!    for the watchdog (only once the deadline has passed, and only while
//!    the agent's own code runs — inside a runtime service it instead posts
//!    a deferred abort request that the service honours before returning to
//!    the agent) it records the timeout. Then it rewrites the
//!    interrupted context so that returning from the handler resumes in
//!    [`arch::abort`](crate::arch::abort) with the call's jump buffer: the
//!    kernel's `sigreturn` restores the signal mask and lands there, and
//!    `arch::enter` returns to the runner as if the agent had aborted.
//!
//! The handler only reads a thread-local `Cell`, atomics and the clock, and
//! writes the context: async-signal-safe.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

use tetd::abi::Error;

use crate::arch::{self, EnterResult, JmpBuf};
use crate::platform::{FaultInfo, RunOutcome, RunRequest};

/// Size of the alternate signal stack.
const ALT_STACK_SIZE: usize = 64 * 1024;
/// Page size of the host.
const PAGE: usize = 4096;
/// How often the watchdog re-fires while the agent is inside a service.
const WATCHDOG_RETRY_NS: i64 = 10_000_000;

const FAULT_SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
];

static WATCHDOG_SIG: AtomicI32 = AtomicI32::new(0);

/// The signal the watchdog timer sends (`SIGRTMIN + 2`).
pub fn watchdog_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// One call in progress on this thread.
struct Guard {
    jmpbuf: *mut JmpBuf,
    abort_request: *const std::sync::atomic::AtomicU32,
    zone_lo: u64,
    zone_hi: u64,
    /// CLOCK_MONOTONIC deadline in ns (0 = none).
    deadline_ns: u64,
    faulted: AtomicBool,
    timed_out: AtomicBool,
    fault: UnsafeCell<FaultInfo>,
}

/// Previous handlers, for chaining. Written once (inside `INSTALL`) before
/// our handler is installed for that signal; read-only afterwards.
struct OldActions(UnsafeCell<[Option<libc::sigaction>; 6]>);
// SAFETY: written only inside INSTALL.call_once before any handler that
// reads it is installed; read-only afterwards.
unsafe impl Sync for OldActions {}
static OLD: OldActions = OldActions(UnsafeCell::new([None; 6]));
static INSTALL: Once = Once::new();

thread_local! {
    // No destructor and a const initializer: safe to read in a signal
    // handler (a plain TLS access).
    static CURRENT: Cell<*const Guard> = const { Cell::new(ptr::null()) };
    static THREAD: RefCell<Option<ThreadRes>> = const { RefCell::new(None) };
}

/// Per-thread resources: alternate signal stack and watchdog timer.
struct ThreadRes {
    alt: *mut libc::c_void,
    alt_len: usize,
    timer: libc::timer_t,
}

impl Drop for ThreadRes {
    fn drop(&mut self) {
        // SAFETY: the timer was created by this thread and is not used
        // after; the alternate stack is disabled first if it is still the
        // current one, then unmapped (it is ours: `alt` from mmap).
        unsafe {
            libc::timer_delete(self.timer);
            if !self.alt.is_null() {
                let mut cur: libc::stack_t = std::mem::zeroed();
                if libc::sigaltstack(ptr::null(), &mut cur) == 0
                    && cur.ss_sp == (self.alt as *mut u8).add(PAGE) as *mut libc::c_void
                {
                    let off = libc::stack_t {
                        ss_sp: ptr::null_mut(),
                        ss_flags: libc::SS_DISABLE,
                        ss_size: 0,
                    };
                    libc::sigaltstack(&off, ptr::null_mut());
                }
                libc::munmap(self.alt, self.alt_len);
            }
        }
    }
}

fn os_err() -> Error {
    Error::Internal
}

fn install_handlers() {
    INSTALL.call_once(|| {
        let wd = watchdog_signal();
        WATCHDOG_SIG.store(wd, Ordering::SeqCst);
        let sigs = [
            FAULT_SIGNALS[0],
            FAULT_SIGNALS[1],
            FAULT_SIGNALS[2],
            FAULT_SIGNALS[3],
            FAULT_SIGNALS[4],
            wd,
        ];
        for (i, &sig) in sigs.iter().enumerate() {
            // SAFETY: plain sigaction calls with valid structs; OLD is only
            // written here, before our handler for `sig` exists.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, ptr::null(), &mut old) == 0 {
                    (*OLD.0.get())[i] = Some(old);
                }
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, ptr::null_mut());
            }
        }
    });
}

fn thread_setup() -> Result<libc::timer_t, Error> {
    THREAD.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(r) = t.as_ref() {
            return Ok(r.timer);
        }
        // Alternate stack, unless the thread already has a large one.
        let mut alt = ptr::null_mut();
        let mut alt_len = 0;
        // SAFETY: querying and setting this thread's alternate stack with
        // valid structs; the new stack is a fresh mapping owned by
        // ThreadRes (lowest page PROT_NONE as a guard).
        unsafe {
            let mut cur: libc::stack_t = std::mem::zeroed();
            let have = libc::sigaltstack(ptr::null(), &mut cur) == 0
                && cur.ss_flags & libc::SS_DISABLE == 0
                && cur.ss_size >= ALT_STACK_SIZE;
            if !have {
                alt_len = ALT_STACK_SIZE + PAGE;
                alt = libc::mmap(
                    ptr::null_mut(),
                    alt_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if alt == libc::MAP_FAILED {
                    return Err(Error::NoMemory);
                }
                libc::mprotect(alt, PAGE, libc::PROT_NONE);
                let st = libc::stack_t {
                    ss_sp: (alt as *mut u8).add(PAGE) as *mut libc::c_void,
                    ss_flags: 0,
                    ss_size: ALT_STACK_SIZE,
                };
                if libc::sigaltstack(&st, ptr::null_mut()) != 0 {
                    libc::munmap(alt, alt_len);
                    return Err(os_err());
                }
            }
        }
        // Watchdog timer signalling this thread only.
        let mut timer: libc::timer_t = ptr::null_mut();
        // SAFETY: sigevent is plain data (zeroed is valid); timer_create
        // writes the new timer id.
        let r = unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = watchdog_signal();
            sev.sigev_notify_thread_id = libc::gettid();
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer)
        };
        if r != 0 {
            // Drop what was set up so far.
            drop(ThreadRes {
                alt,
                alt_len,
                timer: ptr::null_mut(),
            });
            return Err(os_err());
        }
        *t = Some(ThreadRes {
            alt,
            alt_len,
            timer,
        });
        Ok(timer)
    })
}

fn set_timer(timer: libc::timer_t, first_ns: u64, interval_ns: i64) {
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_value: ts(first_ns),
        it_interval: ts(interval_ns as u64),
    };
    // SAFETY: a timer of this thread; valid itimerspec.
    unsafe { libc::timer_settime(timer, 0, &spec, ptr::null_mut()) };
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Run `req` on this thread with fault capture and the watchdog.
pub(super) fn run_guarded(req: &RunRequest<'_>) -> RunOutcome {
    install_handlers();
    let timer = match thread_setup() {
        Ok(t) => t,
        Err(e) => return RunOutcome::Refused(e),
    };
    let deadline_ns = if req.timeout_ns == 0 {
        0
    } else {
        now_ns().saturating_add(req.timeout_ns)
    };
    let guard = Guard {
        jmpbuf: req.jmpbuf,
        abort_request: req.abort_request,
        zone_lo: req.zone.base,
        zone_hi: req.zone.base + req.zone.len as u64,
        deadline_ns,
        faulted: AtomicBool::new(false),
        timed_out: AtomicBool::new(false),
        fault: UnsafeCell::new(FaultInfo::default()),
    };
    CURRENT.with(|c| c.set(&guard));
    compiler_fence(Ordering::SeqCst);
    if req.timeout_ns != 0 {
        set_timer(timer, req.timeout_ns.max(1), WATCHDOG_RETRY_NS);
    }
    // SAFETY: the core laid out and protected the zone in this address
    // space (SimPlatform: base == view); faults and the watchdog end the
    // agent through arch::abort on req.jmpbuf (see handler).
    let r: EnterResult = unsafe { req.enter() };
    if req.timeout_ns != 0 {
        set_timer(timer, 0, 0);
    }
    compiler_fence(Ordering::SeqCst);
    CURRENT.with(|c| c.set(ptr::null()));
    if guard.timed_out.load(Ordering::SeqCst) {
        RunOutcome::Timeout
    } else if guard.faulted.load(Ordering::SeqCst) {
        // SAFETY: written by the handler before it redirected to abort; the
        // handler cannot run for this guard any more (CURRENT is cleared).
        RunOutcome::Fault(unsafe { *guard.fault.get() })
    } else {
        RunOutcome::Finished(r)
    }
}

/// Make the interrupted context resume in `arch::abort(jmpbuf, code)`.
fn redirect(uc: *mut libc::ucontext_t, jmpbuf: *mut JmpBuf, code: u32) {
    // SAFETY: uc is the context the kernel passed to this handler; gregs is
    // plain data the kernel restores on sigreturn.
    unsafe {
        let g = &mut (*uc).uc_mcontext.gregs;
        g[libc::REG_RIP as usize] = arch::abort_address() as i64;
        g[libc::REG_RDI as usize] = jmpbuf as i64;
        g[libc::REG_RSI as usize] = code as i64;
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let g = CURRENT.with(|c| c.get());
    let uc = ctx as *mut libc::ucontext_t;
    if g.is_null() {
        return chain(sig, info, ctx);
    }
    // SAFETY: CURRENT points to the Guard on run_guarded's frame, which
    // outlives the call (the pointer is cleared before it returns).
    let g = unsafe { &*g };
    // SAFETY: see redirect.
    let rip = unsafe { (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as u64 };
    // SAFETY: the jump buffer belongs to the guarded call; a zero stack
    // pointer means enter() has not saved the runtime state yet.
    if unsafe { (*g.jmpbuf).saved_sp() } == 0 {
        return chain(sig, info, ctx);
    }
    if sig == WATCHDOG_SIG.load(Ordering::Relaxed) {
        if g.deadline_ns == 0 || now_ns() < g.deadline_ns {
            return; // stale or early tick
        }
        g.timed_out.store(true, Ordering::SeqCst);
        if rip < g.zone_lo || rip >= g.zone_hi {
            // Inside a runtime service: not a safe place to cut. The
            // service aborts the call itself when it is done (deferred
            // abort request); later ticks come back here if it has not.
            // SAFETY: points into the CallCtx of the guarded call.
            unsafe { (*g.abort_request).store(Error::Timeout.code(), Ordering::SeqCst) };
            return;
        }
        redirect(uc, g.jmpbuf, Error::Timeout.code());
        return;
    }
    // SAFETY: info is the siginfo the kernel passed.
    let code = unsafe { (*info).si_code };
    if code <= 0 {
        // Sent by a process (kill, tgkill, sigqueue), not raised by the CPU.
        return chain(sig, info, ctx);
    }
    let addr = if sig == libc::SIGSEGV || sig == libc::SIGBUS {
        // SAFETY: for these signals si_addr is the faulting address.
        unsafe { (*info).si_addr() as u64 }
    } else {
        0
    };
    // SAFETY: see redirect; the guard's fault cell is only read after the
    // call ended.
    unsafe {
        let gr = &(*uc).uc_mcontext.gregs;
        *g.fault.get() = FaultInfo {
            vector: gr[libc::REG_TRAPNO as usize] as u32,
            error_code: gr[libc::REG_ERR as usize] as u32,
            addr,
            rip,
        };
    }
    g.faulted.store(true, Ordering::SeqCst);
    redirect(uc, g.jmpbuf, Error::Fault.code());
}

/// Hand a signal that is not an agent's to the handler installed before
/// ours (or the default action).
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if sig == WATCHDOG_SIG.load(Ordering::Relaxed) {
        return; // a late tick after the call ended
    }
    let idx = FAULT_SIGNALS.iter().position(|&s| s == sig);
    // SAFETY: OLD is read-only after installation.
    let old = idx.and_then(|i| unsafe { (*OLD.0.get())[i] });
    match old {
        Some(o) if o.sa_sigaction != libc::SIG_DFL && o.sa_sigaction != libc::SIG_IGN => {
            if o.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with
                // SA_SIGINFO, so it has this signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(o.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a plain handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(o.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Default action: restore it and re-raise; the signal is blocked
            // while this handler runs and is delivered (terminating the
            // process as usual) when it returns.
            // SAFETY: valid sigaction struct; raise is async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, ptr::null_mut());
                libc::raise(sig);
            }
        }
    }
}
