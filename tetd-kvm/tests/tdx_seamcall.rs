//! The real-TDX SEAM backend (`tetd_kvm::tdx_seamcall`): register
//! marshalling of every SEAMCALL leaf TETD-H issues, output decoding, the
//! userspace ABI of the kernel patch, and the TETD-H core running on
//! `TdxSeamcall` over an executor that decodes the registers the way the TDX
//! module does and answers from the software model. No SEAMCALL instruction
//! is executed (this machine has no TDX; it would #UD).

use std::collections::HashMap;

use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::{access, tdx, Error, Leaf, Mode, PAGE_SIZE, ZONE_GPA_BASE};
use tetd_kvm::seam::{SeamError, SeamOp, SeamOps, TdxStatus};
use tetd_kvm::seam_model::{SeptModel, SeptState};
use tetd_kvm::tdx_seamcall::{uapi, *};
use tetd_kvm::{Host, TdConfig, TdState};

const G: u64 = ZONE_GPA_BASE;
const TDR: u64 = 0x0000_0012_3456_7000;
const PAGE: u64 = 0x0000_0008_0000_0000;

// ---------------------------------------------------------------------------
// marshalling
// ---------------------------------------------------------------------------

#[test]
fn aug_operands() {
    let r = marshal::page_aug(G + 0x3000, TDR, PAGE).unwrap();
    assert_eq!(r.rax, 6, "TDH.MEM.PAGE.AUG");
    assert_eq!(r.rcx, G + 0x3000, "GPA | level 0 (4 KiB)");
    assert_eq!(r.rcx & 7, tdx::TDX_PS_4K);
    assert_eq!(r.rdx, TDR, "RDX = TDR");
    assert_eq!(r.r8, PAGE, "R8 = the page");
    assert_eq!((r.r9, r.r10, r.r11), (0, 0, 0));
}

#[test]
fn gpa_leaves_operands() {
    for (f, leaf) in [
        (marshal::range_block as fn(u64, u64) -> _, 7u64),
        (marshal::range_unblock, 39),
        (marshal::page_remove, 29),
    ] {
        let r = f(G + 0x5000, TDR).unwrap();
        assert_eq!(r.rax, leaf);
        assert_eq!(r.rcx, G + 0x5000);
        assert_eq!(r.rdx, TDR);
        assert_eq!(r.r8, 0);
    }
}

#[test]
fn track_takes_the_tdr_in_rcx() {
    // Linux tdh_mem_track(): .rcx = tdx_tdr_pa(td).
    let r = marshal::track(TDR).unwrap();
    assert_eq!((r.rax, r.rcx, r.rdx), (38, TDR, 0));
}

#[test]
fn malformed_operands_never_reach_the_module() {
    let bad = |r: Result<SeamcallRegs, SeamError>, needle: &str| {
        let e = r.unwrap_err();
        assert!(matches!(e, SeamError::Backend { .. }), "{e:?}");
        assert!(e.to_string().contains(needle), "{e} lacks {needle}");
    };
    bad(marshal::page_aug(G + 1, TDR, PAGE), "gpa");
    bad(marshal::page_aug(G + 0x800, TDR, PAGE), "gpa");
    bad(marshal::page_aug(G, TDR + 8, PAGE), "TDR");
    bad(marshal::page_aug(G, TDR, PAGE | 0x10), "page");
    bad(marshal::page_aug(G, TDR, 0), "page");
    bad(marshal::page_aug(1 << 52, TDR, PAGE), "gpa");
    bad(marshal::range_block(G + 4, TDR), "gpa");
    bad(marshal::range_unblock(G, 1), "TDR");
    bad(marshal::page_remove(G | 1 << 60, TDR), "gpa");
    bad(marshal::track(TDR | 0xfff), "TDR");
}

#[test]
fn output_decoding() {
    let out = SeamcallRegs {
        rax: tdx::TDX_EPT_WALK_FAILED | tdx::OPERAND_ID_RCX,
        rcx: 0x8000_0000_0000_0000,
        rdx: (3 << 8) | 2,
        ..Default::default()
    };
    assert_eq!(
        decode_ept_info(&out),
        EptEntryInfo {
            entry: 1 << 63,
            level: 2,
            state: 3
        }
    );
    // REMOVE: RCX = removed page; key-id bits stripped on request.
    let keyid = 0x3f << 46;
    let out = SeamcallRegs {
        rcx: PAGE | (5 << 46) | 0x7,
        ..Default::default()
    };
    assert_eq!(removed_hpa(&out, keyid), PAGE);
    assert_eq!(removed_hpa(&out, 0), PAGE | (5 << 46));
}

