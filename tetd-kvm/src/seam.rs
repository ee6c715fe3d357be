//! The SEAM interface of TETD-H: the TDX-module operations the host uses to
//! manage secret-zone pages, behind one trait ([`SeamOps`]) so that
//!
//! * the software model ([`crate::seam_model::SeptModel`]) answers them with
//!   the TDX module's Secure-EPT rules (unit- and property-tested),
//! * a KVM backend can wrap the model and add real effects (e.g. BLOCK =
//!   remove the zone's KVM memory slot, UNBLOCK = add it back), and
//! * a real-TDX backend issues the SEAMCALLs themselves.
//!
//! Leaf numbers and completion status codes come from [`tetd::abi::tdx`]
//! (sources: Intel TDX module `include/tdx_api_defs.h`,
//! `include/auto_gen/tdx_error_codes_defs.h`; Linux
//! `arch/x86/virt/vmx/tdx/tdx.h`, `arch/x86/kvm/vmx/tdx_errno.h`).
//!
//! # Batching
//! The per-page leaves ([`SeamOps::page_aug`], [`SeamOps::range_block`], ...)
//! are what the TDX module offers. TETD-H always works on whole zones, so it
//! calls the zone-level methods ([`SeamOps::block_zone`], ...), whose default
//! implementations loop over the pages in ascending GPA order and stop at the
//! first failure (the error names its GPA). A backend may override them to
//! batch real effects (one memslot change per zone). TLB tracking is done
//! once per batch through [`SeamOps::flush`] (TDH.MEM.TRACK + kicking the
//! vCPUs out of guest mode, exactly like Linux `tdx_track()` in
//! `arch/x86/kvm/vmx/tdx.c`).

use std::fmt;

use tetd::abi::tdx;
use tetd::abi::PAGE_SIZE;

/// A guest-physical address.
pub type Gpa = u64;
/// A host-physical address (in the simulation: the host virtual address of
/// the page in the zone pool, which is what a KVM memory slot needs).
pub type Hpa = u64;

/// A TDX completion status as returned in RAX.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TdxStatus(pub u64);

impl TdxStatus {
    /// TDX_SUCCESS.
    pub const SUCCESS: TdxStatus = TdxStatus(tdx::TDX_SUCCESS);

    /// `class | operand_id`, the way the TDX module's
    /// `api_error_with_operand_id()` builds it.
    pub const fn with_operand(class: u64, operand: u64) -> TdxStatus {
        TdxStatus(class | operand)
    }

    /// The status class (`status & TDX_SEAMCALL_STATUS_MASK`).
    pub const fn class(self) -> u64 {
        self.0 & tdx::STATUS_MASK
    }

    /// The detail bits (31:0), usually the operand id.
    pub const fn detail(self) -> u64 {
        self.0 & !tdx::STATUS_MASK
    }

    /// Bit 63: an error (not success, not a warning).
    pub const fn is_error(self) -> bool {
        self.0 & tdx::STATUS_ERROR_BIT != 0
    }

    /// Symbolic name of the class.
    pub fn name(self) -> &'static str {
        tdx::status_name(self.0)
    }
}

impl fmt::Debug for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#018x})", self.name(), self.0)
    }
}

/// The TDX operations TETD-H models or issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeamOp {
    /// TDH.MEM.PAGE.AUG (SEAMCALL 6).
    PageAug,
    /// TDH.MEM.RANGE.BLOCK (SEAMCALL 7).
    RangeBlock,
    /// TDH.MEM.RANGE.UNBLOCK (SEAMCALL 39).
    RangeUnblock,
    /// TDH.MEM.TRACK (SEAMCALL 38).
    Track,
    /// TDH.MEM.PAGE.REMOVE (SEAMCALL 29).
    PageRemove,
    /// TDG.MEM.PAGE.ACCEPT (TDCALL 6, executed by the guest).
    PageAccept,
    /// Forcing all vCPUs out of guest mode (KVM_REQ_OUTSIDE_GUEST_MODE).
    KickVcpus,
}

