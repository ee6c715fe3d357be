//! TETD-H leaves: the happy path and every error path, on the software
//! model of the TDX module.

mod core_common;

use core_common::*;
use tetd::abi::regs::HypercallArgs;
use tetd::abi::{
    access, Error, HostAgentState, Leaf, Mode, AGENT_FLAG_ADMIN, PAGE_SIZE, ZONE_GPA_BASE,
    ZONE_GPA_SIZE,
};
use tetd_kvm::seam::{SeamOp, SeamOps};
use tetd_kvm::seam_model::{SeptModel, SeptState};
use tetd_kvm::{AgentState, Host, HostError, TdConfig, TdState};

const POOL: u64 = 256;

fn host() -> Host {
    Host::new(POOL).unwrap()
}

fn td1(h: &mut Host) -> &mut TdState {
    if h.td(1).is_none() {
        h.create_td(1, SeptModel::new()).unwrap();
    }
    h.td_mut(1).unwrap()
}

fn pool_free(h: &Host) -> u64 {
    h.pool().lock().unwrap().allocator().free_pages()
}

#[test]
fn life_cycle_drives_the_secure_ept() {
    let mut h = host();
    let td = td1(&mut h);
    let [gpa, pages, flags] = access(td, 0, 7, 4).unwrap();
    assert_eq!((pages, flags), (4, 0), "the model accepts for the guest");
    assert!(gpa >= ZONE_GPA_BASE && gpa + 4 * PAGE_SIZE <= ZONE_GPA_BASE + ZONE_GPA_SIZE);
    assert_eq!(gpa % PAGE_SIZE, 0);
    let z = td.agent(7).unwrap().zone.unwrap();
    assert_eq!(z.gpa, gpa);
    assert_eq!(z.host_addr() % PAGE_SIZE, 0);
    // Registered: every page BLOCKED and tracked (not guest accessible).
    for i in 0..4 {
        let g = gpa + i * PAGE_SIZE;
        assert_eq!(td.seam().state(g), SeptState::Blocked);
        assert!(td.seam().is_tracked(g));
        assert!(!td.seam().guest_may_access(g));
        assert_eq!(td.seam().hpa(g), Some(z.host_addr() + i * PAGE_SIZE));
    }
    check_td(td).unwrap();

    assert_eq!(enter(td, 0, 7).unwrap(), [1, 0, 0]);
    assert_eq!(td.agent(7).unwrap().state, AgentState::Running { vcpu: 0 });
    for i in 0..4 {
        assert_eq!(td.seam().state(gpa + i * PAGE_SIZE), SeptState::Mapped);
    }
    check_td(td).unwrap();

    assert_eq!(resume(td, 0, 7, 0).unwrap(), [1, 0, 0]);
    for i in 0..4 {
        assert_eq!(td.seam().state(gpa + i * PAGE_SIZE), SeptState::Blocked);
        assert!(td.seam().is_tracked(gpa + i * PAGE_SIZE));
    }
    check_td(td).unwrap();

    enter(td, 0, 7).unwrap();
    assert_eq!(resume(td, 0, 7, Error::Fault as u64).unwrap(), [2, 1, 0]);
    assert_eq!(td.agent(7).unwrap().last_status, Error::Fault as u64);

    disable(td, 0, 7).unwrap();
    assert_eq!(td.agent(7).unwrap().state, AgentState::Disabled);
    assert_eq!(td.seam().page_count(), 0, "all zone pages removed");
    let st = td.seam().stats();
    assert_eq!(
        (st.aug, st.accept, st.block, st.unblock, st.remove),
        (4, 4, 12, 8, 4)
    );
    assert_eq!(st.failed, 0);
    assert_eq!(td.gpa_allocator().free_pages(), ZONE_GPA_SIZE / PAGE_SIZE);
    check_td(td).unwrap();
    assert_eq!(pool_free(&h), POOL);
}

#[test]
fn unknown_leaves() {
    let mut h = host();
    let td = td1(&mut h);
    for leaf in [0u64, 9, 0x10001, u64::MAX] {
        let r = td.handle(
            0,
            HypercallArgs {
                leaf,
                args: [1, 1, 0, 0],
            },
        );
        assert_eq!(r.into_result(), Err(Error::UnknownLeaf), "leaf {leaf}");
    }
}

#[test]
fn access_argument_errors() {
    let mut h = host();
    let td = td1(&mut h);
    let coll = access::encode(Mode::Collaborative, 0);
    let cases: &[([u64; 4], Error)] = &[
        ([0, 1, coll, 0], Error::InvalidArgument),       // id 0
        ([1 << 32, 1, coll, 0], Error::InvalidArgument), // id > u32
        ([1, 1, 2 << 32, 0], Error::InvalidArgument),    // unknown mode
        ([1, 1, coll | 0x8000_0000, 0], Error::InvalidArgument), // unknown flag
        ([1, 1, coll | (1 << 41), 0], Error::InvalidArgument), // reserved bit
        ([1, 1, coll | access::ALIAS, 0], Error::InvalidArgument), // alias with pages
        ([1, 0, coll | access::ALIAS, 0], Error::InvalidArgument), // alias, owner 0
        (
            [1, 0, coll | access::ALIAS, 1 << 32],
            Error::InvalidArgument,
        ), // owner > u32
        ([1, 0, coll | access::ALIAS, 9], Error::UnknownAgent), // no owner 9
        ([1, 0, coll, 0], Error::OutOfRange),            // empty zone
        ([1, 4097, coll, 0], Error::OutOfRange),         // > max_zone_pages
        ([1, u64::MAX, coll, 0], Error::OutOfRange),
        ([1, 1, coll, 0x1000], Error::OutOfRange), // no guest reader
    ];
    for (args, err) in cases {
        assert_eq!(
            call(td, 0, Leaf::AgentAccess, *args),
            Err(*err),
            "{args:x?}"
        );
    }
    assert_eq!(td.agents().count(), 0);
    assert_eq!(td.seam().page_count(), 0);
    assert_eq!(pool_free(&h), POOL);
}

