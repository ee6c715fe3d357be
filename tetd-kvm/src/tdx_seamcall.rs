//! The real-TDX SEAM backend: a [`SeamOps`] implementation that issues the
//! SEAMCALLs TDH.MEM.PAGE.AUG / RANGE.BLOCK / RANGE.UNBLOCK / TRACK /
//! PAGE.REMOVE to the Intel TDX module.
//!
//! **Untested on TDX hardware.** This project's machines have no TDX: the
//! register marshalling and decoding here are unit-tested
//! (`tests/tdx_seamcall.rs`), the executors compile, nothing else is claimed.
//!
//! # Layers
//! 1. **Marshalling** ([`marshal`]): pure functions from (GPA, TDR, page) to
//!    the SEAMCALL input registers ([`SeamcallRegs`]) and from the output
//!    registers to results ([`decode_ept_info`], [`removed_hpa`]).
//! 2. **Executor** ([`SeamcallExecutor`]): issues one SEAMCALL with given
//!    registers. Two exist:
//!    * [`KvmTdxIoctl`] — the deployable one: the TETD-H core runs in host
//!      userspace (next to the VMM) and hands each marshalled register block
//!      to the host kernel through the patched KVM
//!      (`KVM_MEMORY_ENCRYPT_OP` / `KVM_TDX_TETD_SEAMCALL`, see
//!      `tetd-kvm/linux/`). The kernel checks the leaf and the GPA, fills in
//!      the operands userspace must not choose (RDX = this TD's TDR, R8 = the
//!      physical address of the pinned page userspace named by address) and
//!      executes the SEAMCALL with Linux' own `tdh_mem_*()` wrappers.
//!    * [`HwSeamcall`] (cargo feature `tdx-hw`, x86-64 only) — the SEAMCALL
//!      instruction itself (`66 0F 01 CF`). Only meaningful in VMX root
//!      operation at CPL 0 with the TDX module loaded, i.e. inside the host
//!      kernel; executed from userspace it raises #UD/#GP. It exists for a
//!      TETD-H built into a kernel context and as the executable statement of
//!      exactly what the kernel patch executes.
//! 3. **Backend** ([`TdxSeamcall`]): the [`SeamOps`] implementation: marshal,
//!    execute, map the completion status to [`SeamError::Tdx`] with the same
//!    status values the software model ([`crate::seam_model::SeptModel`])
//!    produces — both use [`tetd::abi::tdx`].
//!
//! # Operands (TDX module ABI; cross-checked)
//! | leaf | RAX | RCX | RDX | R8 | outputs |
//! |---|---|---|---|---|---|
//! | TDH.MEM.PAGE.AUG | 6 | GPA \| level (0 = 4 KiB) | TDR PA | page PA | error: RCX = Secure-EPT entry, RDX = level (bits 2:0) / state (bits 15:8) |
//! | TDH.MEM.RANGE.BLOCK | 7 | GPA \| level | TDR PA | — | as AUG |
//! | TDH.MEM.RANGE.UNBLOCK | 39 | GPA \| level | TDR PA | — | as AUG |
//! | TDH.MEM.TRACK | 38 | TDR PA | — | — | — |
//! | TDH.MEM.PAGE.REMOVE | 29 | GPA \| level | TDR PA | — | success: RCX = removed page PA |
//!
//! Sources: Linux v6.16 `arch/x86/virt/vmx/tdx/tdx.c` (`tdh_mem_page_aug()`:
//! `.rcx = gpa | level, .rdx = tdx_tdr_pa(td), .r8 = page_to_phys(page)`;
//! `tdh_mem_range_block()` and `tdh_mem_page_remove()`: `.rcx = gpa | level,
//! .rdx = tdx_tdr_pa(td)`, outputs `*ext_err1 = args.rcx, *ext_err2 =
//! args.rdx`; `tdh_mem_track()`: `.rcx = tdx_tdr_pa(td)`), Linux v6.16
//! `arch/x86/virt/vmx/tdx/tdx.h` (leaf numbers; TDH.MEM.RANGE.UNBLOCK = 39 is
//! not used by Linux v6.16 and comes from the TDX module:
//! `include/tdx_api_defs.h`), `arch/x86/virt/vmx/tdx/tdxcall.S` (`seamcall`
//! = `.byte 0x66,0x0f,0x01,0xcf`; CF set → `TDX_SEAMCALL_VMFAILINVALID`),
//! Intel TDX module (`github.com/intel/tdx-module`):
//! `src/vmm_dispatcher/api_calls/tdh_mem_page_remove.c` (`vmm_regs.rcx =
//! removed_page_pa.raw` on success; RCX/RDX = 0 by default),
//! `tdh_mem_range_unblock(page_info_api_input_t, uint64_t tdr_pa)`,
//! `sept_entry_arch_info_t` (RDX: level bits 2:0, state bits 15:8).

