//! The VMM with the real guest kernel (the Debian kernel `scripts/setup.sh`
//! unpacks into build/guest/) and a busybox initramfs built by the VMM's
//! initramfs builder.
//!
//! One boot (2 vCPUs) checks: the init script runs and the exit status
//! round-trips through the console sentinel; the guest sees 2 CPUs; a
//! hypercall from a guest program (tetd-kvm/guest/probe.c) reaches the
//! handler with the right registers and the program sees the answer; a wrong
//! vendor value is refused; a guest access to a removed zone slot is reported
//! as a violation and the guest keeps running.
//!
//! Skipped with a printed reason without /dev/kvm, without the setup's kernel,
//! or (unless TETD_VMM_LINUX_TESTS=1) where KVM emulates guest kernels (PVM).

mod vmm_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tetd::abi::{Error as AbiError, ZONE_GPA_BASE};
use tetd_kvm::vmm::initramfs::{build_busybox_initramfs, InitramfsSpec};
use tetd_kvm::vmm::{
    kvm_emulates_guest_kernel, run_vm, GuestKernel, HypercallArgs, HypercallHandler, HypercallRet,
    StatusSource, Violation, VmConfig, VmExit, VmMemoryControl, ZoneSlot,
};
use tetd_kvm::zone_alloc::HostPool;

const LEAF_BLOCK: u64 = 0x424c;
const LEAF_UNBLOCK: u64 = 0x554e;

#[derive(Default)]
struct Host {
    calls: Vec<(u32, HypercallArgs)>,
    violations: Vec<Violation>,
    zone: Option<ZoneSlot>,
}

impl HypercallHandler for Host {
    fn start(&mut self, mem: &mut VmMemoryControl) -> tetd_kvm::vmm::Result<()> {
        let mut pool = HostPool::new(1).expect("zone pool");
        let host = pool.alloc(1).expect("one page").host_addr;
        for i in 0..512u64 {
            pool.write(host + i * 8, &(0x1000 + i).to_le_bytes())
                .expect("pool write");
        }
        let slot = mem.map_zone(ZONE_GPA_BASE, &Arc::new(Mutex::new(pool)), host, 4096)?;
        self.zone = Some(slot);
        Ok(())
    }

    fn hypercall(
        &mut self,
        mem: &mut VmMemoryControl,
        vcpu: u32,
        call: HypercallArgs,
    ) -> HypercallRet {
        self.calls.push((vcpu, call));
        let slot = self.zone.expect("zone mapped at start");
        match call.leaf {
            0x77 => HypercallRet::ok([0xa1, 0xa2, 0xa3]),
            LEAF_BLOCK => mem
                .block_zone(slot)
                .map_or(HypercallRet::err(AbiError::SeamError), |_| {
                    HypercallRet::ok([0; 3])
                }),
            LEAF_UNBLOCK => mem
                .unblock_zone(slot)
                .map_or(HypercallRet::err(AbiError::SeamError), |_| {
                    HypercallRet::ok([0; 3])
                }),
            _ => HypercallRet::err(AbiError::UnknownLeaf),
        }
    }

    fn violation(&mut self, _: &mut VmMemoryControl, v: Violation) {
        self.violations.push(v);
    }
}

const RUN_SH: &str = r#"echo "probe: nproc=$(nproc) cpuinfo=$(grep -c ^processor /proc/cpuinfo)"
/tetd/tetd-probe hc 0x77 1 2 3 4
/tetd/tetd-probe hc 0x77 1 2 3 4 0x1234
/tetd/tetd-probe peek 0x100000000
/tetd/tetd-probe hc 0x424c
/tetd/tetd-probe peek 0x100000008
/tetd/tetd-probe poke 0x100000010 0x5a5a
/tetd/tetd-probe hc 0x554e
/tetd/tetd-probe peek 0x100000010
echo "probe: still running"
exit 7
"#;

fn line_with<'a>(console: &'a str, needle: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("console has no line containing {needle:?}:\n{console}"))
}