impl SeamOp {
    /// The leaf number (SEAMCALL or TDCALL), `None` for host-only actions.
    pub const fn leaf(self) -> Option<u64> {
        match self {
            SeamOp::PageAug => Some(tdx::TDH_MEM_PAGE_AUG),
            SeamOp::RangeBlock => Some(tdx::TDH_MEM_RANGE_BLOCK),
            SeamOp::RangeUnblock => Some(tdx::TDH_MEM_RANGE_UNBLOCK),
            SeamOp::Track => Some(tdx::TDH_MEM_TRACK),
            SeamOp::PageRemove => Some(tdx::TDH_MEM_PAGE_REMOVE),
            SeamOp::PageAccept => Some(tdx::TDG_MEM_PAGE_ACCEPT),
            SeamOp::KickVcpus => None,
        }
    }

    /// Intel's name.
    pub const fn name(self) -> &'static str {
        match self {
            SeamOp::PageAug => "TDH.MEM.PAGE.AUG",
            SeamOp::RangeBlock => "TDH.MEM.RANGE.BLOCK",
            SeamOp::RangeUnblock => "TDH.MEM.RANGE.UNBLOCK",
            SeamOp::Track => "TDH.MEM.TRACK",
            SeamOp::PageRemove => "TDH.MEM.PAGE.REMOVE",
            SeamOp::PageAccept => "TDG.MEM.PAGE.ACCEPT",
            SeamOp::KickVcpus => "kick vCPUs",
        }
    }
}

impl fmt::Display for SeamOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a SEAM operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeamError {
    /// The TDX module (or its model) completed the leaf with a non-success
    /// status.
    Tdx {
        /// The operation.
        op: SeamOp,
        /// The page it was about, if any.
        gpa: Option<Gpa>,
        /// The completion status.
        status: TdxStatus,
    },
    /// TDG.MEM.PAGE.ACCEPT of a page that is not PENDING (free, blocked):
    /// the TDX module does not return to the guest but TD-exits to the host
    /// with an EPT violation (tdx-module `tdg_mem_page_accept.c`,
    /// `TDACCEPT_VIOLATION` → `async_tdexit_ept_violation`).
    EptViolation {
        /// The page.
        gpa: Gpa,
    },
    /// A backend's own effect failed (e.g. a KVM ioctl).
    Backend {
        /// The operation.
        op: SeamOp,
        /// The page, if any.
        gpa: Option<Gpa>,
        /// What went wrong.
        msg: String,
    },
}

impl SeamError {
    /// The TDX status, if this is a TDX completion.
    pub fn status(&self) -> Option<TdxStatus> {
        match self {
            SeamError::Tdx { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True if this is a TDX status of the given class.
    pub fn is_class(&self, class: u64) -> bool {
        self.status().is_some_and(|s| s.class() == class)
    }

    /// The page the failure is about.
    pub fn gpa(&self) -> Option<Gpa> {
        match self {
            SeamError::Tdx { gpa, .. } | SeamError::Backend { gpa, .. } => *gpa,
            SeamError::EptViolation { gpa } => Some(*gpa),
        }
    }
}

impl fmt::Display for SeamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeamError::Tdx {
                op,
                gpa: Some(g),
                status,
            } => {
                write!(f, "{op} gpa {g:#x}: {status}")
            }
            SeamError::Tdx {
                op,
                gpa: None,
                status,
            } => write!(f, "{op}: {status}"),
            SeamError::EptViolation { gpa } => {
                write!(f, "TDG.MEM.PAGE.ACCEPT gpa {gpa:#x}: EPT violation TD exit")
            }
            SeamError::Backend {
                op,
                gpa: Some(g),
                msg,
            } => write!(f, "{op} gpa {g:#x}: {msg}"),
            SeamError::Backend { op, gpa: None, msg } => write!(f, "{op}: {msg}"),
        }
    }
}

