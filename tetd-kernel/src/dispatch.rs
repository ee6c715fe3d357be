//! Agent calls: build the call frame inside the zone, run the entry through
//! the platform, collect the result; and the services table agents call
//! back into.
//!
//! # Services and their context
//!
//! `Services.ctx` is not a pointer: it is an opaque token naming an entry of
//! a small global table of calls in progress ([`ACTIVE_CALLS`] slots). Every
//! service looks the token up first and does nothing (returns
//! `Error::BadRequest`) for a token that is not an active call, so an agent
//! cannot make the runtime dereference an address of its choosing, and no
//! runtime address is handed to the agent. Every pointer an agent passes is
//! checked against its zone layout (readable / writable pages of its own
//! zone) before it is touched.

use core::ffi::c_void;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use tetd::abi::{
    AdminOp, AgentEntry, CallFrame, Error, Mode, Services, ABI_VERSION, AGENT_INFO_SIZE,
    AGENT_NAME_LEN, CALL_FLAG_COLLABORATIVE, CALL_FLAG_FIRST,
};
use tetd::image::MEASUREMENT_LEN;

use crate::arch::{self, EnterResult, JmpBuf};
use crate::layout::{RegionKind, ZoneLayout};
use crate::platform::{AgentEvent, FaultInfo, Platform, RunOutcome, RunRequest, ZoneMem};
use crate::registry::{set_enabled_in, Agent, AgentStats, Registry, MAX_DYNAMIC_PER_IMAGE};

/// Longest log line passed to [`Platform::log`] (longer ones are cut).
pub const MAX_LOG_LEN: usize = 1024;

/// Calls that can be in progress at once, over all registries.
pub const ACTIVE_CALLS: usize = 64;

/// Options of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallOptions {
    /// Run in this mode instead of the agent's own.
    pub mode: Option<Mode>,
    /// Watchdog budget in nanoseconds (0 = none); the platform enforces it.
    pub timeout_ns: u64,
}

/// A fault, as the core reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultReport {
    /// What the platform caught.
    pub info: FaultInfo,
    /// The faulting instruction's offset from the image base, if it lies in
    /// the zone.
    pub rip_offset: Option<u64>,
    /// The faulting data address's offset in the zone, if inside.
    pub addr_offset: Option<u64>,
    /// The zone region the data address falls in.
    pub addr_region: Option<RegionKind>,
    /// The fault hit the guard page below the stack.
    pub stack_overflow: bool,
}

/// The result of [`Registry::call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReport {
    /// `Ok` or why the call failed.
    pub status: Result<(), Error>,
    /// The raw status code (0 on success; the agent's own code when it
    /// returned one that `Error` does not know).
    pub raw_status: u32,
    /// Bytes of output copied to the caller's buffer (0 on failure).
    pub output_len: usize,
    /// The agent ran (false: rejected before entering it).
    pub ran: bool,
    /// Mode the call ran in.
    pub mode: Mode,
    /// Time from entering to leaving the agent (platform clock, ns).
    pub elapsed_ns: u64,
    /// Fault details for `Error::Fault` / `Error::StackOverflow`.
    pub fault: Option<FaultReport>,
}

