//! VMM tests with micro guests (tetd-kvm/guest/micro/micro.S): exit port,
//! hypercall register round trip, zone slots and violations, kicks, stop,
//! timeout, SMP start-up without a guest OS, configuration errors.
//!
//! Each guest runs a handful of instructions, so these tests take
//! milliseconds. They need /dev/kvm, gcc and ld; without them they print a
//! SKIP line and pass.

mod vmm_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tetd::abi::{Error as AbiError, ZONE_GPA_BASE, ZONE_GPA_SIZE};
use tetd_kvm::vmm::{
    kvm_regs, run_vm, HypercallArgs, HypercallHandler, HypercallRet, StatusSource, Violation, Vm,
    VmConfig, VmExit, VmMemoryControl, VmmError, ZonePool, ZoneSlot,
};
use tetd_kvm::zone_alloc::HostPool;

/// A zone pool of `pages` pages, allocated whole; returns it and the host
/// address of its first page.
fn pool(pages: u64) -> (ZonePool, u64) {
    let mut p = HostPool::new(pages).unwrap();
    let r = p.alloc(pages).unwrap();
    (Arc::new(Mutex::new(p)), r.host_addr)
}

const LEAF_REPORT: u64 = 0x5250;
const LEAF_BLOCK: u64 = 0x424c;
const LEAF_UNBLOCK: u64 = 0x554e;

fn micro(test: &str, scenario: &str) -> Option<VmConfig> {
    if vmm_common::skip_without_kvm(test) {
        return None;
    }
    match vmm_common::build_micro(test, scenario) {
        Ok(elf) => {
            let mut c = VmConfig::new(elf, None);
            c.timeout = Duration::from_secs(20);
            Some(c)
        }
        Err(e) => {
            vmm_common::skip(test, &format!("cannot build micro guest: {e}"));
            None
        }
    }
}

/// Records everything; answers leaf 0x77 with fixed results and implements
/// the test-only REPORT / BLOCK / UNBLOCK leaves.
#[derive(Default)]
struct Recorder {
    calls: Vec<(u32, HypercallArgs)>,
    reports: Vec<[u64; 4]>,
    violations: Vec<Violation>,
    zone: Option<(ZoneSlot, ZonePool, u64)>,
    map_zone_at_start: bool,
    kick_rax: Option<u64>,
    kicks: u32,
    ready: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl HypercallHandler for Recorder {
    fn start(&mut self, mem: &mut VmMemoryControl) -> tetd_kvm::vmm::Result<()> {
        if self.map_zone_at_start {
            let (backing, host) = pool(2);
            for i in 0..512u64 {
                backing
                    .lock()
                    .unwrap()
                    .write(host + i * 8, &(0x1000 + i).to_le_bytes())
                    .unwrap();
            }
            let slot = mem.map_zone(ZONE_GPA_BASE, &backing, host, 4096)?;
            self.zone = Some((slot, backing, host));
        }
        Ok(())
    }

    fn hypercall(
        &mut self,
        mem: &mut VmMemoryControl,
        vcpu: u32,
        call: HypercallArgs,
    ) -> HypercallRet {
        self.calls.push((vcpu, call));
        match call.leaf {
            0x77 => HypercallRet::ok([0xa1, 0xa2, 0xa3]),
            LEAF_REPORT => {
                self.reports.push(call.args);
                if let Some(ready) = &self.ready {
                    ready.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                HypercallRet::ok([0; 3])
            }
            LEAF_BLOCK | LEAF_UNBLOCK => {
                let Some((slot, _, _)) = self.zone else {
                    return HypercallRet::err(AbiError::NotFound);
                };
                let r = if call.leaf == LEAF_BLOCK {
                    mem.block_zone(slot)
                } else {
                    mem.unblock_zone(slot)
                };
                match r {
                    Ok(()) => HypercallRet::ok([0; 3]),
                    Err(_) => HypercallRet::err(AbiError::SeamError),
                }
            }
            _ => HypercallRet::err(AbiError::UnknownLeaf),
        }
    }

    fn violation(&mut self, _: &mut VmMemoryControl, v: Violation) {
        self.violations.push(v);
    }

    fn kicked(&mut self, _: &mut VmMemoryControl, _: u32, regs: &mut kvm_regs) {
        self.kicks += 1;
        if let Some(rax) = self.kick_rax {
            regs.rax = rax;
        }
    }
}

#[test]
fn exit_port_status() {
    let Some(config) = micro("exit_port_status", "EXIT") else {
        return;
    };
    let (out, _) = run_vm(config, Recorder::default()).unwrap();
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 7,
            via: StatusSource::Port
        },
        "console: {}",
        out.console
    );
    assert_eq!(out.status(), Some(7));
}

