//! Per-TD state of TETD-H ([`TdState`]) and the host holding many TDs
//! ([`Host`]).
//!
//! A [`TdState`] owns one TD's agent table, its zone GPA allocator, its
//! RTMRs and its [`SeamOps`] backend; it shares the host-global zone page
//! pool ([`HostPool`]) and [`Notifier`] with the other TDs. The guest's
//! hypercalls enter through [`TdState::handle`] (implemented in
//! [`crate::leaves`]), whatever the transport (TDG.VP.VMCALL with
//! `R10 = TETD_VMCALL_VENDOR`, or the simulated I/O port).
//!
//! The VMM learns where each zone lives through [`TdState::zones`] /
//! [`TdState::zone_at`]: every [`Zone`] has its guest-physical address and
//! the host virtual address of its (contiguous, page-aligned) pool memory,
//! which is what a KVM memory slot needs.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::{HostAgentState, Mode, PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE};

use crate::notify::{Event, EventKind, Notifier};
use crate::rtmr::{Measurement, Rtmrs};
use crate::seam::{Gpa, SeamError, SeamOps, ZoneRange};
use crate::seam_model::SeptModel;
use crate::zone_alloc::{ContigAllocator, HostPool, HostRange};

/// Identifier of a TD on this host.
pub type TdId = u32;
/// Identifier of an agent within its TD.
pub type AgentId = u32;

/// The `vcpu` of events the host caused itself (no guest vCPU asked).
pub const HOST_VCPU: u32 = u32::MAX;
/// `arg0` of a `disable` event published by [`TdState::teardown`].
pub const DISABLE_BY_TEARDOWN: u64 = 1;
/// `arg0` of the `disable` event of an alias removed because its owner was
/// released (`arg1` = the owner's id).
pub const DISABLE_WITH_OWNER: u64 = 2;

/// Read access to a TD's guest memory (for arguments passed by GPA:
/// the measurement of AGENT_ACCESS, the digest of RTMR_EXTEND).
pub trait GuestReader: Send {
    /// Fill `buf` from guest-physical `gpa`; an error if any byte is not
    /// backed by guest memory.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<F> GuestReader for F
where
    F: Fn(u64, &mut [u8]) -> io::Result<()> + Send,
{
    fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self(gpa, buf)
    }
}

/// Limits a host puts on each TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdConfig {
    /// Largest zone one agent may ask for, in pages.
    pub max_zone_pages: u64,
    /// Most agents (including disabled ones) one TD may register.
    pub max_agents: usize,
}

impl Default for TdConfig {
    fn default() -> Self {
        TdConfig {
            max_zone_pages: 4096,
            max_agents: 256,
        }
    }
}

/// A secret zone: `host.pages` pages at guest-physical `gpa`, backed by the
/// contiguous pool pages `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Zone {
    /// First GPA (inside the zone window).
    pub gpa: Gpa,
    /// Backing pool pages.
    pub host: HostRange,
}

impl Zone {
    /// Pages.
    pub const fn pages(&self) -> u64 {
        self.host.pages
    }
    /// Size in bytes.
    pub const fn len(&self) -> u64 {
        self.host.pages * PAGE_SIZE
    }
    /// True for a zone without pages (never created by TETD-H).
    pub const fn is_empty(&self) -> bool {
        self.host.pages == 0
    }
    /// Host virtual address of the first byte (KVM `userspace_addr`).
    pub const fn host_addr(&self) -> u64 {
        self.host.host_addr
    }
    /// True if `gpa` lies in the zone.
    pub const fn contains(&self, gpa: Gpa) -> bool {
        gpa >= self.gpa && gpa < self.gpa + self.len()
    }
    /// The zone as the SEAM layer sees it.
    pub const fn range(&self) -> ZoneRange {
        ZoneRange {
            gpa: self.gpa,
            hpa: self.host.host_addr,
            pages: self.host.pages,
        }
    }
}

/// Host-side state of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentState {
    /// Registered, no call in progress; its zone is blocked and tracked.
    Idle,
    /// Between VMM_ENTER and VMM_RESUME on `vcpu`; its zone is mapped.
    Running {
        /// The vCPU that entered (the only one that may resume).
        vcpu: u32,
    },
    /// Disabled; no zone.
    Disabled,
}

