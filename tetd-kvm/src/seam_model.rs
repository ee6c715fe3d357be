//! A software model of the Intel TDX module's Secure-EPT and TLB-tracking
//! rules for the leaves TETD-H uses, at 4 KiB granularity.
//!
//! The rules are transcribed from the TDX module source (TDX_1.5.01,
//! `github.com/intel/tdx-module`, branch `tdx_1.5`):
//!
//! * allowed Secure-EPT states per leaf: `include/auto_gen/sept_state_lookup.c`
//!   (`seamcall_sept_state_lookup`, `tdcall_sept_state_lookup`):
//!   AUG: FREE/REMOVED; BLOCK: MAPPED, PENDING (and the BLOCKEDW variants);
//!   UNBLOCK: BLOCKED, PENDING_BLOCKED; REMOVE: MAPPED, BLOCKED, PENDING,
//!   PENDING_BLOCKED; ACCEPT: PENDING;
//! * `src/vmm_dispatcher/api_calls/tdh_mem_page_aug.c`: state check
//!   (TDX_EPT_ENTRY_STATE_INCORRECT), then the HPA must be free in the PAMT
//!   (`check_and_lock_free_range_hpa`, operand R8);
//! * `tdh_mem_range_block.c`: an already blocked entry gives the *warning*
//!   TDX_GPA_RANGE_ALREADY_BLOCKED, any other disallowed state
//!   TDX_EPT_ENTRY_STATE_INCORRECT; on success `PAMT.BEPOCH = TD_EPOCH`;
//! * `tdh_mem_range_unblock.c`: TDX_EPT_ENTRY_STATE_INCORRECT unless
//!   blocked; TDX_TLB_TRACKING_NOT_DONE (operand SEPT tree) unless
//!   `is_tlb_tracked(BEPOCH)`;
//! * `tdh_mem_page_remove.c`: state check; for a running TD the page must be
//!   blocked (TDX_GPA_RANGE_NOT_BLOCKED) and tracked
//!   (TDX_TLB_TRACKING_NOT_DONE); the entry returns to FREE (REMOVED only
//!   while an import is in progress, which TETD never does);
//! * `tdh_mem_track.c`: TDX_PREVIOUS_TLB_EPOCH_BUSY while
//!   `REFCOUNT[previous epoch] != 0`, else `TD_EPOCH++`;
//! * `src/common/helpers/helpers.h` `is_tlb_tracked()`:
//!   `bepoch == TD_EPOCH - 1 && REFCOUNT[bepoch & 1] == 0 || bepoch < TD_EPOCH - 1`;
//! * `helpers.c` `adjust_tlb_tracking_state()` (TDH.VP.ENTER:
//!   `REFCOUNT[TD_EPOCH & 1]++`, the vCPU remembers its epoch) and
//!   `src/td_transitions/td_exit.c` (TD exit: `REFCOUNT[vcpu_epoch & 1]--`);
//! * `tdh_mng_init.c`: `TD_EPOCH = 1`, both refcounts 0;
//! * `src/td_dispatcher/vm_exits/tdg_mem_page_accept.c`: MAPPED →
//!   TDX_PAGE_ALREADY_ACCEPTED (warning), PENDING → MAPPED (page zeroed),
//!   anything else → EPT-violation TD exit.
//!
//! Linux' KVM uses the same sequences (`arch/x86/kvm/vmx/tdx.c`:
//! `tdx_sept_remove_private_spte()` = BLOCK, `tdx_track()`, REMOVE).
//!
//! Not modelled: large pages, L2 VMs, migration (BLOCKEDW/EXPORTED states),
//! lock contention (TDX_OPERAND_BUSY), the HKID/TD life cycle (the TD is
//! always RUNNABLE, so TLB tracking is always required).

use std::collections::BTreeMap;
use std::ops::Range;

use tetd::abi::{tdx, PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE};

use crate::seam::{Gpa, Hpa, SeamError, SeamOp, SeamOps, SeamResult, TdxStatus, ZoneRange};

/// Secure-EPT state of a 4 KiB leaf entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeptState {
    /// SEPT_FREE: nothing mapped.
    Free,
    /// SEPT_PENDING: AUG'ed, not yet accepted by the guest.
    Pending,
    /// SEPT_MAPPED: accepted, guest accessible.
    Mapped,
    /// SEPT_BLOCKED: was MAPPED, blocked (guest access faults once the
    /// blocking epoch is tracked).
    Blocked,
    /// SEPT_PENDING_BLOCKED: was PENDING, blocked.
    PendingBlocked,
}

