//! The TETD hypercall leaves, as TETD-H answers them
//! ([`TdState::handle`]). Registers, errors and sequences are specified in
//! `docs/protocol.md`; every precondition is checked before any state
//! changes, so a failed leaf leaves the agent table and the Secure EPT as
//! they were (SEAM failures excepted, which are rolled back as far as the
//! TDX rules allow).
//!
//! SEAM sequences (the TDX rules force the zone to be *blocked and tracked*
//! whenever no call runs, because TDH.MEM.RANGE.UNBLOCK and
//! TDH.MEM.PAGE.REMOVE both require a tracked blocking epoch):
//!
//! | leaf | SEAM operations |
//! |---|---|
//! | AGENT_ACCESS / AGENT_ENABLE | AUG zone; ACCEPT zone (model/KVM: by the host); BLOCK zone; TRACK + kick |
//! | VMM_ENTER | UNBLOCK zone (if TDX_TLB_TRACKING_NOT_DONE: TRACK + kick, retry) |
//! | VMM_RESUME | BLOCK zone; TRACK + kick |
//! | AGENT_DISABLE | (zone already blocked + tracked) REMOVE zone; free |
//!
//! Aliases (AGENT_ACCESS with `access::ALIAS`) never touch the Secure EPT:
//! they are rows naming an agent inside an owner's zone, with an admin state
//! (AGENT_DISABLE / AGENT_ENABLE) and no calls of their own.

use tetd::abi::access::{self, ZONE_FLAG_ACCEPT_REQUIRED};
use tetd::abi::regs::HypercallArgs;
use tetd::abi::tdx::{self, RTMR_SIZE};
use tetd::abi::{Error, Leaf, Mode, PAGE_SIZE, ZONE_GPA_BASE};

use crate::host::{lock_pool, AgentEntry, AgentId, AgentState, TdState, Zone, DISABLE_WITH_OWNER};
use crate::notify::EventKind;
use crate::seam::{SeamError, SeamOps, ZoneRange};
use crate::zone_alloc::AllocError;

type LeafResult = Result<[u64; 3], Error>;

/// Reject non-zero values in argument registers a leaf does not use.
fn reserved_zero(args: &HypercallArgs, from: usize) -> Result<(), Error> {
    if args.args[from..].iter().any(|&a| a != 0) {
        Err(Error::InvalidArgument)
    } else {
        Ok(())
    }
}

/// An agent id argument: 1..=u32::MAX.
fn agent_id(raw: u64) -> Result<AgentId, Error> {
    match u32::try_from(raw) {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(Error::InvalidArgument),
    }
}

/// The part of a zone from `gpa` (a page inside it) to its end.
fn suffix(z: &ZoneRange, gpa: u64) -> ZoneRange {
    let skip = (gpa.saturating_sub(z.gpa) / PAGE_SIZE).min(z.pages);
    ZoneRange {
        gpa: z.gpa + skip * PAGE_SIZE,
        hpa: z.hpa + skip * PAGE_SIZE,
        pages: z.pages - skip,
    }
}

impl<S: SeamOps> TdState<S> {
    pub(crate) fn dispatch(&mut self, vcpu: u32, args: HypercallArgs) -> LeafResult {
        let Some(leaf) = Leaf::from_u64(args.leaf) else {
            return Err(Error::UnknownLeaf);
        };
        let r = match leaf {
            Leaf::AgentAccess => self.agent_access(vcpu, &args),
            Leaf::VmmEnter => self.vmm_enter(vcpu, &args),
            Leaf::VmmResume => self.vmm_resume(vcpu, &args),
            Leaf::AgentDisable => self.agent_disable(vcpu, &args),
            Leaf::AgentEnable => self.agent_enable(vcpu, &args),
            Leaf::RtmrExtend => self.rtmr_extend(&args),
            Leaf::AgentFault => self.agent_fault(vcpu, &args),
            Leaf::AgentQuery => self.agent_query(&args),
        };
        if let Err(e) = r {
            log::debug!(
                "td {} vcpu {vcpu}: {} {:x?} -> {e}",
                self.td,
                leaf.name(),
                args.args
            );
        }
        r
    }