impl std::error::Error for SeamError {}

/// Result of a SEAM operation.
pub type SeamResult<T> = Result<T, SeamError>;

/// A zone as the SEAM layer sees it: `pages` contiguous 4 KiB pages at
/// guest-physical `gpa`, backed by `pages` contiguous host pages at `hpa`
/// (the host virtual address of the pool memory in the simulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ZoneRange {
    /// First GPA (page aligned).
    pub gpa: Gpa,
    /// First host page (page aligned).
    pub hpa: Hpa,
    /// Number of 4 KiB pages.
    pub pages: u64,
}

impl ZoneRange {
    /// Size in bytes.
    pub const fn len(&self) -> u64 {
        self.pages * PAGE_SIZE
    }

    /// True for a zone without pages.
    pub const fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// True if `gpa` lies inside the zone.
    pub const fn contains(&self, gpa: Gpa) -> bool {
        gpa >= self.gpa && gpa < self.gpa + self.len()
    }

    /// The (GPA, HPA) pairs, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (Gpa, Hpa)> + '_ {
        (0..self.pages).map(move |i| (self.gpa + i * PAGE_SIZE, self.hpa + i * PAGE_SIZE))
    }
}

/// TDX-module operations on one TD's Secure EPT, plus the vCPU events the
/// TLB-tracking rules depend on.
///
/// One implementor per TD (the TDR is implicit). See the module docs for
/// batching, and `docs/protocol.md` for the sequences TETD-H issues.
pub trait SeamOps {
    /// TDH.MEM.PAGE.AUG: add the free host page `hpa` at the free GPA `gpa`
    /// as a PENDING page.
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()>;

    /// TDH.MEM.RANGE.BLOCK (4 KiB level): MAPPED → BLOCKED or PENDING →
    /// PENDING_BLOCKED; records the current TD epoch for the page.
    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()>;

    /// TDH.MEM.RANGE.UNBLOCK: BLOCKED → MAPPED or PENDING_BLOCKED → PENDING;
    /// requires the blocking epoch to be TLB-tracked.
    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()>;

    /// TDH.MEM.TRACK: advance the TD epoch; fails while a vCPU still runs
    /// in the previous epoch.
    fn track(&mut self) -> SeamResult<()>;

    /// TDH.MEM.PAGE.REMOVE: remove a blocked, tracked page; returns its HPA.
    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa>;

    /// TDG.MEM.PAGE.ACCEPT as the guest would execute it: PENDING → MAPPED.
    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()>;

    /// Force every vCPU of the TD out of guest mode once (the vCPUs re-enter
    /// later, in the then-current epoch). Linux does this with
    /// `kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE)` after
    /// each TDH.MEM.TRACK.
    fn kick_vcpus(&mut self) -> SeamResult<()>;

    /// TDH.VP.ENTER of `vcpu` (it joins the current TLB epoch). Backends
    /// whose TDX module tracks this itself ignore it.
    fn vcpu_enter(&mut self, vcpu: u32) {
        let _ = vcpu;
    }

    /// TD exit of `vcpu` (it leaves its epoch).
    fn vcpu_exit(&mut self, vcpu: u32) {
        let _ = vcpu;
    }

    /// Whether the host performs TDG.MEM.PAGE.ACCEPT on the guest's behalf
    /// after AUG (software model, KVM simulation). A real-TDX backend returns
    /// false: the guest accepts the pages itself during its first
    /// VMM_ENTER window (`tetd::abi::access::ZONE_FLAG_ACCEPT_REQUIRED`).
    fn host_accepts(&self) -> bool {
        true
    }