impl CallReport {
    fn rejected(e: Error, mode: Mode) -> Self {
        CallReport {
            status: Err(e),
            raw_status: e.code(),
            output_len: 0,
            ran: false,
            mode,
            elapsed_ns: 0,
            fault: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Active-call table
// ---------------------------------------------------------------------------

struct ActiveSlot {
    token: AtomicU64,
    ctx: AtomicPtr<CallCtx>,
}

static ACTIVE: [ActiveSlot; ACTIVE_CALLS] = [const {
    ActiveSlot {
        token: AtomicU64::new(0),
        ctx: AtomicPtr::new(core::ptr::null_mut()),
    }
}; ACTIVE_CALLS];
static GENERATION: AtomicU64 = AtomicU64::new(1);
const SLOT_BITS: u32 = 6;
const _: () = assert!(ACTIVE_CALLS == 1 << SLOT_BITS);

/// Takes a free slot for `ctx`. The token is the slot index plus 58 bits
/// of `nonce` (random bits from the platform) mixed with a counter: an
/// agent cannot guess the token of another call in progress from its own
/// (tested in `tests/attack_services.rs::concurrent_call_tokens_cannot_be_guessed`);
/// the counter keeps tokens distinct if the platform had no random bits.
fn activate(ctx: *mut CallCtx, nonce: u64) -> Option<u64> {
    for (i, s) in ACTIVE.iter().enumerate() {
        if s.ctx
            .compare_exchange(
                core::ptr::null_mut(),
                ctx,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            let generation =
                (GENERATION.fetch_add(1, Ordering::Relaxed) ^ nonce) & (u64::MAX >> SLOT_BITS);
            let token = (generation.max(1) << SLOT_BITS) | i as u64;
            s.token.store(token, Ordering::Release);
            return Some(token);
        }
    }
    None
}

fn deactivate(token: u64) {
    let s = &ACTIVE[(token as usize) & (ACTIVE_CALLS - 1)];
    s.token.store(0, Ordering::Release);
    s.ctx.store(core::ptr::null_mut(), Ordering::Release);
}

/// The context of the call `token` names, if it is in progress.
fn lookup(token: *mut c_void) -> Option<&'static CallCtx> {
    let token = token as usize as u64;
    if token == 0 {
        return None;
    }
    let s = &ACTIVE[(token as usize) & (ACTIVE_CALLS - 1)];
    if s.token.load(Ordering::Acquire) != token {
        return None;
    }
    let p = s.ctx.load(Ordering::Acquire);
    // SAFETY: a non-null pointer in an active slot with a matching token
    // points to the CallCtx of a call in progress; `Registry::call` keeps it
    // alive and unmodified until it deactivates the token, which happens
    // only after the agent (and so this service call) has finished. The
    // 'static lifetime never escapes a service function.
    let c = (!p.is_null()).then(|| unsafe { &*p })?;
    c.honour_abort_request();
    Some(c)
}

// ---------------------------------------------------------------------------
// Call context
// ---------------------------------------------------------------------------

type RegisterFn = unsafe fn(
    host: *mut (),
    ctx: &CallCtx,
    id: u32,
    name: &[u8],
    entry_off: u64,
) -> Result<(), Error>;
type AdminFn = unsafe fn(
    host: *mut (),
    ctx: &CallCtx,
    op: u32,
    arg: u64,
    out: &mut [u8],
) -> Result<usize, Error>;

/// Type-erased access to the registry running the call, for the services.
struct HostOps {
    log: unsafe fn(host: *mut (), ctx: &CallCtx, msg: &[u8]),
    random: unsafe fn(host: *mut (), buf: &mut [u8]) -> Result<(), Error>,
    time_ns: unsafe fn(host: *mut ()) -> u64,
    register_entry: RegisterFn,
    admin: AdminFn,
}

struct CallCtx {
    host: *mut (),
    ops: HostOps,
    caller_id: u32,
    agent_slot: usize,
    image_slot: usize,
    zone: ZoneMem,
    layout: ZoneLayout,
    jmpbuf: JmpBuf,
    abort_request: AtomicU32,
}

impl CallCtx {
    /// Abort the call now if the platform asked for it (watchdog while the
    /// agent was inside a service). Called where no runtime state is held.
    fn honour_abort_request(&self) {
        let code = self.abort_request.load(Ordering::Acquire);
        if code != 0 {
            let jb = addr_of!(self.jmpbuf) as *mut JmpBuf;
            // SAFETY: the call is in progress (its token was valid), enter()
            // filled the jump buffer, and the frames discarded (agent code
            // and the service calling this) own nothing that needs dropping.
            unsafe { arch::abort(jb, code) }
        }
    }

    /// The core pointer for an agent range, if the agent may access it.
    /// An empty range is always fine (nothing is accessed; agents pass
    /// dangling pointers for empty slices).
    fn agent_range(&self, addr: u64, len: usize, write: bool) -> Option<*mut u8> {
        if len == 0 {
            return Some(core::ptr::NonNull::dangling().as_ptr());
        }
        let off = self.zone.offset_of(addr, len as u64)?;
        if !self.layout.check_access(off, len as u64, write) {
            return None;
        }
        // SAFETY: off + len <= zone.len (offset_of), so the result stays
        // inside the zone mapping.
        Some(unsafe { self.zone.view.add(off as usize) })
    }
}

// ---------------------------------------------------------------------------
// The call
// ---------------------------------------------------------------------------

struct Prepared {
    agent_slot: usize,
    image_slot: usize,
    entry: u64,
    frame: u64,
    stack_top: u64,
    zone: ZoneMem,
    layout: ZoneLayout,
    out_cap: u64,
    mode: Mode,
    services_view: *mut Services,
    frame_view: *mut CallFrame,
}

impl<P: Platform, const IMAGES: usize, const AGENTS: usize> Registry<P, IMAGES, AGENTS> {
    const OPS: HostOps = HostOps {
        log: Self::host_log,
        random: Self::host_random,
        time_ns: Self::host_time_ns,
        register_entry: Self::host_register_entry,
        admin: Self::host_admin,
    };

    /// Call agent `id` with `input`; its output is copied to `output`
    /// (at most `min(output.len(), max_output)` bytes).
    ///
    /// Never fails as a Rust call: the [`CallReport`] says what happened.
    /// Statistics are updated. Rejections before running (unknown id,
    /// disabled, input too large) have `ran == false`.
    pub fn call(
        &mut self,
        id: u32,
        input: &[u8],
        output: &mut [u8],
        opts: &CallOptions,
    ) -> CallReport {
        let prep = match self.prepare(id, input, output.len(), opts) {
            Ok(p) => p,
            Err((e, slot)) => {
                let mode = opts.mode.unwrap_or_default();
                if let Some(a) = slot.and_then(|s| self.agents[s].as_mut()) {
                    a.stats.rejected += 1;
                    a.stats.failures += 1;
                    a.stats.last_status = Some(e.code());
                }
                return CallReport::rejected(e, mode);
            }
        };
        let this: *mut Self = self;
        // From here until the agent has finished, the registry is reached
        // only through `this` (the services re-enter it), never through
        // `self`.
        let mut ctx = CallCtx {
            host: this.cast(),
            ops: Self::OPS,
            caller_id: id,
            agent_slot: prep.agent_slot,
            image_slot: prep.image_slot,
            zone: prep.zone,
            layout: prep.layout,
            jmpbuf: JmpBuf::new(),
            abort_request: AtomicU32::new(0),
        };
        let ctx_ptr: *mut CallCtx = &mut ctx;
        let mut nonce = [0u8; 8];
        // A failed random source leaves the nonce zero: tokens are then
        // unique but guessable (the counter alone).
        let _ = self.platform.random(&mut nonce);
        let Some(token) = activate(ctx_ptr, u64::from_le_bytes(nonce)) else {
            return self.finish(&prep, RunOutcome::Refused(Error::Busy), output, 0);
        };
        let services = Services {
            abi_version: ABI_VERSION,
            size: core::mem::size_of::<Services>() as u32,
            ctx: token as usize as *mut c_void,
            log: svc_log,
            random: svc_random,
            time_ns: svc_time_ns,
            abort: svc_abort,
            register_entry: svc_register_entry,
            admin: svc_admin,
        };
        // SAFETY: services_view points into the zone's frame page (RW for
        // the core, aligned: page offset 256).
        unsafe { core::ptr::write_volatile(prep.services_view, services) };
        // SAFETY: `this` is valid (derived from `self`); only the platform
        // field is borrowed, the services borrow other fields.
        let platform: &P = unsafe { &*addr_of!((*this).platform) };
        let req = RunRequest {
            agent_id: id,
            mode: prep.mode,
            entry: prep.entry,
            frame: prep.frame,
            stack_top: prep.stack_top,
            // SAFETY: ctx_ptr is valid; the field pointer is what the gate
            // writes the saved stack pointer to.
            jmpbuf: unsafe { addr_of_mut!((*ctx_ptr).jmpbuf) },
            // SAFETY: ctx lives until after run returns; shared access only.
            abort_request: unsafe { &*addr_of!((*ctx_ptr).abort_request) },
            zone: prep.zone,
            layout: &prep.layout,
            timeout_ns: opts.timeout_ns,
        };
        let t0 = platform.time_ns();
        let outcome = platform.run(&req);
        let t1 = platform.time_ns();
        deactivate(token);
        self.finish(&prep, outcome, output, t1.saturating_sub(t0))
    }

    fn prepare(
        &mut self,
        id: u32,
        input: &[u8],
        output_cap: usize,
        opts: &CallOptions,
    ) -> Result<Prepared, (Error, Option<usize>)> {
        let agent_slot = self.find_agent(id).ok_or((Error::NotFound, None))?;
        let a = self.agents[agent_slot]
            .as_mut()
            .ok_or((Error::Internal, None))?;
        let reject = |e| (e, Some(agent_slot));
        if !a.enabled {
            return Err(reject(Error::Disabled));
        }
        if input.len() as u64 > a.max_input as u64 {
            return Err(reject(Error::InputTooLarge));
        }
        let img = self.images[a.image_slot]
            .as_ref()
            .ok_or(reject(Error::Internal))?;
        let l = img.layout;
        let zone = img.zone;
        let mode = opts.mode.unwrap_or(a.mode);
        let out_cap = (output_cap as u64)
            .min(a.max_output as u64)
            .min(l.output.len);
        if input.len() as u64 > l.input.len {
            return Err(reject(Error::InputTooLarge));
        }
        let mut flags = 0;
        if mode == Mode::Collaborative {
            flags |= CALL_FLAG_COLLABORATIVE;
        }
        if !a.called {
            flags |= CALL_FLAG_FIRST;
        }
        let base = zone.base;
        let frame = CallFrame {
            abi_version: ABI_VERSION,
            agent_id: id,
            input: (base + l.input.offset) as *const u8,
            input_len: input.len() as u64,
            output: (base + l.output.offset) as *mut u8,
            output_cap: out_cap,
            output_len: 0,
            services: (base + l.services_offset()) as *const Services,
            heap: (base + l.heap.offset) as *mut u8,
            heap_len: l.heap.len,
            flags,
        };
        // SAFETY: frame, input and output areas lie inside the zone
        // (layout), which the core may always write through `view`; the
        // input fits the input area (checked above); the frame page is page
        // aligned.
        let (frame_view, services_view) = unsafe {
            core::ptr::copy_nonoverlapping(
                input.as_ptr(),
                zone.view.add(l.input.offset as usize),
                input.len(),
            );
            let fv = zone.view.add(l.frame.offset as usize) as *mut CallFrame;
            core::ptr::write_volatile(fv, frame);
            let sv = zone.view.add(l.services_offset() as usize) as *mut Services;
            (fv, sv)
        };
        Ok(Prepared {
            agent_slot,
            image_slot: a.image_slot,
            entry: base + a.entry,
            frame: base + l.frame.offset,
            stack_top: base + l.stack.end(),
            zone,
            layout: l,
            out_cap,
            mode,
            services_view,
            frame_view,
        })
    }

    fn finish(
        &mut self,
        prep: &Prepared,
        outcome: RunOutcome,
        output: &mut [u8],
        elapsed_ns: u64,
    ) -> CallReport {
        let mut report = CallReport {
            status: Ok(()),
            raw_status: 0,
            output_len: 0,
            ran: true,
            mode: prep.mode,
            elapsed_ns,
            fault: None,
        };
        let fail = |r: &mut CallReport, e: Error, raw: u32| {
            r.status = Err(e);
            r.raw_status = raw;
        };
        match outcome {
            RunOutcome::Finished(EnterResult::Returned(0)) => {
                // SAFETY: the frame lies in the zone (see prepare); the agent
                // may have written anything to it, so only this one field is
                // read, and it is range-checked.
                let len =
                    unsafe { core::ptr::read_volatile(addr_of!((*prep.frame_view).output_len)) };
                if len > prep.out_cap || len > output.len() as u64 {
                    fail(
                        &mut report,
                        Error::OutputTooLarge,
                        Error::OutputTooLarge.code(),
                    );
                } else {
                    // SAFETY: len <= out_cap <= output area length: inside
                    // the zone; the destination is the caller's buffer.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            prep.zone.view.add(prep.layout.output.offset as usize),
                            output.as_mut_ptr(),
                            len as usize,
                        )
                    };
                    report.output_len = len as usize;
                }
            }
            RunOutcome::Finished(EnterResult::Returned(code)) => {
                fail(&mut report, Error::from_code(code as u64), code)
            }
            RunOutcome::Finished(EnterResult::Aborted(code)) => {
                let e = if code == 0 {
                    Error::AgentFailed
                } else {
                    Error::from_code(code as u64)
                };
                fail(&mut report, e, if code == 0 { e.code() } else { code });
            }
            RunOutcome::Fault(info) => {
                let base = prep.zone.base;
                let in_zone = |a: u64| prep.zone.offset_of(a, 1);
                let addr_offset = in_zone(info.addr);
                let stack_overflow = addr_offset.is_some_and(|o| prep.layout.is_stack_guard(o));
                let f = FaultReport {
                    info,
                    rip_offset: in_zone(info.rip).map(|_| info.rip - base),
                    addr_offset,
                    addr_region: addr_offset
                        .and_then(|o| prep.layout.region_at(o))
                        .map(|r| r.kind),
                    stack_overflow,
                };
                report.fault = Some(f);
                let e = if stack_overflow {
                    Error::StackOverflow
                } else {
                    Error::Fault
                };
                fail(&mut report, e, e.code());
            }
            RunOutcome::Timeout => fail(&mut report, Error::Timeout, Error::Timeout.code()),
            RunOutcome::Refused(e) => {
                report.ran = false;
                fail(&mut report, e, e.code());
            }
        }
        if let Some(a) = self.agents[prep.agent_slot].as_mut() {
            record(&mut a.stats, &report);
            if report.ran {
                a.called = true;
            }
        }
        report
    }

