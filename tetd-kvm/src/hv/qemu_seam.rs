//! The QEMU/TCG backend of TETD-H's SEAM layer.
//!
//! Under QEMU the whole zone window `[ZONE_GPA_BASE, +ZONE_GPA_SIZE)` is one
//! guest memory device (a `pc-dimm` over the zone pool's shared memory file,
//! see [`crate::qemu`]), mapped for the guest's whole life: pool page `i` is
//! guest-physical `ZONE_GPA_BASE + i * 4096`. QEMU cannot be asked to unmap
//! it, but TETD-H owns the file, so a blocked page is taken **out of the
//! file**:
//!
//! * every SEAM operation is decided by the software model ([`SeptModel`]):
//!   TETD-H's rules, statuses and epochs are exactly those of the KVM and
//!   TDX backends, and the guest gets the same answers;
//! * after each operation the pool file is made to agree with the model,
//!   page by page (as [`super::KvmSeam`] does with memory slots): a page the
//!   guest may not reach on TDX (PENDING, BLOCKED, PENDING_BLOCKED) is copied
//!   into TETD-H's private memory and **punched out** of the file
//!   (`fallocate(PUNCH_HOLE)`): every mapping of the file, QEMU's included,
//!   reads zeroes there — CPU accesses through any guest mapping, QEMU's
//!   page-table walks and device DMA all go through QEMU's one mapping of
//!   the file. A MAPPED page gets its saved content written back (UNBLOCK),
//!   so whatever the guest wrote while the page was blocked is overwritten
//!   and the agent sees exactly what it left;
//! * a guest access to a punched page (read or write: a shmem fault
//!   allocates a page either way) makes the page present again.
//!   [`SeamOps::take_touched`] finds such pages (`SEEK_DATA`) before UNBLOCK
//!   and before REMOVE, and at the end of a run: TETD-H reports each as a
//!   violation against the zone's agent, *after* the access (at the zone's
//!   next window, its removal or the TD's end; the access itself returned
//!   zeroes or wrote into a page that is discarded);
//! * QEMU keeps host pointers to guest RAM in its soft TLB; they point into
//!   its mapping of the file, whose content the punch changes underneath
//!   them, so no stale data is reachable through them (`tests/qemu_engine.rs`
//!   reads a zone from the guest right after a window);
//! * AUG scrubs the page first (a free window page may hold what the guest
//!   wrote there), so a new zone starts zeroed, as on TDX;
//! * saved pages live as long as the page is not FREE, whatever else fails
//!   (a refused UNBLOCK keeps them), and are zeroed when the page is removed
//!   or the backend is dropped;
//! * AUG also checks that the pool page backing a zone page is the one QEMU
//!   shows at that GPA (pool offset = GPA offset in the window): TETD-H
//!   allocates zone GPAs and pool pages with two allocators over equally
//!   large ranges in the same order, so they agree; if they ever did not,
//!   AUG fails ([`SeamError::Backend`]) instead of handing out the wrong
//!   memory.
//!
//! [`QemuSeam::new`] without a pool (unit tests of the rules) only runs the
//! model and enforces nothing ([`EngineSeam::enforces_blocking`] is false).

use tetd::abi::{PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE};

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroize;

use super::EngineSeam;
use crate::host::lock_pool;
use crate::seam::{Gpa, Hpa, SeamError, SeamOp, SeamOps, SeamResult, ZoneRange};
use crate::seam_model::{SeptModel, SeptState};
use crate::zone_alloc::HostPool;

/// SEAM backend for the QEMU engine: the model, plus the zone pool file
/// kept in agreement with it (see the module documentation).
pub struct QemuSeam {
    model: SeptModel,
    pool_base: u64,
    /// The shared pool whose file QEMU maps (`None`: model only).
    pool: Option<Arc<Mutex<HostPool>>>,
    /// Content of every page taken out of the file, by GPA.
    saved: BTreeMap<Gpa, Box<[u8; PAGE_SIZE as usize]>>,
}

impl std::fmt::Debug for QemuSeam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuSeam")
            .field("enforcing", &self.pool.is_some())
            .field("pages_taken_away", &self.saved.len())
            .finish()
    }
}

impl QemuSeam {
    /// A model-only backend for a zone pool mapped at host address
    /// `pool_base` whose page `i` the guest sees at
    /// `ZONE_GPA_BASE + i * PAGE_SIZE`. Enforces nothing.
    pub fn new(pool_base: u64) -> Self {
        QemuSeam {
            model: SeptModel::new(),
            pool_base,
            pool: None,
            saved: BTreeMap::new(),
        }
    }