#[test]
fn access_records_mode_flags_measurement() {
    let mut h = host();
    let td = td1(&mut h);
    let ram = FakeRam::new(0x10000);
    let meas = [0x5au8; 48];
    ram.write(0x2000, &meas);
    td.set_guest_reader(ram.reader());
    let r = call(
        td,
        3,
        Leaf::AgentAccess,
        [
            9,
            2,
            access::encode(Mode::Collaborative, AGENT_FLAG_ADMIN),
            0x2000,
        ],
    );
    assert!(r.is_ok());
    let a = td.agent(9).unwrap();
    assert_eq!(
        (a.mode, a.flags, a.registered_by),
        (Mode::Collaborative, AGENT_FLAG_ADMIN, 3)
    );
    assert_eq!(a.measurement, Some(meas));
    // Unreadable measurement (past guest RAM): nothing registered.
    let r = call(
        td,
        0,
        Leaf::AgentAccess,
        [10, 2, access::encode(Mode::Collaborative, 0), 0xfff0],
    );
    assert_eq!(r, Err(Error::OutOfRange));
    assert!(td.agent(10).is_none());
}

#[test]
fn exclusive_agent_without_zone() {
    let mut h = host();
    let td = td1(&mut h);
    let r = call(
        td,
        0,
        Leaf::AgentAccess,
        [5, 0, access::encode(Mode::Exclusive, 0), 0],
    )
    .unwrap();
    assert_eq!(r, [0, 0, 0]);
    assert_eq!(td.agent(5).unwrap().zone, None);
    enter(td, 1, 5).unwrap();
    resume(td, 1, 5, 0).unwrap();
    disable(td, 0, 5).unwrap();
    assert_eq!(
        call(td, 0, Leaf::AgentEnable, [5, 0, 0, 0]).unwrap(),
        [0, 0, 0]
    );
    assert_eq!(td.seam().stats().aug, 0);
    check_td(td).unwrap();
}

#[test]
fn duplicate_registration() {
    let mut h = host();
    let td = td1(&mut h);
    access(td, 0, 1, 1).unwrap();
    assert_eq!(access(td, 0, 1, 1), Err(Error::AlreadyRegistered));
    enter(td, 0, 1).unwrap();
    assert_eq!(
        access(td, 1, 1, 1),
        Err(Error::AlreadyRegistered),
        "while running"
    );
    resume(td, 0, 1, 0).unwrap();
    disable(td, 0, 1).unwrap();
    // A disabled id may be registered anew (a new image), with new counters.
    let old_calls = td.agent(1).unwrap().calls;
    assert_eq!(old_calls, 1);
    access(td, 0, 1, 3).unwrap();
    let a = td.agent(1).unwrap();
    assert_eq!((a.calls, a.zone_pages, a.state), (0, 3, AgentState::Idle));
    check_td(td).unwrap();
}

#[test]
fn table_full() {
    let mut h = Host::with_config(
        64,
        TdConfig {
            max_zone_pages: 4,
            max_agents: 2,
        },
    )
    .unwrap();
    let td = h.create_td(1, SeptModel::new()).unwrap();
    access(td, 0, 1, 1).unwrap();
    access(td, 0, 2, 1).unwrap();
    assert_eq!(access(td, 0, 3, 1), Err(Error::TableFull));
    // Re-registering a disabled id does not need a new row.
    disable(td, 0, 2).unwrap();
    access(td, 0, 2, 1).unwrap();
}

#[test]
fn pool_exhaustion_is_clean() {
    let mut h = Host::with_config(8, TdConfig::default()).unwrap();
    let td = h.create_td(1, SeptModel::new()).unwrap();
    access(td, 0, 1, 5).unwrap();
    let before = td.seam().stats();
    assert_eq!(access(td, 0, 2, 4), Err(Error::ZoneExhausted));
    assert!(td.agent(2).is_none());
    assert_eq!(
        td.seam().stats(),
        before,
        "no SEAM op for a failed allocation"
    );
    assert_eq!(
        td.gpa_allocator().free_pages(),
        ZONE_GPA_SIZE / PAGE_SIZE - 5,
        "GPA pages given back"
    );
    access(td, 0, 2, 3).unwrap(); // exactly what is left
    check_td(td).unwrap();
    assert_eq!(h.pool().lock().unwrap().allocator().free_pages(), 0);
}

#[test]
fn gpa_window_exhaustion_is_clean() {
    let window = ZONE_GPA_SIZE / PAGE_SIZE;
    let mut h = Host::with_config(
        window + 16,
        TdConfig {
            max_zone_pages: window + 1,
            max_agents: 8,
        },
    )
    .unwrap();
    let td = h.create_td(1, SeptModel::new()).unwrap();
    assert_eq!(access(td, 0, 1, window + 1), Err(Error::ZoneExhausted));
    assert_eq!(
        h.pool().lock().unwrap().allocator().free_pages(),
        window + 16
    );
}

