//! Attacks on TETD-H by the guest kernel, on the KVM engine (real zone
//! blocking: a blocked zone has no KVM memory slot). The attacker is a micro
//! guest (tetd-kvm/guest/micro/attack.S) running on this machine's /dev/kvm;
//! every attack has an asserted outcome, both as the guest saw it (REPORT
//! calls) and as TETD-H recorded it (agent table, violations, zone slots,
//! the pool's memory).
//!
//! Needs /dev/kvm, gcc and ld; prints a SKIP line otherwise.

mod vmm_common;

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::{Error as AbiError, HostAgentState, PAGE_SIZE, ZONE_GPA_BASE};
use tetd_kvm::host::{DISABLE_BY_TEARDOWN, HOST_VCPU};
use tetd_kvm::hv::{KvmSeam, TetdHandler, TetdOptions};
use tetd_kvm::notify::{EventKind, Notifier};
use tetd_kvm::vmm::{HypercallHandler, Violation, Vm, VmConfig, VmExit, VmMemoryControl};
use tetd_kvm::zone_alloc::HostPool;
use tetd_kvm::{AgentState, TdConfig, TdState};

const LEAF_REPORT: u64 = 0x5250;
const SECRET0: u64 = 0x5ec2_e700_0000_0001;
const SECRET1: u64 = 0x5ec2_e700_0000_0002;
const ATTACK: u64 = 0xbad0_bad0_bad0_bad0;
const ROUNDS: u64 = 40; // attack.S
const FUZZ_ITERS: u64 = 3000; // attack.S
const ONES: u64 = u64::MAX;

fn code(e: AbiError) -> u64 {
    e.code() as u64
}

/// `[status, 0, 0, 0]` of a failed leaf.
fn err(e: AbiError) -> [u64; 4] {
    [code(e), 0, 0, 0]
}

