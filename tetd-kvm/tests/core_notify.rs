//! Agent-call notifications: the same events arrive through a plain eventfd
//! read and through an io_uring READ completion.

mod core_common;

use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use core_common::*;
use tetd::abi::{Error, Leaf};
use tetd_kvm::notify::{Event, EventKind, Notifier, UringConsumer};
use tetd_kvm::seam_model::SeptModel;
use tetd_kvm::Host;

/// Collect `n` events from the ring (bounded in time).
fn uring_collect(c: &mut UringConsumer, n: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "io_uring: only {} of {n} events",
            got.len()
        );
        got.extend(c.wait_timeout(Duration::from_millis(500)).unwrap());
    }
    got
}

#[test]
fn eventfd_and_io_uring_see_the_same_events() {
    let mut h: Host = Host::new(64).unwrap();
    let plain = h.notifier().subscribe(1024).unwrap();
    let mut ring = UringConsumer::new(h.notifier().subscribe(1024).unwrap(), 8).unwrap();
    assert_ne!(plain.as_raw_fd(), ring.subscription().as_raw_fd());

    let td = h.create_td(4, SeptModel::new()).unwrap();
    let [gpa, ..] = access(td, 1, 3, 2).unwrap();
    enter(td, 1, 3).unwrap();
    call(td, 1, Leaf::AgentFault, [3, 14, 0xbad0, 0]).unwrap();
    resume(td, 1, 3, Error::Fault as u64).unwrap();
    assert_eq!(td.report_violation(2, gpa + 8, true), Some(3));
    disable(td, 1, 3).unwrap();
    call(td, 1, Leaf::AgentEnable, [3, 0, 0, 0]).unwrap();
    // Failed leaves notify nothing.
    assert!(enter(td, 1, 99).is_err());
    assert!(resume(td, 1, 3, 0).is_err());

    let expect: Vec<(EventKind, u32, u64, u64)> = vec![
        (EventKind::Access, 1, gpa, 2),
        (EventKind::Enter, 1, 1, 0),
        (EventKind::Fault, 1, 14, 0xbad0),
        (EventKind::Resume, 1, Error::Fault as u64, 0),
        (EventKind::Violation, 2, gpa + 8, 1),
        (EventKind::Disable, 1, 0, 0),
    ];
    let a = plain.recv().unwrap();
    assert_eq!(a.len(), 7);
    let b = uring_collect(&mut ring, 7);
    assert_eq!(a, b, "both consumers see identical events");
    for (i, (ev, (kind, vcpu, a0, a1))) in a.iter().zip(&expect).enumerate() {
        assert_eq!(ev.seq, i as u64 + 1);
        assert_eq!((ev.td, ev.agent), (4, 3));
        assert_eq!(
            (ev.kind, ev.vcpu, ev.arg0, ev.arg1),
            (*kind, *vcpu, *a0, *a1),
            "event {i}"
        );
    }
    assert_eq!(a[6].kind, EventKind::Enable);
    // Nothing more is pending on either path.
    assert!(plain.recv().unwrap().is_empty());
    assert!(ring
        .wait_timeout(Duration::from_millis(20))
        .unwrap()
        .is_empty());
}

#[test]
fn io_uring_wakes_up_on_an_event_from_another_thread() {
    let n = std::sync::Arc::new(Notifier::new());
    let mut ring = UringConsumer::new(n.subscribe(16).unwrap(), 4).unwrap();
    let n2 = n.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        n2.publish(Event {
            seq: 0,
            td: 1,
            kind: EventKind::Enter,
            agent: 2,
            vcpu: 0,
            arg0: 1,
            arg1: 0,
        });
    });
    let got = ring.wait().unwrap(); // blocks in io_uring_enter until the READ completes
    t.join().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].kind, got[0].agent, got[0].seq),
        (EventKind::Enter, 2, 1)
    );
}

#[test]
fn blocking_eventfd_consumer() {
    let n = std::sync::Arc::new(Notifier::new());
    let sub = n.subscribe(16).unwrap();
    assert!(sub
        .recv_timeout(Duration::from_millis(10))
        .unwrap()
        .is_empty());
    let n2 = n.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        for i in 0..3 {
            n2.publish(Event {
                seq: 0,
                td: 1,
                kind: EventKind::Resume,
                agent: i,
                vcpu: 0,
                arg0: 0,
                arg1: 0,
            });
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(sub.recv_timeout(Duration::from_millis(500)).unwrap());
    }
    t.join().unwrap();
    assert_eq!(
        got.iter().map(|e| e.agent).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[test]
fn overflow_drops_oldest_and_counts() {
    let n = Notifier::new();
    let sub = n.subscribe(4).unwrap();
    for i in 0..10 {
        n.publish(Event {
            seq: 0,
            td: 1,
            kind: EventKind::Enter,
            agent: i,
            vcpu: 0,
            arg0: 0,
            arg1: 0,
        });
    }
    assert_eq!(sub.dropped(), 6);
    let got = sub.recv().unwrap();
    assert_eq!(
        got.iter().map(|e| e.agent).collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    assert_eq!(n.published(), 10);
}

#[test]
fn dropped_subscriptions_are_pruned() {
    let n = Notifier::new();
    let keep = n.subscribe(4).unwrap();
    {
        let _gone = n.subscribe(4).unwrap();
    }
    n.publish(Event {
        seq: 0,
        td: 1,
        kind: EventKind::Disable,
        agent: 1,
        vcpu: 0,
        arg0: 0,
        arg1: 0,
    });
    assert_eq!(keep.recv().unwrap().len(), 1);
    assert!(format!("{n:?}").contains("subscriptions: 1"));
}