// ---------------------------------------------------------------------------
// an executor that plays the TDX module (registers decoded as the module
// does, state from the software model)
// ---------------------------------------------------------------------------

struct ModuleModel {
    tdr: u64,
    model: SeptModel,
    calls: Vec<SeamcallRegs>,
    kicks: u32,
    /// Make the next SEAMCALL of this leaf fail to be issued at all.
    fail_issue: Option<u64>,
}

impl ModuleModel {
    fn new() -> Self {
        ModuleModel {
            tdr: TDR,
            model: SeptModel::new(),
            calls: vec![],
            kicks: 0,
            fail_issue: None,
        }
    }
}

/// Decode a GPA operand like the TDX module's `page_info_api_input_t`:
/// level bits 2:0, reserved bits 11:3 and 63:52 zero.
fn page_info(rcx: u64) -> Result<u64, u64> {
    if rcx & 7 != 0 || rcx & 0xff8 != 0 || rcx >> 52 != 0 {
        return Err(tdx::TDX_OPERAND_INVALID | tdx::OPERAND_ID_RCX);
    }
    Ok(rcx & !0xfff)
}

fn status_of<T>(r: Result<T, SeamError>) -> u64 {
    match r {
        Ok(_) => 0,
        Err(SeamError::Tdx { status, .. }) => status.0,
        Err(e) => panic!("model gave {e}"),
    }
}

impl SeamcallExecutor for ModuleModel {
    fn tdr(&self) -> u64 {
        self.tdr
    }

    fn seamcall(&mut self, regs: &mut SeamcallRegs) -> Result<(), String> {
        if self.fail_issue == Some(regs.rax) {
            self.fail_issue = None;
            return Err("injected: ioctl failed".into());
        }
        self.calls.push(*regs);
        // The TDR operand is RDX for the GPA leaves, RCX for TRACK.
        let tdr_reg = if regs.rax == tdx::TDH_MEM_TRACK {
            regs.rcx
        } else {
            regs.rdx
        };
        if tdr_reg != self.tdr {
            regs.rax = tdx::TDX_OPERAND_INVALID
                | if regs.rax == tdx::TDH_MEM_TRACK {
                    tdx::OPERAND_ID_RCX
                } else {
                    tdx::OPERAND_ID_RDX
                };
            return Ok(());
        }
        let (rax, rcx) = match regs.rax {
            tdx::TDH_MEM_TRACK => (status_of(self.model.track()), 0),
            leaf => match page_info(regs.rcx) {
                Err(s) => (s, 0),
                Ok(gpa) => match leaf {
                    tdx::TDH_MEM_PAGE_AUG => (status_of(self.model.page_aug(gpa, regs.r8)), 0),
                    tdx::TDH_MEM_RANGE_BLOCK => (status_of(self.model.range_block(gpa)), 0),
                    tdx::TDH_MEM_RANGE_UNBLOCK => (status_of(self.model.range_unblock(gpa)), 0),
                    tdx::TDH_MEM_PAGE_REMOVE => match self.model.page_remove(gpa) {
                        Ok(hpa) => (0, hpa),
                        Err(e) => (status_of::<()>(Err(e)), 0),
                    },
                    _ => (tdx::TDX_OPERAND_INVALID, 0),
                },
            },
        };
        *regs = SeamcallRegs {
            rax,
            rcx,
            ..Default::default()
        };
        Ok(())
    }

    fn kick_vcpus(&mut self) -> Result<(), String> {
        self.kicks += 1;
        self.model.kick_vcpus().map_err(|e| e.to_string())
    }
}