#[test]
fn exit_port_with_two_vcpus_stops_the_waiting_ap() {
    let Some(mut config) = micro("exit_port_with_two_vcpus_stops_the_waiting_ap", "EXIT") else {
        return;
    };
    config.vcpus = 2;
    let (out, _) = run_vm(config, Recorder::default()).unwrap();
    assert_eq!(out.status(), Some(7));
    assert!(
        out.elapsed < Duration::from_secs(10),
        "AP thread did not stop promptly: {:?}",
        out.elapsed
    );
}

#[test]
fn second_vcpu_starts_on_init_sipi() {
    let Some(mut config) = micro("second_vcpu_starts_on_init_sipi", "SMP") else {
        return;
    };
    config.vcpus = 2;
    let (out, _) = run_vm(config, Recorder::default()).unwrap();
    // Only the AP's real-mode trampoline writes 9.
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 9,
            via: StatusSource::Port
        },
        "{}",
        out.exit
    );
}

#[test]
fn hypercall_registers_round_trip() {
    let Some(config) = micro("hypercall_registers_round_trip", "HYPERCALL") else {
        return;
    };
    let (out, rec) = run_vm(config, Recorder::default()).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    // First call: exactly the registers the guest loaded, once (the `out` is
    // not re-executed after the answer).
    assert_eq!(
        rec.calls[0],
        (
            0,
            HypercallArgs {
                leaf: 0x77,
                args: [
                    0x1111111111111111,
                    0x2222222222222222,
                    0x3333333333333333,
                    0x4444444444444444
                ]
            }
        )
    );
    // The guest saw status 0 and the three results in R10..R13.
    assert_eq!(rec.reports[0], [0, 0xa1, 0xa2, 0xa3]);
    // Wrong R10: the handler is not called, the guest gets InvalidArgument.
    assert_eq!(
        rec.reports[1],
        [AbiError::InvalidArgument.code() as u64, 0, 0, 0]
    );
    let leaves: Vec<u64> = rec.calls.iter().map(|c| c.1.leaf).collect();
    assert_eq!(leaves, [0x77, LEAF_REPORT, LEAF_REPORT]);
    assert_eq!(out.stats.hypercalls, 4);
}

#[test]
fn blocked_zone_access_is_a_violation_and_the_guest_continues() {
    let Some(config) = micro(
        "blocked_zone_access_is_a_violation_and_the_guest_continues",
        "ZONE",
    ) else {
        return;
    };
    let handler = Recorder {
        map_zone_at_start: true,
        ..Default::default()
    };
    let (out, rec) = run_vm(config, handler).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    // Mapped: the host's content; blocked: all-ones; after unblock: the
    // original content (the blocked write was dropped).
    let values: Vec<u64> = rec.reports.iter().map(|r| r[0]).collect();
    assert_eq!(values, [0x1000, u64::MAX, 0x1002]);
    assert_eq!(rec.violations.len(), 2, "{:?}", rec.violations);
    let (r, w) = (rec.violations[0], rec.violations[1]);
    assert_eq!(
        (r.vcpu, r.gpa, r.len, r.write),
        (0, ZONE_GPA_BASE + 8, 8, false)
    );
    assert_eq!(
        (w.gpa, w.len, w.write, w.value),
        (ZONE_GPA_BASE + 16, 8, true, 0x5a5a5a5a5a5a5a5a)
    );
    assert!(
        r.rip >= 0x200000 && r.rip < w.rip && w.rip < 0x201000,
        "rips {:#x} {:#x}",
        r.rip,
        w.rip
    );
    assert_eq!(out.stats.violations, 2);
    // The pool still holds the original word.
    let (_, backing, host) = rec.zone.as_ref().unwrap();
    let mut word = [0u8; 8];
    backing.lock().unwrap().read(host + 16, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x1002);
}

