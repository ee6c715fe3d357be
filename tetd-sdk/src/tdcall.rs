//! Register marshalling for the guest's TDCALLs (real-TDX transport).
//!
//! Inside an Intel TDX trust domain the guest talks to the TDX module with
//! the `TDCALL` instruction (`66 0F 01 CC`): RAX selects the leaf, the other
//! registers carry the operands, RAX returns the completion status. This
//! module builds and decodes those registers as **pure functions** (unit
//! tested on any host) and, for `target_os = "none"` on x86-64 (the guest
//! module's target), offers the one `unsafe` executor [`tdcall`].
//!
//! | leaf (RAX) | inputs | outputs | builder / decoder |
//! |---|---|---|---|
//! | TDG.VP.VMCALL (0) | RCX = bitmap of registers exposed to the VMM, R10 = [`TETD_VMCALL_VENDOR`], R11 = TETD leaf, R12..R15 = args | R10 = status, R11..R13 = results | [`vmcall_regs`], [`decode_vmcall`], [`vmcall_result`] |
//! | TDG.VP.INFO (1) | — | RCX = GPAW, RDX = attributes, R8 = vCPUs, R9 = vCPU index, R10 = commands available | [`vp_info_regs`], [`decode_vp_info`] |
//! | TDG.MR.RTMR.EXTEND (2) | RCX = GPA of the 48-byte extension data (64-byte aligned), RDX = RTMR index | — | [`rtmr_extend_regs`], [`decode_status`] |
//! | TDG.MEM.PAGE.ACCEPT (6) | RCX = GPA \| level (bits 2:0, 0 = 4 KiB) | — | [`accept_regs`], [`decode_accept`] |
//!
//! Sources (cross-checked; leaf numbers and status codes live once in
//! [`crate::abi::tdx`]):
//!
//! * Linux v6.16 `arch/x86/include/asm/shared/tdx.h`: leaf ids
//!   (`TDG_VP_VMCALL 0`, `TDG_VP_INFO 1`, `TDG_MR_RTMR_EXTEND 2`,
//!   `TDG_MEM_PAGE_ACCEPT 6`), the exposed-register bits `TDX_R10..TDX_R15`
//!   = bits 10..15, `TDX_PS_4K/2M/1G` = 0/1/2, `TDX_CPUID_LEAF_ID 0x21`,
//!   `TDX_IDENT "IntelTDX    "`;
//! * Linux v6.16 `arch/x86/coco/tdx/tdx.c`: `__tdx_hypercall()` sets RCX to
//!   the exposed-register bitmap and returns R10 (the VMM's status);
//!   `tdx_mcall_extend_rtmr()` passes RCX = `virt_to_phys(data)`, RDX =
//!   index; `tdx_setup()` reads TDG.VP.INFO's GPAW from RCX bits 5:0 and the
//!   attributes from RDX; `tdx_early_init()` compares CPUID(0x21) as
//!   EBX, EDX, ECX with `TDX_IDENT`;
//! * Linux v6.16 `arch/x86/coco/tdx/tdx-shared.c` `try_accept_one()`:
//!   `args.rcx = start | page_size` ("Bits 2:0 of RCX encode page size");
//! * Linux v6.16 `arch/x86/virt/vmx/tdx/tdxcall.S`: `tdcall` is
//!   `.byte 0x66,0x0f,0x01,0xcc`;
//! * Intel TDX module (`github.com/intel/tdx-module`, `src/td_dispatcher/
//!   vm_exits/`): `tdg_vp_vmcall.c` (RCX bits 0, 1, 4 and 63:32 must be 0,
//!   else `TDX_OPERAND_INVALID | RCX`; only the selected GPRs are copied to
//!   the VMM), `tdg_mr_rtmr_extend.c` (GPA must be 64-byte aligned →
//!   `TDX_OPERAND_INVALID | RCX`; index ≥ 4 → `TDX_OPERAND_INVALID | RDX`),
//!   `tdg_vp_info.c` (R8 = `num_vcpus` bits 31:0, `max_vcpus` bits 63:32;
//!   R9 = vCPU index; R10 bit 0 = TDG.SYS.RD available),
//!   `tdg_mem_page_accept.c` (`TDX_PAGE_ALREADY_ACCEPTED` is a warning).
//!
//! **Untested on TDX hardware**: this project's machines have no TDX. The
//! marshalling is unit-tested (`tetd-sdk/tests/tdcall.rs`); the executor is
//! only compiled (`cargo build -p tetd-sdk --target x86_64-unknown-none`).
//! Executing `TDCALL` outside a TD raises #UD.