/// Assembles attack.S scenario `scenario`; `None` after a SKIP line.
fn attack_guest(test: &str, scenario: &str) -> Option<VmConfig> {
    if vmm_common::skip_without_kvm(test) {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/micro/attack.S");
    let dir = vmm_common::scratch();
    let obj = dir.join(format!("attack-{scenario}-{test}.o"));
    let elf = dir.join(format!("attack-{scenario}-{test}.elf"));
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    let built = run(Command::new("gcc")
        .arg("-c")
        .arg(format!("-DSCENARIO_{scenario}"))
        .arg(&src)
        .arg("-o")
        .arg(&obj))
    .and_then(|()| {
        run(Command::new("ld")
            .args(["-Ttext=0x200000", "-e", "_start", "--build-id=none", "-o"])
            .arg(&elf)
            .arg(&obj))
    });
    match built {
        Ok(()) => {
            let mut c = VmConfig::new(elf, None);
            c.timeout = Duration::from_secs(30);
            Some(c)
        }
        Err(e) => {
            vmm_common::skip(test, &format!("cannot build the attack guest: {e}"));
            None
        }
    }
}

/// The guest's REPORT calls, `(vcpu, [R12..R15])`, in order.
fn reports(h: &TetdHandler<KvmSeam>) -> Vec<(u32, [u64; 4])> {
    h.calls()
        .filter(|c| c.call.leaf == LEAF_REPORT)
        .map(|c| (c.vcpu, c.call.args))
        .collect()
}

/// Reports of vCPU 0 only, values only.
fn bsp_reports(h: &TetdHandler<KvmSeam>) -> Vec<[u64; 4]> {
    reports(h)
        .into_iter()
        .filter(|(v, _)| *v == 0)
        .map(|(_, r)| r)
        .collect()
}

fn pool_word(td: &TdState<KvmSeam>, host_addr: u64) -> u64 {
    let mut w = [0u8; 8];
    td.pool().lock().unwrap().read(host_addr, &mut w).unwrap();
    u64::from_le_bytes(w)
}

fn violations(h: &TetdHandler<KvmSeam>) -> Vec<(u64, u32, bool, u64, Option<u32>)> {
    h.violations()
        .map(|v| {
            (
                v.access.gpa,
                v.access.len,
                v.access.write,
                v.access.value,
                v.agent,
            )
        })
        .collect()
}

/// Checks the host's invariants after a run: the model is consistent, an
/// agent's zone has a live KVM slot exactly while it runs, disabled agents
/// have no zone, nothing is quarantined.
fn check_host_invariants(td: &TdState<KvmSeam>) {
    let seam = td.seam();
    seam.model().check_consistency().unwrap();
    for a in td.agents() {
        match (a.state, a.zone) {
            (AgentState::Running { .. }, Some(z)) => {
                assert!(seam.zone_present(z.gpa), "agent {} runs: slot", a.id)
            }
            (AgentState::Idle, Some(z)) => {
                assert!(!seam.zone_present(z.gpa), "agent {} idle: no slot", a.id)
            }
            (AgentState::Disabled, z) => assert_eq!(z, None, "agent {} disabled", a.id),
            (_, None) => {} // exclusive agent without a zone
        }
    }
    assert!(td.leaked_zones().is_empty());
    assert_eq!(td.seam_trouble().errors, 0, "{:?}", td.last_seam_error());
}

/// The blocked zone of an agent: reads of every width see all-ones, writes
/// of every width are dropped, a second virtual mapping of the zone made
/// through the guest's own page tables traps the same way, the host does
/// not read the zone on the guest's behalf (RTMR_EXTEND / AGENT_ACCESS
/// measurement), every access is reported, and the owner's next call finds
/// its data unchanged.
#[test]
fn blocked_zone_reads_writes_and_aliases_trap() {
    let test = "blocked_zone_reads_writes_and_aliases_trap";
    let Some(config) = attack_guest(test, "BLOCKED") else {
        return;
    };
    let opts = TetdOptions {
        pool_pages: 32,
        ..TetdOptions::default()
    };
    let sub = opts.notifier.subscribe(256).unwrap();
    let (out, h) = tetd_kvm::vmm::run_vm(config, TetdHandler::kvm(&opts).unwrap()).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    let r = bsp_reports(&h);
    assert_eq!(r.len(), 15, "{r:x?}");
    let gpa = r[0][1];
    assert_eq!(r[0], [0, gpa, 2, 0]);
    assert_eq!(r[1], [0, 1, 0, 0]);
    assert_eq!(r[2], [0, 1, 0, 0]);
    assert_eq!(r[3][0], ONES, "8-byte read of the blocked zone");
    assert_eq!(r[4][0], 0xffff_ffff, "4-byte read");
    assert_eq!(r[5][0], 0xff, "1-byte read");
    assert_eq!(r[6][0], ONES, "read through a guest-virtual alias");
    assert_eq!(r[7], err(AbiError::OutOfRange), "RTMR_EXTEND from the zone");
    assert_eq!(r[8], err(AbiError::OutOfRange), "measurement in the zone");
    assert_eq!(r[9], [0, 2, 0, 0]);
    assert_eq!(r[10][0], SECRET0, "data unchanged by the writes");
    assert_eq!(r[11][0], 0, "the alias write did not land");
    assert_eq!(r[12][0], SECRET1, "data unchanged by the writes");
    assert_eq!(r[13], [0, 2, 0, 0]);
    assert_eq!(r[14], [0, HostAgentState::Idle as u64, 2, 8]);

    // Every access trapped to the host with its width, and the dropped
    // value of each write.
    assert_eq!(
        violations(&h),
        [
            (gpa, 8, false, 0, Some(11)),
            (gpa + 4, 4, false, 0, Some(11)),
            (gpa + 4096 + 8, 1, false, 0, Some(11)),
            (gpa, 8, true, ATTACK, Some(11)),
            (gpa + 4096 + 8, 4, true, ATTACK & 0xffff_ffff, Some(11)),
            (gpa + 1, 1, true, ATTACK & 0xff, Some(11)),
            (gpa, 8, false, 0, Some(11)),
            (gpa + 8, 8, true, ATTACK, Some(11)),
        ]
    );
    // The alias accesses came from other guest-virtual addresses (the
    // guest's RIP differs, the GPA is the zone's).
    let td = h.td();
    let a = td.agent(11).unwrap();
    assert_eq!((a.state, a.calls, a.violations), (AgentState::Idle, 2, 8));
    assert!(
        td.agent(12).is_none(),
        "the deputy ACCESS registered nothing"
    );
    assert_eq!(td.rtmrs().get(3), Some(&[0u8; 48]), "RTMR3 untouched");
    // The host's copy of the zone: the owner's data, no attacker bytes.
    let z = td.zone_at(gpa).unwrap().1;
    assert_eq!(pool_word(td, z.host_addr()), SECRET0);
    assert_eq!(pool_word(td, z.host_addr() + 8), 0);
    assert_eq!(pool_word(td, z.host_addr() + 4096 + 8), SECRET1);
    assert!(!td.seam().zone_present(gpa));
    check_host_invariants(td);
    let kinds: Vec<EventKind> = sub
        .recv_timeout(Duration::from_secs(1))
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::Violation).count(),
        8,
        "{kinds:?}"
    );
}

