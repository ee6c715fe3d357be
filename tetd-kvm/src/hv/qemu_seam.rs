//! The QEMU/TCG backend of TETD-H's SEAM layer.
//!
//! Under QEMU the whole zone window `[ZONE_GPA_BASE, +ZONE_GPA_SIZE)` is one
//! guest memory device (a `pc-dimm` over the zone pool's shared memory file,
//! see [`crate::qemu`]), mapped for the guest's whole life: pool page `i` is
//! guest-physical `ZONE_GPA_BASE + i * 4096`. The host process cannot take
//! pages of it away from a running TCG guest, so:
//!
//! * every SEAM operation is decided by the software model ([`SeptModel`]):
//!   TETD-H's rules, statuses and epochs are exactly those of the KVM and
//!   TDX backends, and the guest gets the same answers;
//! * **BLOCK and UNBLOCK are not enforced**: a guest (kernel) access to a
//!   blocked zone succeeds and is not reported
//!   ([`EngineSeam::enforces_blocking`] is false);
//! * AUG checks that the pool page backing a zone page is the one QEMU shows
//!   at that GPA (pool offset = GPA offset in the window). TETD-H allocates
//!   zone GPAs and pool pages with two allocators over equally large ranges
//!   in the same order, so they agree; if they ever did not, the zone's
//!   memory would not be what the guest sees, and AUG fails
//!   ([`SeamError::Backend`]) instead of handing out the wrong memory;
//! * freed zones are still scrubbed (the pool punches holes in its file, which
//!   the guest sees as zeroes), so AGENT_ENABLE / a re-used GPA range starts
//!   from zeroed memory as on the other backends.

use tetd::abi::{PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE};

use super::EngineSeam;
use crate::seam::{Gpa, Hpa, SeamError, SeamOp, SeamOps, SeamResult, ZoneRange};
use crate::seam_model::SeptModel;

/// SEAM backend for the QEMU engine: the model, plus the check that zone
/// memory is where QEMU maps it (see the module documentation).
#[derive(Debug)]
pub struct QemuSeam {
    model: SeptModel,
    pool_base: u64,
}

impl QemuSeam {
    /// A backend for a zone pool mapped at host address `pool_base` whose
    /// page `i` the guest sees at `ZONE_GPA_BASE + i * PAGE_SIZE`.
    pub fn new(pool_base: u64) -> Self {
        QemuSeam {
            model: SeptModel::new(),
            pool_base,
        }
    }

    /// The model (page states, epochs, statistics).
    pub fn model(&self) -> &SeptModel {
        &self.model
    }

    fn check_backing(&self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        let in_window = (ZONE_GPA_BASE..ZONE_GPA_BASE + ZONE_GPA_SIZE).contains(&gpa);
        let expected = self.pool_base.wrapping_add(gpa.wrapping_sub(ZONE_GPA_BASE));
        if in_window && hpa == expected {
            return Ok(());
        }
        Err(SeamError::Backend {
            op: SeamOp::PageAug,
            gpa: Some(gpa),
            msg: if in_window {
                format!(
                    "pool page {hpa:#x} is not what the guest sees at this GPA (that is pool page {expected:#x})"
                )
            } else {
                "outside the zone window QEMU maps".to_string()
            },
        })
    }
}

impl SeamOps for QemuSeam {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        self.check_backing(gpa, hpa)?;
        self.model.page_aug(gpa, hpa)
    }
    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        self.model.range_block(gpa)
    }
    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        self.model.range_unblock(gpa)
    }
    fn track(&mut self) -> SeamResult<()> {
        self.model.track()
    }
    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        self.model.page_remove(gpa)
    }
    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        self.model.page_accept(gpa)
    }
    fn kick_vcpus(&mut self) -> SeamResult<()> {
        self.model.kick_vcpus()
    }
    fn vcpu_enter(&mut self, vcpu: u32) {
        self.model.vcpu_enter(vcpu);
    }
    fn vcpu_exit(&mut self, vcpu: u32) {
        self.model.vcpu_exit(vcpu);
    }
    fn aug_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        // Check every page before the model changes anything.
        for i in 0..zone.pages {
            self.check_backing(zone.gpa + i * PAGE_SIZE, zone.hpa + i * PAGE_SIZE)?;
        }
        self.model.aug_zone(zone)
    }
}

impl EngineSeam for QemuSeam {
    fn enforces_blocking(&self) -> bool {
        false
    }
    fn blocking_note(&self) -> &'static str {
        "zone blocking NOT enforced (QEMU/TCG engine): BLOCK/UNBLOCK are checked by the TDX model only; the guest can still access blocked zones and such accesses are not reported"
    }
}
