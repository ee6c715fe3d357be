//! The loader core's [`Platform`] inside the guest kernel.
//!
//! * A zone is one host registration (AGENT_ACCESS under the host id
//!   `access::IMAGE_ZONE_ID_BASE + slot`) of `layout.total()` pages plus the
//!   page-table pages of the collaborative address space, mapped RW+NX with
//!   `vmap_pfn`. Every agent id of the image — static at load, dynamic when
//!   registered — is an alias of it in the host's table
//!   ([`Platform::agent_event`]); admin disable / enable reach the host as
//!   AGENT_DISABLE / AGENT_ENABLE of the alias. `view` and
//!   `base` are that kernel mapping: the agent sees its zone at the same
//!   virtual address in both modes, so one relocation serves both.
//! * The zone is reachable only inside a VMM_ENTER..VMM_RESUME window. The
//!   ioctl layer opens one around every core operation that touches the zone:
//!   `zone_alloc` opens it for the load (closed by [`KPlatform::close`] after
//!   `Registry::load`), the CALL ioctl around `Registry::call`.
//! * `zone_protect` changes the kernel PTEs (W^X, guard pages not present)
//!   and records the regions for the collaborative page tables.
//! * `run`: exclusive = `kernel_fpu_begin` + `arch::enter` on the kernel
//!   mapping (preemption is already off: window); collaborative = the zone
//!   switch of [`crate::collab`] with the in-zone services.
use core::cell::UnsafeCell;
use core::fmt::Write;

use tetd::abi::{
    access, Error, Leaf, Mode, Services, AGENT_FLAGS_ALL, AGENT_RTMR_INDEX, PAGE_SIZE,
};
use tetd::image::MEASUREMENT_LEN;
use tetd::measure::{self, RtmrValue};
use tetd_kernel::arch::EnterResult;
use tetd_kernel::layout::SERVICES_OFFSET;
use tetd_kernel::{
    AgentEvent, FaultInfo, Platform, Protection, RunOutcome, RunRequest, ZoneMem, ZoneRequest,
};

use crate::collab::{self, AgentSpace, ServicesArea};
use crate::excl::{print_agent_log, Line};
use crate::kapi::{self, prot, Fpu, Level};
use crate::pagetable::Perm;
use crate::state;
use crate::tramp::kind;
use crate::tramp::Shared;
use crate::zone::{self as hz, HostZone};

/// Entries of the measurement event log.
pub const MAX_EVENTS: usize = 64;

/// One RTMR extension (one successful load).
#[derive(Clone, Copy)]
pub struct MeasEvent {
    /// The image measurement.
    pub measurement: [u8; MEASUREMENT_LEN],
    /// Package name (NUL padded).
    pub package: [u8; 32],
    /// First agent id of the image.
    pub first_id: u32,
    /// Whether the register was really extended (false on the loopback transport).
    pub extended: bool,
}

/// The measurement event log, in load order, and the value RTMR3 should
/// have (`tetd::measure::replay` of the log, assuming it started at zero).
pub struct MeasLog {
    /// Events.
    pub events: [MeasEvent; MAX_EVENTS],
    /// Events recorded (may exceed MAX_EVENTS; later ones only in `rtmr`).
    pub count: usize,
    /// Expected register value.
    pub rtmr: RtmrValue,
}

/// The extension data handed to the host / TDX module: 64-byte aligned.
#[repr(C, align(64))]
struct ExtendBuf([u8; 64]);
static EXTEND_BUF: Shared<ExtendBuf> = Shared::new(ExtendBuf([0; 64]));

/// Zones (= loaded images) at most; matches the registry's image table.
pub const MAX_ZONES: usize = 16;
const MAX_REGIONS: usize = 48;

/// Collaborative services context, log buffer: inside the frame page after
/// the CallFrame (+0) and the Services table (+256).
const CTX_OFF: u64 = 512;
const LOG_OFF: u64 = 1024;
const LOG_CAP: u64 = PAGE_SIZE - LOG_OFF;
const _: () = assert!(CTX_OFF + core::mem::size_of::<crate::tramp::CollabCtx>() as u64 <= LOG_OFF);