/// Hypercall-level attacks from the guest kernel on its own agents, through
/// the real transport (the calling vCPU is what KVM reports).
#[test]
fn hostile_leaf_sequences_are_refused() {
    let test = "hostile_leaf_sequences_are_refused";
    let Some(config) = attack_guest(test, "LEAVES") else {
        return;
    };
    let opts = TetdOptions {
        pool_pages: 32,
        ..TetdOptions::default()
    };
    let (out, h) = tetd_kvm::vmm::run_vm(config, TetdHandler::kvm(&opts).unwrap()).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    let r = bsp_reports(&h);
    assert_eq!(r.len(), 32, "{r:x?}");
    let gpa = r[2][1];
    let expect: [(usize, [u64; 4], &str); 27] = [
        (0, err(AbiError::UnknownAgent), "ENTER of an unknown agent"),
        (1, err(AbiError::UnknownAgent), "RESUME of an unknown agent"),
        (2, [0, gpa, 1, 0], "ACCESS"),
        (3, err(AbiError::AlreadyRegistered), "second ACCESS (remap)"),
        (4, err(AbiError::NotRunning), "RESUME without ENTER"),
        (5, err(AbiError::InvalidArgument), "ENTER claiming vCPU 1"),
        (6, err(AbiError::InvalidArgument), "reserved argument"),
        (7, [0, 1, 0, 0], "ENTER"),
        (8, err(AbiError::AlreadyRunning), "ENTER twice"),
        (10, err(AbiError::BadState), "ENTER inside another call"),
        (11, err(AbiError::AlreadyRunning), "DISABLE while running"),
        (12, [0, 1, 0, 0], "RESUME"),
        (13, err(AbiError::NotRunning), "replayed RESUME"),
        (15, err(AbiError::NotRunning), "FAULT while idle"),
        (16, [0, 0, 0, 0], "DISABLE"),
        (17, err(AbiError::BadState), "DISABLE twice"),
        (18, err(AbiError::Disabled), "ENTER of a disabled agent"),
        (22, err(AbiError::UnknownLeaf), "leaf 0"),
        (23, err(AbiError::UnknownLeaf), "leaf 9"),
        (24, err(AbiError::UnknownLeaf), "leaf 2^64-1"),
        (25, err(AbiError::InvalidArgument), "wrong vendor value"),
        (26, err(AbiError::InvalidArgument), "ACCESS id 0"),
        (27, err(AbiError::InvalidArgument), "ACCESS id > 32 bits"),
        (28, err(AbiError::OutOfRange), "ACCESS 2^40 pages"),
        (29, err(AbiError::InvalidArgument), "ACCESS mode 7"),
        (30, err(AbiError::OutOfRange), "measurement outside RAM"),
        (9, [0, r[9][1], 1, 0], "ACCESS of a second agent"),
    ];
    for (i, want, what) in expect {
        assert_eq!(r[i], want, "report {i}: {what}");
    }
    assert_eq!(r[14][0], ONES, "still blocked after the replayed RESUME");
    assert_eq!(r[19][0], ONES, "the removed zone");
    let gpa2 = r[20][1];
    assert_eq!(r[20], [0, gpa2, 1, 0], "ENABLE: a fresh zone");
    assert_eq!(r[21][0], 0, "the old secret did not survive DISABLE");
    assert_eq!(
        r[31][..2],
        [0, HostAgentState::Idle as u64],
        "agent 21 idle at the end"
    );
    // The wrong-vendor ENTER never reached TETD-H: it recorded the other
    // six ENTERs of agent 21 only.
    let enters = h
        .calls()
        .filter(|c| c.call.leaf == 2 && c.call.args[0] == 21)
        .count();
    assert_eq!(enters, 6);
    // Violations: the blocked zone (agent 21) and the removed one (no agent).
    let v: Vec<(u64, Option<u32>)> = h.violations().map(|v| (v.access.gpa, v.agent)).collect();
    assert_eq!(v, [(gpa, Some(21)), (gpa, None)]);
    let td = h.td();
    assert!(td.agent(23).is_none());
    assert_eq!(td.agents().count(), 2);
    check_host_invariants(td);
}

