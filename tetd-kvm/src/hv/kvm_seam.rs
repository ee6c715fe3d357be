//! The KVM backend of TETD-H's SEAM layer.
//!
//! [`KvmSeam`] answers every SEAM operation with the software model of the
//! TDX module ([`SeptModel`]: the rules, statuses and TLB epochs) and then
//! makes the guest's memory map agree with the model, one KVM memory slot
//! per zone:
//!
//! | model state of the zone's pages | KVM memory slot over the zone's pool memory |
//! |---|---|
//! | all MAPPED | installed: the guest reads and writes the zone |
//! | any page PENDING, BLOCKED, PENDING_BLOCKED or FREE | deleted: every guest access exits to the VMM (`KVM_EXIT_MMIO`) and is reported as a violation |
//! | all FREE (removed) | the zone is forgotten |
//!
//! So TDH.MEM.PAGE.AUG registers the zone (no slot yet: its pages are
//! PENDING), the host's ACCEPT installs the slot, TDH.MEM.RANGE.BLOCK
//! deletes it, TDH.MEM.RANGE.UNBLOCK installs it again (same pool memory,
//! same content) and TDH.MEM.PAGE.REMOVE forgets it. Deleting a slot is
//! synchronous for the whole VM: `KVM_SET_USER_MEMORY_REGION` zaps the
//! slot's EPT (or shadow) entries and flushes every vCPU's TLB before it
//! returns (`kvm_set_memslot` → `kvm_arch_flush_shadow_memslot`, remote TLB
//! flush with `KVM_REQUEST_WAIT`), so no vCPU keeps a stale translation. That
//! is why [`SeamOps::kick_vcpus`] here only updates the model's epochs: the
//! TLB shoot-down TDX needs TRACK + kick for has already happened.
//!
//! The per-page operations (recovery paths) keep the same invariant: taking
//! one page away takes the whole slot away, and the slot comes back only when
//! every page of the zone is MAPPED again. If a slot change fails, the
//! operation fails with [`SeamError::Backend`] even where the model
//! succeeded, so TETD-H never believes a zone is blocked while the guest can
//! still reach it.
//!
//! Before [`KvmSeam::attach`] (no VM yet) only the model changes; `attach`
//! creates the slots of the zones that exist by then.

use std::collections::BTreeMap;

use tetd::abi::PAGE_SIZE;

use super::EngineSeam;
use crate::seam::{Gpa, Hpa, SeamError, SeamOp, SeamOps, SeamResult, ZoneRange};
use crate::seam_model::SeptModel;
use crate::vmm::{VmMemoryControl, ZonePool, ZoneSlot};

#[derive(Debug, Clone, Copy)]
struct Tracked {
    hpa: Hpa,
    pages: u64,
    slot: Option<ZoneSlot>,
}

impl Tracked {
    fn range(&self, gpa: Gpa) -> ZoneRange {
        ZoneRange {
            gpa,
            hpa: self.hpa,
            pages: self.pages,
        }
    }
}

/// SEAM backend for the KVM engine: the TDX-module model plus real KVM
/// memory slots (see the module documentation).
#[derive(Default)]
pub struct KvmSeam {
    model: SeptModel,
    vm: Option<(VmMemoryControl, ZonePool)>,
    /// Zones by first GPA.
    zones: BTreeMap<Gpa, Tracked>,
}

impl std::fmt::Debug for KvmSeam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmSeam")
            .field("attached", &self.vm.is_some())
            .field("zones", &self.zones)
            .finish()
    }
}

impl KvmSeam {
    /// A backend with a fresh model, not attached to a VM.
    pub fn new() -> Self {
        Self::default()
    }

    /// The model (page states, epochs, statistics).
    pub fn model(&self) -> &SeptModel {
        &self.model
    }

    /// Connects the backend to a VM: zone slots are made in `mem`, over
    /// memory of `pool` (the pool TETD-H allocates zones from). Creates the
    /// slots of the zones that already exist.
    pub fn attach(&mut self, mem: VmMemoryControl, pool: ZonePool) -> SeamResult<()> {
        self.vm = Some((mem, pool));
        let starts: Vec<Gpa> = self.zones.keys().copied().collect();
        for g in starts {
            self.sync(g, SeamOp::PageAug)?;
        }
        Ok(())
    }

    /// True if the zone starting at `gpa` currently has an installed slot
    /// (the guest can access it).
    pub fn zone_present(&self, gpa: Gpa) -> bool {
        let Some(t) = self.zones.get(&gpa) else {
            return false;
        };
        match (&self.vm, t.slot) {
            (Some((mem, _)), Some(slot)) => mem.zone_info(slot).is_ok_and(|i| i.present),
            _ => false,
        }
    }

    /// The first GPA of the tracked zone containing `gpa`.
    fn zone_of(&self, gpa: Gpa) -> Option<Gpa> {
        self.zones
            .range(..=gpa)
            .next_back()
            .filter(|(g, t)| gpa < **g + t.pages * PAGE_SIZE)
            .map(|(g, _)| *g)
    }

