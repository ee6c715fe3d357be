//! Unit tests of the handler and the two engine backends without a VM.

use std::sync::{Arc, Mutex};

use tetd::abi::regs::HypercallArgs;
use tetd::abi::{
    access, Error, HostAgentState, Leaf, Mode, PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE,
};

use super::*;
use crate::host::lock_pool;
use crate::notify::EventKind;
use crate::seam::{SeamError, ZoneRange};
use crate::seam_model::SeptState;

fn td<S: EngineSeam>(seam: S, pool: HostPool) -> TdState<S> {
    TdState::new(
        7,
        seam,
        Arc::new(Mutex::new(pool)),
        Arc::new(Notifier::new()),
        TdConfig::default(),
    )
}

fn call(leaf: Leaf, args: [u64; 4]) -> HypercallArgs {
    HypercallArgs {
        leaf: leaf as u64,
        args,
    }
}

fn acc(id: u64, pages: u64) -> HypercallArgs {
    call(
        Leaf::AgentAccess,
        [id, pages, access::encode(Mode::Collaborative, 0), 0],
    )
}

fn violation(vcpu: u32, gpa: u64, write: bool) -> Violation {
    Violation {
        vcpu,
        gpa,
        len: 8,
        write,
        value: 0,
        rip: 0x1000,
    }
}

#[test]
fn handler_answers_records_and_reports() {
    let mut h = TetdHandler::new(td(SeptModel::new(), HostPool::new(64).unwrap()));
    let sub = h.td().notifier.subscribe(64).unwrap();
    h.vcpus_started(2);
    let r = h.handle(0, acc(3, 2)).into_result().unwrap();
    let gpa = r[0];
    assert_eq!((r[1], r[2]), (2, 0));
    assert!((ZONE_GPA_BASE..ZONE_GPA_BASE + ZONE_GPA_SIZE).contains(&gpa));
    // A blocked-zone access is counted against agent 3; one outside any zone
    // is recorded without an agent.
    assert_eq!(h.report_violation(violation(1, gpa + 8, false)), Some(3));
    assert_eq!(
        h.report_violation(violation(1, gpa + 2 * PAGE_SIZE, true)),
        None
    );
    h.handle(1, call(Leaf::VmmEnter, [3, 1, 0, 0]))
        .into_result()
        .unwrap();
    // The entering vCPU must be the caller.
    assert_eq!(
        h.handle(0, call(Leaf::VmmResume, [3, 1, 0, 0]))
            .into_result(),
        Err(Error::InvalidArgument)
    );
    h.handle(1, call(Leaf::VmmResume, [3, 1, 0, 0]))
        .into_result()
        .unwrap();
    let q = h
        .handle(0, call(Leaf::AgentQuery, [3, 0, 0, 0]))
        .into_result()
        .unwrap();
    assert_eq!(q, [HostAgentState::Idle as u64, 1, 1]);

    let calls: Vec<(u32, u64, u64)> = h
        .calls()
        .map(|c| (c.vcpu, c.call.leaf, c.ret.status))
        .collect();
    assert_eq!(
        calls,
        [
            (0, Leaf::AgentAccess as u64, 0),
            (1, Leaf::VmmEnter as u64, 0),
            (
                0,
                Leaf::VmmResume as u64,
                Error::InvalidArgument.code() as u64
            ),
            (1, Leaf::VmmResume as u64, 0),
            (0, Leaf::AgentQuery as u64, 0),
        ]
    );
    assert_eq!(h.total_calls(), 5);
    let v: Vec<Option<AgentId>> = h.violations().map(|v| v.agent).collect();
    assert_eq!(v, [Some(3), None]);
    let kinds: Vec<EventKind> = sub.recv().unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Access,
            EventKind::Violation,
            EventKind::Enter,
            EventKind::Resume
        ]
    );
    let rep = h.report();
    assert!(!rep.enforces_blocking);
    assert_eq!(rep.agents.len(), 1);
    assert_eq!(rep.agents[0].violations, 1);
    assert_eq!(rep.calls.len(), 5);
    // Every vCPU is back in guest mode after each call, and the model is
    // consistent (the RESUME's TRACK needed a kick: vCPU 0 was still in the
    // old epoch).
    let m = h.td().seam();
    assert_eq!(m.running_vcpus().count(), 2);
    m.check_consistency().unwrap();
    assert!(m.stats().kicks >= 2, "{:?}", m.stats());
    h.vcpus_stopped(2);
    assert_eq!(h.td().seam().running_vcpus().count(), 0);
}