use std::fmt;

use tetd::abi::{tdx, PAGE_SIZE};

use crate::seam::{Gpa, Hpa, SeamError, SeamOp, SeamOps, SeamResult, TdxStatus};

/// The registers one SEAMCALL of these leaves reads and writes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeamcallRegs {
    /// In: leaf. Out: completion status.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
}

/// Mask of a 4 KiB-aligned physical address in a Secure-EPT entry or a PA
/// operand (bits 51:12).
pub const PA_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Pure construction of SEAMCALL input registers.
///
/// Every builder checks what it can without the TDX module (4 KiB alignment
/// of GPA, TDR and page; the level bits) and refuses with a
/// [`SeamError::Backend`] naming the operand, so that a malformed request
/// never reaches the module.
pub mod marshal {
    use super::*;

    fn check_page(op: SeamOp, gpa: Option<Gpa>, what: &str, v: u64) -> SeamResult<()> {
        if v % PAGE_SIZE != 0 || v & !PA_MASK != 0 {
            return Err(SeamError::Backend {
                op,
                gpa,
                msg: format!("{what} {v:#x} is not a 4 KiB-aligned 52-bit address"),
            });
        }
        Ok(())
    }

    /// RCX of the GPA leaves: `gpa | TDX_PS_4K`.
    pub fn page_info(op: SeamOp, gpa: Gpa) -> SeamResult<u64> {
        check_page(op, Some(gpa), "gpa", gpa)?;
        Ok(gpa | tdx::TDX_PS_4K)
    }

    /// TDH.MEM.PAGE.AUG: RCX = GPA | 4 KiB, RDX = TDR, R8 = page.
    pub fn page_aug(gpa: Gpa, tdr: u64, page: Hpa) -> SeamResult<SeamcallRegs> {
        let op = SeamOp::PageAug;
        let rcx = page_info(op, gpa)?;
        check_page(op, Some(gpa), "TDR", tdr)?;
        check_page(op, Some(gpa), "page", page)?;
        if page == 0 {
            return Err(SeamError::Backend {
                op,
                gpa: Some(gpa),
                msg: "page address 0".into(),
            });
        }
        Ok(SeamcallRegs {
            rax: tdx::TDH_MEM_PAGE_AUG,
            rcx,
            rdx: tdr,
            r8: page,
            ..SeamcallRegs::default()
        })
    }

    fn gpa_leaf(op: SeamOp, leaf: u64, gpa: Gpa, tdr: u64) -> SeamResult<SeamcallRegs> {
        let rcx = page_info(op, gpa)?;
        check_page(op, Some(gpa), "TDR", tdr)?;
        Ok(SeamcallRegs {
            rax: leaf,
            rcx,
            rdx: tdr,
            ..SeamcallRegs::default()
        })
    }

    /// TDH.MEM.RANGE.BLOCK: RCX = GPA | 4 KiB, RDX = TDR.
    pub fn range_block(gpa: Gpa, tdr: u64) -> SeamResult<SeamcallRegs> {
        gpa_leaf(SeamOp::RangeBlock, tdx::TDH_MEM_RANGE_BLOCK, gpa, tdr)
    }

    /// TDH.MEM.RANGE.UNBLOCK: RCX = GPA | 4 KiB, RDX = TDR.
    pub fn range_unblock(gpa: Gpa, tdr: u64) -> SeamResult<SeamcallRegs> {
        gpa_leaf(SeamOp::RangeUnblock, tdx::TDH_MEM_RANGE_UNBLOCK, gpa, tdr)
    }

    /// TDH.MEM.PAGE.REMOVE: RCX = GPA | 4 KiB, RDX = TDR.
    pub fn page_remove(gpa: Gpa, tdr: u64) -> SeamResult<SeamcallRegs> {
        gpa_leaf(SeamOp::PageRemove, tdx::TDH_MEM_PAGE_REMOVE, gpa, tdr)
    }