    /// AUG every page of the zone.
    fn aug_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        for (gpa, hpa) in zone.iter() {
            self.page_aug(gpa, hpa)?;
        }
        Ok(())
    }

    /// ACCEPT every page of the zone (guest side, see [`Self::host_accepts`]).
    fn accept_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        for (gpa, _) in zone.iter() {
            self.page_accept(gpa)?;
        }
        Ok(())
    }

    /// BLOCK every page of the zone (no tracking: call [`Self::flush`]).
    fn block_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        for (gpa, _) in zone.iter() {
            self.range_block(gpa)?;
        }
        Ok(())
    }

    /// UNBLOCK every page of the zone.
    fn unblock_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        for (gpa, _) in zone.iter() {
            self.range_unblock(gpa)?;
        }
        Ok(())
    }

    /// REMOVE every page of the zone; every returned HPA must match the
    /// zone's backing page (else a `Backend` error: the host lost track).
    fn remove_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        for (gpa, hpa) in zone.iter() {
            let got = self.page_remove(gpa)?;
            if got != hpa {
                return Err(SeamError::Backend {
                    op: SeamOp::PageRemove,
                    gpa: Some(gpa),
                    msg: format!("removed page was backed by {got:#x}, expected {hpa:#x}"),
                });
            }
        }
        Ok(())
    }

    /// Pages of `zone` that were taken away from the guest and that the
    /// guest touched since (the backend cannot trap the access itself but
    /// finds its trace afterwards; the QEMU backend). Each page is returned
    /// once; TETD-H calls this before it gives a zone back (UNBLOCK) or
    /// removes it, and at the end of a run, and reports each page as a
    /// violation. Backends that trap accesses when they happen, or cannot
    /// see them at all, return nothing (the default).
    fn take_touched(&mut self, zone: &ZoneRange) -> Vec<Gpa> {
        let _ = zone;
        Vec::new()
    }

    /// One TLB-tracking round for everything blocked so far, like Linux
    /// `tdx_track()`: TDH.MEM.TRACK (on TDX_PREVIOUS_TLB_EPOCH_BUSY or
    /// TDX_OPERAND_BUSY: kick the vCPUs and retry once), then kick the vCPUs
    /// so that none still runs in the epoch before the TRACK. Afterwards
    /// every page blocked before the call is tracked.
    fn flush(&mut self) -> SeamResult<()> {
        match self.track() {
            Ok(()) => {}
            Err(e)
                if e.is_class(tdx::TDX_PREVIOUS_TLB_EPOCH_BUSY)
                    || e.is_class(tdx::TDX_OPERAND_BUSY) =>
            {
                self.kick_vcpus()?;
                self.track()?;
            }
            Err(e) => return Err(e),
        }
        self.kick_vcpus()
    }
}

impl<T: SeamOps + ?Sized> SeamOps for Box<T> {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        (**self).page_aug(gpa, hpa)
    }
    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        (**self).range_block(gpa)
    }
    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        (**self).range_unblock(gpa)
    }
    fn track(&mut self) -> SeamResult<()> {
        (**self).track()
    }
    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        (**self).page_remove(gpa)
    }
    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        (**self).page_accept(gpa)
    }
    fn kick_vcpus(&mut self) -> SeamResult<()> {
        (**self).kick_vcpus()
    }
    fn vcpu_enter(&mut self, vcpu: u32) {
        (**self).vcpu_enter(vcpu)
    }
    fn vcpu_exit(&mut self, vcpu: u32) {
        (**self).vcpu_exit(vcpu)
    }
    fn host_accepts(&self) -> bool {
        (**self).host_accepts()
    }
    fn aug_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        (**self).aug_zone(zone)
    }
    fn accept_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        (**self).accept_zone(zone)
    }
    fn block_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        (**self).block_zone(zone)
    }
    fn unblock_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        (**self).unblock_zone(zone)
    }
    fn remove_zone(&mut self, zone: &ZoneRange) -> SeamResult<()> {
        (**self).remove_zone(zone)
    }
    fn flush(&mut self) -> SeamResult<()> {
        (**self).flush()
    }
    fn take_touched(&mut self, zone: &ZoneRange) -> Vec<Gpa> {
        (**self).take_touched(zone)
    }
}
