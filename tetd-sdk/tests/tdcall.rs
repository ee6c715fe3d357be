//! `tetd::tdcall`: register marshalling of every TDCALL leaf the guest uses
//! (TDG.VP.VMCALL with TETD leaves, TDG.MEM.PAGE.ACCEPT,
//! TDG.MR.RTMR.EXTEND, TDG.VP.INFO) and decoding of their outputs. No
//! TDCALL is executed here (this host is not a TD; it would #UD).

use proptest::prelude::*;
use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::{tdx, Error, Leaf, TETD_VMCALL_VENDOR};
use tetd::tdcall::*;

#[test]
fn vmcall_uses_the_linux_hypercall_convention() {
    let args = HypercallArgs {
        leaf: Leaf::AgentAccess as u64,
        args: [7, 16, 0x1_0000_0001, 0x8000],
    };
    let r = vmcall_regs(&args);
    assert_eq!(r.rax, 0, "TDG.VP.VMCALL is TDCALL leaf 0");
    // Linux TDX_R10..TDX_R15 = BIT(10)..BIT(15); nothing else exposed.
    assert_eq!(r.rcx, 0xfc00);
    assert_eq!(r.r10, TETD_VMCALL_VENDOR);
    assert_eq!(r.r10, 0x5445_5444, "\"TETD\"");
    assert_eq!(r.r11, 1);
    assert_eq!([r.r12, r.r13, r.r14, r.r15], [7, 16, 0x1_0000_0001, 0x8000]);
    assert_eq!((r.rdx, r.r8, r.r9), (0, 0, 0));
}

#[test]
fn vmcall_exposes_no_register_the_tdx_module_rejects() {
    // tdx-module tdg_vp_vmcall.c: bits 0 (RAX), 1 (RCX), 4 (RSP) and 63:32
    // of RCX must be 0; RBP (bit 5) is never exposed here either; no XMM.
    let rcx = vmcall_regs(&HypercallArgs::default()).rcx;
    assert_eq!(rcx & (1 | 2 | 1 << 4 | 1 << 5), 0);
    assert_eq!(rcx >> 16, 0, "no XMM registers, no reserved bits");
}

#[test]
fn every_leaf_marshals_into_r11() {
    for leaf in Leaf::ALL {
        let r = vmcall_regs(&HypercallArgs {
            leaf: leaf as u64,
            args: [1, 2, 3, 4],
        });
        assert_eq!(r.r11, leaf as u64, "{}", leaf.name());
        assert_eq!(Leaf::from_u64(r.r11), Some(leaf));
    }
}

#[test]
fn vmcall_answer_decodes_r10_to_r13() {
    let out = TdcallRegs {
        rax: 0,
        r10: 0,
        r11: 0x1_0000_0000,
        r12: 4,
        r13: 1,
        r14: 0xdead, // not a result register
        ..Default::default()
    };
    let ret = decode_vmcall(&out);
    assert_eq!(ret, HypercallRet::ok([0x1_0000_0000, 4, 1]));
    assert_eq!(vmcall_result(&out), Ok(ret));
    assert_eq!(ret.into_result(), Ok([0x1_0000_0000, 4, 1]));

    let failed = TdcallRegs {
        r10: Error::UnknownAgent as u64,
        ..Default::default()
    };
    assert_eq!(
        vmcall_result(&failed).unwrap().into_result(),
        Err(Error::UnknownAgent)
    );
}

#[test]
fn vmcall_transport_failures_are_not_host_answers() {
    // The TDX module refused the TDCALL (e.g. a bad RCX bitmap).
    let out = TdcallRegs {
        rax: tdx::TDX_OPERAND_INVALID | tdx::OPERAND_ID_RCX,
        r10: 0,
        ..Default::default()
    };
    let e = vmcall_result(&out).unwrap_err();
    assert_eq!(
        e,
        TdcallError::Tdx {
            leaf: 0,
            status: 0xC000_0100_0000_0001
        }
    );
    assert_eq!(e.to_error(), Error::Transport);

    // An unpatched KVM: vendor R10 treated as unknown KVM hypercall.
    let out = TdcallRegs {
        r10: (-1000i64) as u64,
        ..Default::default()
    };
    assert_eq!(vmcall_result(&out), Err(TdcallError::NoTetdHost));
    assert_eq!(TdcallError::NoTetdHost.to_error(), Error::Unsupported);
}

#[test]
fn accept_is_gpa_or_level() {
    let r = accept_regs(0x1_0000_3000).unwrap();
    assert_eq!(r.rax, 6, "TDG.MEM.PAGE.ACCEPT");
    assert_eq!(r.rcx, 0x1_0000_3000, "level bits 2:0 = 0 (4 KiB)");
    assert_eq!(r.rcx & tdx::LEVEL_MASK, tdx::TDX_PS_4K);
    assert_eq!((r.rdx, r.r8, r.r10), (0, 0, 0));
    for bad in [0x1_0000_3001u64, 0x1_0000_3800, 0xfff] {
        let e = accept_regs(bad).unwrap_err();
        assert!(matches!(e, TdcallError::BadOperand { value, .. } if value == bad));
        assert_eq!(e.to_error(), Error::InvalidArgument);
    }
}