#[test]
fn fragmented_pool() {
    let mut h = Host::with_config(6, TdConfig::default()).unwrap();
    let td = h.create_td(1, SeptModel::new()).unwrap();
    for id in 1..=3 {
        access(td, 0, id, 2).unwrap();
    }
    disable(td, 0, 1).unwrap();
    disable(td, 0, 3).unwrap();
    // 4 pages free, but not contiguous.
    assert_eq!(access(td, 0, 4, 4), Err(Error::ZoneExhausted));
    disable(td, 0, 2).unwrap(); // coalesces into one run of 6
    access(td, 0, 4, 6).unwrap();
    check_td(td).unwrap();
}

#[test]
fn enter_errors() {
    let mut h = host();
    let td = td1(&mut h);
    access(td, 0, 1, 1).unwrap();
    access(td, 0, 2, 1).unwrap();
    assert_eq!(enter(td, 0, 99), Err(Error::UnknownAgent));
    assert_eq!(enter(td, 0, 0), Err(Error::UnknownAgent));
    assert_eq!(
        call(td, 0, Leaf::VmmEnter, [1 << 40, 0, 0, 0]),
        Err(Error::UnknownAgent)
    );
    assert_eq!(
        call(td, 0, Leaf::VmmEnter, [1, 1, 0, 0]),
        Err(Error::InvalidArgument),
        "vcpu mismatch"
    );
    assert_eq!(
        call(td, 0, Leaf::VmmEnter, [1, 0, 5, 0]),
        Err(Error::InvalidArgument),
        "reserved"
    );
    assert_eq!(
        call(td, 0, Leaf::VmmEnter, [1, 0, 0, 5]),
        Err(Error::InvalidArgument),
        "reserved"
    );
    enter(td, 0, 1).unwrap();
    assert_eq!(enter(td, 0, 1), Err(Error::AlreadyRunning));
    assert_eq!(
        enter(td, 1, 1),
        Err(Error::AlreadyRunning),
        "from another vCPU"
    );
    assert_eq!(
        enter(td, 0, 2),
        Err(Error::BadState),
        "vCPU 0 is inside agent 1"
    );
    enter(td, 1, 2).unwrap(); // another vCPU may run another agent
    assert_eq!(td.agent(1).unwrap().calls, 1, "failed enters are not calls");
    resume(td, 0, 1, 0).unwrap();
    resume(td, 1, 2, 0).unwrap();
    disable(td, 0, 2).unwrap();
    assert_eq!(enter(td, 0, 2), Err(Error::Disabled));
    check_td(td).unwrap();
}