#[test]
fn kick_lets_the_handler_change_registers() {
    let Some(config) = micro("kick_lets_the_handler_change_registers", "KICK") else {
        return;
    };
    let vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::clone(&ready);
    let kicker = std::thread::spawn(move || {
        // Kick only once the guest reported that it reached its spin loop.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !seen.load(std::sync::atomic::Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        handle.kick(0).unwrap();
        assert!(handle.kick(5).is_err(), "no vCPU 5");
    });
    let rec = Recorder {
        kick_rax: Some(42),
        ready: Some(ready),
        ..Default::default()
    };
    let (out, rec) = vm.run(rec).unwrap();
    kicker.join().unwrap();
    assert_eq!(out.status(), Some(42), "{}", out.exit);
    assert_eq!(rec.reports, [[0, 0, 0, 0]]);
    assert_eq!(rec.kicks, 1);
    assert_eq!(out.stats.kicks, 1);
}

#[test]
fn console_input_reaches_the_guest() {
    let Some(config) = micro("console_input_reaches_the_guest", "ECHO") else {
        return;
    };
    let vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    // More than the UART's 64-byte FIFO: the rest waits in the queue.
    let digits: Vec<u8> = (0..300).map(|i| b'0' + (i % 10) as u8).collect();
    let sent = [&b"hello, uart\n"[..], &digits, b"q"].concat();
    handle.send_console(&sent[..20]).unwrap();
    let feeder = {
        let (h, rest) = (handle.clone(), sent[20..].to_vec());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            h.send_console(&rest).unwrap();
        })
    };
    let (out, _) = vm.run(Recorder::default()).unwrap();
    feeder.join().unwrap();
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 3,
            via: StatusSource::Port
        }
    );
    assert_eq!(
        out.console.as_bytes(),
        &sent[..],
        "echoed in order, nothing lost"
    );
    assert!(handle.ended());
    assert!(handle.send_console(b"late").is_err());
}

#[test]
fn timeout_ends_a_spinning_guest() {
    let Some(mut config) = micro("timeout_ends_a_spinning_guest", "SPIN") else {
        return;
    };
    config.timeout = Duration::from_millis(700);
    config.vcpus = 2;
    let (out, _) = run_vm(config, Recorder::default()).unwrap();
    assert_eq!(out.exit, VmExit::Timeout);
    assert!(
        out.elapsed >= Duration::from_millis(700) && out.elapsed < Duration::from_secs(10),
        "{:?}",
        out.elapsed
    );
}

#[test]
fn stop_from_another_thread() {
    let Some(config) = micro("stop_from_another_thread", "SPIN") else {
        return;
    };
    let vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        handle.stop();
    });
    let (out, _) = vm.run(Recorder::default()).unwrap();
    stopper.join().unwrap();
    assert_eq!(out.exit, VmExit::Stopped);
}

/// Zone-slot rules, checked against a real VM.
struct ZoneRules;