impl AgentState {
    /// The ABI encoding (AGENT_QUERY result 0).
    pub const fn abi(self) -> HostAgentState {
        match self {
            AgentState::Idle => HostAgentState::Idle,
            AgentState::Running { .. } => HostAgentState::Running,
            AgentState::Disabled => HostAgentState::Disabled,
        }
    }
}

/// One row of a TD's agent table.
///
/// A row is either a **zone owner** (`alias_of == None`: registered with a
/// zone size, the id VMM_ENTER/VMM_RESUME name; its counters are per zone)
/// or an **alias** (`alias_of == Some(owner)`: an agent id living in the
/// owner's zone, registered with `tetd::abi::access::ALIAS`; no zone, no
/// calls of its own, state `Idle` or `Disabled` = its admin state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    /// Agent id (non-zero).
    pub id: AgentId,
    /// The zone owner this id is an alias of (`None`: a zone owner).
    pub alias_of: Option<AgentId>,
    /// Execution mode the guest registered.
    pub mode: Mode,
    /// `AGENT_FLAG_*`.
    pub flags: u32,
    /// Current state.
    pub state: AgentState,
    /// Zone size the agent registered with (kept for AGENT_ENABLE).
    pub zone_pages: u64,
    /// The zone, while the agent is not disabled and asked for one.
    pub zone: Option<Zone>,
    /// vCPU that registered the agent.
    pub registered_by: u32,
    /// Image measurement the guest passed at registration, if any.
    pub measurement: Option<Measurement>,
    /// VMM_ENTERs accepted.
    pub calls: u64,
    /// VMM_RESUMEs with a non-zero status.
    pub failures: u64,
    /// AGENT_FAULT reports.
    pub faults: u64,
    /// Guest accesses to the blocked zone reported by the VMM.
    pub violations: u64,
    /// Status of the last VMM_RESUME.
    pub last_status: u64,
    /// (vector, address) of the last AGENT_FAULT.
    pub last_fault: Option<(u64, u64)>,
}

/// Counters of SEAM trouble (normally all zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeamTrouble {
    /// SEAM operations that failed (each was logged).
    pub errors: u64,
    /// Failures the core recovered from (retry after TLB tracking, re-block).
    pub recovered: u64,
}

/// Errors of host-level (not guest-visible) operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// No TD with this id.
    UnknownTd(TdId),
    /// A TD with this id exists already.
    TdExists(TdId),
    /// Tearing down a zone failed in the SEAM layer; the zone's memory was
    /// not returned to the pool.
    Seam(SeamError),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::UnknownTd(td) => write!(f, "no TD {td}"),
            HostError::TdExists(td) => write!(f, "TD {td} exists already"),
            HostError::Seam(e) => write!(f, "SEAM failure: {e}"),
        }
    }
}

impl std::error::Error for HostError {}

/// Lock the shared pool (a poisoned lock still guards a consistent pool:
/// every pool method completes or leaves it unchanged).
pub(crate) fn lock_pool(pool: &Mutex<HostPool>) -> MutexGuard<'_, HostPool> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// TETD-H state of one TD.
pub struct TdState<S: SeamOps = SeptModel> {
    pub(crate) td: TdId,
    pub(crate) config: TdConfig,
    pub(crate) seam: S,
    pub(crate) agents: BTreeMap<AgentId, AgentEntry>,
    /// vCPU → agent it is running.
    pub(crate) running: BTreeMap<u32, AgentId>,
    /// Page allocator over the zone GPA window.
    pub(crate) gpa_alloc: ContigAllocator,
    pub(crate) pool: Arc<Mutex<HostPool>>,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) guest: Option<Box<dyn GuestReader>>,
    pub(crate) rtmrs: Rtmrs,
    /// Zones whose SEAM state could not be restored; their GPAs and pool
    /// pages stay reserved until the TD is destroyed.
    pub(crate) leaked: Vec<Zone>,
    /// Violations found after the access ([`Self::collect_touched`]) not yet
    /// taken by [`Self::take_found_violations`].
    pub(crate) found: Vec<(Gpa, AgentId)>,
    pub(crate) trouble: SeamTrouble,
    pub(crate) last_seam_error: Option<SeamError>,
}