#[test]
fn linux_guest_end_to_end() {
    if let Some(reason) = vmm_common::linux_skip_reason() {
        vmm_common::skip("linux_guest_end_to_end", &reason);
        return;
    }
    let probe = match vmm_common::build_probe() {
        Ok(p) => p,
        Err(e) => {
            vmm_common::skip(
                "linux_guest_end_to_end",
                &format!("cannot build the guest probe: {e}"),
            );
            return;
        }
    };
    let dir = vmm_common::scratch();
    let run_sh = dir.join("boot-run.sh");
    std::fs::write(&run_sh, RUN_SH).unwrap();
    let spec = InitramfsSpec {
        extra: vec![
            (run_sh, "/tetd/run.sh".into()),
            (probe, "/tetd/tetd-probe".into()),
        ],
        ..Default::default()
    };
    let initrd = dir.join("boot-initrd.cpio");
    std::fs::write(&initrd, build_busybox_initramfs(&spec).unwrap()).unwrap();

    let kernel = GuestKernel::locate(&vmm_common::repo_root()).unwrap();
    let mut config = VmConfig::new(kernel.boot_image(), Some(initrd));
    config.vcpus = 2;
    config.timeout = if kvm_emulates_guest_kernel() {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(180)
    };
    let (out, host) = run_vm(config, Host::default()).unwrap();
    let console = &out.console;

    // The init ran, reported 7 through the sentinel, and the VM shut down.
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 7,
            via: StatusSource::Sentinel
        },
        "console:\n{console}"
    );
    assert!(line_with(console, "tetd-init: up").contains(&kernel.version));
    // SMP: both vCPUs came up.
    assert!(
        line_with(console, "probe: nproc=").contains("nproc=2 cpuinfo=2"),
        "{console}"
    );

    // Hypercall: the handler saw exactly the guest's registers ...
    let call = host
        .calls
        .first()
        .expect("no hypercall reached the handler");
    assert_eq!(
        call.1,
        HypercallArgs {
            leaf: 0x77,
            args: [1, 2, 3, 4]
        }
    );
    assert!(call.0 < 2);
    // ... and the guest program saw the answer in R10..R13.
    let hc: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("tetd-probe: hc"))
        .collect();
    assert!(
        hc[0].ends_with("R10=0 R11=0xa1 R12=0xa2 R13=0xa3"),
        "{hc:?}"
    );
    // A wrong vendor value never reaches the handler and fails with InvalidArgument.
    assert!(
        hc[1].contains(&format!("R10={:#x} ", AbiError::InvalidArgument.code())),
        "{hc:?}"
    );
    let leaves: Vec<u64> = host.calls.iter().map(|c| c.1.leaf).collect();
    assert_eq!(leaves, [0x77, LEAF_BLOCK, LEAF_UNBLOCK]);

    // Zone: mapped → host content; blocked → all-ones + violation; write
    // while blocked → violation, dropped; unblocked → original content.
    let peeks: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("tetd-probe: peek"))
        .collect();
    assert!(peeks[0].ends_with("= 0x1000"), "{peeks:?}");
    assert!(peeks[1].ends_with("= 0xffffffffffffffff"), "{peeks:?}");
    assert!(peeks[2].ends_with("= 0x1002"), "{peeks:?}");
    assert_eq!(host.violations.len(), 2, "{:?}", host.violations);
    assert_eq!(
        (host.violations[0].gpa, host.violations[0].write),
        (ZONE_GPA_BASE + 8, false)
    );
    assert_eq!(
        (
            host.violations[1].gpa,
            host.violations[1].write,
            host.violations[1].value
        ),
        (ZONE_GPA_BASE + 16, true, 0x5a5a)
    );
    // The accesses came from the probe in guest user space.
    assert!(
        host.violations.iter().all(|v| v.rip < 0x8000_0000_0000),
        "{:?}",
        host.violations
    );
    line_with(console, "probe: still running");
}