#[test]
fn backend_maps_statuses_like_the_model() {
    let mut b = TdxSeamcall::new(ModuleModel::new());
    assert!(!b.host_accepts(), "real TDX: the guest accepts");
    b.page_aug(G, PAGE).unwrap();
    let (inp, out) = b.last_call().unwrap();
    assert_eq!((inp.rax, inp.rcx, inp.rdx, inp.r8), (6, G, TDR, PAGE));
    assert_eq!(out.rax, 0);
    // Same status values as the model (one table: tetd::abi::tdx).
    let e = b.page_aug(G, PAGE + PAGE_SIZE).unwrap_err();
    assert_eq!(
        e,
        SeamError::Tdx {
            op: SeamOp::PageAug,
            gpa: Some(G),
            status: TdxStatus(tdx::TDX_EPT_ENTRY_STATE_INCORRECT | tdx::OPERAND_ID_RCX)
        }
    );
    b.range_block(G).unwrap();
    // A warning is surfaced, not swallowed.
    assert!(b
        .range_block(G)
        .unwrap_err()
        .is_class(tdx::TDX_GPA_RANGE_ALREADY_BLOCKED));
    assert!(b
        .range_unblock(G)
        .unwrap_err()
        .is_class(tdx::TDX_TLB_TRACKING_NOT_DONE));
    b.flush().unwrap();
    assert!(b.executor().kicks >= 1, "flush kicks after TRACK");
    assert_eq!(b.page_remove(G).unwrap(), PAGE);
    // The host cannot accept for the guest on real TDX.
    assert!(matches!(
        b.page_accept(G),
        Err(SeamError::Backend {
            op: SeamOp::PageAccept,
            ..
        })
    ));
    // An executor failure is a Backend error naming the operation.
    b.executor_mut().fail_issue = Some(tdx::TDH_MEM_PAGE_AUG);
    let e = b.page_aug(G, PAGE).unwrap_err();
    assert!(
        matches!(
            e,
            SeamError::Backend {
                op: SeamOp::PageAug,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("injected"));
}

#[test]
fn wrong_tdr_is_refused_by_the_module() {
    let mut exec = ModuleModel::new();
    exec.tdr = TDR + PAGE_SIZE; // the backend marshals another TDR
    struct Other(ModuleModel);
    impl SeamcallExecutor for Other {
        fn tdr(&self) -> u64 {
            TDR
        }
        fn seamcall(&mut self, r: &mut SeamcallRegs) -> Result<(), String> {
            self.0.seamcall(r)
        }
        fn kick_vcpus(&mut self) -> Result<(), String> {
            self.0.kick_vcpus()
        }
    }
    let mut b = TdxSeamcall::new(Other(exec));
    let e = b.page_aug(G, PAGE).unwrap_err();
    assert_eq!(
        e.status().unwrap().0,
        tdx::TDX_OPERAND_INVALID | tdx::OPERAND_ID_RDX
    );
    let e = b.track().unwrap_err();
    assert_eq!(
        e.status().unwrap().0,
        tdx::TDX_OPERAND_INVALID | tdx::OPERAND_ID_RCX
    );
}

fn call<S: SeamOps>(
    td: &mut TdState<S>,
    vcpu: u32,
    leaf: Leaf,
    args: [u64; 4],
) -> Result<[u64; 3], Error> {
    td.handle(
        vcpu,
        HypercallArgs {
            leaf: leaf as u64,
            args,
        },
    )
    .into_result()
}

#[test]
fn tetd_h_core_runs_on_the_seamcall_backend() {
    let host: Host = Host::new(64).unwrap();
    let mut td = TdState::new(
        9,
        TdxSeamcall::new(ModuleModel::new()),
        host.pool().clone(),
        host.notifier().clone(),
        TdConfig::default(),
    );
    let mode = access::encode(Mode::Collaborative, 0);
    let [gpa, pages, flags] = call(&mut td, 0, Leaf::AgentAccess, [1, 4, mode, 0]).unwrap();
    assert_eq!(pages, 4);
    assert_eq!(flags, access::ZONE_FLAG_ACCEPT_REQUIRED);
    let m = |td: &TdState<TdxSeamcall<ModuleModel>>| td.seam().executor().model.clone();
    for i in 0..4 {
        assert_eq!(m(&td).state(gpa + i * PAGE_SIZE), SeptState::PendingBlocked);
        assert!(m(&td).is_tracked(gpa + i * PAGE_SIZE));
    }
    // Every SEAMCALL the core issued was well formed for the module: the
    // model accepted each one (no status but success so far).
    let calls = td.seam().executor().calls.clone();
    let count = |leaf| calls.iter().filter(|r| r.rax == leaf).count();
    assert_eq!(count(tdx::TDH_MEM_PAGE_AUG), 4);
    assert_eq!(count(tdx::TDH_MEM_RANGE_BLOCK), 4);
    assert!(count(tdx::TDH_MEM_TRACK) >= 1);
    // AUG pages are the zone's host pages, one per GPA, 4 KiB apart.
    let augs: HashMap<u64, u64> = calls
        .iter()
        .filter(|r| r.rax == tdx::TDH_MEM_PAGE_AUG)
        .map(|r| (r.rcx, r.r8))
        .collect();
    let zone = td.zones().next().unwrap().1;
    for i in 0..4 {
        assert_eq!(
            augs[&(gpa + i * PAGE_SIZE)],
            zone.host_addr() + i * PAGE_SIZE
        );
    }

    // The call window: UNBLOCK, the guest accepts (TDCALL, played here on the
    // model), RESUME blocks and tracks again.
    call(&mut td, 0, Leaf::VmmEnter, [1, 0, 0, 0]).unwrap();
    for i in 0..4 {
        let g = gpa + i * PAGE_SIZE;
        assert_eq!(m(&td).state(g), SeptState::Pending);
        td.seam_mut().executor_mut().model.page_accept(g).unwrap();
    }
    call(&mut td, 0, Leaf::VmmResume, [1, 0, 0, 0]).unwrap();
    for i in 0..4 {
        let g = gpa + i * PAGE_SIZE;
        assert_eq!(m(&td).state(g), SeptState::Blocked);
        assert!(!m(&td).guest_may_access(g));
    }
    // DISABLE removes every page; the backend returned the right pages.
    call(&mut td, 0, Leaf::AgentDisable, [1, 0, 0, 0]).unwrap();
    assert_eq!(m(&td).page_count(), 0);
    assert_eq!(td.seam_trouble().errors, 0);
    let removes = td
        .seam()
        .executor()
        .calls
        .iter()
        .filter(|r| r.rax == tdx::TDH_MEM_PAGE_REMOVE)
        .count();
    assert_eq!(removes, 4);
}

// ---------------------------------------------------------------------------
// the kernel patch's userspace ABI
// ---------------------------------------------------------------------------

vmm_sys_util::ioctl_iowr_nr!(KVM_MEMORY_ENCRYPT_OP_REF, 0xAE, 0xba, std::os::raw::c_ulong);

#[test]
fn uapi_numbers_and_layouts() {
    assert_eq!(uapi::KVM_MEMORY_ENCRYPT_OP, 0xC008_AEBA);
    assert_eq!(
        KVM_MEMORY_ENCRYPT_OP_REF() as u64,
        uapi::KVM_MEMORY_ENCRYPT_OP
    );
    assert_eq!(std::mem::size_of::<uapi::KvmTdxCmd>(), 24);
    assert_eq!(std::mem::size_of::<uapi::KvmTdxTetdEnable>(), 24);
    assert_eq!(std::mem::size_of::<uapi::KvmTdxTetdSeamcall>(), 48);
    assert_eq!(std::mem::size_of::<uapi::KvmRunTetd>(), 80);
    assert!(
        std::mem::size_of::<uapi::KvmRunTetd>() <= 256,
        "fits kvm_run's exit union"
    );
    assert_eq!(std::mem::offset_of!(uapi::KvmRunTetd, status), 48);
    assert_eq!(std::mem::offset_of!(uapi::KvmRunTetd, results), 56);
    // kvm_run's exit union starts at byte 32 (kvm-bindings' layout).
    let run = kvm_bindings::kvm_run::default();
    let base = &run as *const _ as usize;
    let union = &run.__bindgen_anon_1 as *const _ as usize;
    assert_eq!(union - base, 32);
    assert_eq!(std::mem::size_of_val(&run.__bindgen_anon_1), 256);
}

#[test]
fn exit_area_roundtrip() {
    let exit = uapi::KvmRunTetd {
        flags: 0,
        leaf: Leaf::VmmEnter as u64,
        args: [5, 1, 0, 0],
        status: (-1000i64) as u64,
        results: [0; 3],
    };
    let mut area = [0u8; 256];
    // SAFETY: KvmRunTetd is repr(C), 80 plain bytes.
    let bytes: [u8; 80] = unsafe { std::mem::transmute(exit) };
    area[..80].copy_from_slice(&bytes);
    assert_eq!(
        decode_tetd_exit(&area),
        HypercallArgs {
            leaf: 2,
            args: [5, 1, 0, 0]
        }
    );
    encode_tetd_answer(&mut area, &HypercallRet::ok([7, 0, 0]));
    let mut back = [0u8; 80];
    back.copy_from_slice(&area[..80]);
    // SAFETY: as above.
    let back: uapi::KvmRunTetd = unsafe { std::mem::transmute(back) };
    assert_eq!(back.status, 0);
    assert_eq!(back.results, [7, 0, 0]);
    assert_eq!(back.leaf, 2, "inputs untouched");
}

#[test]
fn ioctl_request_mapping() {
    // The kernel supplies the TDR (KvmTdxIoctl::tdr() == 0): marshal with 0.
    let aug = marshal::page_aug(G, 0, 0x7f00_1234_5000).unwrap();
    let req = to_ioctl_request(&aug).unwrap();
    assert_eq!((req.leaf, req.rcx, req.page), (6, G, 0x7f00_1234_5000));
    let blk = to_ioctl_request(&marshal::range_block(G, 0).unwrap()).unwrap();
    assert_eq!((blk.leaf, blk.rcx, blk.page), (7, G, 0));
    let trk = to_ioctl_request(&marshal::track(0).unwrap()).unwrap();
    assert_eq!((trk.leaf, trk.rcx), (38, 0));
    // A TDR chosen by userspace is refused before the ioctl.
    assert!(to_ioctl_request(&marshal::range_block(G, TDR).unwrap()).is_err());
    // Only TETD's leaves.
    let other = SeamcallRegs {
        rax: tdx::TDH_MEM_SEPT_ADD,
        ..Default::default()
    };
    assert!(to_ioctl_request(&other).unwrap_err().contains("leaf 3"));

    // REMOVE: the kernel reports the user address the page was added with.
    let mut rem = to_ioctl_request(&marshal::page_remove(G, 0).unwrap()).unwrap();
    rem.status = 0;
    rem.page = 0x7f00_1234_5000;
    rem.out_rcx = 0x8_0000_0000;
    let mut regs = SeamcallRegs::default();
    from_ioctl_answer(&rem, &mut regs);
    assert_eq!((regs.rax, regs.rcx), (0, 0x7f00_1234_5000));
    // A failed leaf keeps the module's RCX/RDX details.
    let mut blk = blk;
    blk.status = tdx::TDX_EPT_ENTRY_STATE_INCORRECT | 1;
    blk.out_rcx = 1 << 63;
    blk.out_rdx = 0x0300;
    from_ioctl_answer(&blk, &mut regs);
    assert_eq!(regs.rax, blk.status);
    assert_eq!(decode_ept_info(&regs).state, 3);
}

/// The constants the kernel patch defines equal the Rust mirror (one table:
/// a change on either side fails here).
#[test]
fn kernel_patch_agrees_with_the_rust_uapi() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("linux");
    let patch = std::fs::read_to_string(
        dir.join("0001-KVM-TDX-TETD-vendor-TDVMCALL-and-zone-SEAM-ops.patch"),
    )
    .expect("tetd-kvm/linux/0001-*.patch");
    let want = [
        ("KVM_EXIT_TETD", format!("{:#x}", uapi::KVM_EXIT_TETD)),
        (
            "KVM_TETD_VMCALL_VENDOR",
            format!("{:#x}ULL", tetd::abi::TETD_VMCALL_VENDOR),
        ),
        (
            "KVM_TDX_TETD_ENABLE",
            format!("{:#x}", uapi::KVM_TDX_TETD_ENABLE),
        ),
        (
            "KVM_TDX_TETD_SEAMCALL",
            format!("{:#x}", uapi::KVM_TDX_TETD_SEAMCALL),
        ),
        (
            "KVM_TDX_TETD_KICK",
            format!("{:#x}ULL", uapi::KVM_TDX_TETD_KICK),
        ),
        (
            "TDH_MEM_RANGE_UNBLOCK",
            format!("{}", tdx::TDH_MEM_RANGE_UNBLOCK),
        ),
        (
            "KVM_TDX_TETD_PAGE_AUG",
            format!("{}", tdx::TDH_MEM_PAGE_AUG),
        ),
        (
            "KVM_TDX_TETD_RANGE_BLOCK",
            format!("{}", tdx::TDH_MEM_RANGE_BLOCK),
        ),
        (
            "KVM_TDX_TETD_PAGE_REMOVE",
            format!("{}", tdx::TDH_MEM_PAGE_REMOVE),
        ),
        ("KVM_TDX_TETD_TRACK", format!("{}", tdx::TDH_MEM_TRACK)),
        (
            "KVM_TDX_TETD_RANGE_UNBLOCK",
            format!("{}", tdx::TDH_MEM_RANGE_UNBLOCK),
        ),
    ];
    for (name, value) in want {
        let line = patch
            .lines()
            .find(|l| l.starts_with("+#define") && l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("patch does not #define {name}"));
        let got = line.split_whitespace().nth(2).unwrap();
        assert_eq!(got.to_lowercase(), value.to_lowercase(), "{name}");
    }
}