impl<S: SeamOps> fmt::Debug for TdState<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdState")
            .field("td", &self.td)
            .field("agents", &self.agents)
            .field("running", &self.running)
            .field("leaked", &self.leaked)
            .field("trouble", &self.trouble)
            .finish()
    }
}

impl<S: SeamOps> TdState<S> {
    /// State for TD `td` using `seam`, zone pages from `pool`, events to
    /// `notifier`.
    pub fn new(
        td: TdId,
        seam: S,
        pool: Arc<Mutex<HostPool>>,
        notifier: Arc<Notifier>,
        config: TdConfig,
    ) -> Self {
        TdState {
            td,
            config,
            seam,
            agents: BTreeMap::new(),
            running: BTreeMap::new(),
            gpa_alloc: ContigAllocator::new(ZONE_GPA_SIZE / PAGE_SIZE),
            pool,
            notifier,
            guest: None,
            rtmrs: Rtmrs::new(),
            leaked: Vec::new(),
            found: Vec::new(),
            trouble: SeamTrouble::default(),
            last_seam_error: None,
        }
    }

    /// Give the host read access to guest memory (needed for AGENT_ACCESS
    /// with a measurement GPA and for RTMR_EXTEND).
    pub fn set_guest_reader(&mut self, reader: Box<dyn GuestReader>) {
        self.guest = Some(reader);
    }

    /// Handle one TETD hypercall from `vcpu` (which has exited the TD).
    /// Never panics on guest input; every failure is an `Error` code in R10.
    pub fn handle(&mut self, vcpu: u32, args: HypercallArgs) -> HypercallRet {
        match self.dispatch(vcpu, args) {
            Ok(r) => HypercallRet::ok(r),
            Err(e) => HypercallRet::err(e),
        }
    }

    /// TD id.
    pub fn id(&self) -> TdId {
        self.td
    }

    /// Limits.
    pub fn config(&self) -> TdConfig {
        self.config
    }

    /// The agent table row of `id`.
    pub fn agent(&self, id: AgentId) -> Option<&AgentEntry> {
        self.agents.get(&id)
    }

    /// All agents, by id.
    pub fn agents(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    /// The aliases of zone owner `owner`, by id.
    pub fn aliases_of(&self, owner: AgentId) -> impl Iterator<Item = &AgentEntry> {
        self.agents
            .values()
            .filter(move |a| a.alias_of == Some(owner))
    }

    /// The row whose zone and counters serve `id`: `id`'s own row for a
    /// zone owner, the owner's row for an alias.
    pub fn zone_owner(&self, id: AgentId) -> Option<&AgentEntry> {
        let a = self.agents.get(&id)?;
        match a.alias_of {
            Some(owner) => self.agents.get(&owner),
            None => Some(a),
        }
    }

    /// The agent `vcpu` is currently running, if any.
    pub fn running_on(&self, vcpu: u32) -> Option<AgentId> {
        self.running.get(&vcpu).copied()
    }

    /// Every live zone with its agent (for the VMM: GPA + host address per
    /// zone, to create / remove memory slots).
    pub fn zones(&self) -> impl Iterator<Item = (AgentId, Zone)> + '_ {
        self.agents
            .values()
            .filter_map(|a| a.zone.map(|z| (a.id, z)))
    }

    /// The zone containing `gpa`, with its agent.
    pub fn zone_at(&self, gpa: Gpa) -> Option<(AgentId, Zone)> {
        self.zones().find(|(_, z)| z.contains(gpa))
    }

    /// True if `gpa` lies in the zone window.
    pub fn in_zone_window(gpa: Gpa) -> bool {
        (ZONE_GPA_BASE..ZONE_GPA_BASE + ZONE_GPA_SIZE).contains(&gpa)
    }

    /// The VMM saw the guest touch `gpa` while it was not accessible (e.g.
    /// an exit on a removed memory slot). If `gpa` is in an agent's zone the
    /// agent's violation counter grows, a [`EventKind::Violation`] event is
    /// published, and the agent is returned.
    pub fn report_violation(&mut self, vcpu: u32, gpa: Gpa, write: bool) -> Option<AgentId> {
        let (id, _) = self.zone_at(gpa)?;
        let a = self.agents.get_mut(&id)?;
        a.violations += 1;
        log::warn!(
            "td {} vcpu {vcpu}: guest {} of blocked zone page {gpa:#x} (agent {id})",
            self.td,
            if write { "write" } else { "read" }
        );
        self.publish(EventKind::Violation, id, vcpu, gpa, write as u64);
        Some(id)
    }

