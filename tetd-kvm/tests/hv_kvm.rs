//! TETD-H attached to the KVM VMM, with real zone blocking: the micro guest
//! `TETD` (tetd-kvm/guest/micro/micro.S) runs the leaf sequence against
//! `TetdHandler<KvmSeam>` on this machine's /dev/kvm (micro guests run
//! fine on PVM hosts too: they are a few hundred instructions).
//!
//! Needs /dev/kvm, gcc and ld; prints a SKIP line otherwise.

mod vmm_common;

use std::time::Duration;

use tetd::abi::{Error as AbiError, HostAgentState, Leaf, ZONE_GPA_BASE, ZONE_GPA_SIZE};
use tetd_kvm::hv::{
    run_guest, select_engine, Engine, EngineChoice, KvmSeam, TetdHandler, TetdOptions,
};
use tetd_kvm::notify::EventKind;
use tetd_kvm::rtmr::extend_value;
use tetd_kvm::seam_model::SeptState;
use tetd_kvm::vmm::{run_vm, StatusSource, VmConfig, VmExit};
use tetd_kvm::AgentState;

const LEAF_REPORT: u64 = 0x5250;
const AGENT: u32 = 5;

fn micro_tetd(test: &str) -> Option<VmConfig> {
    if vmm_common::skip_without_kvm(test) {
        return None;
    }
    match vmm_common::build_micro(test, "TETD") {
        Ok(elf) => {
            let mut c = VmConfig::new(elf, None);
            c.timeout = Duration::from_secs(30);
            Some(c)
        }
        Err(e) => {
            vmm_common::skip(test, &format!("cannot build micro guest: {e}"));
            None
        }
    }
}

fn measurement() -> [u8; 48] {
    std::array::from_fn(|i| (i * 7 + 1) as u8)
}

/// The REPORT calls' arguments (what the guest saw), in order.
fn reports(h: &TetdHandler<KvmSeam>) -> Vec<[u64; 4]> {
    h.calls()
        .filter(|c| c.call.leaf == LEAF_REPORT)
        .map(|c| c.call.args)
        .collect()
}

#[test]
fn leaf_sequence_with_real_blocking() {
    let test = "leaf_sequence_with_real_blocking";
    let Some(mut config) = micro_tetd(test) else {
        return;
    };
    // Two vCPUs: the second one idles in KVM_RUN (waiting for a SIPI), so
    // every TRACK finds it in the old epoch and needs the kick path.
    config.vcpus = 2;
    let opts = TetdOptions {
        pool_pages: 64,
        ..TetdOptions::default()
    };
    let sub = opts.notifier.subscribe(256).unwrap();
    let handler = TetdHandler::kvm(&opts).unwrap();
    let (out, h) = run_vm(config, handler).unwrap();
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 0,
            via: StatusSource::Port
        },
        "{}",
        out.exit
    );
    let r = reports(&h);
    assert_eq!(r.len(), 13, "{r:x?}");

    // AGENT_ACCESS: a zone in the window, 2 pages, host accepted.
    let gpa = r[0][1];
    assert_eq!(r[0], [0, gpa, 2, 0]);
    assert!((ZONE_GPA_BASE..ZONE_GPA_BASE + ZONE_GPA_SIZE).contains(&gpa));
    // Blocked after ACCESS: the read trapped and saw all-ones.
    assert_eq!(r[1][0], u64::MAX);
    // VMM_ENTER: call 1; the zone is mapped: the guest reads what it wrote.
    assert_eq!(r[2], [0, 1, 0, 0]);
    assert_eq!(r[3][0], 0x1122334455667788);
    // VMM_RESUME: 1 call, 0 failures; blocked again.
    assert_eq!(r[4], [0, 1, 0, 0]);
    assert_eq!(r[5][0], u64::MAX);
    // Second call: the zone content survived the block, the write made
    // while blocked did not land.
    assert_eq!(r[6][0], 0x1122334455667788);
    assert_eq!(r[7][0], 0);
    assert_eq!(r[8], [0, 2, 1, 0], "resume with status 3 counts a failure");
    assert_eq!(r[9], [0, 0, 0, 0], "RTMR_EXTEND");
    // AGENT_QUERY: idle, 2 calls, 3 violations (read, read, write).
    assert_eq!(r[10], [0, HostAgentState::Idle as u64, 2, 3]);
    assert_eq!(r[11], [0, 0, 0, 0], "AGENT_DISABLE");
    // The removed zone is gone: the read trapped too.
    assert_eq!(r[12][0], u64::MAX);

    // What TETD-H recorded.
    let v: Vec<(u64, bool, Option<u32>)> = h
        .violations()
        .map(|v| (v.access.gpa, v.access.write, v.agent))
        .collect();
    assert_eq!(
        v,
        [
            (gpa + 8, false, Some(AGENT)),
            (gpa + 8, false, Some(AGENT)),
            (gpa + 16, true, Some(AGENT)),
            (gpa, false, None),
        ]
    );
    let viol = h.violations().nth(2).unwrap().access;
    assert_eq!(viol.value, 0x5a5a5a5a5a5a5a5a);
    assert_eq!(out.stats.violations, 4);
    let td = h.td();
    let a = td.agent(AGENT).unwrap();
    assert_eq!(a.state, AgentState::Disabled);
    assert_eq!((a.calls, a.failures, a.violations), (2, 1, 3));
    assert_eq!(a.last_status, 3);
    assert_eq!(a.measurement, Some(measurement()), "read from guest RAM");
    assert_eq!(a.zone, None);
    assert_eq!(
        td.rtmrs().get(3),
        Some(&extend_value(&[0; 48], &measurement()))
    );
    // Everything torn down: no page in the model, no zone slot, pool empty.
    let seam = td.seam();
    assert_eq!(seam.model().page_count(), 0);
    assert_eq!(seam.model().state(gpa), SeptState::Free);
    assert!(!seam.zone_present(gpa));
    seam.model().check_consistency().unwrap();
    assert!(
        seam.model().stats().kicks >= 3,
        "{:?}",
        seam.model().stats()
    );
    let pool = td.pool().lock().unwrap();
    assert_eq!(pool.allocator().free_pages(), 64);
    drop(pool);
    assert_eq!(td.seam_trouble().errors, 0);

    // Events, in order.
    let kinds: Vec<EventKind> = sub
        .recv_timeout(Duration::from_secs(1))
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Access,
            EventKind::Violation,
            EventKind::Enter,
            EventKind::Resume,
            EventKind::Violation,
            EventKind::Violation,
            EventKind::Enter,
            EventKind::Resume,
            EventKind::Disable,
        ]
    );
    // The REPORT calls are not TETD leaves: TETD-H refused them.
    let refused = h
        .calls()
        .filter(|c| c.call.leaf == LEAF_REPORT)
        .all(|c| c.ret.status == AbiError::UnknownLeaf.code() as u64);
    assert!(refused);
    assert_eq!(
        h.calls()
            .filter(|c| c.call.leaf == Leaf::VmmEnter as u64)
            .count(),
        2
    );
}