    // --- services, type-erased (see HostOps) ---------------------------------

    /// # Safety (all host_* functions)
    /// `host` is the `this` pointer of a `Registry::call` in progress.
    unsafe fn host_log(host: *mut (), ctx: &CallCtx, msg: &[u8]) {
        let this = host as *const Self;
        // SAFETY: see above; only the platform field is borrowed (shared).
        let platform = unsafe { &*addr_of!((*this).platform) };
        platform.log(ctx.caller_id, msg);
    }

    unsafe fn host_random(host: *mut (), buf: &mut [u8]) -> Result<(), Error> {
        let this = host as *const Self;
        // SAFETY: as in host_log.
        let platform = unsafe { &*addr_of!((*this).platform) };
        platform.random(buf)
    }

    unsafe fn host_time_ns(host: *mut ()) -> u64 {
        let this = host as *const Self;
        // SAFETY: as in host_log.
        let platform = unsafe { &*addr_of!((*this).platform) };
        platform.time_ns()
    }

    unsafe fn host_register_entry(
        host: *mut (),
        ctx: &CallCtx,
        id: u32,
        name: &[u8],
        entry_off: u64,
    ) -> Result<(), Error> {
        let this = host as *mut Self;
        // SAFETY: `this` is valid (call in progress); the fields borrowed
        // here (platform shared, agents and images mutably) are not
        // borrowed by `Registry::call` while the agent runs.
        let (platform, agents, images) = unsafe {
            (
                &*addr_of!((*this).platform),
                &mut *addr_of_mut!((*this).agents),
                &mut *addr_of_mut!((*this).images),
            )
        };
        if id == 0 || name.len() > AGENT_NAME_LEN || name.contains(&0) {
            return Err(Error::InvalidInput);
        }
        core::str::from_utf8(name).map_err(|_| Error::InvalidInput)?;
        if !ctx.layout.is_executable(entry_off) {
            return Err(Error::BadEntry);
        }
        if agents.iter().flatten().any(|a| a.id == id) {
            return Err(Error::DuplicateAgentId);
        }
        let caller = agents[ctx.agent_slot].ok_or(Error::Internal)?;
        let img = images[ctx.image_slot].as_mut().ok_or(Error::Internal)?;
        if img.dynamic_count >= MAX_DYNAMIC_PER_IMAGE {
            return Err(Error::TableFull);
        }
        let slot = agents
            .iter()
            .position(|a| a.is_none())
            .ok_or(Error::TableFull)?;
        platform.agent_event(AgentEvent::Registered {
            id,
            dynamic: true,
            mode: caller.mode,
            flags: caller.flags,
        })?;
        let mut raw = [0u8; AGENT_NAME_LEN];
        raw[..name.len()].copy_from_slice(name);
        agents[slot] = Some(Agent {
            id,
            name: raw,
            entry: entry_off,
            dynamic: true,
            enabled: true,
            called: false,
            stats: AgentStats::default(),
            ..caller
        });
        img.dynamic_count += 1;
        Ok(())
    }