    /// TDH.MEM.TRACK: RCX = TDR (note: RCX, not RDX).
    pub fn track(tdr: u64) -> SeamResult<SeamcallRegs> {
        check_page(SeamOp::Track, None, "TDR", tdr)?;
        Ok(SeamcallRegs {
            rax: tdx::TDH_MEM_TRACK,
            rcx: tdr,
            ..SeamcallRegs::default()
        })
    }
}

/// The Secure-EPT entry details a failed GPA leaf returns (RCX, RDX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptEntryInfo {
    /// RCX: the architectural Secure-EPT entry.
    pub entry: u64,
    /// RDX bits 2:0: the level of that entry (0 = 4 KiB).
    pub level: u8,
    /// RDX bits 15:8: its state.
    pub state: u8,
}

/// Decode RCX/RDX after a failed AUG / BLOCK / UNBLOCK / REMOVE.
pub fn decode_ept_info(out: &SeamcallRegs) -> EptEntryInfo {
    EptEntryInfo {
        entry: out.rcx,
        level: (out.rdx & tdx::LEVEL_MASK) as u8,
        state: ((out.rdx >> 8) & 0xff) as u8,
    }
}

/// The page a successful TDH.MEM.PAGE.REMOVE returned in RCX, without the
/// key-id bits `keyid_mask` (the upper physical-address bits MKTME/TDX use
/// for key ids; 0 if the module reports plain addresses).
pub fn removed_hpa(out: &SeamcallRegs, keyid_mask: u64) -> Hpa {
    out.rcx & PA_MASK & !keyid_mask
}

/// Issues one SEAMCALL.
pub trait SeamcallExecutor {
    /// The TDR operand to marshal (the physical address of this TD's TDR
    /// page), or 0 if the executor fills it in itself (the kernel does for
    /// [`KvmTdxIoctl`]).
    fn tdr(&self) -> u64;

    /// Execute the SEAMCALL `regs` describes; on return `regs` holds the
    /// output registers (RAX = completion status). `Err` only if the
    /// SEAMCALL could not be issued at all (e.g. the ioctl failed).
    fn seamcall(&mut self, regs: &mut SeamcallRegs) -> Result<(), String>;

    /// Force every vCPU of the TD out of guest mode once (Linux
    /// `kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE)`).
    fn kick_vcpus(&mut self) -> Result<(), String>;
}

/// [`SeamOps`] over a [`SeamcallExecutor`]: the real-TDX backend of TETD-H.
///
/// `host_accepts()` is false: on real TDX only the guest can execute
/// TDG.MEM.PAGE.ACCEPT, so AGENT_ACCESS reports
/// `ZONE_FLAG_ACCEPT_REQUIRED` and the guest accepts its zone pages in its
/// first VMM_ENTER window. The TDX module counts vCPU epochs itself, so
/// `vcpu_enter` / `vcpu_exit` are no-ops.
pub struct TdxSeamcall<X: SeamcallExecutor> {
    exec: X,
    keyid_mask: u64,
    last: Option<(SeamcallRegs, SeamcallRegs)>,
}

impl<X: SeamcallExecutor> fmt::Debug for TdxSeamcall<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxSeamcall")
            .field("tdr", &format_args!("{:#x}", self.exec.tdr()))
            .field("keyid_mask", &format_args!("{:#x}", self.keyid_mask))
            .field("last", &self.last)
            .finish()
    }
}

impl<X: SeamcallExecutor> TdxSeamcall<X> {
    /// A backend over `exec`.
    pub fn new(exec: X) -> Self {
        TdxSeamcall {
            exec,
            keyid_mask: 0,
            last: None,
        }
    }

    /// Strip these physical-address bits (key ids) from the page address
    /// TDH.MEM.PAGE.REMOVE reports before comparing it with the zone's.
    pub fn with_keyid_mask(mut self, mask: u64) -> Self {
        self.keyid_mask = mask;
        self
    }

    /// The executor.
    pub fn executor(&self) -> &X {
        &self.exec
    }

    /// The executor, mutably.
    pub fn executor_mut(&mut self) -> &mut X {
        &mut self.exec
    }

    /// Input and output registers of the last SEAMCALL (for logs).
    pub fn last_call(&self) -> Option<(SeamcallRegs, SeamcallRegs)> {
        self.last
    }