#[test]
fn resume_errors() {
    let mut h = host();
    let td = td1(&mut h);
    access(td, 0, 1, 2).unwrap();
    assert_eq!(
        resume(td, 0, 1, 0),
        Err(Error::NotRunning),
        "resume without enter"
    );
    assert_eq!(resume(td, 0, 42, 0), Err(Error::UnknownAgent));
    enter(td, 2, 1).unwrap();
    assert_eq!(resume(td, 0, 1, 0), Err(Error::NotOwner), "another vCPU");
    assert_eq!(
        call(td, 2, Leaf::VmmResume, [1, 3, 0, 0]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        call(td, 2, Leaf::VmmResume, [1, 2, 0, 1]),
        Err(Error::InvalidArgument)
    );
    // Still running and mapped after the failed resumes.
    assert_eq!(td.agent(1).unwrap().state, AgentState::Running { vcpu: 2 });
    check_td(td).unwrap();
    resume(td, 2, 1, 0).unwrap();
    assert_eq!(resume(td, 2, 1, 0), Err(Error::NotRunning), "double resume");
    disable(td, 0, 1).unwrap();
    assert_eq!(resume(td, 2, 1, 0), Err(Error::NotRunning));
}

#[test]
fn disable_errors() {
    let mut h = host();
    let td = td1(&mut h);
    access(td, 0, 1, 2).unwrap();
    assert_eq!(disable(td, 0, 5), Err(Error::UnknownAgent));
    assert_eq!(
        call(td, 0, Leaf::AgentDisable, [1, 1, 0, 0]),
        Err(Error::InvalidArgument)
    );
    enter(td, 0, 1).unwrap();
    assert_eq!(
        disable(td, 1, 1),
        Err(Error::AlreadyRunning),
        "disable while running"
    );
    assert_eq!(
        td.seam().state(td.agent(1).unwrap().zone.unwrap().gpa),
        SeptState::Mapped
    );
    resume(td, 0, 1, 0).unwrap();
    disable(td, 1, 1).unwrap();
    assert_eq!(disable(td, 1, 1), Err(Error::BadState), "already disabled");
    check_td(td).unwrap();
}

#[test]
fn enable_errors_and_fresh_zone() {
    let mut h = host();
    let td = td1(&mut h);
    assert_eq!(
        call(td, 0, Leaf::AgentEnable, [1, 0, 0, 0]),
        Err(Error::UnknownAgent)
    );
    access(td, 0, 1, 3).unwrap();
    assert_eq!(
        call(td, 0, Leaf::AgentEnable, [1, 0, 0, 0]),
        Err(Error::BadState),
        "not disabled"
    );
    assert_eq!(
        call(td, 0, Leaf::AgentEnable, [1, 0, 1, 0]),
        Err(Error::InvalidArgument)
    );
    let z = td.agent(1).unwrap().zone.unwrap();
    // Put a secret into the zone's memory, disable, enable: fresh zeroes.
    td.pool()
        .lock()
        .unwrap()
        .write(z.host_addr() + 8, b"key material")
        .unwrap();
    disable(td, 0, 1).unwrap();
    let [gpa, pages, flags] = call(td, 0, Leaf::AgentEnable, [1, 0, 0, 0]).unwrap();
    assert_eq!((pages, flags), (3, 0));
    let z2 = td.agent(1).unwrap().zone.unwrap();
    assert_eq!(z2.gpa, gpa);
    let mut buf = [0xffu8; 12];
    td.pool()
        .lock()
        .unwrap()
        .read(z2.host_addr() + 8, &mut buf)
        .unwrap();
    assert_eq!(buf, [0; 12], "a re-created zone never shows old content");
    assert_eq!(td.agent(1).unwrap().state, AgentState::Idle);
    enter(td, 0, 1).unwrap();
    check_td(td).unwrap();
}

#[test]
fn fault_errors() {
    let mut h = host();
    let td = td1(&mut h);
    access(td, 0, 1, 1).unwrap();
    let fault = |td: &mut TdState, vcpu, v, addr| call(td, vcpu, Leaf::AgentFault, [1, v, addr, 0]);
    assert_eq!(fault(td, 0, 14, 0x1000), Err(Error::NotRunning));
    assert_eq!(
        call(td, 0, Leaf::AgentFault, [77, 14, 0, 0]),
        Err(Error::UnknownAgent)
    );
    enter(td, 0, 1).unwrap();
    assert_eq!(
        fault(td, 0, 32, 0),
        Err(Error::InvalidArgument),
        "not an exception vector"
    );
    assert_eq!(
        call(td, 0, Leaf::AgentFault, [1, 14, 0, 1]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(fault(td, 1, 14, 0), Err(Error::NotOwner));
    assert_eq!(fault(td, 0, 14, 0xdead_b000), Ok([1, 0, 0]));
    assert_eq!(fault(td, 0, 13, 0), Ok([2, 0, 0]));
    let a = td.agent(1).unwrap();
    assert_eq!((a.faults, a.last_fault), (2, Some((13, 0))));
    assert_eq!(
        a.state,
        AgentState::Running { vcpu: 0 },
        "a fault report does not end the call"
    );
    resume(td, 0, 1, Error::Fault as u64).unwrap();
}

#[test]
fn query_reports_state_calls_violations() {
    let mut h = host();
    let td = td1(&mut h);
    let q = |td: &mut TdState| call(td, 3, Leaf::AgentQuery, [1, 0, 0, 0]);
    assert_eq!(q(td), Err(Error::UnknownAgent));
    access(td, 0, 1, 2).unwrap();
    assert_eq!(q(td), Ok([HostAgentState::Idle as u64, 0, 0]));
    assert_eq!(
        call(td, 3, Leaf::AgentQuery, [1, 0, 0, 9]),
        Err(Error::InvalidArgument)
    );
    let z = td.agent(1).unwrap().zone.unwrap();
    // The VMM saw the guest kernel touch the blocked zone.
    assert_eq!(
        td.report_violation(1, z.gpa + PAGE_SIZE + 8, false),
        Some(1)
    );
    assert_eq!(
        td.report_violation(1, z.gpa + 2 * PAGE_SIZE, true),
        None,
        "past the zone"
    );
    enter(td, 0, 1).unwrap();
    assert_eq!(q(td), Ok([HostAgentState::Running as u64, 1, 1]));
    resume(td, 0, 1, 0).unwrap();
    disable(td, 0, 1).unwrap();
    assert_eq!(q(td), Ok([HostAgentState::Disabled as u64, 1, 1]));
}

#[test]
fn rtmr_extend() {
    let mut h = host();
    let td = td1(&mut h);
    let ext = |td: &mut TdState, i, gpa| call(td, 0, Leaf::RtmrExtend, [i, gpa, 0, 0]);
    assert_eq!(
        ext(td, 0, 0x100),
        Err(Error::OutOfRange),
        "no guest memory reader"
    );
    let ram = FakeRam::new(0x4000);
    let d1 = [1u8; 48];
    let d2 = [2u8; 48];
    ram.write(0x100, &d1);
    ram.write(0x200, &d2);
    td.set_guest_reader(ram.reader());
    assert_eq!(ext(td, 4, 0x100), Err(Error::OutOfRange));
    assert_eq!(
        ext(td, 2, 0x3ff0),
        Err(Error::OutOfRange),
        "digest past guest RAM"
    );
    assert_eq!(
        call(td, 0, Leaf::RtmrExtend, [2, 0x100, 1, 0]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(td.rtmrs().extend_count(2), Some(0));
    ext(td, 2, 0x100).unwrap();
    ext(td, 2, 0x200).unwrap();
    assert_eq!(td.rtmrs().get(2), Some(&tetd_kvm::rtmr::replay([&d1, &d2])));
    assert_eq!(td.rtmrs().get(3), Some(&[0u8; 48]));
}

#[test]
fn tds_are_isolated() {
    let mut h = host();
    h.create_td(1, SeptModel::new()).unwrap();
    h.create_td(2, SeptModel::new()).unwrap();
    assert!(matches!(
        h.create_td(2, SeptModel::new()),
        Err(HostError::TdExists(2))
    ));
    access(h.td_mut(1).unwrap(), 0, 1, 4).unwrap();
    // TD 2 names TD 1's agent: unknown there, and TD 1's zone stays blocked.
    let td2 = h.td_mut(2).unwrap();
    assert_eq!(enter(td2, 0, 1), Err(Error::UnknownAgent));
    assert_eq!(disable(td2, 0, 1), Err(Error::UnknownAgent));
    assert_eq!(
        call(td2, 0, Leaf::AgentQuery, [1, 0, 0, 0]),
        Err(Error::UnknownAgent)
    );
    let td1 = h.td(1).unwrap();
    let z1 = td1.agent(1).unwrap().zone.unwrap();
    assert_eq!(td1.seam().state(z1.gpa), SeptState::Blocked);
    // Both TDs may use the same id; their zones share the pool, not pages.
    access(h.td_mut(2).unwrap(), 0, 1, 4).unwrap();
    let z2 = h.td(2).unwrap().agent(1).unwrap().zone.unwrap();
    assert!(
        z1.host_addr() + z1.len() <= z2.host_addr() || z2.host_addr() + z2.len() <= z1.host_addr(),
        "host pages of different TDs' zones must not overlap"
    );
    enter(h.td_mut(2).unwrap(), 0, 1).unwrap();
    assert_eq!(h.td(1).unwrap().agent(1).unwrap().state, AgentState::Idle);
    // Host routing.
    let args = HypercallArgs {
        leaf: Leaf::AgentQuery as u64,
        args: [1, 0, 0, 0],
    };
    assert_eq!(
        h.handle(2, 0, args).unwrap().results[0],
        HostAgentState::Running as u64
    );
    assert!(matches!(h.handle(3, 0, args), Err(HostError::UnknownTd(3))));
    // Destroying a TD (with a running agent) returns its pages.
    h.destroy_td(2).unwrap();
    assert!(h.td(2).is_none());
    assert_eq!(pool_free(&h), POOL - 4);
    assert!(matches!(h.destroy_td(2), Err(HostError::UnknownTd(2))));
}

#[test]
fn dropping_a_td_returns_its_pool_pages() {
    let h = host();
    {
        let mut td = TdState::new(
            9,
            SeptModel::new(),
            h.pool().clone(),
            h.notifier().clone(),
            TdConfig::default(),
        );
        access(&mut td, 0, 1, 10).unwrap();
        access(&mut td, 0, 2, 20).unwrap();
        assert_eq!(pool_free(&h), POOL - 30);
    }
    assert_eq!(pool_free(&h), POOL);
}

#[test]
fn resume_tracks_past_running_vcpus() {
    // vCPUs 1 and 2 keep running in guest mode while vCPU 0 calls an agent.
    // RESUME's TRACK must kick them, or the blocked pages would stay
    // reachable through their TLBs.
    let mut h = host();
    let td = td1(&mut h);
    td.seam_mut().vcpu_enter(1);
    td.seam_mut().vcpu_enter(2);
    access(td, 0, 1, 2).unwrap();
    enter(td, 0, 1).unwrap();
    td.seam_mut().vcpu_exit(2);
    td.seam_mut().track().unwrap(); // some unrelated host TRACK
    td.seam_mut().vcpu_enter(2);
    resume(td, 0, 1, 0).unwrap();
    let z = td.agent(1).unwrap().zone.unwrap();
    assert!(td.seam().is_tracked(z.gpa));
    assert!(!td.seam().guest_may_access(z.gpa));
    assert!(td.seam().stats().kicks >= 1);
    check_td(td).unwrap();
    disable(td, 0, 1).unwrap();
    assert_eq!(td.seam_trouble().errors, 0);
}

// ---------------------------------------------------------------------------
// SEAM failures (a backend that fails on purpose)
// ---------------------------------------------------------------------------

fn faulty_td(h: &Host) -> TdState<Faulty> {
    TdState::new(
        5,
        Faulty::new(),
        h.pool().clone(),
        h.notifier().clone(),
        TdConfig::default(),
    )
}

#[test]
fn aug_failure_rolls_back() {
    let h = host();
    let mut td = faulty_td(&h);
    td.seam_mut().arm(SeamOp::PageAug, 2, false); // third page fails
    assert_eq!(access(&mut td, 0, 1, 4), Err(Error::SeamError));
    assert!(td.agent(1).is_none());
    assert_eq!(
        td.seam().model.page_count(),
        0,
        "the two AUG'ed pages were removed"
    );
    assert!(td.leaked_zones().is_empty());
    assert_eq!(pool_free(&h), POOL);
    assert_eq!(td.seam_trouble().errors, 1);
    assert!(matches!(
        td.last_seam_error(),
        Some(tetd_kvm::SeamError::Backend {
            op: SeamOp::PageAug,
            ..
        })
    ));
    access(&mut td, 0, 1, 4).unwrap();
}

#[test]
fn unblock_failure_keeps_the_zone_blocked() {
    let h = host();
    let mut td = faulty_td(&h);
    access(&mut td, 0, 1, 4).unwrap();
    td.seam_mut().arm(SeamOp::RangeUnblock, 2, false);
    assert_eq!(enter(&mut td, 0, 1), Err(Error::SeamError));
    let a = td.agent(1).unwrap();
    assert_eq!((a.state, a.calls), (AgentState::Idle, 0));
    let z = a.zone.unwrap();
    for i in 0..4 {
        let g = z.gpa + i * PAGE_SIZE;
        assert_eq!(td.seam().model.state(g), SeptState::Blocked);
        assert!(td.seam().model.is_tracked(g), "re-blocked and tracked");
    }
    enter(&mut td, 0, 1).unwrap();
    resume(&mut td, 0, 1, 0).unwrap();
}

#[test]
fn resume_block_failure_is_recovered() {
    let h = host();
    let mut td = faulty_td(&h);
    access(&mut td, 0, 1, 3).unwrap();
    enter(&mut td, 0, 1).unwrap();
    td.seam_mut().arm(SeamOp::RangeBlock, 1, false); // second page, once
    assert!(
        resume(&mut td, 0, 1, 0).is_ok(),
        "re-blocking page by page succeeded"
    );
    let z = td.agent(1).unwrap().zone.unwrap();
    for i in 0..3 {
        assert_eq!(
            td.seam().model.state(z.gpa + i * PAGE_SIZE),
            SeptState::Blocked
        );
        assert!(td.seam().model.is_tracked(z.gpa + i * PAGE_SIZE));
    }
    assert_eq!(td.seam_trouble().recovered, 1);
}

#[test]
fn resume_unrecoverable_failure_quarantines() {
    let h = host();
    let mut td = faulty_td(&h);
    access(&mut td, 0, 1, 3).unwrap();
    enter(&mut td, 0, 1).unwrap();
    td.seam_mut().arm(SeamOp::RangeBlock, 0, true);
    assert_eq!(resume(&mut td, 0, 1, 0), Err(Error::SeamError));
    let a = td.agent(1).unwrap();
    assert_eq!((a.state, a.zone), (AgentState::Disabled, None));
    assert_eq!(td.leaked_zones().len(), 1);
    assert_eq!(td.running_on(0), None);
    assert_eq!(
        enter(&mut td, 0, 1),
        Err(Error::Disabled),
        "never runs again"
    );
    assert_eq!(pool_free(&h), POOL - 3, "leaked pages stay reserved");
    drop(td);
    assert_eq!(pool_free(&h), POOL, "... until the TD is destroyed");
}

#[test]
fn remove_failure_leaks_instead_of_reusing() {
    let h = host();
    let mut td = faulty_td(&h);
    access(&mut td, 0, 1, 2).unwrap();
    td.seam_mut().arm(SeamOp::PageRemove, 1, true);
    assert_eq!(disable(&mut td, 0, 1), Err(Error::SeamError));
    assert_eq!(td.agent(1).unwrap().state, AgentState::Disabled);
    let leaked = td.leaked_zones().to_vec();
    assert_eq!(leaked.len(), 1);
    // The leaked GPA range is not handed out again.
    td.seam_mut().fail_op = None;
    access(&mut td, 0, 2, 2).unwrap();
    let z2 = td.agent(2).unwrap().zone.unwrap();
    assert!(!leaked[0].contains(z2.gpa) && z2.host_addr() != leaked[0].host_addr());
}

#[test]
fn zone_lookup_for_the_vmm() {
    let mut h = host();
    let td = td1(&mut h);
    access(td, 0, 1, 2).unwrap();
    access(td, 0, 2, 3).unwrap();
    let zones: Vec<_> = td.zones().collect();
    assert_eq!(zones.len(), 2);
    for (id, z) in &zones {
        assert_eq!(td.zone_at(z.gpa + z.len() - 1), Some((*id, *z)));
        assert_eq!(z.range().hpa, z.host_addr());
        assert!(TdState::<SeptModel>::in_zone_window(z.gpa));
    }
    assert_eq!(td.zone_at(ZONE_GPA_BASE + ZONE_GPA_SIZE - PAGE_SIZE), None);
    assert!(!TdState::<SeptModel>::in_zone_window(ZONE_GPA_BASE - 1));
}

#[test]
fn host_types_can_move_between_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Host>();
    send::<TdState>();
    send::<tetd_kvm::zone_alloc::HostPool>();
    sync::<tetd_kvm::zone_alloc::HostPool>();
    sync::<tetd_kvm::notify::Notifier>();
    send::<tetd_kvm::notify::Subscription>();
    // A TD's state used from a vCPU thread behind a mutex.
    let h = host();
    let td = std::sync::Arc::new(std::sync::Mutex::new(TdState::new(
        1,
        SeptModel::new(),
        h.pool().clone(),
        h.notifier().clone(),
        TdConfig::default(),
    )));
    let t2 = td.clone();
    std::thread::spawn(move || access(&mut t2.lock().unwrap(), 0, 1, 1).unwrap())
        .join()
        .unwrap();
    assert!(td.lock().unwrap().agent(1).is_some());
}

/// A backend like the real-TDX one: the guest accepts zone pages itself.
struct GuestAccepts(SeptModel);

impl SeamOps for GuestAccepts {
    fn page_aug(&mut self, g: u64, h: u64) -> tetd_kvm::seam::SeamResult<()> {
        self.0.page_aug(g, h)
    }
    fn range_block(&mut self, g: u64) -> tetd_kvm::seam::SeamResult<()> {
        self.0.range_block(g)
    }
    fn range_unblock(&mut self, g: u64) -> tetd_kvm::seam::SeamResult<()> {
        self.0.range_unblock(g)
    }
    fn track(&mut self) -> tetd_kvm::seam::SeamResult<()> {
        self.0.track()
    }
    fn page_remove(&mut self, g: u64) -> tetd_kvm::seam::SeamResult<u64> {
        self.0.page_remove(g)
    }
    fn page_accept(&mut self, g: u64) -> tetd_kvm::seam::SeamResult<()> {
        self.0.page_accept(g)
    }
    fn kick_vcpus(&mut self) -> tetd_kvm::seam::SeamResult<()> {
        self.0.kick_vcpus()
    }
    fn host_accepts(&self) -> bool {
        false
    }
}

#[test]
fn guest_accepts_its_zone_inside_the_first_window() {
    let h = host();
    let mut td = TdState::new(
        3,
        GuestAccepts(SeptModel::new()),
        h.pool().clone(),
        h.notifier().clone(),
        TdConfig::default(),
    );
    let [gpa, pages, flags] = access(&mut td, 0, 1, 3).unwrap();
    assert_eq!((pages, flags), (3, access::ZONE_FLAG_ACCEPT_REQUIRED));
    let st = |td: &TdState<GuestAccepts>, i: u64| td.seam().0.state(gpa + i * PAGE_SIZE);
    for i in 0..3 {
        assert_eq!(
            st(&td, i),
            SeptState::PendingBlocked,
            "guest kernel cannot accept it now"
        );
        assert_eq!(
            td.seam_mut().0.page_accept(gpa + i * PAGE_SIZE),
            Err(tetd_kvm::SeamError::EptViolation {
                gpa: gpa + i * PAGE_SIZE
            })
        );
    }
    enter(&mut td, 0, 1).unwrap();
    assert_eq!(st(&td, 0), SeptState::Pending);
    // The guest accepts two of the three pages in its window.
    td.seam_mut().0.page_accept(gpa).unwrap();
    td.seam_mut().0.page_accept(gpa + PAGE_SIZE).unwrap();
    resume(&mut td, 0, 1, 0).unwrap();
    assert_eq!(st(&td, 0), SeptState::Blocked);
    assert_eq!(st(&td, 2), SeptState::PendingBlocked);
    assert!((0..3).all(|i| !td.seam().0.guest_may_access(gpa + i * PAGE_SIZE)));
    disable(&mut td, 0, 1).unwrap();
    assert_eq!(td.seam().0.page_count(), 0);
    assert_eq!(td.seam_trouble().errors, 0);
}

/// AGENT_ACCESS of an alias: `[id, 0, ALIAS | mode | flags, owner]`.
fn alias(td: &mut TdState, vcpu: u32, id: u32, owner: u32) -> Result<[u64; 3], Error> {
    call(
        td,
        vcpu,
        Leaf::AgentAccess,
        [
            id as u64,
            0,
            access::encode_alias(Mode::Exclusive, AGENT_FLAG_ADMIN),
            owner as u64,
        ],
    )
}

#[test]
fn aliases_name_agents_inside_an_owners_zone() {
    use tetd_kvm::host::DISABLE_WITH_OWNER;
    use tetd_kvm::notify::EventKind;
    let mut h = host();
    let sub = h.notifier().subscribe(64).unwrap();
    let ram = FakeRam::new(0x4000);
    let m = [0x5au8; 48];
    ram.write(0x1000, &m);
    let td = td1(&mut h);
    td.set_guest_reader(ram.reader());
    let owner = access::IMAGE_ZONE_ID_BASE;
    call(
        td,
        0,
        Leaf::AgentAccess,
        [
            owner as u64,
            3,
            access::encode(Mode::Collaborative, 0),
            0x1000,
        ],
    )
    .unwrap();
    let free_after_zone = pool_free(&h);
    let td = td1(&mut h);
    // Two agents of the image, registered as aliases: no zone, no pages.
    assert_eq!(alias(td, 1, 1, owner), Ok([0, 0, 0]));
    assert_eq!(alias(td, 0, 2, owner), Ok([0, 0, 0]));
    let a1 = td.agent(1).unwrap().clone();
    assert_eq!(a1.alias_of, Some(owner));
    assert_eq!(
        (a1.zone, a1.zone_pages, a1.state),
        (None, 0, AgentState::Idle)
    );
    assert_eq!(
        (a1.mode, a1.flags, a1.registered_by),
        (Mode::Exclusive, AGENT_FLAG_ADMIN, 1)
    );
    assert_eq!(
        a1.measurement,
        Some(m),
        "an alias carries its owner's measurement"
    );
    assert_eq!(td.zone_owner(2).unwrap().id, owner);
    assert_eq!(td.zone_owner(owner).unwrap().id, owner);
    assert_eq!(
        td.aliases_of(owner).map(|a| a.id).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(td.zones().count(), 1);
    assert_eq!(pool_free(&h), free_after_zone, "aliases take no pages");
    let td = td1(&mut h);
    check_td(td).unwrap();

    // Collisions: an alias id, a live owner id, the owner naming itself.
    assert_eq!(alias(td, 0, 1, owner), Err(Error::AlreadyRegistered));
    assert_eq!(alias(td, 0, owner, owner), Err(Error::AlreadyRegistered));
    assert_eq!(
        access(td, 0, 2, 1),
        Err(Error::AlreadyRegistered),
        "owner over an alias"
    );
    // An alias is not an owner: no alias of it, no calls through it.
    assert_eq!(alias(td, 0, 3, 1), Err(Error::AliasEntry));
    assert_eq!(enter(td, 0, 1), Err(Error::AliasEntry));
    assert_eq!(resume(td, 0, 1, 0), Err(Error::AliasEntry));
    assert_eq!(
        call(td, 0, Leaf::AgentFault, [1, 14, 0, 0]),
        Err(Error::AliasEntry)
    );
    // Calls enter through the owner; an alias's query shows the zone's
    // counters and its own state.
    enter(td, 0, owner).unwrap();
    resume(td, 0, owner, 0).unwrap();
    assert_eq!(
        call(td, 0, Leaf::AgentQuery, [1, 0, 0, 0]),
        Ok([HostAgentState::Idle as u64, 1, 0])
    );

    // Admin disable / enable of an alias: state only, the zone stays, even
    // while the owner runs (the admin agent disables a sibling mid-call).
    let z = td.agent(owner).unwrap().zone.unwrap();
    enter(td, 0, owner).unwrap();
    assert_eq!(disable(td, 1, 2), Ok([0, 0, 0]));
    assert_eq!(td.agent(2).unwrap().state, AgentState::Disabled);
    assert_eq!(disable(td, 1, 2), Err(Error::BadState));
    assert_eq!(
        call(td, 0, Leaf::AgentQuery, [2, 0, 0, 0]),
        Ok([HostAgentState::Disabled as u64, 2, 0])
    );
    assert_eq!(td.agent(owner).unwrap().zone, Some(z));
    check_td(td).unwrap();
    assert_eq!(
        access(td, 0, 2, 1),
        Err(Error::AlreadyRegistered),
        "disabled alias"
    );
    assert_eq!(call(td, 1, Leaf::AgentEnable, [2, 0, 0, 0]), Ok([0, 0, 0]));
    assert_eq!(td.agent(2).unwrap().state, AgentState::Idle);
    assert_eq!(
        call(td, 1, Leaf::AgentEnable, [2, 0, 0, 0]),
        Err(Error::BadState)
    );
    disable(td, 1, 2).unwrap();
    resume(td, 0, owner, 0).unwrap();
    assert_eq!(td.agent(owner).unwrap().zone, Some(z));

    // Releasing the owner removes its aliases (their ids become free).
    disable(td, 0, owner).unwrap();
    assert!(td.agent(1).is_none() && td.agent(2).is_none());
    assert_eq!(td.agent(owner).unwrap().state, AgentState::Disabled);
    assert_eq!(
        alias(td, 0, 1, owner),
        Err(Error::Disabled),
        "released owner"
    );
    check_td(td).unwrap();
    // A released owner's row may become an alias of another owner.
    access(td, 0, 9, 1).unwrap();
    assert_eq!(alias(td, 0, owner, 9), Ok([0, 0, 0]));
    assert_eq!(alias(td, 0, 1, 9), Ok([0, 0, 0]));
    check_td(td).unwrap();

    let got: Vec<_> = sub
        .recv()
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.agent, e.arg0, e.arg1))
        .collect();
    let zone_events = |id| {
        got.iter()
            .filter(move |e| e.1 == id)
            .map(|e| (e.0, e.2, e.3))
    };
    assert_eq!(
        zone_events(1).collect::<Vec<_>>(),
        [
            (EventKind::Alias, owner as u64, 0),
            (EventKind::Disable, DISABLE_WITH_OWNER, owner as u64),
            (EventKind::Alias, 9, 0),
        ]
    );
    assert_eq!(
        zone_events(2).collect::<Vec<_>>(),
        [
            (EventKind::Alias, owner as u64, 0),
            (EventKind::Disable, 0, 0),
            (EventKind::Enable, 0, 0),
            (EventKind::Disable, 0, 0),
        ],
        "an alias disabled before its owner's release gets no second event"
    );
}

#[test]
fn aliases_are_per_td_and_counted_in_the_table() {
    let mut h = Host::with_config(
        POOL,
        TdConfig {
            max_zone_pages: 16,
            max_agents: 3,
        },
    )
    .unwrap();
    h.create_td(1, SeptModel::new()).unwrap();
    h.create_td(2, SeptModel::new()).unwrap();
    access(h.td_mut(1).unwrap(), 0, 100, 1).unwrap();
    // TD 2 cannot hang an alias on TD 1's zone: unknown there.
    let td2 = h.td_mut(2).unwrap();
    assert_eq!(alias(td2, 0, 1, 100), Err(Error::UnknownAgent));
    assert!(td2.agent(1).is_none());
    let td = h.td_mut(1).unwrap();
    alias(td, 0, 1, 100).unwrap();
    alias(td, 0, 2, 100).unwrap();
    assert_eq!(alias(td, 0, 3, 100), Err(Error::TableFull));
    // Teardown: every alias and the owner end with a disable event; nothing
    // stays behind.
    let sub = h.notifier().subscribe(16).unwrap();
    h.destroy_td(1).unwrap();
    let mut ended: Vec<u32> = sub.recv().unwrap().into_iter().map(|e| e.agent).collect();
    ended.sort_unstable();
    assert_eq!(ended, [1, 2, 100]);
}