struct Slot {
    zone: Option<HostZone>,
    core_pages: u64,
    pt_off: u64,
    pt_pages: u64,
    regions: [(u64, u64, Perm); MAX_REGIONS],
    nregions: usize,
    space: Option<AgentSpace>,
    /// The image's measurement (answered to the collaborative
    /// `admin(OwnMeasurement)`).
    measurement: [u8; MEASUREMENT_LEN],
}

impl Slot {
    const EMPTY: Slot = Slot {
        zone: None,
        core_pages: 0,
        pt_off: 0,
        pt_pages: 0,
        regions: [(0, 0, Perm::R); MAX_REGIONS],
        nregions: 0,
        space: None,
        measurement: [0; MEASUREMENT_LEN],
    };
}

/// The kernel platform (one instance, inside the registry static).
pub struct KPlatform {
    slots: UnsafeCell<[Slot; MAX_ZONES]>,
    /// Measurement and package of the image being loaded (set by
    /// zone_alloc, consumed by its first Registered event).
    pending: UnsafeCell<Option<([u8; MEASUREMENT_LEN], [u8; 32])>>,
    log: UnsafeCell<MeasLog>,
}

// SAFETY: every use happens with the module mutex held (single-threaded).
unsafe impl Sync for KPlatform {}

impl KPlatform {
    /// Empty.
    pub const fn new() -> Self {
        KPlatform {
            slots: UnsafeCell::new([Slot::EMPTY; MAX_ZONES]),
            pending: UnsafeCell::new(None),
            log: UnsafeCell::new(MeasLog {
                events: [MeasEvent {
                    measurement: [0; MEASUREMENT_LEN],
                    package: [0; 32],
                    first_id: 0,
                    extended: false,
                }; MAX_EVENTS],
                count: 0,
                rtmr: [0; MEASUREMENT_LEN],
            }),
        }
    }

    /// The measurement event log.
    pub fn meas_log(&self) -> &MeasLog {
        // SAFETY: module mutex held; read-only view while no load runs.
        unsafe { &*self.log.get() }
    }

    /// Forget a pending measurement (the load that set it is over).
    pub fn clear_pending(&self) {
        // SAFETY: module mutex held.
        unsafe { *self.pending.get() = None };
    }

    /// Extend RTMR3 with `m` (TDG.MR.RTMR.EXTEND in a TD, the RTMR_EXTEND
    /// leaf on the simulated host) and append it to the event log.
    fn extend(
        &self,
        m: &[u8; MEASUREMENT_LEN],
        package: &[u8; 32],
        first_id: u32,
    ) -> Result<(), Error> {
        // SAFETY: module mutex held; the buffer is only used here.
        let buf = unsafe { &mut *EXTEND_BUF.get() };
        buf.0 = [0; 64];
        buf.0[..MEASUREMENT_LEN].copy_from_slice(m);
        let gpa = kapi::virt_to_phys(buf.0.as_ptr());
        let extended = match state::stats().transport {
            tetd::abi::ioctl::TRANSPORT_LOOPBACK => false,
            tetd::abi::ioctl::TRANSPORT_TDCALL => {
                // SAFETY: TDG.MR.RTMR.EXTEND reads 48 bytes at a 64-byte
                // aligned GPA of our own memory; only executed in a TD.
                unsafe { tetd::tdcall::rtmr_extend(gpa, AGENT_RTMR_INDEX) }
                    .map_err(|_| Error::Transport)?;
                true
            }
            _ => {
                hz::hypercall(Leaf::RtmrExtend, [AGENT_RTMR_INDEX, gpa, 0, 0])?;
                true
            }
        };
        // SAFETY: module mutex held.
        let log = unsafe { &mut *self.log.get() };
        log.rtmr = measure::extend(&log.rtmr, m);
        if log.count < MAX_EVENTS {
            log.events[log.count] = MeasEvent {
                measurement: *m,
                package: *package,
                first_id,
                extended,
            };
        }
        log.count += 1;
        Ok(())
    }