#[test]
fn run_guest_on_the_kvm_engine() {
    let test = "run_guest_on_the_kvm_engine";
    let Some(config) = micro_tetd(test) else {
        return;
    };
    let run = run_guest(Engine::Kvm, config, TetdOptions::default()).unwrap();
    assert_eq!(run.outcome.status(), Some(0), "{}", run.outcome.exit);
    assert_eq!(run.engine, Engine::Kvm);
    assert!(run.report.enforces_blocking);
    assert!(run.report.blocking_note.contains("enforced"));
    assert_eq!(run.report.agents.len(), 1);
    assert_eq!(run.report.agents[0].violations, 3);
    assert_eq!(run.report.violations.len(), 4);
    assert_eq!(run.report.seam_trouble.errors, 0);
    // `kvm` is always selectable where /dev/kvm opens.
    let sel = select_engine(EngineChoice::Kvm).unwrap();
    assert_eq!(sel.engine, Engine::Kvm);
}

#[test]
fn teardown_of_a_running_agent_takes_the_slot_away() {
    let test = "teardown_of_a_running_agent_takes_the_slot_away";
    if vmm_common::skip_without_kvm(test) {
        return;
    }
    let elf = match vmm_common::build_micro(test, "TETD_OPEN") {
        Ok(e) => e,
        Err(e) => {
            vmm_common::skip(test, &format!("cannot build micro guest: {e}"));
            return;
        }
    };
    let mut config = VmConfig::new(elf, None);
    config.timeout = Duration::from_secs(30);
    let opts = TetdOptions {
        pool_pages: 16,
        ..TetdOptions::default()
    };
    let (out, mut h) = run_vm(config, TetdHandler::kvm(&opts).unwrap()).unwrap();
    assert_eq!(out.status(), Some(0), "{}", out.exit);
    let gpa = reports(&h)[0][0];
    // The call is still open: the zone is mapped (a live KVM slot over the
    // pool) and holds what the guest wrote.
    let (id, zone) = h.td().zone_at(gpa).unwrap();
    assert_eq!(id, 6);
    assert!(h.td().seam().zone_present(gpa));
    assert_eq!(
        h.td().agent(6).unwrap().state,
        AgentState::Running { vcpu: 0 }
    );
    let mut word = [0u8; 8];
    h.td()
        .pool()
        .lock()
        .unwrap()
        .read(zone.host_addr() + 2 * 4096, &mut word)
        .unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x600d);
    // Host-side teardown (per-page BLOCK, TRACK, REMOVE) on the real VM's
    // slots: the slot goes, the pages are scrubbed and back in the pool.
    h.vcpus_stopped(1);
    h.td_mut().teardown().unwrap();
    assert!(!h.td().seam().zone_present(gpa));
    assert_eq!(h.td().seam().model().page_count(), 0);
    assert_eq!(h.td().agent(6).unwrap().state, AgentState::Disabled);
    let mut pool = h.td().pool().lock().unwrap();
    assert_eq!(pool.allocator().free_pages(), 16);
    let r = pool.alloc(3).unwrap();
    assert_eq!(r.host_addr, zone.host_addr());
    pool.read(r.host_addr + 2 * 4096, &mut word).unwrap();
    assert_eq!(word, [0; 8], "scrubbed");
}