    fn lookup(&self, raw: u64) -> Result<AgentId, Error> {
        // Ids are per TD: an id registered only by another TD is unknown here
        // (and answering anything else would tell one TD about another's
        // agents).
        let id = u32::try_from(raw).map_err(|_| Error::UnknownAgent)?;
        if self.agents.contains_key(&id) {
            Ok(id)
        } else {
            Err(Error::UnknownAgent)
        }
    }

    /// [`lookup`](Self::lookup) for the leaves that act on a zone (ENTER,
    /// RESUME, FAULT): an alias is refused with `AliasEntry`.
    fn lookup_owner(&self, raw: u64) -> Result<AgentId, Error> {
        let id = self.lookup(raw)?;
        if self.agents[&id].alias_of.is_some() {
            return Err(Error::AliasEntry);
        }
        Ok(id)
    }

    /// Remove the aliases of `owner` (it was released or quarantined); each
    /// one not disabled yet gets a `disable` event with `arg0` =
    /// [`DISABLE_WITH_OWNER`], `arg1` = the owner.
    fn drop_aliases(&mut self, owner: AgentId, vcpu: u32) {
        let ids: Vec<(AgentId, bool)> = self
            .aliases_of(owner)
            .map(|a| (a.id, a.state != AgentState::Disabled))
            .collect();
        for (id, live) in ids {
            self.agents.remove(&id);
            if live {
                self.publish(
                    EventKind::Disable,
                    id,
                    vcpu,
                    DISABLE_WITH_OWNER,
                    u64::from(owner),
                );
            }
        }
    }

    fn note_seam_error(&mut self, e: &SeamError) {
        log::error!("td {}: {e}", self.td);
        self.trouble.errors += 1;
        self.last_seam_error = Some(e.clone());
    }

    // ------------------------------------------------------------------
    // zone life cycle
    // ------------------------------------------------------------------