impl SeptState {
    /// Name as in the TDX module ABI spec.
    pub const fn name(self) -> &'static str {
        match self {
            SeptState::Free => "FREE",
            SeptState::Pending => "PENDING",
            SeptState::Mapped => "MAPPED",
            SeptState::Blocked => "BLOCKED",
            SeptState::PendingBlocked => "PENDING_BLOCKED",
        }
    }

    /// `sept_state_is_any_blocked()`.
    pub const fn is_blocked(self) -> bool {
        matches!(self, SeptState::Blocked | SeptState::PendingBlocked)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: SeptState,
    hpa: Hpa,
    /// PAMT.BEPOCH of the page.
    bepoch: u64,
}

/// Counters of successful operations (for tests and statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Successful TDH.MEM.PAGE.AUG.
    pub aug: u64,
    /// Successful TDH.MEM.RANGE.BLOCK.
    pub block: u64,
    /// Successful TDH.MEM.RANGE.UNBLOCK.
    pub unblock: u64,
    /// Successful TDH.MEM.TRACK.
    pub track: u64,
    /// Successful TDH.MEM.PAGE.REMOVE.
    pub remove: u64,
    /// Successful TDG.MEM.PAGE.ACCEPT.
    pub accept: u64,
    /// vCPU kicks.
    pub kicks: u64,
    /// Failed operations of any kind.
    pub failed: u64,
}

/// The model of one TD's Secure EPT, PAMT ownership of its pages and TLB
/// epochs.
#[derive(Debug, Clone)]
pub struct SeptModel {
    /// Guest physical address width (bits); the top bit is the SHARED bit.
    gpaw: u32,
    /// GPA range for which Secure-EPT non-leaf pages exist (TDH.MEM.SEPT.ADD
    /// was done); a walk outside ends with TDX_EPT_WALK_FAILED.
    sept_covered: Range<Gpa>,
    /// Non-FREE leaf entries, by GPA.
    entries: BTreeMap<Gpa, Entry>,
    /// PAMT: host pages owned by this TD as PT_REG, HPA → GPA.
    pamt: BTreeMap<Hpa, Gpa>,
    /// TDCS.TD_EPOCH.
    td_epoch: u64,
    /// TDCS.REFCOUNT[2].
    refcount: [u32; 2],
    /// vCPUs in guest mode → the epoch they entered in (TDVPS.VCPU_EPOCH).
    running: BTreeMap<u32, u64>,
    stats: ModelStats,
}

/// helpers.h `is_tlb_tracked()`: a page blocked in epoch `bepoch` is
/// tracked when a TRACK happened after the block and no vCPU still runs in
/// that epoch.
fn tlb_tracked(td_epoch: u64, refcount: [u32; 2], bepoch: u64) -> bool {
    let prev = td_epoch - 1;
    (bepoch == prev && refcount[(bepoch & 1) as usize] == 0) || bepoch < prev
}

/// What [`SeptModel::range_summary`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSummary {
    /// No page of the range has a leaf entry.
    pub all_free: bool,
    /// Every page of the range is MAPPED.
    pub all_mapped: bool,
}

impl Default for SeptModel {
    fn default() -> Self {
        Self::new()
    }
}

impl SeptModel {
    /// A freshly initialised TD (GPAW 48, Secure-EPT paging structures
    /// present for the TETD zone window).
    pub fn new() -> Self {
        Self::with_layout(48, ZONE_GPA_BASE..ZONE_GPA_BASE + ZONE_GPA_SIZE)
    }

    /// A TD with the given GPA width (48 or 52) and the GPA range for which
    /// Secure-EPT non-leaf pages exist.
    pub fn with_layout(gpaw: u32, sept_covered: Range<Gpa>) -> Self {
        assert!(gpaw == 48 || gpaw == 52, "GPAW must be 48 or 52");
        SeptModel {
            gpaw,
            sept_covered,
            entries: BTreeMap::new(),
            pamt: BTreeMap::new(),
            td_epoch: 1,
            refcount: [0, 0],
            running: BTreeMap::new(),
            stats: ModelStats::default(),
        }
    }

    // ------------------------------------------------------------------
    // inspection
    // ------------------------------------------------------------------

    /// State of the leaf entry for `gpa` (any address within the page).
    pub fn state(&self, gpa: Gpa) -> SeptState {
        self.entries
            .get(&(gpa & !(PAGE_SIZE - 1)))
            .map_or(SeptState::Free, |e| e.state)
    }

    /// Host page backing `gpa`, if any.
    pub fn hpa(&self, gpa: Gpa) -> Option<Hpa> {
        self.entries.get(&(gpa & !(PAGE_SIZE - 1))).map(|e| e.hpa)
    }

    /// GPA a host page is mapped at in this TD, if any.
    pub fn gpa_of(&self, hpa: Hpa) -> Option<Gpa> {
        self.pamt.get(&hpa).copied()
    }