    /// Asks the SEAM backend which pages of `zone` (owned by `id`) the guest
    /// touched while they were taken away ([`SeamOps::take_touched`]) and
    /// reports each as a violation found after the access: counted against
    /// `id`, event [`EventKind::Violation`] with arg1
    /// [`crate::notify::VIOLATION_FOUND_AFTER`], kept for
    /// [`Self::take_found_violations`].
    pub(crate) fn collect_touched(&mut self, id: AgentId, zone: &ZoneRange) {
        let touched = self.seam.take_touched(zone);
        if touched.is_empty() {
            return;
        }
        if let Some(a) = self.agents.get_mut(&id) {
            a.violations += touched.len() as u64;
        }
        for gpa in touched {
            log::warn!(
                "td {}: blocked zone page {gpa:#x} of agent {id} was touched by the guest (found afterwards)",
                self.td
            );
            self.publish(
                EventKind::Violation,
                id,
                HOST_VCPU,
                gpa,
                crate::notify::VIOLATION_FOUND_AFTER,
            );
            self.found.push((gpa, id));
        }
    }

    /// Checks every live zone for pages the guest touched while they were
    /// taken away ([`SeamOps::take_touched`]) and reports each as a
    /// violation found afterwards; engines call it when the guest has
    /// stopped.
    pub fn sweep_touched(&mut self) {
        let zones: Vec<(AgentId, Zone)> = self
            .agents
            .values()
            .filter(|a| a.alias_of.is_none())
            .filter_map(|a| a.zone.map(|z| (a.id, z)))
            .collect();
        for (id, z) in zones {
            self.collect_touched(id, &z.range());
        }
    }

    /// The violations found after the access since the last call (GPA,
    /// agent), oldest first.
    pub fn take_found_violations(&mut self) -> Vec<(Gpa, AgentId)> {
        std::mem::take(&mut self.found)
    }

    /// The SEAM backend.
    pub fn seam(&self) -> &S {
        &self.seam
    }

    /// The SEAM backend, mutable (for vCPU enter/exit and host-side TRACKs).
    /// Changing zone pages behind TETD-H's back breaks its invariants.
    pub fn seam_mut(&mut self) -> &mut S {
        &mut self.seam
    }

    /// The TD's RTMRs.
    pub fn rtmrs(&self) -> &Rtmrs {
        &self.rtmrs
    }

    /// The zone GPA allocator (statistics).
    pub fn gpa_allocator(&self) -> &ContigAllocator {
        &self.gpa_alloc
    }

    /// The shared zone pool.
    pub fn pool(&self) -> &Arc<Mutex<HostPool>> {
        &self.pool
    }

    /// Zones that could not be torn down (SEAM failure); normally empty.
    pub fn leaked_zones(&self) -> &[Zone] {
        &self.leaked
    }

    /// SEAM failure counters.
    pub fn seam_trouble(&self) -> SeamTrouble {
        self.trouble
    }

    /// The last SEAM failure, for diagnostics.
    pub fn last_seam_error(&self) -> Option<&SeamError> {
        self.last_seam_error.as_ref()
    }

    pub(crate) fn publish(&self, kind: EventKind, agent: AgentId, vcpu: u32, arg0: u64, arg1: u64) {
        self.notifier.publish(Event {
            seq: 0,
            td: self.td,
            kind,
            agent,
            vcpu,
            arg0,
            arg1,
        });
    }