    fn call(
        &mut self,
        op: SeamOp,
        gpa: Option<Gpa>,
        regs: SeamcallRegs,
    ) -> SeamResult<SeamcallRegs> {
        let mut out = regs;
        self.exec
            .seamcall(&mut out)
            .map_err(|msg| SeamError::Backend { op, gpa, msg })?;
        self.last = Some((regs, out));
        if out.rax != tdx::TDX_SUCCESS {
            // Warnings (bit 63 clear, e.g. TDX_GPA_RANGE_ALREADY_BLOCKED)
            // are reported like errors, as the model does: TETD-H decides.
            return Err(SeamError::Tdx {
                op,
                gpa,
                status: TdxStatus(out.rax),
            });
        }
        Ok(out)
    }
}

impl<X: SeamcallExecutor> SeamOps for TdxSeamcall<X> {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        let regs = marshal::page_aug(gpa, self.exec.tdr(), hpa)?;
        self.call(SeamOp::PageAug, Some(gpa), regs).map(|_| ())
    }

    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        let regs = marshal::range_block(gpa, self.exec.tdr())?;
        self.call(SeamOp::RangeBlock, Some(gpa), regs).map(|_| ())
    }

    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        let regs = marshal::range_unblock(gpa, self.exec.tdr())?;
        self.call(SeamOp::RangeUnblock, Some(gpa), regs).map(|_| ())
    }

    fn track(&mut self) -> SeamResult<()> {
        let regs = marshal::track(self.exec.tdr())?;
        self.call(SeamOp::Track, None, regs).map(|_| ())
    }

    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        let regs = marshal::page_remove(gpa, self.exec.tdr())?;
        let out = self.call(SeamOp::PageRemove, Some(gpa), regs)?;
        Ok(removed_hpa(&out, self.keyid_mask))
    }

    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        Err(SeamError::Backend {
            op: SeamOp::PageAccept,
            gpa: Some(gpa),
            msg: "TDG.MEM.PAGE.ACCEPT is a guest TDCALL; on real TDX the guest accepts its \
                  zone pages (ZONE_FLAG_ACCEPT_REQUIRED)"
                .into(),
        })
    }

    fn kick_vcpus(&mut self) -> SeamResult<()> {
        self.exec.kick_vcpus().map_err(|msg| SeamError::Backend {
            op: SeamOp::KickVcpus,
            gpa: None,
            msg,
        })
    }

    fn host_accepts(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------
// Executor: the patched KVM (host userspace)
// ---------------------------------------------------------------------------

/// The userspace ABI the kernel patch in `tetd-kvm/linux/` adds (mirrors of
/// its `include/uapi/linux/kvm.h` and `arch/x86/include/uapi/asm/kvm.h`
/// additions; the layout tests in `tests/tdx_seamcall.rs` pin them).
pub mod uapi {
    /// `KVM_MEMORY_ENCRYPT_OP` = `_IOWR(KVMIO, 0xba, unsigned long)`.
    pub const KVM_MEMORY_ENCRYPT_OP: u64 = (3 << 30) | (8 << 16) | (0xAE << 8) | 0xBA;

    /// `KVM_TDX_TETD_ENABLE`: sub-command id in `kvm_tdx_cmd.id`. Chosen far
    /// above upstream's sequential ids (`KVM_TDX_CAPABILITIES` = 0 ..
    /// `KVM_TDX_GET_CPUID` = 5 in v6.16) so later upstream ids cannot collide.
    pub const KVM_TDX_TETD_ENABLE: u32 = 0x5445_0000;
    /// `KVM_TDX_TETD_SEAMCALL`: one SEAM operation on a zone page.
    pub const KVM_TDX_TETD_SEAMCALL: u32 = 0x5445_0001;

    /// Exit reason of a TETD TDG.VP.VMCALL (`KVM_EXIT_TETD`), far above
    /// upstream's sequential exit reasons (`KVM_EXIT_TDX` = 40 in v6.16).
    pub const KVM_EXIT_TETD: u32 = 0x5445_5444;

    /// `kvm_tdx_tetd_seamcall.leaf` value that asks for a vCPU kick instead
    /// of a SEAMCALL (no SEAMCALL leaf has bits above 15 set in v1.5).
    pub const KVM_TDX_TETD_KICK: u64 = 0x5445_0000;

    /// `struct kvm_tdx_cmd` (Linux v6.16 `arch/x86/include/uapi/asm/kvm.h`).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct KvmTdxCmd {
        /// `enum kvm_tdx_cmd_id`.
        pub id: u32,
        /// Sub-command flags (0).
        pub flags: u32,
        /// Pointer to the sub-command's data.
        pub data: u64,
        /// Out: the TDX status of a failed SEAMCALL.
        pub hw_error: u64,
    }

    /// `struct kvm_tdx_tetd_enable`: the GPA window zone pages may use.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct KvmTdxTetdEnable {
        /// First GPA (4 KiB aligned, private).
        pub gpa: u64,
        /// Size in bytes (4 KiB multiple).
        pub size: u64,
        /// Reserved, 0.
        pub flags: u64,
    }

    /// `struct kvm_tdx_tetd_seamcall`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct KvmTdxTetdSeamcall {
        /// In: SEAMCALL leaf (6, 7, 29, 38, 39) or [`KVM_TDX_TETD_KICK`].
        pub leaf: u64,
        /// In: RCX (GPA | level; 0 for TRACK, whose TDR the kernel supplies).
        pub rcx: u64,
        /// In (AUG): user address of the page to add (the kernel pins it and
        /// passes its physical address in R8). Out (REMOVE): the user address
        /// that page was added with.
        pub page: u64,
        /// Out: RAX (TDX completion status).
        pub status: u64,
        /// Out: RCX.
        pub out_rcx: u64,
        /// Out: RDX.
        pub out_rdx: u64,
    }

    /// The `tetd` member of `kvm_run`'s exit union (offset 32 of
    /// `struct kvm_run`) for [`KVM_EXIT_TETD`].
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct KvmRunTetd {
        /// Reserved, 0.
        pub flags: u64,
        /// In: the guest's R11 (TETD leaf).
        pub leaf: u64,
        /// In: the guest's R12..R15.
        pub args: [u64; 4],
        /// Out: the guest's R10 (KVM pre-sets `-KVM_ENOSYS`).
        pub status: u64,
        /// Out: the guest's R11..R13.
        pub results: [u64; 3],
    }
}