/// Two vCPUs VMM_ENTER the same agent at the same moment, ROUNDS times:
/// exactly one wins each round, the other gets AlreadyRunning; the loser
/// cannot RESUME the winner's call (NotOwner). It *can* read the zone while
/// the winner's window is open — the documented limit of one Secure EPT per
/// TD (docs/protocol.md §3) — and no longer after the RESUME.
#[test]
fn two_vcpus_race_to_enter_one_agent() {
    let test = "two_vcpus_race_to_enter_one_agent";
    let Some(mut config) = attack_guest(test, "RACE") else {
        return;
    };
    config.vcpus = 2;
    let opts = TetdOptions {
        pool_pages: 16,
        ..TetdOptions::default()
    };
    let (out, h) = tetd_kvm::vmm::run_vm(config, TetdHandler::kvm(&opts).unwrap()).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    let all = reports(&h);
    let gpa = all[0].1[1];
    assert_eq!(all[0], (0, [0, gpa, 1, 0]));
    let finals: Vec<[u64; 4]> = all
        .iter()
        .filter(|(v, r)| r[3] == *v as u64 && r[0] + r[1] + r[2] == ROUNDS)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(finals.len(), 2, "{all:x?}");
    let wins: u64 = finals.iter().map(|f| f[0]).sum();
    let busy: u64 = finals.iter().map(|f| f[1]).sum();
    let other: u64 = finals.iter().map(|f| f[2]).sum();
    assert_eq!(
        (wins, busy, other),
        (ROUNDS, ROUNDS, 0),
        "one winner per round"
    );
    eprintln!(
        "race: vCPU 0 won {} rounds, vCPU 1 won {}",
        finals.iter().find(|f| f[3] == 0).unwrap()[0],
        finals.iter().find(|f| f[3] == 1).unwrap()[0]
    );
    // Round 0's loser: [the winner's secret], [NotOwner], [all-ones].
    let loser_vcpu = all
        .iter()
        .find(|(_, r)| r[0] == SECRET0)
        .map(|(v, _)| *v)
        .expect("the loser read the open zone");
    let lr: Vec<[u64; 4]> = all
        .iter()
        .filter(|(v, _)| *v == loser_vcpu)
        .map(|(_, r)| *r)
        .collect();
    let pos = lr.iter().position(|r| r[0] == SECRET0).unwrap();
    assert_eq!(lr[pos + 1], err(AbiError::NotOwner), "{lr:x?}");
    assert_eq!(lr[pos + 2][0], ONES, "trapped after the RESUME");
    // The host: ROUNDS calls, all ended by their owner, one violation
    // (the loser's read after RESUME).
    let td = h.td();
    let a = td.agent(7).unwrap();
    assert_eq!(
        (a.state, a.calls, a.failures),
        (AgentState::Idle, ROUNDS, 0)
    );
    assert_eq!(a.violations, 1);
    let enters = h
        .calls()
        .filter(|c| c.call.leaf == 2 && c.call.args[0] == 7)
        .collect::<Vec<_>>();
    assert_eq!(enters.len() as u64, 2 * ROUNDS);
    // Every ENTER named the vCPU KVM reported.
    assert!(enters.iter().all(|c| c.call.args[1] == c.vcpu as u64));
    // The other vCPU was always running in the TD: the TRACK of each RESUME
    // met it in the old epoch and took the kick path.
    let stats = h.td().seam().model().stats();
    assert!(stats.kicks >= ROUNDS, "{stats:?}");
    check_host_invariants(td);
}