    #[allow(clippy::mut_from_ref)]
    fn slot(&self, token: u64) -> Option<&mut Slot> {
        // SAFETY: module mutex held; no other reference to this slot is live
        // across this call (callers use it briefly, never across `run`'s
        // agent execution except through this same &mut).
        let slots = unsafe { &mut *self.slots.get() };
        slots.get_mut(usize::try_from(token).ok()?)
    }

    /// Every registered zone: (host id, kernel base, GPA, pages), for
    /// /proc/tetdg_info.
    pub fn host_zones(&self) -> impl Iterator<Item = (u32, u64, u64, u64)> + '_ {
        (0..MAX_ZONES as u64).filter_map(|t| {
            let z = self.slot(t)?.zone.as_ref()?;
            Some((z.host_id, z.va as u64, z.gpa, z.pages))
        })
    }

    /// Guest-physical base of the zone behind `token` (TEST hooks).
    pub fn zone_gpa(&self, token: u64) -> Option<u64> {
        self.slot(token)
            .and_then(|s| s.zone.as_ref())
            .map(|z| z.gpa)
    }

    /// Open the zone's window (VMM_ENTER) before the core touches it.
    pub fn open(&self, token: u64) -> Result<(), Error> {
        let z = self
            .slot(token)
            .and_then(|s| s.zone.as_mut())
            .ok_or(Error::Internal)?;
        z.open()
    }

    /// Close the zone's window (VMM_RESUME with `status`).
    pub fn close(&self, token: u64, status: u32) {
        if let Some(z) = self.slot(token).and_then(|s| s.zone.as_mut()) {
            if let Err(e) = z.close(status) {
                let mut l = Line::new();
                let _ = write!(l, "VMM_RESUME of agent {} failed: {e}", z.host_id);
                kapi::log(Level::Err, l.as_str());
            }
        }
    }

    /// Host id of the zone whose window is open: the image an agent event
    /// belongs to (a load and a call each hold exactly one window open, and
    /// the module mutex serialises them).
    fn open_zone_id(&self) -> Option<u32> {
        // SAFETY: module mutex held.
        let slots = unsafe { &*self.slots.get() };
        let mut open = slots
            .iter()
            .filter_map(|s| s.zone.as_ref())
            .filter(|z| z.is_open());
        match (open.next(), open.next()) {
            (Some(z), None) => Some(z.host_id),
            _ => None,
        }
    }

    /// Mirror an agent registration in the host's table (an alias of its
    /// image's zone). Not on the loopback transport (no host table).
    fn host_register(&self, id: u32, dynamic: bool, mode: Mode, flags: u32) -> Result<(), Error> {
        let mut l = Line::new();
        if id >= access::IMAGE_ZONE_ID_BASE {
            let _ = write!(
                l,
                "agent id {id} refused: ids from {} on are the host ids of image zones",
                access::IMAGE_ZONE_ID_BASE
            );
            kapi::log(Level::Err, l.as_str());
            return Err(Error::InvalidArgument);
        }
        if state::stats().transport == tetd::abi::ioctl::TRANSPORT_LOOPBACK {
            return Ok(());
        }
        let Some(owner) = self.open_zone_id() else {
            let _ = write!(l, "agent {id}: no open zone window to register it in");
            kapi::log(Level::Err, l.as_str());
            return Err(Error::Internal);
        };
        hz::register_alias(id, owner, mode, flags & AGENT_FLAGS_ALL).inspect_err(|e| {
            let _ = write!(
                l,
                "host refused {} agent {id} in zone {owner} (AGENT_ACCESS): {e}",
                if dynamic { "dynamic" } else { "static" }
            );
            kapi::log(Level::Err, l.as_str());
        })
    }

    /// Mirror an admin disable / enable in the host's table.
    fn host_set_enabled(&self, id: u32, enabled: bool) -> Result<(), Error> {
        if state::stats().transport == tetd::abi::ioctl::TRANSPORT_LOOPBACK {
            return Ok(());
        }
        hz::set_alias_enabled(id, enabled).inspect_err(|e| {
            let mut l = Line::new();
            let _ = write!(
                l,
                "host refused to {} agent {id}: {e}",
                if enabled { "enable" } else { "disable" }
            );
            kapi::log(Level::Err, l.as_str());
        })
    }

    /// Close every open window (after a failed load the core may have left
    /// none, one, or freed the zone already).
    pub fn close_all(&self) {
        for t in 0..MAX_ZONES as u64 {
            if self
                .slot(t)
                .and_then(|s| s.zone.as_ref())
                .is_some_and(|z| z.is_open())
            {
                self.close(t, 0);
            }
        }
    }

    fn run_collaborative(&self, slot: &mut Slot, req: &RunRequest<'_>) -> RunOutcome {
        let Some(zone) = slot.zone.as_ref() else {
            return RunOutcome::Refused(Error::Internal);
        };
        if slot.space.is_none() {
            match AgentSpace::build(
                zone.va,
                zone.gpa,
                &slot.regions[..slot.nregions],
                slot.pt_off,
                slot.pt_pages,
            ) {
                Ok(s) => slot.space = Some(s),
                Err(e) => return RunOutcome::Refused(e),
            }
        }
        let Some(space) = slot.space.as_mut() else {
            return RunOutcome::Refused(Error::Internal);
        };
        let frame_va = req.zone.base + req.layout.frame.offset;
        let area = ServicesArea {
            services: frame_va + SERVICES_OFFSET,
            ctx: frame_va + CTX_OFF,
            log: frame_va + LOG_OFF,
            log_cap: LOG_CAP,
            measurement: Some(slot.measurement),
        };
        // The core's services table is kernel code the agent cannot reach
        // from its address space: swap in the in-zone services for the call.
        // SAFETY: the frame page is reachable (window open) and RW; the
        // Services table lies at +256 of it (tetd_kernel::layout).
        let saved: Services = unsafe { core::ptr::read(area.services as *const Services) };
        // SAFETY: as above; CTX_OFF/LOG_OFF are inside the frame page.
        unsafe { collab::install_services(&area) };
        let word = {
            let _fpu = Fpu::begin();
            // SAFETY: the zone is reachable; entry lies in an RX segment,
            // frame and stack in RW regions the space maps (core layout).
            unsafe { space.run(req.entry, req.frame, req.stack_top, req.timeout_ns) }
        };
        // SAFETY: frame page reachable; restores the core's table.
        let text = unsafe { collab::take_log(&area) };
        print_agent_log(req.agent_id, text);
        // SAFETY: as above.
        unsafe { core::ptr::write(area.services as *mut Services, saved) };
        let word = match word {
            Ok(w) => w,
            Err(e) => return RunOutcome::Refused(e),
        };
        let code = word as u32;
        match word >> 32 {
            kind::RETURNED => RunOutcome::Finished(EnterResult::Returned(code)),
            kind::ABORT => RunOutcome::Finished(EnterResult::Aborted(code)),
            kind::TIMEOUT => {
                let mut l = Line::new();
                let _ = write!(
                    l,
                    "agent {}: watchdog: an NMI arrived after the {} ns budget; call ended",
                    req.agent_id, req.timeout_ns
                );
                kapi::log(Level::Warn, l.as_str());
                RunOutcome::Timeout
            }
            kind::FAULT => {
                let (vector, error, rip, cr2) = AgentSpace::last_fault();
                let addr = if vector == 14 { cr2 } else { 0 };
                state::stats().faults += 1;
                zone.report_fault(vector as u32, addr);
                let mut l = Line::new();
                let _ = write!(
                    l,
                    "agent {} faulted in its zone: vector {vector} error {error:#x} rip {rip:#x} address {addr:#x}; call ended, kernel unaffected",
                    req.agent_id
                );
                kapi::log(Level::Warn, l.as_str());
                RunOutcome::Fault(FaultInfo {
                    vector: vector as u32,
                    error_code: error as u32,
                    addr,
                    rip,
                })
            }
            _ => RunOutcome::Refused(Error::Internal),
        }
    }
}