    unsafe fn host_admin(
        host: *mut (),
        ctx: &CallCtx,
        op: u32,
        arg: u64,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let this = host as *mut Self;
        // SAFETY: as in host_register_entry.
        let (platform, agents, images) = unsafe {
            (
                &*addr_of!((*this).platform),
                &mut *addr_of_mut!((*this).agents),
                &*addr_of!((*this).images),
            )
        };
        let caller = agents[ctx.agent_slot].as_ref().ok_or(Error::Internal)?;
        let op = AdminOp::from_u32(op);
        // Reading one's own measurement is the one operation open to every
        // agent (encrypted agents bind their sessions to it).
        if op != Some(AdminOp::OwnMeasurement) && !caller.is_admin() {
            return Err(Error::Denied);
        }
        let op = op.ok_or(Error::Unsupported)?;
        let target = |agents: &[Option<Agent>]| -> Result<usize, Error> {
            let id = u32::try_from(arg).map_err(|_| Error::InvalidInput)?;
            agents
                .iter()
                .position(|a| a.as_ref().is_some_and(|a| a.id == id))
                .ok_or(Error::NotFound)
        };
        match op {
            AdminOp::List => {
                let n = agents.iter().flatten().count();
                let need = n * AGENT_INFO_SIZE;
                if out.len() < need {
                    return Err(Error::OutputTooLarge);
                }
                // Ordered by id, like Registry::agents.
                let mut last = None;
                for chunk in out.chunks_exact_mut(AGENT_INFO_SIZE).take(n) {
                    let Some(a) = agents
                        .iter()
                        .flatten()
                        .filter(|a| last.is_none_or(|l| a.id > l))
                        .min_by_key(|a| a.id)
                    else {
                        break;
                    };
                    last = Some(a.id);
                    encode_agent_info(a, chunk);
                }
                Ok(need)
            }
            AdminOp::Disable | AdminOp::Enable => {
                let i = target(agents)?;
                set_enabled_in(platform, agents, i, op == AdminOp::Enable)?;
                Ok(0)
            }
            AdminOp::Measurement | AdminOp::OwnMeasurement => {
                let slot = if op == AdminOp::OwnMeasurement {
                    ctx.image_slot
                } else {
                    let i = target(agents)?;
                    agents[i].as_ref().ok_or(Error::Internal)?.image_slot
                };
                let img = images[slot].as_ref().ok_or(Error::Internal)?;
                if out.len() < MEASUREMENT_LEN {
                    return Err(Error::OutputTooLarge);
                }
                out[..MEASUREMENT_LEN].copy_from_slice(&img.measurement);
                Ok(MEASUREMENT_LEN)
            }
        }
    }
}