    /// The enforcing backend over `pool`, a shared pool
    /// ([`HostPool::new_shared`]) exactly as large as the zone window, whose
    /// file QEMU maps at [`ZONE_GPA_BASE`].
    pub fn enforcing(pool: Arc<Mutex<HostPool>>) -> Self {
        let base = lock_pool(&pool).base_addr();
        QemuSeam {
            model: SeptModel::new(),
            pool_base: base,
            pool: Some(pool),
            saved: BTreeMap::new(),
        }
    }

    /// The model (page states, epochs, statistics).
    pub fn model(&self) -> &SeptModel {
        &self.model
    }

    /// Pages currently taken out of the pool file (their content is in
    /// TETD-H's private memory).
    pub fn pages_taken_away(&self) -> usize {
        self.saved.len()
    }

    /// TETD-H's saved copy of a page taken out of the pool file (what the
    /// agent will see at the zone's next window), `None` if the page is not
    /// taken away.
    pub fn saved_page(&self, gpa: Gpa) -> Option<&[u8]> {
        self.saved.get(&(gpa & !(PAGE_SIZE - 1))).map(|p| &p[..])
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

    /// Zeroes `pages` pages of the pool file from `gpa` (before AUG).
    fn scrub(&mut self, gpa: Gpa, pages: u64, op: SeamOp) -> SeamResult<()> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        lock_pool(pool)
            .punch(window_host(self.pool_base, gpa), pages * PAGE_SIZE)
            .map_err(|e| backend(op, gpa, format!("scrubbing the pool file: {e}")))
    }

    /// Makes the pool file agree with the model for `pages` pages from
    /// `gpa` (module documentation), then returns `r`; a failure of the file
    /// operations wins over the model's answer.
    fn sync<T>(&mut self, gpa: Gpa, pages: u64, op: SeamOp, r: SeamResult<T>) -> SeamResult<T> {
        let Some(pool) = self.pool.clone() else {
            return r;
        };
        let mut pool = lock_pool(&pool);
        let base = self.pool_base;
        // Pages newly taken away, as runs (first GPA, pages): punched below,
        // one fallocate per run.
        let mut runs: Vec<(Gpa, u64)> = Vec::new();
        let mut result = Ok(());
        for i in 0..pages {
            let g = gpa + i * PAGE_SIZE;
            let host = window_host(base, g);
            let step = match self.model.state(g) {
                SeptState::Mapped => match self.saved.remove(&g) {
                    Some(mut page) => {
                        // An all-zero page is restored by punching (no
                        // allocation, and it overwrites a guest write as
                        // well as a copy would).
                        let res = if page.iter().all(|b| *b == 0) {
                            pool.punch(host, PAGE_SIZE)
                        } else {
                            pool.write(host, &page[..])
                        };
                        match res {
                            Ok(()) => {
                                page.zeroize();
                                Ok(())
                            }
                            Err(e) => {
                                self.saved.insert(g, page); // never lose it
                                Err(format!("restoring page {g:#x}: {e}"))
                            }
                        }
                    }
                    None => Ok(()),
                },
                SeptState::Free => {
                    if let Some(mut page) = self.saved.remove(&g) {
                        page.zeroize();
                    }
                    Ok(())
                }
                SeptState::Pending | SeptState::Blocked | SeptState::PendingBlocked => {
                    match self.saved.entry(g) {
                        Entry::Occupied(_) => Ok(()),
                        Entry::Vacant(slot) => {
                            let mut page = Box::new([0u8; PAGE_SIZE as usize]);
                            match pool.read(host, &mut page[..]) {
                                Ok(()) => {
                                    slot.insert(page);
                                    match runs.last_mut() {
                                        Some((s, n)) if *s + *n * PAGE_SIZE == g => *n += 1,
                                        _ => runs.push((g, 1)),
                                    }
                                    Ok(())
                                }
                                Err(e) => Err(format!("saving page {g:#x}: {e}")),
                            }
                        }
                    }
                }
            };
            if let Err(msg) = step {
                result = Err(msg);
            }
        }
        for (s, n) in runs {
            if let Err(e) = pool.punch(window_host(base, s), n * PAGE_SIZE) {
                result = Err(format!("punching {s:#x}+{n} pages: {e}"));
            }
        }
        match result {
            Ok(()) => r,
            Err(msg) => {
                log::error!("QEMU zone pool at {gpa:#x}: {msg}");
                Err(backend(op, gpa, msg))
            }
        }
    }
}