    /// Makes the slot of the zone at `start` agree with the model.
    fn sync(&mut self, start: Gpa, op: SeamOp) -> SeamResult<()> {
        let Some(t) = self.zones.get(&start).copied() else {
            return Ok(());
        };
        let r = t.range(start);
        // one walk over the zone's model entries, no allocation (this runs
        // at every VMM_ENTER and VMM_RESUME)
        let summary = self.model.range_summary(start, t.pages);
        let all_free = summary.all_free;
        let accessible = summary.all_mapped;
        let backend = |msg: String| SeamError::Backend {
            op,
            gpa: Some(start),
            msg,
        };
        let Some((mem, pool)) = &self.vm else {
            if all_free {
                self.zones.remove(&start);
            }
            return Ok(());
        };
        match t.slot {
            None if all_free => {
                self.zones.remove(&start);
            }
            None => {
                let slot = mem
                    .register_zone(start, pool, t.hpa, r.len(), accessible)
                    .map_err(|e| backend(e.to_string()))?;
                if let Some(z) = self.zones.get_mut(&start) {
                    z.slot = Some(slot);
                }
            }
            Some(slot) if all_free => {
                mem.unmap_zone(slot).map_err(|e| backend(e.to_string()))?;
                self.zones.remove(&start);
            }
            Some(slot) if accessible => {
                mem.unblock_zone(slot).map_err(|e| backend(e.to_string()))?
            }
            Some(slot) => mem.block_zone(slot).map_err(|e| backend(e.to_string()))?,
        }
        Ok(())
    }

    /// Result of a model operation on the zone at `start`, after syncing
    /// the slot: a failed slot change wins over the model's answer (the
    /// guest could still reach memory the model considers taken away).
    fn finish<T>(&mut self, start: Option<Gpa>, op: SeamOp, r: SeamResult<T>) -> SeamResult<T> {
        let Some(start) = start else {
            return r;
        };
        match self.sync(start, op) {
            Ok(()) => r,
            Err(e) => {
                log::error!("KVM zone slot at {start:#x}: {e}");
                Err(e)
            }
        }
    }

    /// Starts tracking `zone` (before AUG), refusing overlaps with tracked zones.
    fn track_zone(&mut self, zone: &ZoneRange, op: SeamOp) -> SeamResult<()> {
        let end = zone.gpa + zone.len();
        if let Some((g, t)) = self
            .zones
            .iter()
            .find(|(g, t)| zone.gpa < **g + t.pages * PAGE_SIZE && **g < end)
        {
            return Err(SeamError::Backend {
                op,
                gpa: Some(zone.gpa),
                msg: format!(
                    "zone [{:#x}, +{:#x}) overlaps the zone at [{g:#x}, +{:#x})",
                    zone.gpa,
                    zone.len(),
                    t.pages * PAGE_SIZE
                ),
            });
        }
        self.zones.insert(
            zone.gpa,
            Tracked {
                hpa: zone.hpa,
                pages: zone.pages,
                slot: None,
            },
        );
        Ok(())
    }
}

impl SeamOps for KvmSeam {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        // A page outside any zone becomes a one-page zone of its own.
        if self.zone_of(gpa).is_none() && gpa % PAGE_SIZE == 0 {
            let r = self.model.page_aug(gpa, hpa);
            if r.is_ok() {
                let z = ZoneRange { gpa, hpa, pages: 1 };
                self.track_zone(&z, SeamOp::PageAug)?;
            }
            return self.finish(Some(gpa), SeamOp::PageAug, r);
        }
        let r = self.model.page_aug(gpa, hpa);
        let z = self.zone_of(gpa);
        self.finish(z, SeamOp::PageAug, r)
    }

    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        let r = self.model.range_block(gpa);
        let z = self.zone_of(gpa);
        self.finish(z, SeamOp::RangeBlock, r)
    }

    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        let r = self.model.range_unblock(gpa);
        let z = self.zone_of(gpa);
        self.finish(z, SeamOp::RangeUnblock, r)
    }

    fn track(&mut self) -> SeamResult<()> {
        self.model.track()
    }

    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        let r = self.model.page_remove(gpa);
        let z = self.zone_of(gpa);
        self.finish(z, SeamOp::PageRemove, r)
    }

    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        let r = self.model.page_accept(gpa);
        let z = self.zone_of(gpa);
        self.finish(z, SeamOp::PageAccept, r)
    }

    fn kick_vcpus(&mut self) -> SeamResult<()> {
        // Slot deletion already forced every vCPU out and flushed its TLB
        // (module documentation); only the model's epochs move.
        self.model.kick_vcpus()
    }

    fn vcpu_enter(&mut self, vcpu: u32) {
        self.model.vcpu_enter(vcpu);
    }

    fn vcpu_exit(&mut self, vcpu: u32) {
        self.model.vcpu_exit(vcpu);
    }

    fn host_accepts(&self) -> bool {
        true
    }

    fn aug_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        self.track_zone(zone, SeamOp::PageAug)?;
        let r = self.model.aug_zone(zone);
        self.finish(Some(zone.gpa), SeamOp::PageAug, r)
    }

    fn accept_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.accept_zone(zone);
        let z = self.zone_of(zone.gpa);
        self.finish(z, SeamOp::PageAccept, r)
    }

    fn block_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.block_zone(zone);
        let z = self.zone_of(zone.gpa);
        self.finish(z, SeamOp::RangeBlock, r)
    }

    fn unblock_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.unblock_zone(zone);
        let z = self.zone_of(zone.gpa);
        self.finish(z, SeamOp::RangeUnblock, r)
    }

    fn remove_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.remove_zone(zone);
        let z = self.zone_of(zone.gpa);
        self.finish(z, SeamOp::PageRemove, r)
    }
}

impl EngineSeam for KvmSeam {
    fn enforces_blocking(&self) -> bool {
        true
    }
    fn blocking_note(&self) -> &'static str {
        "zone blocking enforced: a blocked zone has no KVM memory slot, guest accesses trap and are reported"
    }
}
