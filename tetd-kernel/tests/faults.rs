//! Misbehaving agents on the simulator: every failure ends the call with the
//! right error, the fault details are reported, and the runner (and the
//! same registry) keeps working.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tetd::abi::Error;
use tetd_kernel::layout::RegionKind;
use tetd_kernel::CallOptions;

fn with_timeout(ms: u64) -> CallOptions {
    CallOptions {
        mode: None,
        timeout_ns: ms * 1_000_000,
    }
}

/// After a failure, the registry still runs a good call.
fn still_works(reg: &mut Reg) {
    let (r, out) = call(reg, ids::ECHO, b"still alive");
    assert_eq!(r.status, Ok(()));
    assert_eq!(out, b"still alive");
}

#[test]
fn panic_aborts_the_call_with_panicked() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, out) = call(&mut reg, ids::PANIC, b"");
    assert_eq!(r.status, Err(Error::Panicked));
    assert!(r.ran && r.fault.is_none() && out.is_empty());
    still_works(&mut reg);
    // Again: the abort path leaves nothing behind.
    assert_eq!(
        call(&mut reg, ids::PANIC, b"").0.status,
        Err(Error::Panicked)
    );
    still_works(&mut reg);
    assert_eq!(reg.agent(ids::PANIC).unwrap().stats().failures, 2);
}

#[test]
fn write_to_own_code_is_a_fault() {
    let mut reg = registry();
    let img = reg.load(&image(), &dev_options()).unwrap();
    let base = reg.image(img).unwrap().zone().base;
    let entry = reg.agent(ids::WRITE_CODE).unwrap().entry_offset();
    let (r, _) = call(&mut reg, ids::WRITE_CODE, b"");
    assert_eq!(r.status, Err(Error::Fault));
    let f = r.fault.expect("fault details");
    assert_eq!(f.info.vector, 14, "page fault");
    assert_eq!(f.info.error_code & 0x2, 0x2, "write access");
    assert_eq!(f.info.addr, base + entry, "the written byte is the entry");
    assert_eq!(f.addr_region, Some(RegionKind::Segment(0)));
    let rip = f.rip_offset.expect("rip inside the image");
    assert!(
        rip > entry && rip < entry + 16,
        "rip {rip:#x}, entry {entry:#x}"
    );
    assert!(!f.stack_overflow);
    // The code is unchanged (the write never happened).
    let code = reg.image(img).unwrap().zone().view as *const u8;
    // SAFETY: the code page is mapped readable.
    let first = unsafe { *code.add(entry as usize) };
    assert_ne!(first, 0x90);
    still_works(&mut reg);
    let s = reg.agent(ids::WRITE_CODE).unwrap().stats();
    assert_eq!((s.calls, s.faults, s.failures), (1, 1, 1));
    assert_eq!(s.last_fault, Some(f));
}

#[test]
fn hang_is_stopped_by_the_watchdog() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let t = Instant::now();
    let (r, _) = call_with(&mut reg, ids::HANG, b"", &with_timeout(100));
    let took = t.elapsed();
    assert_eq!(r.status, Err(Error::Timeout));
    assert!(
        took >= Duration::from_millis(100),
        "stopped early: {took:?}"
    );
    assert!(r.elapsed_ns >= 100_000_000);
    still_works(&mut reg);
    assert_eq!(reg.agent(ids::HANG).unwrap().stats().timeouts, 1);
    // A call with a watchdog that returns in time is not affected, and a
    // late tick does not hit the next call.
    for _ in 0..20 {
        let (r, out) = call_with(&mut reg, ids::ECHO, b"quick", &with_timeout(1));
        assert_eq!(r.status, Ok(()));
        assert_eq!(out, b"quick");
    }
}

#[test]
fn loop_calling_services_is_stopped_too() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, _) = call_with(&mut reg, ids::TIME_LOOP, b"", &with_timeout(50));
    assert_eq!(r.status, Err(Error::Timeout));
    still_works(&mut reg);
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    let mut reg = registry();
    let img = reg.load(&image(), &dev_options()).unwrap();
    let l = *reg.image(img).unwrap().layout();
    let (r, _) = call(&mut reg, ids::STACK_OVERFLOW, b"");
    assert_eq!(r.status, Err(Error::StackOverflow));
    let f = r.fault.unwrap();
    assert!(f.stack_overflow);
    assert_eq!(f.addr_region, Some(RegionKind::StackGuard));
    assert_eq!(f.addr_offset, Some(l.stack.offset - 8));
    still_works(&mut reg);
    // Twice, to show the alternate signal stack is reusable.
    assert_eq!(
        call(&mut reg, ids::STACK_OVERFLOW, b"").0.status,
        Err(Error::StackOverflow)
    );
    still_works(&mut reg);
}

#[test]
fn invalid_opcode_and_divide_error() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, _) = call(&mut reg, ids::UD2, b"");
    assert_eq!(r.status, Err(Error::Fault));
    assert_eq!(r.fault.unwrap().info.vector, 6, "#UD");
    still_works(&mut reg);
    let (r, _) = call(&mut reg, ids::DIV0, b"");
    assert_eq!(r.status, Err(Error::Fault));
    assert_eq!(r.fault.unwrap().info.vector, 0, "#DE");
    still_works(&mut reg);
}

#[test]
fn abort_with_a_forged_context_traps() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, _) = call(&mut reg, ids::BOGUS_ABORT, b"");
    assert_eq!(r.status, Err(Error::Fault));
    let f = r.fault.unwrap();
    assert_eq!(f.info.vector, 6);
    assert_eq!(f.rip_offset, None, "trapped in the runtime's abort service");
    still_works(&mut reg);
}

#[test]
fn faults_on_many_threads_at_once() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut reg = registry();
                let spec = Spec {
                    id_offset: 0,
                    ..Spec::default()
                };
                reg.load(&build_image(&spec), &dev_options()).unwrap();
                for i in 0..10 {
                    let id =
                        [ids::WRITE_CODE, ids::STACK_OVERFLOW, ids::PANIC, ids::UD2][(t + i) % 4];
                    assert!(call(&mut reg, id, b"").0.status.is_err());
                    let msg = format!("t{t} i{i}");
                    assert_eq!(call(&mut reg, ids::ECHO, msg.as_bytes()).1, msg.as_bytes());
                }
                let (r, _) = call_with(&mut reg, ids::HANG, b"", &with_timeout(30));
                assert_eq!(r.status, Err(Error::Timeout));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