#[test]
fn kvm_seam_without_a_vm_follows_the_model() {
    let mut h = TetdHandler::new(td(KvmSeam::new(), HostPool::new(64).unwrap()));
    assert!(h.enforces_blocking());
    h.vcpus_started(1);
    let gpa = h.handle(0, acc(1, 3)).into_result().unwrap()[0];
    let m = h.td().seam().model();
    assert!((0..3).all(|i| m.state(gpa + i * PAGE_SIZE) == SeptState::Blocked));
    // Not attached: no slot, nothing present.
    assert!(!h.td().seam().zone_present(gpa));
    h.handle(0, call(Leaf::VmmEnter, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    assert_eq!(h.td().seam().model().state(gpa), SeptState::Mapped);
    h.handle(0, call(Leaf::VmmResume, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    h.handle(0, call(Leaf::AgentDisable, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    assert_eq!(h.td().seam().model().page_count(), 0);
    assert!(format!("{:?}", h.td().seam()).contains("zones: {}"));
}

#[test]
fn kvm_seam_refuses_overlapping_zones() {
    let mut s = KvmSeam::new();
    let z = ZoneRange {
        gpa: ZONE_GPA_BASE,
        hpa: 0x7000_0000_0000,
        pages: 4,
    };
    s.aug_zone(&z).unwrap();
    let overlapping = ZoneRange {
        gpa: ZONE_GPA_BASE + 3 * PAGE_SIZE,
        hpa: 0x7000_1000_0000,
        pages: 2,
    };
    assert!(matches!(
        s.aug_zone(&overlapping),
        Err(SeamError::Backend { .. })
    ));
    // A single page outside every zone is a zone of its own.
    s.page_aug(ZONE_GPA_BASE + 16 * PAGE_SIZE, 0x7000_2000_0000)
        .unwrap();
    assert_eq!(s.model().page_count(), 5);
}

#[test]
fn qemu_zones_are_where_the_guest_sees_them() {
    let pool = HostPool::new_shared(ZONE_GPA_SIZE / PAGE_SIZE).unwrap();
    let base = pool.base_addr();
    let mut h = TetdHandler::new(td(QemuSeam::new(base), pool));
    assert!(!h.enforces_blocking());
    assert!(h.report().blocking_note.contains("NOT enforced"));
    h.vcpus_started(1);
    for (id, pages) in [(1u64, 4u64), (2, 1), (3, 7)] {
        let gpa = h.handle(0, acc(id, pages)).into_result().unwrap()[0];
        let (_, z) = h.td().zone_at(gpa).unwrap();
        assert_eq!(z.host_addr() - base, gpa - ZONE_GPA_BASE, "agent {id}");
    }
    // Free the middle one and reuse the hole: still identical offsets.
    h.handle(0, call(Leaf::AgentDisable, [2, 0, 0, 0]))
        .into_result()
        .unwrap();
    let gpa = h.handle(0, acc(4, 1)).into_result().unwrap()[0];
    let (_, z) = h.td().zone_at(gpa).unwrap();
    assert_eq!(z.host_addr() - base, gpa - ZONE_GPA_BASE);
    // Blocking is modelled exactly as on the other backends.
    assert_eq!(h.td().seam().model().state(gpa), SeptState::Blocked);
}

#[test]
fn qemu_seam_refuses_memory_the_guest_would_not_see() {
    // A pool whose base is not what the seam was told: AUG must fail
    // before the model changes, and the zone must be given back.
    let pool = HostPool::new_shared(ZONE_GPA_SIZE / PAGE_SIZE).unwrap();
    let wrong = pool.base_addr() + PAGE_SIZE;
    let mut h = TetdHandler::new(td(QemuSeam::new(wrong), pool));
    assert_eq!(h.handle(0, acc(1, 2)).into_result(), Err(Error::SeamError));
    assert_eq!(h.td().seam().model().page_count(), 0);
    assert!(h.td().leaked_zones().is_empty());
    assert!(h.td().agent(1).is_none());
    let e = h.td().last_seam_error().unwrap().to_string();
    assert!(e.contains("not what the guest sees"), "{e}");
    let mut s = QemuSeam::new(0x7000_0000_0000);
    assert!(
        s.page_aug(0x1000, 0x7000_0000_0000).is_err(),
        "outside the window"
    );
}

/// The enforcing QEMU backend over a real shared pool, driven through the
/// leaves as the guest drives it: the zone's pages leave the pool file at
/// BLOCK and come back at UNBLOCK; what the "guest" (any other mapping of
/// the file: here the pool's own) does in between is found and discarded.
#[test]
fn qemu_blocked_zones_leave_the_pool_file() {
    let opts = TetdOptions::default();
    let events = opts.notifier.subscribe(64).unwrap();
    let mut h = TetdHandler::qemu(&opts).unwrap();
    assert!(h.enforces_blocking());
    assert!(h.report().blocking_note.contains("enforced"));
    h.vcpus_started(1);
    let gpa = h.handle(0, acc(1, 2)).into_result().unwrap()[0];
    let host = h.td().zone_at(gpa).unwrap().1.host_addr();
    let pool = h.td().pool().clone();
    let word = |off: u64| {
        let mut w = [0u8; 8];
        lock_pool(&pool).read(host + off, &mut w).unwrap();
        u64::from_le_bytes(w)
    };
    let present = || lock_pool(&pool).present_pages(host, 2 * PAGE_SIZE).unwrap();
    // Blocked from the start: both pages out of the file, saved as zeroes.
    assert_eq!(h.td().seam().pages_taken_away(), 2);
    assert!(present().is_empty());
    // A window: the agent writes its secret into page 1.
    h.handle(0, call(Leaf::VmmEnter, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    assert_eq!(h.td().seam().pages_taken_away(), 0);
    lock_pool(&pool)
        .write(host + PAGE_SIZE + 8, b"SECRET!!")
        .unwrap();
    h.handle(0, call(Leaf::VmmResume, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    // Blocked: the file holds nothing; TETD-H holds the secret.
    assert!(present().is_empty());
    let saved = h.td().seam().saved_page(gpa + PAGE_SIZE).unwrap();
    assert_eq!(&saved[8..16], b"SECRET!!");
    // The guest reads page 1 (zeroes: a shmem read fault allocates a page,
    // which is how the access is found) and writes into page 0.
    assert_eq!(word(PAGE_SIZE + 8), 0);
    lock_pool(&pool).write(host + 16, b"planted!").unwrap();
    assert_eq!(present(), [host, host + PAGE_SIZE]);
    // Next window: the touched page is reported (once) and overwritten.
    h.handle(0, call(Leaf::VmmEnter, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    assert_eq!(word(16), 0, "the planted write is gone");
    assert_eq!(word(PAGE_SIZE + 8), u64::from_le_bytes(*b"SECRET!!"));
    let v: Vec<_> = h.violations().copied().collect();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|v| v.found_after && v.agent == Some(1)));
    assert_eq!(v[0].access.gpa, gpa);
    assert_eq!(v[1].access.gpa, gpa + PAGE_SIZE);
    assert_eq!(h.td().agent(1).unwrap().violations, 2);
    let ev: Vec<_> = events
        .recv_timeout(std::time::Duration::from_secs(1))
        .unwrap();
    assert!(ev.iter().any(|e| e.kind == EventKind::Violation
        && e.agent == 1
        && e.arg0 == gpa
        && e.arg1 == crate::notify::VIOLATION_FOUND_AFTER));
    h.handle(0, call(Leaf::VmmResume, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    // A touch while blocked and the guest stops: found at the end of the run.
    lock_pool(&pool).write(host + PAGE_SIZE, b"x").unwrap();
    h.guest_stopped();
    assert_eq!(h.violations().filter(|v| v.found_after).count(), 3);
    // Disable: the zone is removed, the saved copies are dropped, the pool
    // range is scrubbed and free.
    h.handle(0, call(Leaf::AgentDisable, [1, 0, 0, 0]))
        .into_result()
        .unwrap();
    assert_eq!(h.td().seam().pages_taken_away(), 0);
    assert!(present().is_empty());
    assert_eq!(
        lock_pool(&pool).allocator().free_pages(),
        ZONE_GPA_SIZE / PAGE_SIZE
    );
}

/// A refused UNBLOCK (before the TLB tracking the TDX rules require) never
/// loses the saved pages; AUG scrubs what a guest left in a free window
/// page.
#[test]
fn qemu_saved_pages_survive_refusals_and_aug_scrubs() {
    let pool = Arc::new(Mutex::new(
        HostPool::new_shared(ZONE_GPA_SIZE / PAGE_SIZE).unwrap(),
    ));
    let base = lock_pool(&pool).base_addr();
    let mut s = QemuSeam::enforcing(pool.clone());
    // The guest planted data in a free window page.
    lock_pool(&pool).write(base, b"planted!").unwrap();
    let z = ZoneRange {
        gpa: ZONE_GPA_BASE,
        hpa: base,
        pages: 1,
    };
    s.aug_zone(&z).unwrap();
    assert_eq!(
        s.saved_page(ZONE_GPA_BASE).unwrap()[..8],
        [0; 8],
        "AUG scrubbed"
    );
    s.accept_zone(&z).unwrap();
    lock_pool(&pool).write(base, b"agentkey").unwrap();
    s.block_zone(&z).unwrap();
    // UNBLOCK before TRACK: refused by the TDX rules; nothing restored,
    // nothing lost.
    assert!(s.unblock_zone(&z).is_err());
    assert_eq!(&s.saved_page(ZONE_GPA_BASE).unwrap()[..8], b"agentkey");
    let mut w = [0u8; 8];
    lock_pool(&pool).read(base, &mut w).unwrap();
    assert_eq!(w, [0; 8]);
    s.flush().unwrap();
    s.unblock_zone(&z).unwrap();
    lock_pool(&pool).read(base, &mut w).unwrap();
    assert_eq!(&w, b"agentkey");
    assert_eq!(s.pages_taken_away(), 0);
}