/// A handler that tells the test when the guest sent its `n`-th REPORT.
struct Signalling {
    inner: TetdHandler<KvmSeam>,
    reports: usize,
    at: usize,
    tx: mpsc::Sender<()>,
}

impl HypercallHandler for Signalling {
    fn start(&mut self, mem: &mut VmMemoryControl) -> tetd_kvm::vmm::Result<()> {
        self.inner.start(mem)
    }
    fn hypercall(
        &mut self,
        mem: &mut VmMemoryControl,
        vcpu: u32,
        call: HypercallArgs,
    ) -> HypercallRet {
        let r = self.inner.hypercall(mem, vcpu, call);
        if call.leaf == LEAF_REPORT {
            self.reports += 1;
            if self.reports == self.at {
                let _ = self.tx.send(());
            }
        }
        r
    }
    fn violation(&mut self, mem: &mut VmMemoryControl, v: Violation) {
        self.inner.violation(mem, v)
    }
}

/// Starts the HOLD guest (TD `td`) in a thread; returns once it is inside
/// agent 5's call, with the VM's handle and the thread.
#[allow(clippy::type_complexity)]
fn start_hold(
    config: VmConfig,
    td: TdState<KvmSeam>,
) -> (
    tetd_kvm::vmm::VmHandle,
    std::thread::JoinHandle<(tetd_kvm::vmm::VmOutcome, Signalling)>,
) {
    let (tx, rx) = mpsc::channel();
    let h = Signalling {
        inner: TetdHandler::new(td),
        reports: 0,
        at: 4, // attack.S HOLD: report 3 = "inside the call now"
        tx,
    };
    let vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let t = std::thread::spawn(move || vm.run(h).unwrap());
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the HOLD guest reached its open call");
    (handle, t)
}

