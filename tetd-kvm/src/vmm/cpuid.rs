//! Guest CPUID: what KVM supports (`KVM_GET_SUPPORTED_CPUID`, which includes
//! the KVM paravirt leaves 0x4000_0000/0x4000_0001), with per-vCPU topology
//! and without CET.
//!
//! CET is hidden because the VMM does not manage the CET MSRs / XSS state on
//! behalf of the guest and the 6.1 guest kernel would otherwise try to
//! enable indirect-branch tracking or shadow stacks on a host that has them.
//!
//! Where the KVM backend *emulates* guest kernel code instead of running it
//! (PVM, see [`super::kvm_emulates_guest_kernel`]), features KVM's instruction
//! emulator cannot execute are hidden as well: CMPXCHG16B (used by SLUB) and
//! XSAVE/OSXSAVE (the kernel's XRSTOR at FPU init; hiding XSAVE also makes
//! Linux drop AVX and everything depending on it). PVM honours the cleared
//! CMPXCHG16B bit but derives XSAVE from the host CPU, so the VMM also puts
//! `noxsave` on such a guest's command line (see `Vm::new`).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: CMPXCHG16B.
const LEAF1_ECX_CX16: u32 = 1 << 13;
/// Leaf 1 ECX: XSAVE and OSXSAVE.
const LEAF1_ECX_XSAVE: u32 = (1 << 26) | (1 << 27);
/// Leaf 1 EDX: hyper-threading / multi-core package (EBX[23:16] valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 7.0 ECX: CET shadow stack.
const LEAF7_ECX_CET_SS: u32 = 1 << 7;
/// Leaf 7.0 EDX: CET indirect-branch tracking.
const LEAF7_EDX_CET_IBT: u32 = 1 << 20;
/// Leaf 0xd.1 ECX: XSS bits for CET user / supervisor state.
const LEAF_D1_ECX_CET: u32 = (1 << 11) | (1 << 12);

/// Topology level types of leaves 0xb / 0x1f (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Adjusts KVM's supported CPUID for vCPU `id` of `count` vCPUs (APIC id =
/// vCPU id); `emulated`: hide what KVM's instruction emulator cannot run.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8, emulated: bool) -> CpuId {
    let mut cpuid = supported.clone();
    let count32 = u32::from(count.max(1));
    // Number of APIC-id bits the cores of one package use.
    let core_shift = 32 - (count32 - 1).leading_zeros();
    for e in cpuid.as_mut_slice().iter_mut() {
        adjust_entry(e, u32::from(id), count32, core_shift);
        if emulated && e.function == 1 {
            e.ecx &= !(LEAF1_ECX_CX16 | LEAF1_ECX_XSAVE);
        }
    }
    cpuid
}

fn adjust_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_shift: u32) {
    match e.function {
        1 => {
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            e.edx |= LEAF1_EDX_HTT;
        }
        // Cores per package - 1 in EAX[31:26] of every valid cache leaf.
        4 if e.eax & 0x1f != 0 => {
            e.eax = (e.eax & 0x0000_3fff) | ((count - 1) << 26);
        }
        7 if e.index == 0 => {
            e.ecx &= !LEAF7_ECX_CET_SS;
            e.edx &= !LEAF7_EDX_CET_IBT;
        }
        0xd if e.index == 1 => {
            e.ecx &= !LEAF_D1_ECX_CET;
        }
        0xb | 0x1f => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_shift;
                    e.ebx = count;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn masks_cet_and_sets_topology() {
        let supported = CpuId::from_entries(&[
            entry(1, 0),
            entry(7, 0),
            entry(0xd, 1),
            entry(0xb, 0),
            entry(0xb, 1),
        ])
        .unwrap();
        let c = vcpu_cpuid(&supported, 1, 2, false);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 1);
        assert_eq!((s[0].ebx >> 16) & 0xff, 2);
        assert_eq!(s[1].ecx & LEAF7_ECX_CET_SS, 0);
        assert_eq!(s[1].edx & LEAF7_EDX_CET_IBT, 0);
        assert_ne!(s[1].edx & 1, 0, "other leaf-7 bits are kept");
        assert_eq!(s[2].ecx & LEAF_D1_ECX_CET, 0);
        assert_eq!(
            (s[3].ebx, s[3].edx, (s[3].ecx >> 8) & 0xff),
            (1, 1, LEVEL_SMT)
        );
        assert_eq!(
            (s[4].eax, s[4].ebx, (s[4].ecx >> 8) & 0xff),
            (1, 2, LEVEL_CORE)
        );
    }
}