/// Read the TETD hypercall of a `KVM_EXIT_TETD` exit from the 256-byte exit
/// union of `kvm_run` (e.g. `kvm_bindings::kvm_run.__bindgen_anon_1.padding`
/// as bytes).
pub fn decode_tetd_exit(exit_union: &[u8; 256]) -> tetd::abi::regs::HypercallArgs {
    let q = |i: usize| u64::from_ne_bytes(exit_union[i * 8..i * 8 + 8].try_into().unwrap());
    tetd::abi::regs::HypercallArgs {
        leaf: q(1),
        args: [q(2), q(3), q(4), q(5)],
    }
}

/// Write TETD-H's answer into the exit union before the next `KVM_RUN`
/// (the patched KVM copies it to the guest's R10..R13).
pub fn encode_tetd_answer(exit_union: &mut [u8; 256], ret: &tetd::abi::regs::HypercallRet) {
    let vals = [ret.status, ret.results[0], ret.results[1], ret.results[2]];
    for (i, v) in vals.iter().enumerate() {
        let o = (6 + i) * 8;
        exit_union[o..o + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

/// Map one SEAMCALL register block to the patched kernel's request.
pub fn to_ioctl_request(regs: &SeamcallRegs) -> Result<uapi::KvmTdxTetdSeamcall, String> {
    let (rcx, page) = match regs.rax {
        tdx::TDH_MEM_PAGE_AUG => (regs.rcx, regs.r8),
        tdx::TDH_MEM_RANGE_BLOCK | tdx::TDH_MEM_RANGE_UNBLOCK | tdx::TDH_MEM_PAGE_REMOVE => {
            (regs.rcx, 0)
        }
        // The TDR is RCX for TRACK; the kernel supplies it.
        tdx::TDH_MEM_TRACK => (0, 0),
        other => return Err(format!("SEAMCALL leaf {other} is not one TETD issues")),
    };
    if regs.rax != tdx::TDH_MEM_TRACK && regs.rdx != 0 {
        return Err("the kernel supplies the TDR: marshal with tdr() == 0".into());
    }
    Ok(uapi::KvmTdxTetdSeamcall {
        leaf: regs.rax,
        rcx,
        page,
        ..Default::default()
    })
}

/// Copy the kernel's answer back into the register block.
pub fn from_ioctl_answer(req: &uapi::KvmTdxTetdSeamcall, regs: &mut SeamcallRegs) {
    regs.rax = req.status;
    regs.rdx = req.out_rdx;
    // REMOVE: the kernel reports the user address the page was added with,
    // which is what TETD-H's zones record (`ZoneRange::hpa`).
    regs.rcx = if req.leaf == tdx::TDH_MEM_PAGE_REMOVE && req.status == tdx::TDX_SUCCESS {
        req.page
    } else {
        req.out_rcx
    };
}

/// Executor over the patched KVM: `KVM_MEMORY_ENCRYPT_OP` on the TD's VM
/// file descriptor with `KVM_TDX_TETD_SEAMCALL`. `Hpa`s are the host
/// virtual addresses of the zone pool pages (what `ZoneRange::hpa` holds);
/// the kernel pins them and uses their physical addresses.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct KvmTdxIoctl {
    vm: std::os::fd::OwnedFd,
}

#[cfg(target_os = "linux")]
impl KvmTdxIoctl {
    /// Use (a duplicate of) the TD's VM fd and enable TETD for the TD with
    /// zone pages allowed in `[window_gpa, window_gpa + window_size)`
    /// (normally `tetd::abi::ZONE_GPA_BASE` / `ZONE_GPA_SIZE`). Fails with
    /// the kernel's errno when the kernel lacks the patch (`EINVAL`) or the
    /// window overlaps a memory slot (`EEXIST`).
    pub fn new(
        vm: std::os::fd::BorrowedFd<'_>,
        window_gpa: u64,
        window_size: u64,
    ) -> std::io::Result<Self> {
        let vm = vm.try_clone_to_owned()?;
        let mut en = uapi::KvmTdxTetdEnable {
            gpa: window_gpa,
            size: window_size,
            flags: 0,
        };
        let mut cmd = uapi::KvmTdxCmd {
            id: uapi::KVM_TDX_TETD_ENABLE,
            data: &mut en as *mut _ as u64,
            ..Default::default()
        };
        Self::encrypt_op(&vm, &mut cmd).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("KVM_TDX_TETD_ENABLE (is the TETD KVM patch applied?): {e}"),
            )
        })?;
        Ok(KvmTdxIoctl { vm })
    }

    fn encrypt_op(vm: &std::os::fd::OwnedFd, cmd: &mut uapi::KvmTdxCmd) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: KVM_MEMORY_ENCRYPT_OP reads and writes exactly one
        // `struct kvm_tdx_cmd` (which `cmd` is, repr(C)), and the patched
        // kernel's TETD sub-commands read/write exactly the struct
        // `cmd.data` points to, which the caller keeps alive for the call.
        let r = unsafe {
            libc::ioctl(
                vm.as_raw_fd(),
                uapi::KVM_MEMORY_ENCRYPT_OP as _,
                cmd as *mut uapi::KvmTdxCmd,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn request(&mut self, req: &mut uapi::KvmTdxTetdSeamcall) -> Result<(), String> {
        let mut cmd = uapi::KvmTdxCmd {
            id: uapi::KVM_TDX_TETD_SEAMCALL,
            data: req as *mut _ as u64,
            ..Default::default()
        };
        // The ioctl succeeds whenever the SEAMCALL was executed, whatever
        // its completion status (in `req.status`); it fails only for a
        // request the kernel refused (EINVAL: leaf/GPA/level/window, EEXIST:
        // page already added or GPA in a memory slot, ENOENT: REMOVE of a
        // page TETD did not add, EFAULT/ENOMEM: pinning or allocation).
        Self::encrypt_op(&self.vm, &mut cmd)
            .map_err(|e| format!("KVM_TDX_TETD_SEAMCALL leaf {}: {e}", req.leaf))
    }
}

#[cfg(target_os = "linux")]
impl SeamcallExecutor for KvmTdxIoctl {
    fn tdr(&self) -> u64 {
        0
    }

    fn seamcall(&mut self, regs: &mut SeamcallRegs) -> Result<(), String> {
        let mut req = to_ioctl_request(regs)?;
        self.request(&mut req)?;
        from_ioctl_answer(&req, regs);
        Ok(())
    }

    fn kick_vcpus(&mut self) -> Result<(), String> {
        let mut req = uapi::KvmTdxTetdSeamcall {
            leaf: uapi::KVM_TDX_TETD_KICK,
            ..Default::default()
        };
        self.request(&mut req)
    }
}

// ---------------------------------------------------------------------------
// Executor: the SEAMCALL instruction (kernel context only)
// ---------------------------------------------------------------------------

/// Execute SEAMCALL with `regs` (in/out). Returns RAX, or
/// [`tdx::TDX_SEAMCALL_VMFAILINVALID`] if the CPU reported VMfailInvalid
/// (CF = 1: no TDX module), like Linux' `TDX_MODULE_CALL`.
///
/// # Safety
/// Only in VMX root operation at CPL 0 with the TDX module loaded and
/// initialised (i.e. in the host kernel); anywhere else the instruction
/// raises #UD or #GP, which this function cannot recover from. The operands
/// must describe memory the caller owns (the TDR of its TD, a free page for
/// AUG) — the TDX module takes ownership of pages it is handed.
#[cfg(all(feature = "tdx-hw", target_arch = "x86_64"))]
pub unsafe fn raw_seamcall(regs: &mut SeamcallRegs) -> u64 {
    let cf: u8;
    // SAFETY: the caller guarantees SEAM-capable context and valid operands.
    // Every register these leaves read or write (RAX, RCX, RDX, R8..R11) is
    // an in/out operand; the TDX module preserves the others for non-VP.ENTER
    // leaves (Linux saves only RCX, RDX, R8..R11 for `seamcall_ret`);
    // memory and flags are clobbered (the module reads/writes its own
    // structures; CF is read with `setc`); no stack use.
    unsafe {
        core::arch::asm!(
            ".byte 0x66, 0x0f, 0x01, 0xcf", // seamcall
            "setc {cf}",
            cf = out(reg_byte) cf,
            inout("rax") regs.rax,
            inout("rcx") regs.rcx,
            inout("rdx") regs.rdx,
            inout("r8") regs.r8,
            inout("r9") regs.r9,
            inout("r10") regs.r10,
            inout("r11") regs.r11,
            options(nostack),
        );
    }
    if cf != 0 {
        regs.rax = tdx::TDX_SEAMCALL_VMFAILINVALID;
    }
    regs.rax
}

/// Executor that runs the SEAMCALL instruction itself (cargo feature
/// `tdx-hw`). See the module docs: meaningful only inside the host kernel.
#[cfg(all(feature = "tdx-hw", target_arch = "x86_64"))]
pub struct HwSeamcall {
    tdr_pa: u64,
    kick: Box<dyn FnMut() -> Result<(), String> + Send>,
}

#[cfg(all(feature = "tdx-hw", target_arch = "x86_64"))]
impl fmt::Debug for HwSeamcall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HwSeamcall {{ tdr_pa: {:#x} }}", self.tdr_pa)
    }
}

#[cfg(all(feature = "tdx-hw", target_arch = "x86_64"))]
impl HwSeamcall {
    /// An executor for the TD whose TDR page is at physical `tdr_pa`;
    /// `kick` forces the TD's vCPUs out of guest mode.
    ///
    /// # Safety
    /// Every later [`SeamcallExecutor::seamcall`] runs [`raw_seamcall`]: the
    /// caller guarantees its contract (host kernel context, TDX module
    /// initialised, `tdr_pa` the TDR of a TD the caller owns, pages handed to
    /// AUG free and owned by the caller).
    pub unsafe fn new(tdr_pa: u64, kick: Box<dyn FnMut() -> Result<(), String> + Send>) -> Self {
        HwSeamcall { tdr_pa, kick }
    }
}

#[cfg(all(feature = "tdx-hw", target_arch = "x86_64"))]
impl SeamcallExecutor for HwSeamcall {
    fn tdr(&self) -> u64 {
        self.tdr_pa
    }

    fn seamcall(&mut self, regs: &mut SeamcallRegs) -> Result<(), String> {
        // SAFETY: upheld by the caller of `HwSeamcall::new`.
        unsafe { raw_seamcall(regs) };
        Ok(())
    }

    fn kick_vcpus(&mut self) -> Result<(), String> {
        (self.kick)()
    }
}