impl HypercallHandler for ZoneRules {
    fn start(&mut self, mem: &mut VmMemoryControl) -> tetd_kvm::vmm::Result<()> {
        let (b, h) = pool(4);
        let is_zone_err = |r: tetd_kvm::vmm::Result<ZoneSlot>| matches!(r, Err(VmmError::Zone(_)));
        assert!(
            is_zone_err(mem.map_zone(0x1000, &b, h, 4096)),
            "below the window"
        );
        assert!(
            is_zone_err(mem.map_zone(ZONE_GPA_BASE + ZONE_GPA_SIZE - 4096, &b, h, 8192)),
            "crosses the end"
        );
        assert!(
            is_zone_err(mem.map_zone(ZONE_GPA_BASE + 1, &b, h, 4096)),
            "unaligned gpa"
        );
        assert!(
            is_zone_err(mem.map_zone(ZONE_GPA_BASE, &b, h + 1, 4096)),
            "unaligned host address"
        );
        assert!(is_zone_err(mem.map_zone(ZONE_GPA_BASE, &b, h, 0)), "empty");
        assert!(
            is_zone_err(mem.map_zone(ZONE_GPA_BASE, &b, h + 4096, 4 * 4096)),
            "beyond the pool"
        );
        assert!(
            is_zone_err(mem.map_zone(ZONE_GPA_BASE, &b, h - 4096, 4096)),
            "before the pool"
        );
        let a = mem.map_zone(ZONE_GPA_BASE, &b, h, 2 * 4096)?;
        assert!(
            is_zone_err(mem.map_zone(ZONE_GPA_BASE + 4096, &b, h, 4096)),
            "overlap"
        );
        let c = mem.map_zone(ZONE_GPA_BASE + 2 * 4096, &b, h + 2 * 4096, 2 * 4096)?;
        assert_ne!(a, c);
        assert_eq!(mem.zone_at(ZONE_GPA_BASE + 4096).map(|z| z.slot), Some(a));
        mem.block_zone(a)?;
        mem.block_zone(a)?; // idempotent
        assert!(!mem.zone_info(a)?.present);
        mem.unblock_zone(a)?;
        assert!(mem.zone_info(a)?.present);
        let info = mem.unmap_zone(c)?;
        assert_eq!((info.gpa, info.len), (ZONE_GPA_BASE + 2 * 4096, 2 * 4096));
        assert!(mem.zone_info(c).is_err());
        assert_eq!(mem.zones().len(), 1);
        // Guest RAM access is bounds checked.
        let mut buf = [0u8; 4];
        mem.read_guest(0x200000, &mut buf)?;
        assert!(mem.read_guest(ZONE_GPA_BASE, &mut buf).is_err());
        Ok(())
    }
    fn hypercall(&mut self, _: &mut VmMemoryControl, _: u32, _: HypercallArgs) -> HypercallRet {
        HypercallRet::err(AbiError::Unsupported)
    }
}

#[test]
fn zone_slot_rules() {
    let Some(config) = micro("zone_slot_rules", "EXIT") else {
        return;
    };
    let (out, _) = run_vm(config, ZoneRules).unwrap();
    assert_eq!(out.status(), Some(7));
}

#[test]
fn bad_configuration_is_reported() {
    let dir = vmm_common::scratch();
    let c = VmConfig::new(dir.join("no-such-kernel"), None);
    match Vm::new(c) {
        Err(VmmError::Io { path, .. }) => assert!(path.ends_with("no-such-kernel")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("missing kernel accepted"),
    }
    let junk = dir.join("junk-kernel");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let mut c = VmConfig::new(&junk, None);
    c.vcpus = 0;
    assert!(matches!(Vm::new(c.clone()), Err(VmmError::Config(m)) if m.contains("vcpus")));
    c.vcpus = 1;
    c.mem_mib = 4;
    assert!(matches!(Vm::new(c.clone()), Err(VmmError::Config(m)) if m.contains("mem_mib")));
    c.mem_mib = 128;
    if vmm_common::skip_without_kvm("bad_configuration_is_reported (kernel part)") {
        return;
    }
    match Vm::new(c) {
        Err(VmmError::Kernel { path, msg }) => {
            assert_eq!(path, junk);
            assert!(msg.contains("bzImage"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("junk kernel accepted"),
    }
}