/// The guest is killed between VMM_ENTER and VMM_RESUME. Before cleanup the
/// host sees the call open (a live slot over the pool); TETD-H's teardown
/// ends it: slots gone, Secure-EPT model empty, pages scrubbed and back in
/// the pool, nothing quarantined.
#[test]
fn guest_killed_mid_call_leaves_nothing_behind() {
    let test = "guest_killed_mid_call_leaves_nothing_behind";
    let Some(config) = attack_guest(test, "HOLD") else {
        return;
    };
    let notifier = Arc::new(Notifier::new());
    let sub = notifier.subscribe(64).unwrap();
    let pool = Arc::new(Mutex::new(HostPool::new(16).unwrap()));
    let td = TdState::new(
        1,
        KvmSeam::new(),
        pool.clone(),
        notifier,
        TdConfig::default(),
    );
    let (handle, t) = start_hold(config, td);
    handle.stop();
    let (out, h) = t.join().unwrap();
    assert_eq!(out.exit, VmExit::Stopped, "{}", out.exit);
    let mut h = h.inner;
    let r = bsp_reports(&h);
    let (g5, g6) = (r[0][1], r[1][1]);
    {
        let td = h.td();
        assert_eq!(td.agent(5).unwrap().state, AgentState::Running { vcpu: 0 });
        assert_eq!(td.agent(6).unwrap().state, AgentState::Idle);
        assert!(td.seam().zone_present(g5), "the open call's slot is live");
        assert!(!td.seam().zone_present(g6));
        let z5 = td.zone_at(g5).unwrap().1;
        assert_eq!(pool_word(td, z5.host_addr()), SECRET0);
        assert_eq!(pool.lock().unwrap().allocator().free_pages(), 16 - 3);
    }
    // The VM is gone: its vCPUs left the TD for good, TETD-H cleans up.
    h.vcpus_stopped(1);
    h.td_mut().teardown().unwrap();
    let td = h.td();
    for id in [5, 6] {
        assert_eq!(td.agent(id).unwrap().state, AgentState::Disabled);
        assert_eq!(td.agent(id).unwrap().zone, None);
    }
    assert!(!td.seam().zone_present(g5) && !td.seam().zone_present(g6));
    assert_eq!(td.seam().model().page_count(), 0);
    assert_eq!(td.gpa_allocator().free_pages(), td.gpa_allocator().total());
    check_host_invariants(td);
    let mut p = pool.lock().unwrap();
    assert_eq!(p.allocator().free_pages(), 16);
    p.allocator().check().unwrap();
    // The pages come back scrubbed.
    let all = p.alloc(16).unwrap();
    let mut buf = vec![1u8; (16 * PAGE_SIZE) as usize];
    p.read(all.host_addr, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "scrubbed");
    drop(p);
    // Event consumers learn that both agents ended with the TD.
    let events: Vec<(EventKind, u32, u32, u64)> = sub
        .recv_timeout(Duration::from_secs(1))
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.agent, e.vcpu, e.arg0))
        .collect();
    assert_eq!(
        events[3..],
        [
            (EventKind::Disable, 5, HOST_VCPU, DISABLE_BY_TEARDOWN),
            (EventKind::Disable, 6, HOST_VCPU, DISABLE_BY_TEARDOWN),
        ]
    );
    assert_eq!(
        events[..3].iter().map(|e| e.0).collect::<Vec<_>>(),
        [EventKind::Access, EventKind::Access, EventKind::Enter]
    );
}

/// Another TD attacks: TD 1 (HOLD) is inside agent 5's call when TD 2
/// (FOREIGN) names agent 5 in every leaf and touches the zone window. TD 2
/// learns nothing (UnknownAgent, all-ones), changes nothing of TD 1, and its
/// own agent 5 gets a zone at the same GPA in its own window but other pool
/// pages (reads zero). Dropping both TDs (no per-page cleanup, as at TD
/// teardown) returns every page to the shared pool.
#[test]
fn another_td_cannot_reach_an_agent_or_its_zone() {
    let test = "another_td_cannot_reach_an_agent_or_its_zone";
    let (Some(hold), Some(foreign)) = (attack_guest(test, "HOLD"), attack_guest(test, "FOREIGN"))
    else {
        return;
    };
    let notifier = Arc::new(Notifier::new());
    let pool = Arc::new(Mutex::new(HostPool::new(32).unwrap()));
    let td = |id| {
        TdState::new(
            id,
            KvmSeam::new(),
            pool.clone(),
            notifier.clone(),
            TdConfig::default(),
        )
    };
    let (handle, t) = start_hold(hold, td(1));
    let (out2, h2) = tetd_kvm::vmm::run_vm(foreign, TetdHandler::new(td(2))).unwrap();
    handle.stop();
    let (out1, h1) = t.join().unwrap();
    let h1 = h1.inner;
    assert_eq!(out2.status(), Some(0), "{}", out2.exit);
    assert_eq!(out1.exit, VmExit::Stopped);
    let r1 = bsp_reports(&h1);
    let g1 = r1[0][1];
    assert_eq!(g1, ZONE_GPA_BASE, "TD 1's zone is the window's first page");
    let r = bsp_reports(&h2);
    assert_eq!(r.len(), 12, "{r:x?}");
    for (i, r) in r.iter().enumerate().take(6) {
        assert_eq!(*r, err(AbiError::UnknownAgent), "TD 2 leaf {i} on agent 5");
    }
    assert_eq!(r[6][0], ONES, "TD 2 reads nothing at TD 1's zone GPA");
    assert_eq!(r[7], [0, ZONE_GPA_BASE, 2, 0], "TD 2's own agent 5");
    assert_eq!(r[8], [0, 1, 0, 0]);
    assert_eq!(r[9][0], 0, "its own pages, not TD 1's");
    assert_eq!(r[10], [0, 1, 0, 0]);
    assert_eq!(r[11], [0, 0, 0, 0]);
    let v2: Vec<(u64, bool, Option<u32>)> = h2
        .violations()
        .map(|v| (v.access.gpa, v.access.write, v.agent))
        .collect();
    assert_eq!(v2, [(g1, false, None), (g1, true, None)]);
    // TD 1 is untouched: still inside the call, its data intact.
    let td1 = h1.td();
    let a = td1.agent(5).unwrap();
    assert_eq!(
        (a.state, a.calls, a.violations),
        (AgentState::Running { vcpu: 0 }, 1, 0)
    );
    let z1 = td1.zone_at(g1).unwrap().1;
    assert_eq!(pool_word(td1, z1.host_addr()), SECRET0);
    assert_eq!(pool_word(td1, z1.host_addr() + 4096), SECRET0);
    assert_eq!(td1.agent(6).unwrap().state, AgentState::Idle);
    check_host_invariants(td1);
    check_host_invariants(h2.td());
    // TD teardown: both states dropped, every page back.
    drop(h1);
    drop(h2);
    let p = pool.lock().unwrap();
    assert_eq!(p.allocator().free_pages(), 32);
    p.allocator().check().unwrap();
}