/// Host address, in a pool mapped at `base`, of window GPA `gpa` (pool
/// offset = GPA offset in the zone window).
fn window_host(base: u64, gpa: Gpa) -> u64 {
    base + (gpa - ZONE_GPA_BASE)
}

fn backend(op: SeamOp, gpa: Gpa, msg: String) -> SeamError {
    SeamError::Backend {
        op,
        gpa: Some(gpa),
        msg,
    }
}

impl Drop for QemuSeam {
    fn drop(&mut self) {
        for page in self.saved.values_mut() {
            page.zeroize();
        }
    }
}

impl SeamOps for QemuSeam {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        self.check_backing(gpa, hpa)?;
        if self.model.state(gpa) == SeptState::Free {
            self.scrub(gpa & !(PAGE_SIZE - 1), 1, SeamOp::PageAug)?;
        }
        let r = self.model.page_aug(gpa, hpa);
        self.sync(gpa & !(PAGE_SIZE - 1), 1, SeamOp::PageAug, r)
    }
    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        let r = self.model.range_block(gpa);
        self.sync(gpa & !(PAGE_SIZE - 1), 1, SeamOp::RangeBlock, r)
    }
    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        let r = self.model.range_unblock(gpa);
        self.sync(gpa & !(PAGE_SIZE - 1), 1, SeamOp::RangeUnblock, r)
    }
    fn track(&mut self) -> SeamResult<()> {
        self.model.track()
    }
    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        let r = self.model.page_remove(gpa);
        self.sync(gpa & !(PAGE_SIZE - 1), 1, SeamOp::PageRemove, r)
    }
    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        let r = self.model.page_accept(gpa);
        self.sync(gpa & !(PAGE_SIZE - 1), 1, SeamOp::PageAccept, r)
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
        if self.model.range_summary(zone.gpa, zone.pages).all_free {
            self.scrub(zone.gpa, zone.pages, SeamOp::PageAug)?;
        }
        let r = self.model.aug_zone(zone);
        self.sync(zone.gpa, zone.pages, SeamOp::PageAug, r)
    }
    fn accept_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.accept_zone(zone);
        self.sync(zone.gpa, zone.pages, SeamOp::PageAccept, r)
    }
    fn block_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.block_zone(zone);
        self.sync(zone.gpa, zone.pages, SeamOp::RangeBlock, r)
    }
    fn unblock_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.unblock_zone(zone);
        self.sync(zone.gpa, zone.pages, SeamOp::RangeUnblock, r)
    }
    fn remove_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        let r = self.model.remove_zone(zone);
        self.sync(zone.gpa, zone.pages, SeamOp::PageRemove, r)
    }
    fn take_touched(&mut self, zone: &ZoneRange) -> Vec<Gpa> {
        let Some(pool) = &self.pool else {
            return Vec::new();
        };
        let mut pool = lock_pool(pool);
        let present = match pool.present_pages(window_host(self.pool_base, zone.gpa), zone.len()) {
            Ok(p) => p,
            Err(e) => {
                log::error!("QEMU zone pool at {:#x}: page presence: {e}", zone.gpa);
                return Vec::new();
            }
        };
        let mut touched = Vec::new();
        for host in present {
            let g = ZONE_GPA_BASE + (host - self.pool_base);
            if self.saved.contains_key(&g) {
                // Taken away, yet present: the guest touched it. Punch it
                // again so that it is reported once.
                if let Err(e) = pool.punch(host, PAGE_SIZE) {
                    log::error!("QEMU zone pool: re-punching {g:#x}: {e}");
                }
                touched.push(g);
            }
        }
        touched
    }
}

impl EngineSeam for QemuSeam {
    fn enforces_blocking(&self) -> bool {
        self.pool.is_some()
    }
    fn blocking_note(&self) -> &'static str {
        if self.pool.is_some() {
            "zone blocking enforced (QEMU/TCG engine): a blocked zone's pages are taken out of the zone file QEMU maps (saved by TETD-H, hole punched; the guest reads zeroes, its writes are discarded at UNBLOCK); guest accesses are found afterwards (page present again) and reported at the zone's next window, removal or the TD's end"
        } else {
            "zone blocking NOT enforced (QEMU seam without a pool: TDX model only)"
        }
    }
}