use crate::abi::regs::{HypercallArgs, HypercallRet};
use crate::abi::{tdx, Error, TETD_VMCALL_VENDOR};

/// The registers one TDCALL reads and writes. RBX, RSI, RDI and RBP are
/// never used by the leaves here (and never exposed to the VMM), so the TDX
/// module preserves them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TdcallRegs {
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
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

/// Bit of GPR `n` in TDG.VP.VMCALL's RCX (Linux `TDX_R10` = `BIT(10)`, ...).
const fn gpr_bit(n: u32) -> u64 {
    1 << n
}

/// RCX of a TETD TDG.VP.VMCALL: expose exactly R10..R15 to the VMM (the
/// registers of the TETD convention, [`crate::abi::regs`]); everything else,
/// XMM registers included (bits 31:16 = 0), stays hidden and preserved.
pub const VMCALL_EXPOSED_REGS: u64 =
    gpr_bit(10) | gpr_bit(11) | gpr_bit(12) | gpr_bit(13) | gpr_bit(14) | gpr_bit(15);
const _: () = assert!(VMCALL_EXPOSED_REGS == 0xfc00);

/// R10 that a KVM **without** the TETD patch answers a vendor TDVMCALL with:
/// it treats a non-zero R10 as a KVM hypercall number
/// (`tdx_emulate_vmcall()` → `__kvm_emulate_hypercall()`), which is unknown,
/// so it returns `-KVM_ENOSYS` (Linux `include/uapi/linux/kvm_para.h`:
/// `KVM_ENOSYS 1000`).
pub const KVM_ENOSYS_STATUS: u64 = (-1000i64) as u64;

/// CPUID leaf that identifies a TD (Linux `TDX_CPUID_LEAF_ID`).
pub const TDX_CPUID_LEAF: u32 = 0x21;

/// Why a TDCALL could not be built or did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdcallError {
    /// An operand failed the check the TDX module would make (the call was
    /// not issued). `what` names the operand.
    BadOperand {
        /// The operand, e.g. `"accept gpa"`.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The TDX module completed the TDCALL with an error status (RAX).
    Tdx {
        /// The TDCALL leaf.
        leaf: u64,
        /// RAX.
        status: u64,
    },
    /// The host answered the TETD TDVMCALL as an unknown KVM hypercall
    /// ([`KVM_ENOSYS_STATUS`]): its KVM does not carry the TETD patch (or the
    /// VMM did not enable TETD for this TD).
    NoTetdHost,
}

impl TdcallError {
    /// The TETD error code to report to the module's callers.
    pub const fn to_error(self) -> Error {
        match self {
            TdcallError::BadOperand { .. } => Error::InvalidArgument,
            TdcallError::Tdx { .. } => Error::Transport,
            TdcallError::NoTetdHost => Error::Unsupported,
        }
    }
}

impl core::fmt::Display for TdcallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TdcallError::BadOperand { what, value } => write!(f, "invalid {what} {value:#x}"),
            TdcallError::Tdx { leaf, status } => write!(
                f,
                "TDCALL leaf {leaf} failed: {} ({status:#018x})",
                tdx::status_name(*status)
            ),
            TdcallError::NoTetdHost => f.write_str(
                "the host does not implement TETD hypercalls (KVM answered -KVM_ENOSYS)",
            ),
        }
    }
}

/// Classify RAX after a TDCALL: `Ok(status)` for success and warnings
/// (bit 63 clear, e.g. `TDX_PAGE_ALREADY_ACCEPTED`), `Err` for errors.
pub fn decode_status(leaf: u64, rax: u64) -> Result<u64, TdcallError> {
    if rax & tdx::STATUS_ERROR_BIT != 0 {
        Err(TdcallError::Tdx { leaf, status: rax })
    } else {
        Ok(rax)
    }
}