    /// Allocate GPA window pages and pool pages for a zone.
    fn alloc_zone(&mut self, pages: u64) -> Result<Zone, Error> {
        let first = self.gpa_alloc.alloc(pages).map_err(|e| {
            log::warn!("td {}: zone GPA window: {e}", self.td);
            alloc_error(e)
        })?;
        let host = match lock_pool(&self.pool).alloc(pages) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("td {}: zone pool: {e}", self.td);
                // Cannot fail: `first` was just allocated.
                let _ = self.gpa_alloc.free(first);
                return Err(alloc_error(e));
            }
        };
        Ok(Zone {
            gpa: ZONE_GPA_BASE + first * PAGE_SIZE,
            host,
        })
    }

    /// Return a zone's GPA and pool pages (its pages are out of the Secure
    /// EPT).
    fn free_zone(&mut self, z: Zone) {
        let first = (z.gpa - ZONE_GPA_BASE) / PAGE_SIZE;
        if let Err(e) = self.gpa_alloc.free(first) {
            log::error!("td {}: freeing zone GPA {:#x}: {e}", self.td, z.gpa);
        }
        if let Err(e) = lock_pool(&self.pool).free(z.host) {
            log::error!(
                "td {}: freeing zone pool pages {:#x}: {e}",
                self.td,
                z.host.host_addr
            );
        }
    }

    /// Build a zone in the Secure EPT: AUG, (ACCEPT), BLOCK, TRACK. Leaves
    /// it blocked and tracked. On failure everything done is undone (or the
    /// zone is leaked if that fails too).
    fn create_zone(&mut self, pages: u64) -> Result<(Zone, u64), Error> {
        let z = self.alloc_zone(pages)?;
        let r = z.range();
        let host_accepts = self.seam.host_accepts();
        let res = (|| {
            self.seam.aug_zone(&r)?;
            if host_accepts {
                self.seam.accept_zone(&r)?;
            }
            self.seam.block_zone(&r)?;
            self.seam.flush()
        })();
        match res {
            Ok(()) => {
                let flags = if host_accepts {
                    0
                } else {
                    ZONE_FLAG_ACCEPT_REQUIRED
                };
                Ok((z, flags))
            }
            Err(e) => {
                self.note_seam_error(&e);
                match self.scrub_zone(&r) {
                    Ok(()) => self.free_zone(z),
                    Err(e2) => {
                        self.note_seam_error(&e2);
                        self.leaked.push(z);
                    }
                }
                Err(Error::SeamError)
            }
        }
    }

    /// Robust page-by-page teardown from any mix of page states: BLOCK what
    /// is not blocked, TRACK, REMOVE what is not free. Uses the TDX statuses
    /// to tell states apart, so it works for any backend.
    fn scrub_zone(&mut self, r: &ZoneRange) -> Result<(), SeamError> {
        self.reblock(r)?;
        for (gpa, _) in r.iter() {
            match self.seam.page_remove(gpa) {
                Ok(_) => {}
                Err(e) if e.is_class(tdx::TDX_EPT_ENTRY_STATE_INCORRECT) => {} // free
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Block every page that is not blocked (free pages are skipped), then
    /// track.
    fn reblock(&mut self, r: &ZoneRange) -> Result<(), SeamError> {
        for (gpa, _) in r.iter() {
            match self.seam.range_block(gpa) {
                Ok(()) => {}
                Err(e)
                    if e.is_class(tdx::TDX_GPA_RANGE_ALREADY_BLOCKED)
                        || e.is_class(tdx::TDX_EPT_ENTRY_STATE_INCORRECT) => {}
                Err(e) => return Err(e),
            }
        }
        self.seam.flush()
    }

    /// Run a zone-wide SEAM operation (UNBLOCK, REMOVE). If it stops with
    /// TDX_TLB_TRACKING_NOT_DONE (another vCPU re-entered in the old epoch),
    /// do one more TRACK round and retry from the page it stopped at.
    fn zone_op_after_track(
        &mut self,
        r: &ZoneRange,
        op: fn(&mut S, &ZoneRange) -> Result<(), SeamError>,
    ) -> Result<(), SeamError> {
        match op(&mut self.seam, r) {
            Err(e) if e.is_class(tdx::TDX_TLB_TRACKING_NOT_DONE) => {
                self.trouble.recovered += 1;
                let rest = suffix(r, e.gpa().unwrap_or(r.gpa));
                self.seam.flush().and_then(|()| op(&mut self.seam, &rest))
            }
            res => res,
        }
    }

    /// Remove `owner`'s blocked+tracked zone and free it; first report the
    /// pages the guest touched while they were taken away. On an
    /// unrecoverable SEAM failure the zone is leaked and the error returned.
    fn destroy_zone(&mut self, owner: AgentId, z: Zone) -> Result<(), SeamError> {
        let r = z.range();
        self.collect_touched(owner, &r);
        let res = self.zone_op_after_track(&r, S::remove_zone);
        let res = res.or_else(|e| {
            self.note_seam_error(&e);
            self.scrub_zone(&r)
        });
        match res {
            Ok(()) => {
                self.free_zone(z);
                Ok(())
            }
            Err(e) => {
                self.note_seam_error(&e);
                self.leaked.push(z);
                Err(e)
            }
        }
    }

    /// Make an agent unusable after an unrecoverable SEAM failure on its
    /// zone: disabled, zone leaked (reserved until TD teardown).
    fn quarantine(&mut self, id: AgentId) {
        if let Some(a) = self.agents.get_mut(&id) {
            if let AgentState::Running { vcpu } = a.state {
                self.running.remove(&vcpu);
            }
            a.state = AgentState::Disabled;
            if let Some(z) = a.zone.take() {
                log::error!(
                    "td {}: agent {id} quarantined, zone {:#x} leaked",
                    self.td,
                    z.gpa
                );
                self.leaked.push(z);
            }
        }
        self.drop_aliases(id, crate::host::HOST_VCPU);
    }

    /// Disable `id` whatever its state (host-initiated: TD teardown).
    pub(crate) fn force_disable(&mut self, id: AgentId) -> Result<(), SeamError> {
        let Some(a) = self.agents.get(&id) else {
            return Ok(());
        };
        let (state, zone) = (a.state, a.zone);
        if let AgentState::Running { vcpu } = state {
            self.running.remove(&vcpu);
            if let Some(z) = zone {
                if let Err(e) = self.reblock(&z.range()) {
                    self.note_seam_error(&e);
                    self.quarantine(id);
                    return Err(e);
                }
            }
        }
        let a = self.agents.get_mut(&id).expect("checked above");
        a.state = AgentState::Disabled;
        let (zone, owner) = (a.zone.take(), a.alias_of.is_none());
        if owner {
            self.drop_aliases(id, crate::host::HOST_VCPU);
        }
        match zone {
            Some(z) => self.destroy_zone(id, z),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------------
    // leaves
    // ------------------------------------------------------------------

    /// AGENT_ACCESS `[agent_id, zone_pages, mode<<32 | flags, measurement_gpa]`
    /// → `[zone_gpa, zone_pages, zone_flags]`.
    fn agent_access(&mut self, vcpu: u32, args: &HypercallArgs) -> LeafResult {
        let [raw_id, pages, mode_flags, meas_gpa] = args.args;
        let id = agent_id(raw_id)?;
        let (mode, flags) = access::decode(mode_flags).ok_or(Error::InvalidArgument)?;
        if access::is_alias(mode_flags) {
            return self.alias_access(vcpu, id, mode, flags, pages, meas_gpa);
        }
        self.check_zone_size(mode, pages)?;
        let reuse = self.check_free_id(id)?;
        if !reuse && self.agents.len() >= self.config.max_agents {
            return Err(Error::TableFull);
        }
        let measurement = if meas_gpa == 0 {
            None
        } else {
            let mut m = [0u8; RTMR_SIZE];
            self.read_guest(meas_gpa, &mut m)?;
            Some(m)
        };
        let (zone, zone_flags) = self.make_zone(pages)?;
        self.agents.insert(
            id,
            AgentEntry {
                id,
                alias_of: None,
                mode,
                flags,
                state: AgentState::Idle,
                zone_pages: pages,
                zone,
                registered_by: vcpu,
                measurement,
                calls: 0,
                failures: 0,
                faults: 0,
                violations: 0,
                last_status: 0,
                last_fault: None,
            },
        );
        let gpa = zone.map_or(0, |z| z.gpa);
        self.publish(EventKind::Access, id, vcpu, gpa, pages);
        Ok([gpa, pages, zone_flags])
    }

    /// Whether `id` may be registered: unused (`Ok(false)`), or the row of a
    /// released zone owner (`Ok(true)`: replaced, counters reset). A live
    /// owner or any alias (also an admin-disabled one: its agent still
    /// exists in the guest) is a collision.
    fn check_free_id(&self, id: AgentId) -> Result<bool, Error> {
        match self.agents.get(&id) {
            Some(a) if a.alias_of.is_none() && a.state == AgentState::Disabled => Ok(true),
            Some(_) => Err(Error::AlreadyRegistered),
            None => Ok(false),
        }
    }

    /// AGENT_ACCESS with `access::ALIAS`: `[alias_id, 0, ALIAS | mode<<32 |
    /// flags, owner_id]` → `[0, 0, 0]`.
    fn alias_access(
        &mut self,
        vcpu: u32,
        id: AgentId,
        mode: Mode,
        flags: u32,
        pages: u64,
        raw_owner: u64,
    ) -> LeafResult {
        if pages != 0 {
            return Err(Error::InvalidArgument);
        }
        let owner_id = agent_id(raw_owner)?;
        let owner = self.agents.get(&owner_id).ok_or(Error::UnknownAgent)?;
        if owner.alias_of.is_some() {
            return Err(Error::AliasEntry);
        }
        if owner.state == AgentState::Disabled {
            return Err(Error::Disabled);
        }
        let measurement = owner.measurement;
        let reuse = self.check_free_id(id)?;
        if !reuse && self.agents.len() >= self.config.max_agents {
            return Err(Error::TableFull);
        }
        self.agents.insert(
            id,
            AgentEntry {
                id,
                alias_of: Some(owner_id),
                mode,
                flags,
                state: AgentState::Idle,
                zone_pages: 0,
                zone: None,
                registered_by: vcpu,
                measurement,
                calls: 0,
                failures: 0,
                faults: 0,
                violations: 0,
                last_status: 0,
                last_fault: None,
            },
        );
        self.publish(EventKind::Alias, id, vcpu, u64::from(owner_id), 0);
        Ok([0, 0, 0])
    }

    fn check_zone_size(&self, mode: Mode, pages: u64) -> Result<(), Error> {
        // An exclusive agent runs in the TD's normal context and may do
        // without a zone; a collaborative one runs inside its zone.
        let min = if mode == Mode::Collaborative { 1 } else { 0 };
        if pages < min || pages > self.config.max_zone_pages {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }

    fn make_zone(&mut self, pages: u64) -> Result<(Option<Zone>, u64), Error> {
        if pages == 0 {
            return Ok((None, 0));
        }
        let (z, flags) = self.create_zone(pages)?;
        Ok((Some(z), flags))
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Error> {
        let Some(g) = &self.guest else {
            log::warn!(
                "td {}: guest memory read at {gpa:#x} but no reader configured",
                self.td
            );
            return Err(Error::OutOfRange);
        };
        g.read(gpa, buf).map_err(|e| {
            log::debug!("td {}: guest read {gpa:#x}+{}: {e}", self.td, buf.len());
            Error::OutOfRange
        })
    }

    /// VMM_ENTER `[agent_id, vcpu, 0, 0]` → `[calls, 0, 0]`.
    fn vmm_enter(&mut self, vcpu: u32, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 2)?;
        if args.args[1] != u64::from(vcpu) {
            return Err(Error::InvalidArgument);
        }
        let id = self.lookup_owner(args.args[0])?;
        let a = &self.agents[&id];
        match a.state {
            AgentState::Disabled => return Err(Error::Disabled),
            AgentState::Running { .. } => return Err(Error::AlreadyRunning),
            AgentState::Idle => {}
        }
        if self.running.contains_key(&vcpu) {
            // This vCPU is inside another agent's call.
            return Err(Error::BadState);
        }
        if let Some(z) = a.zone {
            let r = z.range();
            // What the guest touched while the zone was taken away is
            // reported before UNBLOCK overwrites it with the saved pages.
            self.collect_touched(id, &r);
            let res = self.zone_op_after_track(&r, S::unblock_zone);
            if let Err(e) = res {
                self.note_seam_error(&e);
                // Put back whatever got unblocked; the call does not start.
                match self.reblock(&r) {
                    Ok(()) => self.trouble.recovered += 1,
                    Err(e2) => {
                        self.note_seam_error(&e2);
                        self.quarantine(id);
                    }
                }
                return Err(Error::SeamError);
            }
        }
        let a = self.agents.get_mut(&id).expect("looked up");
        a.state = AgentState::Running { vcpu };
        a.calls += 1;
        let calls = a.calls;
        self.running.insert(vcpu, id);
        self.publish(EventKind::Enter, id, vcpu, calls, 0);
        Ok([calls, 0, 0])
    }

    /// VMM_RESUME `[agent_id, vcpu, status, 0]` → `[calls, failures, 0]`.
    fn vmm_resume(&mut self, vcpu: u32, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 3)?;
        if args.args[1] != u64::from(vcpu) {
            return Err(Error::InvalidArgument);
        }
        let id = self.lookup_owner(args.args[0])?;
        let status = args.args[2];
        let a = &self.agents[&id];
        match a.state {
            AgentState::Running { vcpu: owner } if owner == vcpu => {}
            AgentState::Running { .. } => return Err(Error::NotOwner),
            AgentState::Idle | AgentState::Disabled => return Err(Error::NotRunning),
        }
        if let Some(z) = a.zone {
            let r = z.range();
            if let Err(e) = self.seam.block_zone(&r).and_then(|()| self.seam.flush()) {
                self.note_seam_error(&e);
                match self.reblock(&r) {
                    Ok(()) => self.trouble.recovered += 1,
                    Err(e2) => {
                        // The zone may still be reachable: never let the
                        // agent run again.
                        self.note_seam_error(&e2);
                        self.quarantine(id);
                        return Err(Error::SeamError);
                    }
                }
            }
        }
        self.running.remove(&vcpu);
        let a = self.agents.get_mut(&id).expect("looked up");
        a.state = AgentState::Idle;
        a.last_status = status;
        if status != 0 {
            a.failures += 1;
        }
        let (calls, failures) = (a.calls, a.failures);
        self.publish(EventKind::Resume, id, vcpu, status, 0);
        Ok([calls, failures, 0])
    }

    /// AGENT_DISABLE `[agent_id, 0, 0, 0]` → `[0, 0, 0]`.
    fn agent_disable(&mut self, vcpu: u32, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 1)?;
        let id = self.lookup(args.args[0])?;
        let a = &self.agents[&id];
        match a.state {
            AgentState::Running { .. } => return Err(Error::AlreadyRunning),
            AgentState::Disabled => return Err(Error::BadState),
            AgentState::Idle => {}
        }
        let (zone, is_alias) = (a.zone, a.alias_of.is_some());
        let a = self.agents.get_mut(&id).expect("looked up");
        a.state = AgentState::Disabled;
        a.zone = None;
        if is_alias {
            // Admin state only: the owner's zone is untouched.
            self.publish(EventKind::Disable, id, vcpu, 0, 0);
            return Ok([0, 0, 0]);
        }
        self.drop_aliases(id, vcpu);
        if let Some(z) = zone {
            if self.destroy_zone(id, z).is_err() {
                // Disabled either way; the zone is leaked, never reused.
                self.publish(EventKind::Disable, id, vcpu, 0, 0);
                return Err(Error::SeamError);
            }
        }
        self.publish(EventKind::Disable, id, vcpu, 0, 0);
        Ok([0, 0, 0])
    }

    /// AGENT_ENABLE `[agent_id, 0, 0, 0]` → `[zone_gpa, zone_pages, zone_flags]`.
    fn agent_enable(&mut self, vcpu: u32, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 1)?;
        let id = self.lookup(args.args[0])?;
        let a = &self.agents[&id];
        if a.state != AgentState::Disabled {
            return Err(Error::BadState);
        }
        if a.alias_of.is_some() {
            let a = self.agents.get_mut(&id).expect("looked up");
            a.state = AgentState::Idle;
            self.publish(EventKind::Enable, id, vcpu, 0, 0);
            return Ok([0, 0, 0]);
        }
        let pages = a.zone_pages;
        let (zone, zone_flags) = self.make_zone(pages)?;
        let a = self.agents.get_mut(&id).expect("looked up");
        a.state = AgentState::Idle;
        a.zone = zone;
        let gpa = zone.map_or(0, |z| z.gpa);
        self.publish(EventKind::Enable, id, vcpu, gpa, pages);
        Ok([gpa, pages, zone_flags])
    }

    /// RTMR_EXTEND `[index, digest_gpa, 0, 0]` → `[0, 0, 0]`.
    fn rtmr_extend(&mut self, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 2)?;
        let [index, gpa, ..] = args.args;
        if index >= tdx::NUM_RTMRS as u64 {
            return Err(Error::OutOfRange);
        }
        let mut d = [0u8; RTMR_SIZE];
        self.read_guest(gpa, &mut d)?;
        self.rtmrs
            .extend(index, &d)
            .map_err(|_| Error::OutOfRange)?;
        Ok([0, 0, 0])
    }

    /// AGENT_FAULT `[agent_id, vector, address, 0]` → `[faults, 0, 0]`.
    fn agent_fault(&mut self, vcpu: u32, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 3)?;
        let [raw_id, vector, address, _] = args.args;
        if vector >= 32 {
            // Only CPU exceptions (vectors 0..31) end an agent call.
            return Err(Error::InvalidArgument);
        }
        let id = self.lookup_owner(raw_id)?;
        let a = self.agents.get_mut(&id).expect("looked up");
        match a.state {
            AgentState::Running { vcpu: owner } if owner == vcpu => {}
            AgentState::Running { .. } => return Err(Error::NotOwner),
            AgentState::Idle | AgentState::Disabled => return Err(Error::NotRunning),
        }
        a.faults += 1;
        a.last_fault = Some((vector, address));
        let faults = a.faults;
        self.publish(EventKind::Fault, id, vcpu, vector, address);
        Ok([faults, 0, 0])
    }

    /// AGENT_QUERY `[agent_id, 0, 0, 0]` → `[state, calls, violations]`.
    fn agent_query(&mut self, args: &HypercallArgs) -> LeafResult {
        reserved_zero(args, 1)?;
        let id = self.lookup(args.args[0])?;
        let state = self.agents[&id].state;
        // An alias has no calls of its own: its owner's (zone) counters.
        let z = self.zone_owner(id).ok_or(Error::UnknownAgent)?;
        Ok([state.abi() as u64, z.calls, z.violations])
    }
}

fn alloc_error(e: AllocError) -> Error {
    match e {
        AllocError::ZeroSize => Error::OutOfRange,
        AllocError::Exhausted { .. } | AllocError::NotAllocated { .. } => Error::ZoneExhausted,
    }
}