impl Default for KPlatform {
    fn default() -> Self {
        Self::new()
    }
}

fn perm_of(p: Protection) -> Option<Perm> {
    match p {
        Protection::None => None,
        Protection::Read => Some(Perm::R),
        Protection::ReadWrite => Some(Perm::RW),
        Protection::ReadExec => Some(Perm::RX),
    }
}

// SAFETY: zone_alloc returns a mapping of `len` (+ page-table pages) bytes,
// owned by the slot until zone_free, base == view page aligned; zone_protect
// applies exactly the protection to the kernel mapping (the agent's view in
// exclusive mode) and to the agent page tables (collaborative), never W+X,
// and never touches `view`'s writability of RW regions; run returns after
// the agent stopped, a fault ends it through the collaborative exit path
// which restores the kernel context like arch::abort.
unsafe impl Platform for KPlatform {
    fn zone_alloc(&self, req: &ZoneRequest<'_>) -> Result<ZoneMem, Error> {
        let first = req.image.agents().next().ok_or(Error::BadManifest)?;
        let total = req.layout.total();
        if total == 0 || total % PAGE_SIZE != 0 {
            return Err(Error::BadSegment);
        }
        let core_pages = total / PAGE_SIZE;
        let pt_pages = collab::pt_pages_bound(core_pages);
        // SAFETY: module mutex held (see slot()).
        let slots = unsafe { &mut *self.slots.get() };
        let (token, slot) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.zone.is_none())
            .ok_or(Error::TableFull)?;
        // The host records the image measurement with the zone (AGENT_ACCESS
        // argument 3).
        // SAFETY: module mutex held; the buffer is only used here and in extend().
        let mbuf = unsafe { &mut *EXTEND_BUF.get() };
        mbuf.0 = [0; 64];
        mbuf.0[..MEASUREMENT_LEN].copy_from_slice(req.image.measurement());
        let mgpa = kapi::virt_to_phys(mbuf.0.as_ptr());
        // The zone is the host entry IMAGE_ZONE_ID_BASE + slot; the agents
        // become aliases of it as the core registers them (agent_event).
        let mut zone = HostZone::create(
            access::IMAGE_ZONE_ID_BASE + token as u32,
            core_pages + pt_pages,
            first.mode,
            0,
            mgpa,
        )?;
        if let Err(e) = zone.open() {
            let _ = zone.destroy();
            return Err(e);
        }
        let view = zone.va;
        let mut package = [0u8; 32];
        let name = req.image.manifest().package_name().as_bytes();
        let n = name.len().min(32);
        package[..n].copy_from_slice(&name[..n]);
        // SAFETY: module mutex held.
        unsafe { *self.pending.get() = Some((*req.image.measurement(), package)) };
        *slot = Slot::EMPTY;
        slot.core_pages = core_pages;
        slot.measurement = *req.image.measurement();
        slot.pt_off = core_pages;
        slot.pt_pages = pt_pages;
        slot.zone = Some(zone);
        Ok(ZoneMem {
            view,
            base: view as u64,
            len: total as usize,
            token: token as u64,
        })
    }

    fn zone_protect(&self, zone: &ZoneMem, off: u64, len: u64, p: Protection) -> Result<(), Error> {
        let slot = self.slot(zone.token).ok_or(Error::Internal)?;
        if off % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Error::BadSegment);
        }
        let (pg, n) = (off / PAGE_SIZE, len / PAGE_SIZE);
        if pg.checked_add(n).is_none_or(|end| end > slot.core_pages) {
            return Err(Error::BadSegment);
        }
        let bits = match p {
            Protection::None => 0,
            Protection::Read => prot::R,
            Protection::ReadWrite => prot::R | prot::W,
            Protection::ReadExec => prot::R | prot::X,
        };
        kapi::set_prot(zone.view.wrapping_add(off as usize), n, bits)
            .map_err(|_| Error::Internal)?;
        if let Some(perm) = perm_of(p) {
            if slot.nregions == MAX_REGIONS {
                return Err(Error::TooLarge);
            }
            slot.regions[slot.nregions] = (pg, n, perm);
            slot.nregions += 1;
        }
        slot.space = None; // rebuilt at the next collaborative call
        Ok(())
    }

    unsafe fn zone_free(&self, zone: &ZoneMem) {
        if let Some(slot) = self.slot(zone.token) {
            if let Some(z) = slot.zone.take() {
                if let Err(e) = z.destroy() {
                    let mut l = Line::new();
                    let _ = write!(l, "AGENT_DISABLE failed: {e}");
                    kapi::log(Level::Err, l.as_str());
                }
            }
            *slot = Slot::EMPTY;
        }
    }

    fn run(&self, req: &RunRequest<'_>) -> RunOutcome {
        let Some(slot) = self.slot(req.zone.token) else {
            return RunOutcome::Refused(Error::Internal);
        };
        if !slot.zone.as_ref().is_some_and(|z| z.is_open()) {
            return RunOutcome::Refused(Error::Internal);
        }
        state::stats().calls += 1;
        state::stats().current_agent = req.agent_id;
        let r = match req.mode {
            Mode::Exclusive => {
                let _fpu = Fpu::begin();
                // SAFETY: the zone is mapped at base in the kernel page
                // tables with the layout's protections (zone_protect) and
                // reachable (window open); preemption is off (window) and
                // the FPU is claimed.
                RunOutcome::Finished(unsafe { req.enter() })
            }
            Mode::Collaborative => self.run_collaborative(slot, req),
        };
        state::stats().current_agent = 0;
        r
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), Error> {
        kapi::random(buf);
        Ok(())
    }

    fn time_ns(&self) -> u64 {
        kapi::time_ns()
    }

    fn log(&self, agent_id: u32, msg: &[u8]) {
        print_agent_log(agent_id, msg);
    }

    /// Every registration (static or dynamic) becomes an alias of the
    /// image's zone in the host's table; the host refusing it (e.g. an id
    /// collision) vetoes it. The first registration of a load then extends
    /// RTMR3 with the image's measurement; if that fails the core rolls the
    /// load back (the zone's release removes the aliases on the host). An
    /// admin disable / enable is mirrored with AGENT_DISABLE / AGENT_ENABLE
    /// of the alias (a refusal vetoes it). Unregistering needs no hypercall:
    /// the image's zone is released right after (AGENT_DISABLE of the zone
    /// removes its aliases).
    fn agent_event(&self, event: AgentEvent) -> Result<(), Error> {
        match event {
            AgentEvent::Registered {
                id,
                dynamic,
                mode,
                flags,
            } => self.host_register(id, dynamic, mode, flags)?,
            AgentEvent::Disabled { id } => return self.host_set_enabled(id, false),
            AgentEvent::Enabled { id } => return self.host_set_enabled(id, true),
            AgentEvent::Unregistered { .. } => return Ok(()),
        }
        if let AgentEvent::Registered {
            id, dynamic: false, ..
        } = event
        {
            // SAFETY: module mutex held.
            if let Some((m, package)) = unsafe { (*self.pending.get()).take() } {
                if let Err(e) = self.extend(&m, &package, id) {
                    let mut l = Line::new();
                    let _ = write!(
                        l,
                        "RTMR{AGENT_RTMR_INDEX} extension failed ({e}): load refused"
                    );
                    kapi::log(Level::Err, l.as_str());
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