#[test]
fn accept_outcomes() {
    assert_eq!(decode_accept(0), Ok(Accepted::Now));
    assert_eq!(
        decode_accept(tdx::TDX_PAGE_ALREADY_ACCEPTED),
        Ok(Accepted::Already),
        "a warning, not an error"
    );
    let err = tdx::TDX_OPERAND_INVALID | tdx::OPERAND_ID_RCX;
    assert_eq!(
        decode_accept(err),
        Err(TdcallError::Tdx {
            leaf: 6,
            status: err
        })
    );
    // A warning we do not expect is not silently taken as success.
    assert!(decode_accept(tdx::TDX_GPA_RANGE_ALREADY_BLOCKED).is_err());
}

#[test]
fn rtmr_extend_operands() {
    let r = rtmr_extend_regs(0x7f00_0040, 2).unwrap();
    assert_eq!(r.rax, 2, "TDG.MR.RTMR.EXTEND");
    assert_eq!(r.rcx, 0x7f00_0040);
    assert_eq!(r.rdx, 2);
    assert_eq!(r.r8, 0);
    // tdg_mr_rtmr_extend.c: 64-byte alignment (operand RCX), index < 4 (RDX).
    assert!(matches!(
        rtmr_extend_regs(0x7f00_0020, 0),
        Err(TdcallError::BadOperand {
            value: 0x7f00_0020,
            ..
        })
    ));
    assert!(matches!(
        rtmr_extend_regs(0x7f00_0040, 4),
        Err(TdcallError::BadOperand { value: 4, .. })
    ));
    for i in 0..4 {
        assert_eq!(rtmr_extend_regs(0, i).unwrap().rdx, i);
    }
    assert_eq!(core::mem::align_of::<RtmrData>(), 64);
    assert_eq!(core::mem::size_of::<RtmrData>(), 64);
    assert_eq!(decode_status(2, 0), Ok(0));
    assert!(decode_status(2, tdx::TDX_OPERAND_INVALID | tdx::OPERAND_ID_RDX).is_err());
}

#[test]
fn vp_info_decodes_every_output() {
    assert_eq!(
        vp_info_regs(),
        TdcallRegs {
            rax: 1,
            ..Default::default()
        }
    );
    let out = TdcallRegs {
        rax: 0,
        rcx: 52,
        rdx: 1 << 28, // SEPT_VE_DISABLE
        r8: (8u64 << 32) | 4,
        r9: 3,
        r10: 1,
        ..Default::default()
    };
    let info = decode_vp_info(&out).unwrap();
    assert_eq!(
        info,
        VpInfo {
            gpaw: 52,
            attributes: 1 << 28,
            num_vcpus: 4,
            max_vcpus: 8,
            vcpu_index: 3,
            sys_rd_available: true,
        }
    );
    assert_eq!(info.shared_bit(), 1 << 51);
    let info48 = decode_vp_info(&TdcallRegs {
        rcx: 48,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(info48.shared_bit(), 1 << 47);
    assert!(!info48.sys_rd_available);
    // Nonsense GPAW and failed calls are errors, not numbers.
    assert!(decode_vp_info(&TdcallRegs {
        rcx: 39,
        ..Default::default()
    })
    .is_err());
    assert!(decode_vp_info(&TdcallRegs {
        rax: tdx::TDX_OPERAND_INVALID,
        rcx: 48,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn td_cpuid_signature_register_order() {
    let w = |s: &[u8; 4]| u32::from_le_bytes(*s);
    // EBX "Inte", EDX "lTDX", ECX "    " (Linux tdx_early_init()).
    assert!(is_td_cpuid(w(b"Inte"), w(b"    "), w(b"lTDX")));
    // The order EBX, ECX, EDX is a different (wrong) reading.
    assert!(!is_td_cpuid(w(b"Inte"), w(b"lTDX"), w(b"    ")));
    assert!(!is_td_cpuid(w(b"Genu"), w(b"ntel"), w(b"ineI")));
    assert_eq!(TDX_CPUID_LEAF, 0x21);
}

#[test]
fn errors_display_names() {
    let e = TdcallError::Tdx {
        leaf: 6,
        status: tdx::TDX_EPT_ENTRY_STATE_INCORRECT | 1,
    };
    let s = e.to_string();
    assert!(s.contains("TDX_EPT_ENTRY_STATE_INCORRECT"), "{s}");
    assert!(TdcallError::NoTetdHost.to_string().contains("KVM_ENOSYS"));
}

proptest! {
    #[test]
    fn vmcall_roundtrip(leaf in any::<u64>(), args in any::<[u64; 4]>(),
                        status in any::<u64>(), res in any::<[u64; 3]>()) {
        let regs = vmcall_regs(&HypercallArgs { leaf, args });
        // What the host sees (registers it reads) is exactly what was sent.
        prop_assert_eq!([regs.r11, regs.r12, regs.r13, regs.r14, regs.r15],
                        [leaf, args[0], args[1], args[2], args[3]]);
        // The host's answer comes back unchanged.
        let out = TdcallRegs { rax: 0, r10: status, r11: res[0], r12: res[1], r13: res[2], ..regs };
        prop_assert_eq!(decode_vmcall(&out), HypercallRet { status, results: res });
    }

    #[test]
    fn accept_accepts_exactly_aligned_gpas(gpa in any::<u64>()) {
        let r = accept_regs(gpa);
        prop_assert_eq!(r.is_ok(), gpa % 4096 == 0);
        if let Ok(r) = r { prop_assert_eq!(r.rcx, gpa); }
    }
}