    /// Remove every zone through the SEAM layer (ending running calls
    /// first) and return the memory to the pool. Agents end up disabled.
    /// Zones that cannot be removed stay leaked; the first error is
    /// returned after trying all.
    ///
    /// Each agent that was not disabled yet gets a `disable` event with
    /// vCPU [`HOST_VCPU`] and `arg0` = [`DISABLE_BY_TEARDOWN`], so event
    /// consumers see the end of agents whose guest died mid-call.
    pub fn teardown(&mut self) -> Result<(), HostError> {
        // Aliases first (each gets its own teardown event), then the zone
        // owners (whose release removes the aliases).
        let mut ids: Vec<AgentId> = self.agents.keys().copied().collect();
        ids.sort_by_key(|id| self.agents[id].alias_of.is_none());
        let mut first_err = None;
        for id in ids {
            let was_live = self
                .agents
                .get(&id)
                .is_some_and(|a| a.state != AgentState::Disabled);
            if let Err(e) = self.force_disable(id) {
                first_err.get_or_insert(HostError::Seam(e));
            }
            if was_live {
                self.publish(EventKind::Disable, id, HOST_VCPU, DISABLE_BY_TEARDOWN, 0);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl<S: SeamOps> Drop for TdState<S> {
    /// The TD is gone: at TD teardown the TDX module gives back every
    /// private page at once (TDH.PHYMEM.PAGE.RECLAIM after the HKID is
    /// freed), so the zones' pool pages — leaked ones included — return to
    /// the pool (scrubbed) without per-page REMOVE.
    fn drop(&mut self) {
        let mut pool = lock_pool(&self.pool);
        let zones: Vec<Zone> = self
            .agents
            .values()
            .filter_map(|a| a.zone)
            .chain(self.leaked.drain(..))
            .collect();
        for z in zones {
            if let Err(e) = pool.free(z.host) {
                log::error!(
                    "td {}: returning zone {:#x} to the pool: {e}",
                    self.td,
                    z.gpa
                );
            }
        }
    }
}

/// A host: many TDs sharing one zone pool and one notifier.
pub struct Host<S: SeamOps = SeptModel> {
    pool: Arc<Mutex<HostPool>>,
    notifier: Arc<Notifier>,
    td_config: TdConfig,
    tds: BTreeMap<TdId, TdState<S>>,
}

impl<S: SeamOps> fmt::Debug for Host<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("tds", &self.tds.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<S: SeamOps> Host<S> {
    /// A host with a zone pool of `pool_pages` pages and default TD limits.
    pub fn new(pool_pages: u64) -> io::Result<Self> {
        Self::with_config(pool_pages, TdConfig::default())
    }

    /// A host with a zone pool of `pool_pages` pages and the given limits.
    pub fn with_config(pool_pages: u64, td_config: TdConfig) -> io::Result<Self> {
        Ok(Host {
            pool: Arc::new(Mutex::new(HostPool::new(pool_pages)?)),
            notifier: Arc::new(Notifier::new()),
            td_config,
            tds: BTreeMap::new(),
        })
    }

    /// The notifier (subscribe here for agent events of all TDs).
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// The shared zone pool.
    pub fn pool(&self) -> &Arc<Mutex<HostPool>> {
        &self.pool
    }

    /// Register TD `td` with its SEAM backend.
    pub fn create_td(&mut self, td: TdId, seam: S) -> Result<&mut TdState<S>, HostError> {
        if self.tds.contains_key(&td) {
            return Err(HostError::TdExists(td));
        }
        let st = TdState::new(
            td,
            seam,
            self.pool.clone(),
            self.notifier.clone(),
            self.td_config,
        );
        Ok(self.tds.entry(td).or_insert(st))
    }

    /// TD `td`.
    pub fn td(&self, td: TdId) -> Option<&TdState<S>> {
        self.tds.get(&td)
    }

    /// TD `td`, mutable.
    pub fn td_mut(&mut self, td: TdId) -> Option<&mut TdState<S>> {
        self.tds.get_mut(&td)
    }

    /// All TDs.
    pub fn tds(&self) -> impl Iterator<Item = &TdState<S>> {
        self.tds.values()
    }

    /// Route a hypercall of `vcpu` of TD `td`.
    pub fn handle(
        &mut self,
        td: TdId,
        vcpu: u32,
        args: HypercallArgs,
    ) -> Result<HypercallRet, HostError> {
        let st = self.tds.get_mut(&td).ok_or(HostError::UnknownTd(td))?;
        Ok(st.handle(vcpu, args))
    }

    /// Remove every zone of TD `td` through the SEAM layer, then drop its
    /// state. On a SEAM failure the TD is still destroyed (its memory is
    /// reclaimed as at TD teardown) and the error is returned.
    pub fn destroy_td(&mut self, td: TdId) -> Result<(), HostError> {
        let mut st = self.tds.remove(&td).ok_or(HostError::UnknownTd(td))?;
        st.teardown()
    }
}