fn record(s: &mut AgentStats, r: &CallReport) {
    if r.ran {
        s.calls += 1;
        s.last_ns = r.elapsed_ns;
        s.total_ns = s.total_ns.saturating_add(r.elapsed_ns);
    } else {
        s.rejected += 1;
    }
    if r.status.is_err() {
        s.failures += 1;
    }
    match r.status {
        Err(Error::Fault) | Err(Error::StackOverflow) => {
            s.faults += 1;
            s.last_fault = r.fault;
        }
        Err(Error::Timeout) => s.timeouts += 1,
        _ => {}
    }
    s.last_status = Some(r.raw_status);
}

/// Serialize one [`tetd::abi::AgentInfo`] record (little-endian, the
/// struct's `repr(C)` layout).
fn encode_agent_info(a: &Agent, out: &mut [u8]) {
    let put32 = |o: &mut [u8], at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |o: &mut [u8], at: usize, v: u64| o[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(out, 0, a.id);
    put32(out, 4, a.mode as u32);
    put32(out, 8, a.flags);
    put32(out, 12, a.enabled as u32);
    put64(out, 16, a.stats.calls);
    put64(out, 24, a.stats.failures);
    out[32..64].copy_from_slice(&a.name);
}

const _: () = assert!(core::mem::offset_of!(tetd::abi::AgentInfo, calls) == 16);
const _: () = assert!(core::mem::offset_of!(tetd::abi::AgentInfo, failures) == 24);
const _: () = assert!(core::mem::offset_of!(tetd::abi::AgentInfo, name) == 32);

// ---------------------------------------------------------------------------
// The services table (what agents call)
// ---------------------------------------------------------------------------

unsafe extern "C" fn svc_log(ctx: *mut c_void, msg: *const u8, len: usize) {
    let Some(c) = lookup(ctx) else { return };
    let len = len.min(MAX_LOG_LEN);
    let Some(p) = c.agent_range(msg as u64, len, false) else {
        return;
    };
    // SAFETY: p..p+len is readable zone memory (checked against the layout).
    let msg = unsafe { core::slice::from_raw_parts(p, len) };
    // SAFETY: c.host is the registry of the call in progress.
    unsafe { (c.ops.log)(c.host, c, msg) };
    c.honour_abort_request();
}

unsafe extern "C" fn svc_random(ctx: *mut c_void, buf: *mut u8, len: usize) -> u32 {
    let Some(c) = lookup(ctx) else {
        return Error::BadRequest.code();
    };
    let Some(p) = c.agent_range(buf as u64, len, true) else {
        return Error::InvalidInput.code();
    };
    // SAFETY: p..p+len is writable zone memory of the calling agent, which
    // is suspended in this call.
    let buf = unsafe { core::slice::from_raw_parts_mut(p, len) };
    // SAFETY: c.host is the registry of the call in progress.
    let r = unsafe { (c.ops.random)(c.host, buf) };
    c.honour_abort_request();
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

unsafe extern "C" fn svc_time_ns(ctx: *mut c_void) -> u64 {
    match lookup(ctx) {
        Some(c) => {
            // SAFETY: c.host is the registry of the call in progress.
            let t = unsafe { (c.ops.time_ns)(c.host) };
            c.honour_abort_request();
            t
        }
        None => 0,
    }
}

unsafe extern "C" fn svc_abort(ctx: *mut c_void, code: u32) -> ! {
    if let Some(c) = lookup(ctx) {
        let jb = addr_of!(c.jmpbuf) as *mut JmpBuf;
        // SAFETY: the call `c` belongs to is in progress: its enter() filled
        // jmpbuf, and the frames between it and here (agent code and this
        // function) own nothing that needs dropping.
        unsafe { arch::abort(jb, code) }
    }
    // Not a call in progress: there is nothing to return to. Trap; the
    // platform reports an invalid-opcode fault in the agent.
    loop {
        // SAFETY: ud2 only raises #UD.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}

unsafe extern "C" fn svc_register_entry(
    ctx: *mut c_void,
    id: u32,
    name: *const u8,
    name_len: usize,
    entry: AgentEntry,
) -> u32 {
    let Some(c) = lookup(ctx) else {
        return Error::BadRequest.code();
    };
    if name_len > AGENT_NAME_LEN {
        return Error::InvalidInput.code();
    }
    let Some(p) = c.agent_range(name as u64, name_len, false) else {
        return Error::InvalidInput.code();
    };
    // SAFETY: readable zone memory (checked).
    let name = unsafe { core::slice::from_raw_parts(p, name_len) };
    let Some(entry_off) = c.zone.offset_of(entry as usize as u64, 1) else {
        return Error::BadEntry.code();
    };
    // SAFETY: c.host is the registry of the call in progress.
    let r = unsafe { (c.ops.register_entry)(c.host, c, id, name, entry_off) };
    c.honour_abort_request();
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

unsafe extern "C" fn svc_admin(
    ctx: *mut c_void,
    op: u32,
    arg: u64,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> u32 {
    let Some(c) = lookup(ctx) else {
        return Error::BadRequest.code();
    };
    let Some(p) = c.agent_range(out as u64, out_cap, true) else {
        return Error::InvalidInput.code();
    };
    let len_p = if out_len.is_null() {
        None
    } else {
        match c.agent_range(out_len as u64, core::mem::size_of::<usize>(), true) {
            Some(lp) => Some(lp),
            None => return Error::InvalidInput.code(),
        }
    };
    // SAFETY: writable zone memory of the suspended caller (checked).
    let out = unsafe { core::slice::from_raw_parts_mut(p, out_cap) };
    // SAFETY: c.host is the registry of the call in progress.
    let r = unsafe { (c.ops.admin)(c.host, c, op, arg, out) };
    let (code, n) = match r {
        Ok(n) => (0, n),
        Err(e) => (e.code(), 0),
    };
    if let Some(lp) = len_p {
        // SAFETY: 8 writable bytes in the zone (checked); unaligned write.
        unsafe { core::ptr::write_unaligned(lp as *mut usize, n) };
    }
    c.honour_abort_request();
    code
}