// ---------------------------------------------------------------------------
// TDG.VP.VMCALL with a TETD leaf
// ---------------------------------------------------------------------------

/// Registers of a TETD hypercall: RAX = TDG.VP.VMCALL, RCX =
/// [`VMCALL_EXPOSED_REGS`], R10 = [`TETD_VMCALL_VENDOR`], R11 = leaf,
/// R12..R15 = arguments (the convention of Linux' `__tdx_hypercall`, with the
/// GHCI's vendor-specific R10).
pub fn vmcall_regs(args: &HypercallArgs) -> TdcallRegs {
    TdcallRegs {
        rax: tdx::TDG_VP_VMCALL,
        rcx: VMCALL_EXPOSED_REGS,
        r10: TETD_VMCALL_VENDOR,
        r11: args.leaf,
        r12: args.args[0],
        r13: args.args[1],
        r14: args.args[2],
        r15: args.args[3],
        ..TdcallRegs::default()
    }
}

/// The host's answer in the registers after a TETD TDG.VP.VMCALL: R10 =
/// status, R11..R13 = results. Does not look at RAX (see [`vmcall_result`]).
pub fn decode_vmcall(out: &TdcallRegs) -> HypercallRet {
    HypercallRet {
        status: out.r10,
        results: [out.r11, out.r12, out.r13],
    }
}

/// [`decode_vmcall`] after checking the transport: RAX must be TDX_SUCCESS
/// (else the TDX module rejected the TDCALL itself), and R10 must not be
/// [`KVM_ENOSYS_STATUS`] (a host without TETD).
pub fn vmcall_result(out: &TdcallRegs) -> Result<HypercallRet, TdcallError> {
    if out.rax != tdx::TDX_SUCCESS {
        return Err(TdcallError::Tdx {
            leaf: tdx::TDG_VP_VMCALL,
            status: out.rax,
        });
    }
    if out.r10 == KVM_ENOSYS_STATUS {
        return Err(TdcallError::NoTetdHost);
    }
    Ok(decode_vmcall(out))
}

// ---------------------------------------------------------------------------
// TDG.MEM.PAGE.ACCEPT
// ---------------------------------------------------------------------------

/// Registers of TDG.MEM.PAGE.ACCEPT of the 4 KiB page at `gpa`: RCX =
/// `gpa | TDX_PS_4K`. The GPA must be 4 KiB aligned and private (the TD's
/// shared bit is checked by the TDX module, which knows the GPAW).
pub fn accept_regs(gpa: u64) -> Result<TdcallRegs, TdcallError> {
    if gpa % crate::abi::PAGE_SIZE != 0 {
        return Err(TdcallError::BadOperand {
            what: "accept gpa (not 4 KiB aligned)",
            value: gpa,
        });
    }
    Ok(TdcallRegs {
        rax: tdx::TDG_MEM_PAGE_ACCEPT,
        rcx: gpa | tdx::TDX_PS_4K,
        ..TdcallRegs::default()
    })
}

/// Outcome of a TDG.MEM.PAGE.ACCEPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// PENDING → MAPPED; the page reads as zeroes.
    Now,
    /// The page was already MAPPED (warning `TDX_PAGE_ALREADY_ACCEPTED`):
    /// its content is whatever the TD wrote before.
    Already,
}

/// Decode RAX after TDG.MEM.PAGE.ACCEPT.
pub fn decode_accept(rax: u64) -> Result<Accepted, TdcallError> {
    let status = decode_status(tdx::TDG_MEM_PAGE_ACCEPT, rax)?;
    match status & tdx::STATUS_MASK {
        tdx::TDX_SUCCESS => Ok(Accepted::Now),
        tdx::TDX_PAGE_ALREADY_ACCEPTED => Ok(Accepted::Already),
        // Another warning: report it instead of guessing.
        _ => Err(TdcallError::Tdx {
            leaf: tdx::TDG_MEM_PAGE_ACCEPT,
            status: rax,
        }),
    }
}