    /// `is_tlb_tracked(PAMT.BEPOCH)` for a blocked page; false otherwise.
    pub fn is_tracked(&self, gpa: Gpa) -> bool {
        match self.entries.get(&(gpa & !(PAGE_SIZE - 1))) {
            Some(e) if e.state.is_blocked() => self.is_tlb_tracked(e.bepoch),
            _ => false,
        }
    }

    /// Whether the guest can still reach the page's content: MAPPED, or
    /// PENDING (the guest may ACCEPT and then use it), or blocked but not
    /// yet tracked (a vCPU in the old epoch may hold a stale translation).
    pub fn guest_may_access(&self, gpa: Gpa) -> bool {
        match self.entries.get(&(gpa & !(PAGE_SIZE - 1))) {
            None => false,
            Some(e) => match e.state {
                SeptState::Mapped | SeptState::Pending => true,
                SeptState::Blocked | SeptState::PendingBlocked => !self.is_tlb_tracked(e.bepoch),
                SeptState::Free => false,
            },
        }
    }

    /// All non-free entries: (GPA, state, HPA).
    pub fn pages(&self) -> impl Iterator<Item = (Gpa, SeptState, Hpa)> + '_ {
        self.entries.iter().map(|(g, e)| (*g, e.state, e.hpa))
    }

    /// Number of non-free entries.
    pub fn page_count(&self) -> usize {
        self.entries.len()
    }

    /// TDCS.TD_EPOCH.
    pub fn td_epoch(&self) -> u64 {
        self.td_epoch
    }

    /// TDCS.REFCOUNT.
    pub fn refcount(&self) -> [u32; 2] {
        self.refcount
    }

    /// vCPUs in guest mode and the epoch each entered in.
    pub fn running_vcpus(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.running.iter().map(|(v, e)| (*v, *e))
    }

    /// Operation counters.
    pub fn stats(&self) -> ModelStats {
        self.stats
    }

    /// Internal consistency of the model (PAMT ↔ entries, refcounts ↔
    /// running vCPUs). Returns a description of the first violation.
    pub fn check_consistency(&self) -> Result<(), String> {
        if self.pamt.len() != self.entries.len() {
            return Err(format!(
                "PAMT holds {} pages but the Secure EPT maps {}",
                self.pamt.len(),
                self.entries.len()
            ));
        }
        for (gpa, e) in &self.entries {
            if self.pamt.get(&e.hpa) != Some(gpa) {
                return Err(format!("page {gpa:#x} → {:#x} missing from PAMT", e.hpa));
            }
        }
        let mut rc = [0u32; 2];
        for epoch in self.running.values() {
            if *epoch + 1 < self.td_epoch {
                return Err(format!(
                    "a vCPU runs in epoch {epoch}, two behind TD_EPOCH {}",
                    self.td_epoch
                ));
            }
            rc[(*epoch & 1) as usize] += 1;
        }
        if rc != self.refcount {
            return Err(format!(
                "REFCOUNT {:?} but running vCPUs give {rc:?}",
                self.refcount
            ));
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // rules
    // ------------------------------------------------------------------

    /// helpers.h `is_tlb_tracked()`.
    fn is_tlb_tracked(&self, bepoch: u64) -> bool {
        tlb_tracked(self.td_epoch, self.refcount, bepoch)
    }

    /// Whether every page of `[gpa, +pages)` is FREE, and whether every
    /// page is MAPPED (one walk, no allocation: the KVM backend asks this
    /// after every zone operation).
    pub fn range_summary(&self, gpa: Gpa, pages: u64) -> RangeSummary {
        let end = gpa.saturating_add(pages.saturating_mul(PAGE_SIZE));
        let mut n = 0u64;
        let mut mapped = true;
        for e in self.entries.range(gpa..end).map(|(_, e)| e) {
            n += 1;
            mapped &= e.state == SeptState::Mapped;
        }
        RangeSummary {
            all_free: n == 0,
            all_mapped: n == pages && mapped,
        }
    }

    /// Apply `f` to the entry of every page of `zone` in ascending order,
    /// with `check_gpa`'s checks first and FREE pages (no entry) failing
    /// with TDX_EPT_ENTRY_STATE_INCORRECT; stop at the first failure (pages
    /// before it keep their change) and count the successes under `op`.
    fn zone_walk(
        &mut self,
        op: SeamOp,
        zone: &ZoneRange,
        mut f: impl FnMut(&mut Entry) -> Result<(), (u64, u64)>,
    ) -> SeamResult<()> {
        let shared_bit = 1u64 << (self.gpaw - 1);
        let covered = self.sept_covered.clone();
        let end = zone
            .gpa
            .saturating_add(zone.pages.saturating_mul(PAGE_SIZE));
        let mut it = self.entries.range_mut(zone.gpa..end);
        let mut done = 0u64;
        let mut problem = None;
        for i in 0..zone.pages {
            let gpa = zone.gpa + i * PAGE_SIZE;
            if gpa % PAGE_SIZE != 0 || gpa >= shared_bit {
                problem = Some((gpa, (tdx::TDX_OPERAND_INVALID, tdx::OPERAND_ID_RCX)));
                break;
            }
            if !covered.contains(&gpa) {
                problem = Some((gpa, (tdx::TDX_EPT_WALK_FAILED, tdx::OPERAND_ID_RCX)));
                break;
            }
            let r = match it.next() {
                Some((g, e)) if *g == gpa => f(e),
                // no entry at gpa: the page is FREE
                _ => Err((tdx::TDX_EPT_ENTRY_STATE_INCORRECT, tdx::OPERAND_ID_RCX)),
            };
            if let Err(p) = r {
                problem = Some((gpa, p));
                break;
            }
            done += 1;
        }
        match op {
            SeamOp::RangeBlock => self.stats.block += done,
            SeamOp::RangeUnblock => self.stats.unblock += done,
            _ => {}
        }
        match problem {
            None => Ok(()),
            Some((gpa, (class, operand))) => Err(self.fail(op, Some(gpa), class, operand)),
        }
    }

    fn fail(&mut self, op: SeamOp, gpa: Option<Gpa>, class: u64, operand: u64) -> SeamError {
        self.stats.failed += 1;
        SeamError::Tdx {
            op,
            gpa,
            status: TdxStatus::with_operand(class, operand),
        }
    }

    /// `verify_page_info_input` + GPA validity (private, within GPAW) +
    /// Secure-EPT walk to the 4 KiB level.
    fn check_gpa(&mut self, op: SeamOp, gpa: Gpa) -> SeamResult<()> {
        let shared_bit = 1u64 << (self.gpaw - 1);
        if gpa % PAGE_SIZE != 0 || gpa >= shared_bit {
            return Err(self.fail(op, Some(gpa), tdx::TDX_OPERAND_INVALID, tdx::OPERAND_ID_RCX));
        }
        if !self.sept_covered.contains(&gpa) {
            return Err(self.fail(op, Some(gpa), tdx::TDX_EPT_WALK_FAILED, tdx::OPERAND_ID_RCX));
        }
        Ok(())
    }
}

impl SeamOps for SeptModel {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        let op = SeamOp::PageAug;
        self.check_gpa(op, gpa)?;
        if self.entries.contains_key(&gpa) {
            return Err(self.fail(
                op,
                Some(gpa),
                tdx::TDX_EPT_ENTRY_STATE_INCORRECT,
                tdx::OPERAND_ID_RCX,
            ));
        }
        if hpa == 0 || hpa % PAGE_SIZE != 0 {
            return Err(self.fail(op, Some(gpa), tdx::TDX_OPERAND_INVALID, tdx::OPERAND_ID_R8));
        }
        if self.pamt.contains_key(&hpa) {
            return Err(self.fail(
                op,
                Some(gpa),
                tdx::TDX_PAGE_METADATA_INCORRECT,
                tdx::OPERAND_ID_R8,
            ));
        }
        // sept_set_leaf(..., SEPT_STATE_PEND_MASK); PAMT.BEPOCH = 0.
        self.entries.insert(
            gpa,
            Entry {
                state: SeptState::Pending,
                hpa,
                bepoch: 0,
            },
        );
        self.pamt.insert(hpa, gpa);
        self.stats.aug += 1;
        Ok(())
    }

    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        let op = SeamOp::RangeBlock;
        self.check_gpa(op, gpa)?;
        let state = self.state(gpa);
        let new = match state {
            SeptState::Mapped => SeptState::Blocked,
            SeptState::Pending => SeptState::PendingBlocked,
            SeptState::Blocked | SeptState::PendingBlocked => {
                return Err(self.fail(
                    op,
                    Some(gpa),
                    tdx::TDX_GPA_RANGE_ALREADY_BLOCKED,
                    tdx::OPERAND_ID_RCX,
                ))
            }
            SeptState::Free => {
                return Err(self.fail(
                    op,
                    Some(gpa),
                    tdx::TDX_EPT_ENTRY_STATE_INCORRECT,
                    tdx::OPERAND_ID_RCX,
                ))
            }
        };
        let epoch = self.td_epoch;
        let e = self.entries.get_mut(&gpa).expect("non-free entry exists");
        e.state = new;
        e.bepoch = epoch;
        self.stats.block += 1;
        Ok(())
    }

    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        let op = SeamOp::RangeUnblock;
        self.check_gpa(op, gpa)?;
        let new = match self.state(gpa) {
            SeptState::Blocked => SeptState::Mapped,
            SeptState::PendingBlocked => SeptState::Pending,
            _ => {
                return Err(self.fail(
                    op,
                    Some(gpa),
                    tdx::TDX_EPT_ENTRY_STATE_INCORRECT,
                    tdx::OPERAND_ID_RCX,
                ))
            }
        };
        let bepoch = self.entries[&gpa].bepoch;
        if !self.is_tlb_tracked(bepoch) {
            return Err(self.fail(
                op,
                Some(gpa),
                tdx::TDX_TLB_TRACKING_NOT_DONE,
                tdx::OPERAND_ID_SEPT,
            ));
        }
        self.entries
            .get_mut(&gpa)
            .expect("blocked entry exists")
            .state = new;
        self.stats.unblock += 1;
        Ok(())
    }

    fn track(&mut self) -> SeamResult<()> {
        let prev = 1 - (self.td_epoch & 1) as usize;
        if self.refcount[prev] != 0 {
            return Err(self.fail(SeamOp::Track, None, tdx::TDX_PREVIOUS_TLB_EPOCH_BUSY, 0));
        }
        self.td_epoch += 1;
        self.stats.track += 1;
        Ok(())
    }

    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        let op = SeamOp::PageRemove;
        self.check_gpa(op, gpa)?;
        let Some(e) = self.entries.get(&gpa).copied() else {
            return Err(self.fail(
                op,
                Some(gpa),
                tdx::TDX_EPT_ENTRY_STATE_INCORRECT,
                tdx::OPERAND_ID_RCX,
            ));
        };
        // The TD is RUNNABLE: op_state_is_tlb_tracking_required() holds.
        if !e.state.is_blocked() {
            return Err(self.fail(
                op,
                Some(gpa),
                tdx::TDX_GPA_RANGE_NOT_BLOCKED,
                tdx::OPERAND_ID_RCX,
            ));
        }
        if !self.is_tlb_tracked(e.bepoch) {
            return Err(self.fail(
                op,
                Some(gpa),
                tdx::TDX_TLB_TRACKING_NOT_DONE,
                tdx::OPERAND_ID_RCX,
            ));
        }
        self.entries.remove(&gpa);
        self.pamt.remove(&e.hpa);
        self.stats.remove += 1;
        Ok(e.hpa)
    }

    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        let op = SeamOp::PageAccept;
        let shared_bit = 1u64 << (self.gpaw - 1);
        if gpa % PAGE_SIZE != 0 || gpa >= shared_bit {
            return Err(self.fail(op, Some(gpa), tdx::TDX_OPERAND_INVALID, tdx::OPERAND_ID_RCX));
        }
        match self.state(gpa) {
            SeptState::Pending => {
                self.entries
                    .get_mut(&gpa)
                    .expect("pending entry exists")
                    .state = SeptState::Mapped;
                self.stats.accept += 1;
                Ok(())
            }
            // api_error_with_operand_id(TDX_PAGE_ALREADY_ACCEPTED, ept_level),
            // ept_level 0 = 4 KiB.
            SeptState::Mapped => Err(self.fail(op, Some(gpa), tdx::TDX_PAGE_ALREADY_ACCEPTED, 0)),
            // Walk failure, FREE, *BLOCKED: TDACCEPT_VIOLATION.
            _ => {
                self.stats.failed += 1;
                Err(SeamError::EptViolation { gpa })
            }
        }
    }

    fn kick_vcpus(&mut self) -> SeamResult<()> {
        // Every running vCPU leaves and re-enters: it moves to the current
        // epoch (in place: no allocation on the RESUME path).
        let epoch = self.td_epoch;
        for e in self.running.values_mut() {
            self.refcount[(*e & 1) as usize] -= 1;
            self.refcount[(epoch & 1) as usize] += 1;
            *e = epoch;
        }
        self.stats.kicks += 1;
        Ok(())
    }

    // Zone batches: one walk over the zone's entries instead of several
    // tree look-ups per page. Same checks, statuses, order and
    // stop-at-first-failure behaviour as the per-page defaults (which
    // `tests::zone_batches_match_per_page_ops` compares them with).
    fn block_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let epoch = self.td_epoch;
        self.zone_walk(SeamOp::RangeBlock, zone, |e| {
            e.state = match e.state {
                SeptState::Mapped => SeptState::Blocked,
                SeptState::Pending => SeptState::PendingBlocked,
                SeptState::Blocked | SeptState::PendingBlocked => {
                    return Err((tdx::TDX_GPA_RANGE_ALREADY_BLOCKED, tdx::OPERAND_ID_RCX))
                }
                SeptState::Free => {
                    return Err((tdx::TDX_EPT_ENTRY_STATE_INCORRECT, tdx::OPERAND_ID_RCX))
                }
            };
            e.bepoch = epoch;
            Ok(())
        })
    }

    fn unblock_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let (td_epoch, refcount) = (self.td_epoch, self.refcount);
        self.zone_walk(SeamOp::RangeUnblock, zone, |e| {
            let new = match e.state {
                SeptState::Blocked => SeptState::Mapped,
                SeptState::PendingBlocked => SeptState::Pending,
                _ => return Err((tdx::TDX_EPT_ENTRY_STATE_INCORRECT, tdx::OPERAND_ID_RCX)),
            };
            if !tlb_tracked(td_epoch, refcount, e.bepoch) {
                return Err((tdx::TDX_TLB_TRACKING_NOT_DONE, tdx::OPERAND_ID_SEPT));
            }
            e.state = new;
            Ok(())
        })
    }

    fn vcpu_enter(&mut self, vcpu: u32) {
        if self.running.contains_key(&vcpu) {
            return; // already in guest mode
        }
        let epoch = self.td_epoch;
        self.refcount[(epoch & 1) as usize] += 1;
        self.running.insert(vcpu, epoch);
    }

    fn vcpu_exit(&mut self, vcpu: u32) {
        if let Some(epoch) = self.running.remove(&vcpu) {
            self.refcount[(epoch & 1) as usize] -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Gpa = ZONE_GPA_BASE;
    const H: Hpa = 0x7f00_0000_0000;

    fn class(r: SeamResult<impl std::fmt::Debug>) -> u64 {
        r.expect_err("expected failure")
            .status()
            .expect("TDX status")
            .class()
    }

    /// The zone batches (`block_zone`, `unblock_zone`: one walk) give
    /// exactly what the per-page defaults give: result, page states,
    /// epochs and counters, from every mix of page states.
    #[test]
    fn zone_batches_match_per_page_ops() {
        const N: u64 = 6;
        let zone = |gpa| ZoneRange {
            gpa,
            hpa: H,
            pages: N,
        };
        let per_page_block = |m: &mut SeptModel, z: &ZoneRange| -> SeamResult<()> {
            for (g, _) in z.iter() {
                m.range_block(g)?;
            }
            Ok(())
        };
        let per_page_unblock = |m: &mut SeptModel, z: &ZoneRange| -> SeamResult<()> {
            for (g, _) in z.iter() {
                m.range_unblock(g)?;
            }
            Ok(())
        };
        let snapshot = |m: &SeptModel| {
            let pages: Vec<_> = m.pages().collect();
            let tracked: Vec<_> = m.pages().map(|(g, _, _)| m.is_tracked(g)).collect();
            (pages, tracked, m.stats(), m.td_epoch())
        };
        // Each page: 0 free, 1 pending, 2 mapped, 3 blocked (untracked),
        // 4 blocked + tracked; all 5^N mixes would be many, so walk a
        // deterministic sample of them.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..3000 {
            let mut m = SeptModel::new();
            let mut kinds = [0u64; N as usize];
            for k in kinds.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *k = seed % 5;
            }
            if round < 5 {
                kinds = [round; N as usize];
            }
            let base = G + (round % 4) * PAGE_SIZE;
            for (i, k) in kinds.iter().enumerate() {
                let g = base + i as u64 * PAGE_SIZE;
                let h = H + (i as u64 + 1) * PAGE_SIZE;
                if *k >= 1 {
                    m.page_aug(g, h).unwrap();
                }
                if *k >= 2 {
                    m.page_accept(g).unwrap();
                }
                if *k >= 3 {
                    m.range_block(g).unwrap();
                }
            }
            if kinds.contains(&4) {
                m.track().unwrap();
            }
            // a vCPU in the old epoch keeps some blocks untracked
            if round % 3 == 0 {
                m.vcpu_enter(7);
            }
            for (batch, per_page) in [
                (
                    SeptModel::block_zone as fn(&mut SeptModel, &ZoneRange) -> SeamResult<()>,
                    &per_page_block as &dyn Fn(&mut SeptModel, &ZoneRange) -> SeamResult<()>,
                ),
                (SeptModel::unblock_zone, &per_page_unblock),
            ] {
                let (mut a, mut b) = (m.clone(), m.clone());
                let ra = batch(&mut a, &zone(base));
                let rb = per_page(&mut b, &zone(base));
                assert_eq!(ra, rb, "round {round} kinds {kinds:?}");
                assert_eq!(snapshot(&a), snapshot(&b), "round {round} kinds {kinds:?}");
                let s = a.range_summary(base, N);
                let states: Vec<SeptState> = zone(base).iter().map(|(g, _)| a.state(g)).collect();
                assert_eq!(s.all_free, states.iter().all(|x| *x == SeptState::Free));
                assert_eq!(s.all_mapped, states.iter().all(|x| *x == SeptState::Mapped));
            }
        }
        // GPAs the walk refuses before looking at entries
        let mut m = SeptModel::new();
        let bad = ZoneRange {
            gpa: G + 1,
            hpa: H,
            pages: 1,
        };
        assert_eq!(m.clone().block_zone(&bad), per_page_block(&mut m, &bad));
        let outside = ZoneRange {
            gpa: ZONE_GPA_BASE + ZONE_GPA_SIZE - PAGE_SIZE,
            hpa: H,
            pages: 2,
        };
        assert_eq!(
            m.clone().unblock_zone(&outside),
            per_page_unblock(&mut m, &outside)
        );
    }

    #[test]
    fn full_life_cycle() {
        let mut m = SeptModel::new();
        m.page_aug(G, H).unwrap();
        assert_eq!(m.state(G), SeptState::Pending);
        m.page_accept(G).unwrap();
        assert_eq!(m.state(G), SeptState::Mapped);
        m.range_block(G).unwrap();
        assert_eq!(m.state(G), SeptState::Blocked);
        assert!(!m.is_tracked(G));
        m.track().unwrap();
        assert!(m.is_tracked(G));
        m.range_unblock(G).unwrap();
        assert_eq!(m.state(G), SeptState::Mapped);
        m.range_block(G).unwrap();
        m.track().unwrap();
        assert_eq!(m.page_remove(G).unwrap(), H);
        assert_eq!(m.state(G), SeptState::Free);
        assert_eq!(m.page_count(), 0);
        m.check_consistency().unwrap();
    }

    #[test]
    fn aug_rules() {
        let mut m = SeptModel::new();
        assert_eq!(class(m.page_aug(G + 1, H)), tdx::TDX_OPERAND_INVALID);
        assert_eq!(class(m.page_aug(0x1000, H)), tdx::TDX_EPT_WALK_FAILED);
        assert_eq!(class(m.page_aug(1 << 47, H)), tdx::TDX_OPERAND_INVALID);
        assert_eq!(class(m.page_aug(G, H + 8)), tdx::TDX_OPERAND_INVALID);
        m.page_aug(G, H).unwrap();
        assert_eq!(
            class(m.page_aug(G, H + PAGE_SIZE)),
            tdx::TDX_EPT_ENTRY_STATE_INCORRECT
        );
        // One host page cannot back two GPAs.
        let e = m.page_aug(G + PAGE_SIZE, H).unwrap_err();
        assert_eq!(
            e.status().unwrap(),
            TdxStatus::with_operand(tdx::TDX_PAGE_METADATA_INCORRECT, tdx::OPERAND_ID_R8)
        );
    }

    #[test]
    fn block_rules() {
        let mut m = SeptModel::new();
        assert_eq!(class(m.range_block(G)), tdx::TDX_EPT_ENTRY_STATE_INCORRECT);
        m.page_aug(G, H).unwrap();
        m.range_block(G).unwrap(); // PENDING -> PENDING_BLOCKED
        assert_eq!(m.state(G), SeptState::PendingBlocked);
        let e = m.range_block(G).unwrap_err();
        assert_eq!(
            e.status().unwrap().class(),
            tdx::TDX_GPA_RANGE_ALREADY_BLOCKED
        );
        assert!(
            !e.status().unwrap().is_error(),
            "ALREADY_BLOCKED is a warning"
        );
    }

    #[test]
    fn unblock_needs_tracking() {
        let mut m = SeptModel::new();
        assert_eq!(
            class(m.range_unblock(G)),
            tdx::TDX_EPT_ENTRY_STATE_INCORRECT
        );
        m.page_aug(G, H).unwrap();
        m.page_accept(G).unwrap();
        assert_eq!(
            class(m.range_unblock(G)),
            tdx::TDX_EPT_ENTRY_STATE_INCORRECT
        );
        m.range_block(G).unwrap();
        let e = m.range_unblock(G).unwrap_err();
        assert_eq!(
            e.status().unwrap(),
            TdxStatus::with_operand(tdx::TDX_TLB_TRACKING_NOT_DONE, tdx::OPERAND_ID_SEPT)
        );
        m.track().unwrap();
        m.range_unblock(G).unwrap();
        assert_eq!(m.state(G), SeptState::Mapped);
    }

    #[test]
    fn pending_blocked_unblocks_to_pending() {
        let mut m = SeptModel::new();
        m.page_aug(G, H).unwrap();
        m.range_block(G).unwrap();
        m.track().unwrap();
        m.range_unblock(G).unwrap();
        assert_eq!(m.state(G), SeptState::Pending);
        m.page_accept(G).unwrap();
        assert_eq!(m.state(G), SeptState::Mapped);
    }

    #[test]
    fn remove_rules() {
        let mut m = SeptModel::new();
        assert_eq!(class(m.page_remove(G)), tdx::TDX_EPT_ENTRY_STATE_INCORRECT);
        m.page_aug(G, H).unwrap();
        assert_eq!(class(m.page_remove(G)), tdx::TDX_GPA_RANGE_NOT_BLOCKED);
        m.page_accept(G).unwrap();
        assert_eq!(class(m.page_remove(G)), tdx::TDX_GPA_RANGE_NOT_BLOCKED);
        m.range_block(G).unwrap();
        assert_eq!(class(m.page_remove(G)), tdx::TDX_TLB_TRACKING_NOT_DONE);
        m.track().unwrap();
        assert_eq!(m.page_remove(G).unwrap(), H);
        // The host page is free again: it can back another GPA.
        m.page_aug(G + PAGE_SIZE, H).unwrap();
    }

    #[test]
    fn tracking_waits_for_vcpus_of_the_old_epoch() {
        let mut m = SeptModel::new();
        m.page_aug(G, H).unwrap();
        m.page_accept(G).unwrap();
        m.vcpu_enter(0); // runs in epoch 1
        m.range_block(G).unwrap(); // bepoch 1
        m.track().unwrap(); // epoch 2; vCPU 0 still in epoch 1
        assert!(!m.is_tracked(G));
        assert!(m.guest_may_access(G), "stale TLB of vCPU 0");
        assert_eq!(class(m.page_remove(G)), tdx::TDX_TLB_TRACKING_NOT_DONE);
        assert_eq!(class(m.range_unblock(G)), tdx::TDX_TLB_TRACKING_NOT_DONE);
        // A second TRACK must wait for vCPU 0 to leave epoch 1.
        let e = m.track().unwrap_err();
        assert_eq!(
            e.status().unwrap(),
            TdxStatus(tdx::TDX_PREVIOUS_TLB_EPOCH_BUSY)
        );
        m.vcpu_exit(0);
        assert!(m.is_tracked(G));
        assert!(!m.guest_may_access(G));
        m.vcpu_enter(0); // re-enters in epoch 2: does not matter for bepoch 1
        assert!(m.is_tracked(G));
        assert_eq!(m.page_remove(G).unwrap(), H);
        m.check_consistency().unwrap();
    }

    #[test]
    fn vcpu_entered_after_block_still_counts_until_tracked() {
        // The rule is conservative: a vCPU that entered in the blocking
        // epoch (even after the BLOCK) must leave before the page is tracked.
        let mut m = SeptModel::new();
        m.page_aug(G, H).unwrap();
        m.range_block(G).unwrap();
        m.vcpu_enter(3);
        m.track().unwrap();
        assert!(!m.is_tracked(G));
        m.kick_vcpus().unwrap();
        assert!(m.is_tracked(G));
        assert_eq!(m.running_vcpus().collect::<Vec<_>>(), vec![(3, 2)]);
    }

    #[test]
    fn flush_retries_after_kick() {
        let mut m = SeptModel::new();
        m.page_aug(G, H).unwrap();
        m.vcpu_enter(1);
        m.track().unwrap(); // vCPU 1 now lags one epoch
        m.range_block(G).unwrap(); // bepoch 2
        assert!(m.track().is_err(), "vCPU 1 still in epoch 1");
        m.flush().unwrap(); // kick, TRACK, kick
        assert!(m.is_tracked(G));
        assert_eq!(m.page_remove(G).unwrap(), H);
    }

    #[test]
    fn accept_rules() {
        let mut m = SeptModel::new();
        assert_eq!(m.page_accept(G), Err(SeamError::EptViolation { gpa: G }));
        m.page_aug(G, H).unwrap();
        m.page_accept(G).unwrap();
        let e = m.page_accept(G).unwrap_err();
        assert_eq!(
            e.status().unwrap(),
            TdxStatus(tdx::TDX_PAGE_ALREADY_ACCEPTED)
        );
        assert!(!e.status().unwrap().is_error());
        m.range_block(G).unwrap();
        assert_eq!(m.page_accept(G), Err(SeamError::EptViolation { gpa: G }));
        assert_eq!(class(m.page_accept(G | 0x10)), tdx::TDX_OPERAND_INVALID);
    }

    #[test]
    fn epoch_starts_at_one() {
        let m = SeptModel::new();
        assert_eq!(m.td_epoch(), 1);
        assert_eq!(m.refcount(), [0, 0]);
    }
}
