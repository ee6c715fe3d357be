//! The host simulator platform (feature `sim`): runs agents from images in
//! the current process with exactly the loader core the guest module uses,
//! like SGX's simulation mode.
//!
//! * Zones are `mmap`ed anonymous memory with real page protections set by
//!   `mprotect` (code RX, data R or RW, never W+X; guard pages and gaps
//!   `PROT_NONE`).
//! * Agents run on the calling thread, on their zone's stack, through
//!   [`crate::arch::enter`].
//! * A fault inside an agent call (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP)
//!   ends the call with `Error::Fault` (or `Error::StackOverflow` when it
//!   hit the guard page below the stack) and the process carries on; a
//!   per-thread POSIX timer is the watchdog (`Error::Timeout`). See
//!   [`signals`] for how.
//! * `random` is `getrandom(2)`, `time_ns` is `CLOCK_MONOTONIC`, `log`
//!   goes to stderr and/or an in-memory capture.
//!
//! What the simulator does **not** do: it is not a security boundary. The
//! agent is native code in the runner's address space; it could call the
//! kernel directly or write the runner's memory. It reproduces the layout,
//! permissions, ABI and failure handling of the guest, so agents can be
//! developed and tested without a TD.

mod signals;

use std::sync::Mutex;

use tetd::abi::Error;

use crate::layout::Protection;
use crate::platform::{Platform, RunOutcome, RunRequest, ZoneMem, ZoneRequest};

/// Where agent log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// `[agent N] message` on stderr.
    Stderr,
    /// Kept in memory only ([`SimPlatform::take_logs`]).
    Capture,
    /// Both.
    Both,
}

/// The simulator platform.
#[derive(Debug)]
pub struct SimPlatform {
    log_target: LogTarget,
    logs: Mutex<Vec<(u32, String)>>,
    next_base: Mutex<Option<u64>>,
}

impl Default for SimPlatform {
    fn default() -> Self {
        Self::new(LogTarget::Stderr)
    }
}

impl SimPlatform {
    /// A simulator platform logging to `log_target`.
    pub fn new(log_target: LogTarget) -> Self {
        SimPlatform {
            log_target,
            logs: Mutex::new(Vec::new()),
            next_base: Mutex::new(None),
        }
    }

    /// Place the next zone at exactly `base` (page aligned); loading fails
    /// with `Error::NoMemory` if that range is not free. For tests that load
    /// an image at chosen addresses.
    pub fn set_next_base(&self, base: u64) {
        *self.next_base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
    }

    /// The captured log lines so far (agent id, text), emptying the capture.
    pub fn take_logs(&self) -> Vec<(u32, String)> {
        std::mem::take(&mut *self.logs.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn prot_bits(p: Protection) -> libc::c_int {
    match p {
        Protection::None => libc::PROT_NONE,
        Protection::Read => libc::PROT_READ,
        Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        Protection::ReadExec => libc::PROT_READ | libc::PROT_EXEC,
    }
}

// SAFETY: zones are fresh private anonymous mappings (zeroed, owned by the
// zone until munmap); the agent runs in this address space, so `base ==
// view`; zone_protect applies exactly the requested protection (never
// W+X, which `Protection` cannot express) to the agent's (= the core's)
// view — the core writes only regions that stay RW after loading (frame,
// input, output), as the Platform contract allows for `view == base`
// platforms; run returns after the agent stopped, and Fault/Timeout come
// from signals::run_guarded, which ends the agent through arch::abort.
unsafe impl Platform for SimPlatform {
    fn zone_alloc(&self, req: &ZoneRequest<'_>) -> Result<ZoneMem, Error> {
        let len = usize::try_from(req.layout.total()).map_err(|_| Error::TooLarge)?;
        let hint = self
            .next_base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        if hint.is_some() {
            flags |= libc::MAP_FIXED_NOREPLACE;
        }
        let addr = hint.unwrap_or(0) as usize as *mut libc::c_void;
        // SAFETY: a new anonymous mapping; with MAP_FIXED_NOREPLACE the
        // kernel refuses to replace existing mappings.
        let p = unsafe { libc::mmap(addr, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::NoMemory);
        }
        if let Some(h) = hint {
            if p as u64 != h {
                // Old kernels treat MAP_FIXED_NOREPLACE as a hint.
                // SAFETY: the mapping just made, not used.
                unsafe { libc::munmap(p, len) };
                return Err(Error::NoMemory);
            }
        }
        Ok(ZoneMem {
            view: p as *mut u8,
            base: p as u64,
            len,
            token: 0,
        })
    }

    fn zone_protect(
        &self,
        zone: &ZoneMem,
        off: u64,
        len: u64,
        prot: Protection,
    ) -> Result<(), Error> {
        let end = off.checked_add(len).ok_or(Error::OutOfRange)?;
        if end > zone.len as u64 || off % tetd::abi::PAGE_SIZE != 0 {
            return Err(Error::OutOfRange);
        }
        // SAFETY: a page-aligned range inside the zone mapping we own.
        let r = unsafe {
            libc::mprotect(
                zone.view.add(off as usize) as *mut libc::c_void,
                len as usize,
                prot_bits(prot),
            )
        };
        if r != 0 {
            return Err(Error::Internal);
        }
        Ok(())
    }

    unsafe fn zone_free(&self, zone: &ZoneMem) {
        // SAFETY: the mapping made by zone_alloc, not used after (contract).
        unsafe { libc::munmap(zone.view as *mut libc::c_void, zone.len) };
    }

    fn run(&self, req: &RunRequest<'_>) -> RunOutcome {
        signals::run_guarded(req)
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: writes at most buf.len() - done bytes into buf.
            let r = unsafe {
                libc::getrandom(
                    buf[done..].as_mut_ptr() as *mut libc::c_void,
                    buf.len() - done,
                    0,
                )
            };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Internal);
            }
            done += r as usize;
        }
        Ok(())
    }

    fn time_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn log(&self, agent_id: u32, msg: &[u8]) {
        let text = String::from_utf8_lossy(msg).into_owned();
        if matches!(self.log_target, LogTarget::Stderr | LogTarget::Both) {
            eprintln!("[agent {agent_id}] {}", text.trim_end_matches('\n'));
        }
        if matches!(self.log_target, LogTarget::Capture | LogTarget::Both) {
            self.logs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((agent_id, text));
        }
    }
}