// ---------------------------------------------------------------------------
// TDG.MR.RTMR.EXTEND
// ---------------------------------------------------------------------------

/// Alignment the TDX module requires of the extension data's GPA.
pub const RTMR_DATA_ALIGN: u64 = 64;

/// Registers of TDG.MR.RTMR.EXTEND: RCX = GPA of the 48-byte extension data
/// (64-byte aligned, private memory), RDX = RTMR index (0..=3).
/// `RTMR[index] = SHA-384(RTMR[index] || data)`.
pub fn rtmr_extend_regs(data_gpa: u64, index: u64) -> Result<TdcallRegs, TdcallError> {
    if data_gpa % RTMR_DATA_ALIGN != 0 {
        return Err(TdcallError::BadOperand {
            what: "RTMR extension data gpa (not 64-byte aligned)",
            value: data_gpa,
        });
    }
    if index >= tdx::NUM_RTMRS as u64 {
        return Err(TdcallError::BadOperand {
            what: "RTMR index",
            value: index,
        });
    }
    Ok(TdcallRegs {
        rax: tdx::TDG_MR_RTMR_EXTEND,
        rcx: data_gpa,
        rdx: index,
        ..TdcallRegs::default()
    })
}

/// A 48-byte SHA-384 extension digest laid out as TDG.MR.RTMR.EXTEND needs
/// it: 64-byte aligned, so a stack or static instance can be passed by its
/// physical address directly.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtmrData(pub [u8; tdx::RTMR_SIZE]);

// ---------------------------------------------------------------------------
// TDG.VP.INFO
// ---------------------------------------------------------------------------

/// Registers of TDG.VP.INFO.
pub fn vp_info_regs() -> TdcallRegs {
    TdcallRegs {
        rax: tdx::TDG_VP_INFO,
        ..TdcallRegs::default()
    }
}

/// What TDG.VP.INFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VpInfo {
    /// Guest physical address width (48 or 52); the shared bit is
    /// `1 << (gpaw - 1)`.
    pub gpaw: u32,
    /// TD attributes (`TDX_ATTR_*`, e.g. bit 0 = DEBUG).
    pub attributes: u64,
    /// vCPUs usable now.
    pub num_vcpus: u32,
    /// The TD's maximum number of vCPUs.
    pub max_vcpus: u32,
    /// Index of the calling vCPU.
    pub vcpu_index: u32,
    /// TDG.SYS.RD is available (R10 bit 0; TDX module 1.5).
    pub sys_rd_available: bool,
}

impl VpInfo {
    /// The shared-GPA bit of this TD.
    pub const fn shared_bit(&self) -> u64 {
        1 << (self.gpaw - 1)
    }
}

/// Decode the registers after TDG.VP.INFO.
pub fn decode_vp_info(out: &TdcallRegs) -> Result<VpInfo, TdcallError> {
    decode_status(tdx::TDG_VP_INFO, out.rax)?;
    let gpaw = (out.rcx & 0x3f) as u32;
    if gpaw != 48 && gpaw != 52 {
        return Err(TdcallError::BadOperand {
            what: "TDG.VP.INFO GPAW (expected 48 or 52)",
            value: out.rcx,
        });
    }
    Ok(VpInfo {
        gpaw,
        attributes: out.rdx,
        num_vcpus: out.r8 as u32,
        max_vcpus: (out.r8 >> 32) as u32,
        vcpu_index: out.r9 as u32,
        sys_rd_available: out.r10 & 1 != 0,
    })
}

// ---------------------------------------------------------------------------
// TD detection
// ---------------------------------------------------------------------------

/// True if CPUID(0x21, 0) identifies a TD: EBX, EDX, ECX spell
/// `"IntelTDX    "` — in that register order, as Linux `tdx_early_init()`
/// reads it (`cpuid_count(TDX_CPUID_LEAF_ID, 0, &eax, &sig[0], &sig[2],
/// &sig[1])`).
pub fn is_td_cpuid(ebx: u32, ecx: u32, edx: u32) -> bool {
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&edx.to_le_bytes());
    sig[8..12].copy_from_slice(&ecx.to_le_bytes());
    &sig == b"IntelTDX    "
}

