//! What the core needs from its environment: zone memory, a way to run an
//! agent entry, and a few services. Implemented by the host simulator
//! (`tetd_kernel::sim`, feature `sim`) and by the Linux module (`module/`).

use core::sync::atomic::AtomicU32;

use tetd::abi::{Error, Mode};
use tetd::image::Image;

use crate::arch::{EnterResult, JmpBuf};
use crate::layout::{Protection, ZoneLayout};

/// Memory the platform allocated for one zone.
///
/// A plain descriptor (`Copy`); the registry owns the zone it describes and
/// returns it exactly once through [`Platform::zone_free`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneMem {
    /// Where the core reads and writes the zone (the runtime's mapping).
    /// Valid for `len` bytes, always writable by the core, until freed.
    pub view: *mut u8,
    /// The address the agent sees the zone at: the relocation base and the
    /// base of every pointer in the call frame. Page aligned. Equal to
    /// `view` when the agent runs in the runtime's address space (simulator,
    /// exclusive mode); different when the zone has its own mapping.
    pub base: u64,
    /// Zone length in bytes (page multiple, = [`ZoneLayout::total`]).
    pub len: usize,
    /// Platform-private (e.g. a handle, an allocation order, a host GPA).
    pub token: u64,
}

// SAFETY: a ZoneMem is an owning handle to memory that only the registry
// holding it accesses (under `&mut Registry` or from an agent call that
// registry runs); moving it to another thread moves that ownership.
unsafe impl Send for ZoneMem {}

impl ZoneMem {
    /// Translate an agent address into a core pointer, if `[addr, addr+len)`
    /// lies inside the zone (no permission check; see
    /// [`ZoneLayout::check_access`]).
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        let off = addr.checked_sub(self.base)?;
        let end = off.checked_add(len)?;
        (end <= self.len as u64).then_some(off)
    }
}

/// What [`Platform::zone_alloc`] is asked for.
#[derive(Debug, Clone, Copy)]
pub struct ZoneRequest<'a> {
    /// The (parsed, verified) image the zone is for.
    pub image: &'a Image<'a>,
    /// Its layout; `layout.total()` bytes are needed.
    pub layout: &'a ZoneLayout,
}

/// A fault the platform caught while an agent ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultInfo {
    /// x86 exception vector (14 = #PF, 13 = #GP, 6 = #UD, 0 = #DE, ...).
    pub vector: u32,
    /// Error code the CPU pushed (0 if none).
    pub error_code: u32,
    /// Faulting data address (CR2 for page faults), else 0.
    pub addr: u64,
    /// Address of the faulting instruction.
    pub rip: u64,
}

/// Everything needed to run one agent call; built by the core.
#[derive(Debug)]
pub struct RunRequest<'a> {
    /// The agent id being called.
    pub agent_id: u32,
    /// The mode to run in.
    pub mode: Mode,
    /// Entry address (agent view).
    pub entry: u64,
    /// Address of the `CallFrame` (agent view), the entry's argument.
    pub frame: u64,
    /// Initial stack pointer (agent view), 16-byte aligned.
    pub stack_top: u64,
    /// Jump buffer for [`crate::arch::enter`]; `Services.abort` aborts
    /// through it, and so may the platform's fault/watchdog handling.
    pub jmpbuf: *mut JmpBuf,
    /// Deferred abort: while the agent is inside a runtime service (where
    /// it must not be interrupted), the platform stores an error code here
    /// (e.g. `Error::Timeout`) and the service aborts the call with it as
    /// soon as it is safe, at its entry or before returning to the agent.
    pub abort_request: &'a AtomicU32,
    /// The zone.
    pub zone: ZoneMem,
    /// Its layout.
    pub layout: &'a ZoneLayout,
    /// Watchdog budget in nanoseconds; 0 = none.
    pub timeout_ns: u64,
}

impl RunRequest<'_> {
    /// Run the entry with [`crate::arch::enter`] on the current CPU/thread,
    /// in the current address space. What a platform's [`Platform::run`]
    /// calls after its own preparation (hypercalls, address-space switch,
    /// watchdog, fault capture).
    ///
    /// # Safety
    /// The zone must be mapped at `zone.base` in the current address space
    /// with the layout's protections (the core has set them), and the
    /// caller must be prepared for the agent code to run (interrupt and
    /// preemption state as the platform needs).
    pub unsafe fn enter(&self) -> EnterResult {
        // SAFETY: the core built entry/frame/stack/jmpbuf from a loaded zone
        // (entry inside an executable segment, frame in the frame page,
        // stack_top = top of the zone's stack); forwarded contract for the
        // mapping.
        unsafe { crate::arch::enter(self.entry, self.frame, self.stack_top, self.jmpbuf) }
    }

    /// Offset of an agent address in the zone, if inside.
    pub fn zone_offset(&self, addr: u64) -> Option<u64> {
        self.zone.offset_of(addr, 1)
    }
}