/// Malformed leaves through the port path: FUZZ_ITERS hypercalls with
/// pseudo-random R10..R15 from the guest. The VMM and TETD-H answer every
/// one (no panic, the guest runs to its exit), every status is 0 or a known
/// error code, results are 0 on failure, and the host's invariants hold
/// afterwards; teardown then frees everything.
#[test]
fn random_registers_through_the_port_path() {
    let test = "random_registers_through_the_port_path";
    let Some(config) = attack_guest(test, "FUZZ") else {
        return;
    };
    let opts = TetdOptions {
        pool_pages: 64,
        ..TetdOptions::default()
    };
    let (out, mut h) = tetd_kvm::vmm::run_vm(config, TetdHandler::kvm(&opts).unwrap()).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    let r = bsp_reports(&h);
    assert_eq!(r, [[FUZZ_ITERS, 0, 0, 0]]);
    let tetd_calls = h.calls().filter(|c| c.call.leaf != LEAF_REPORT).count() as u64;
    // About 1 in 16 had a random R10: refused by the VMM before TETD-H.
    assert!(
        tetd_calls > FUZZ_ITERS * 3 / 4 && tetd_calls < FUZZ_ITERS,
        "{tetd_calls}"
    );
    assert_eq!(out.stats.hypercalls, FUZZ_ITERS + 1);
    let mut ok = 0;
    let mut by_status = std::collections::BTreeMap::new();
    for c in h.calls().filter(|c| c.call.leaf != LEAF_REPORT) {
        if c.ret.status == 0 {
            ok += 1;
        } else {
            assert!(
                AbiError::try_from_code(c.ret.status).is_some(),
                "unknown status {:#x} for {:x?}",
                c.ret.status,
                c.call
            );
            assert_eq!(c.ret.results, [0; 3], "results on failure: {c:x?}");
        }
        *by_status.entry(c.ret.status).or_insert(0u32) += 1;
    }
    eprintln!("fuzz: {tetd_calls} TETD calls, {ok} succeeded; by status {by_status:?}");
    assert!(ok > 0, "the fuzzer reached some successful leaves");
    check_host_invariants(h.td());
    h.vcpus_stopped(1);
    h.td_mut().teardown().unwrap();
    let td = h.td();
    assert_eq!(td.seam().model().page_count(), 0);
    assert_eq!(td.pool().lock().unwrap().allocator().free_pages(), 64);
}