// ---------------------------------------------------------------------------
// The executor (guest kernel only)
// ---------------------------------------------------------------------------

/// Execute `TDCALL` with `regs` and write every register back; returns RAX.
///
/// # Safety
/// Only inside an Intel TDX trust domain, at CPL 0 (else #UD / #GP). The
/// operands must be valid for the leaf: memory the TDX module or the host
/// reads (RTMR data, an accepted page) must be owned by the caller, and the
/// caller must expect the leaf's effects (ACCEPT zeroes and maps a page;
/// TDG.VP.VMCALL lets the host rewrite R10..R15).
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub unsafe fn tdcall(regs: &mut TdcallRegs) -> u64 {
    // SAFETY: the caller guarantees we run in a TD at CPL 0 with operands
    // valid for the leaf. Every register a TDCALL leaf may read or write
    // (RAX, RCX, RDX, R8..R15) is an in/out operand; RBX/RSI/RDI/RBP are not
    // inputs of these leaves and never exposed to the VMM (RCX bitmap), so
    // the TDX module preserves them; memory is clobbered (no `nomem`)
    // because the TDX module and the host may read or write guest memory;
    // flags are clobbered (no `preserves_flags`); the stack is untouched.
    unsafe {
        core::arch::asm!(
            ".byte 0x66, 0x0f, 0x01, 0xcc", // tdcall
            inout("rax") regs.rax,
            inout("rcx") regs.rcx,
            inout("rdx") regs.rdx,
            inout("r8") regs.r8,
            inout("r9") regs.r9,
            inout("r10") regs.r10,
            inout("r11") regs.r11,
            inout("r12") regs.r12,
            inout("r13") regs.r13,
            inout("r14") regs.r14,
            inout("r15") regs.r15,
            options(nostack),
        );
    }
    regs.rax
}

/// One TETD hypercall over TDG.VP.VMCALL: [`vmcall_regs`], [`tdcall`],
/// [`vmcall_result`].
///
/// # Safety
/// As [`tdcall`]: only inside a TD at CPL 0.
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub unsafe fn vmcall(args: &HypercallArgs) -> Result<HypercallRet, TdcallError> {
    let mut regs = vmcall_regs(args);
    // SAFETY: forwarded contract; TDG.VP.VMCALL touches no guest memory by
    // itself.
    unsafe { tdcall(&mut regs) };
    vmcall_result(&regs)
}

/// TDG.MEM.PAGE.ACCEPT of one 4 KiB page.
///
/// # Safety
/// As [`tdcall`]; additionally `gpa` must be a page the caller owns: the TDX
/// module zeroes it and maps it into the TD.
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub unsafe fn accept_page(gpa: u64) -> Result<Accepted, TdcallError> {
    let mut regs = accept_regs(gpa)?;
    // SAFETY: forwarded contract.
    let rax = unsafe { tdcall(&mut regs) };
    decode_accept(rax)
}

/// TDG.MR.RTMR.EXTEND of RTMR `index` with the digest at guest-physical
/// `data_gpa`.
///
/// # Safety
/// As [`tdcall`]; additionally `data_gpa` must be the physical address of a
/// live [`RtmrData`] (48 readable private bytes, 64-byte aligned).
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub unsafe fn rtmr_extend(data_gpa: u64, index: u64) -> Result<(), TdcallError> {
    let mut regs = rtmr_extend_regs(data_gpa, index)?;
    // SAFETY: forwarded contract.
    let rax = unsafe { tdcall(&mut regs) };
    decode_status(tdx::TDG_MR_RTMR_EXTEND, rax).map(|_| ())
}

/// TDG.VP.INFO.
///
/// # Safety
/// As [`tdcall`].
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub unsafe fn vp_info() -> Result<VpInfo, TdcallError> {
    let mut regs = vp_info_regs();
    // SAFETY: forwarded contract; TDG.VP.INFO only writes registers.
    unsafe { tdcall(&mut regs) };
    decode_vp_info(&regs)
}