/// How a run ended, as the platform reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// [`crate::arch::enter`] came back: the agent returned, or aborted
    /// through `Services.abort` (a panic aborts with `Error::Panicked`).
    Finished(EnterResult),
    /// The agent faulted; the platform recovered through the jump buffer.
    Fault(FaultInfo),
    /// The watchdog stopped the agent.
    Timeout,
    /// The platform could not run the call at all (e.g. the host refused
    /// VMM_ENTER). The agent did not run.
    Refused(Error),
}

/// A change of the registry the platform may want to mirror (e.g. tell the
/// host through a hypercall). Returning an error vetoes the change where it
/// can still be undone (`Disabled`, `Enabled`, `Registered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEvent {
    /// A new id now points into a loaded zone (`dynamic` = registered at run
    /// time through `Services.register_entry`).
    Registered {
        /// Agent id.
        id: u32,
        /// Registered at run time.
        dynamic: bool,
        /// Its mode (a dynamic entry inherits its registrar's).
        mode: Mode,
        /// Its `AGENT_FLAG_*` (a dynamic entry inherits its registrar's).
        flags: u32,
    },
    /// An admin disabled the agent.
    Disabled {
        /// Agent id.
        id: u32,
    },
    /// An admin re-enabled the agent.
    Enabled {
        /// Agent id.
        id: u32,
    },
    /// The agent's image was unloaded.
    Unregistered {
        /// Agent id.
        id: u32,
    },
}

/// The environment of the loader core.
///
/// # Safety
/// Implementations promise that
/// * [`zone_alloc`](Platform::zone_alloc) returns a zone whose `view` is
///   valid, writable and exclusively owned for `len` bytes until
///   [`zone_free`](Platform::zone_free), `base` page aligned, and that the
///   memory the agent reaches at `base + off` is the memory the core reaches
///   at `view + off`;
/// * [`zone_protect`](Platform::zone_protect) makes the agent's view of the
///   range have exactly that protection (never writable and executable).
///   If `view` is a separate mapping it stays writable; if it is the
///   agent's own mapping (`view == base`), the core relies only on what
///   stays writable after loading: it writes the zone freely between
///   `zone_alloc` and the first `zone_protect`, and afterwards only the
///   frame, input and output areas (always read-write);
/// * [`run`](Platform::run) returns only after the agent stopped running,
///   and if it reports [`RunOutcome::Fault`] or [`RunOutcome::Timeout`] the
///   agent's execution was ended through [`crate::arch::abort`] on
///   `req.jmpbuf` (or an equivalent that restores the runtime context).
pub unsafe trait Platform {
    /// Allocate `req.layout.total()` bytes of zone memory.
    fn zone_alloc(&self, req: &ZoneRequest<'_>) -> Result<ZoneMem, Error>;

    /// Set the protection of `len` bytes at offset `off` (both page multiples).
    fn zone_protect(
        &self,
        zone: &ZoneMem,
        off: u64,
        len: u64,
        prot: Protection,
    ) -> Result<(), Error>;

    /// Release a zone. Called once per successful `zone_alloc`. The zone
    /// may hold agent secrets: its contents must never reach anyone else
    /// (unmap it, or scrub it before its pages go back to a pool).
    ///
    /// # Safety
    /// `zone` came from `zone_alloc` of this platform and is not used after.
    unsafe fn zone_free(&self, zone: &ZoneMem);

    /// Run one agent call (see [`RunRequest::enter`]). The platform decides
    /// how: simulator thread with watchdog and signal capture, kernel
    /// exclusive mode between VMM_ENTER / VMM_RESUME, or a collaborative
    /// zone switch.
    fn run(&self, req: &RunRequest<'_>) -> RunOutcome;

    /// Fill `buf` with cryptographically secure random bytes.
    fn random(&self, buf: &mut [u8]) -> Result<(), Error>;

    /// Monotonic time in nanoseconds.
    fn time_ns(&self) -> u64;

    /// A log line from agent `agent_id` (bytes as the agent gave them, at
    /// most [`crate::MAX_LOG_LEN`]; not necessarily UTF-8).
    fn log(&self, agent_id: u32, msg: &[u8]);

    /// A registry change; see [`AgentEvent`]. Default: accept.
    fn agent_event(&self, event: AgentEvent) -> Result<(), Error> {
        let _ = event;
        Ok(())
    }
}
