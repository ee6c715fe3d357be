//! Misbehaving agents (examples/faulty) through `tetd-pack run`: each
//! failure is reported with the right status and details, and the runner
//! survives to make a following successful call in the same process.

mod run_util;

use run_util::*;

/// Run the failing agent `id`, then the well-behaved one; returns the JSON.
fn fail_then_ok(id: u32) -> serde_json::Value {
    let img = example("faulty");
    let o = run(&[
        &img,
        "--call",
        &format!("{id}:text:boom"),
        "--call",
        "24:text:after",
        "--timeout-ms",
        "300",
        "--json",
        "--info",
    ]);
    o.expect_code(1);
    let j = o.json();
    let after = &j["calls"][1];
    assert_eq!(after["status"], "ok", "{after}");
    assert_eq!(unhex(after["output"].as_str().unwrap()), b"fine: after");
    j
}

#[test]
fn panic_is_reported_as_panicked() {
    let j = fail_then_ok(20);
    let c = &j["calls"][0];
    assert_eq!(c["status"], "Panicked");
    assert_eq!(c["code"], 4);
    assert!(c["fault"].is_null());
    let logs = j["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["agent"] == 20
            && l["message"]
                .as_str()
                .unwrap()
                .contains("deliberate panic after 4 input bytes")),
        "{logs:?}"
    );
}

#[test]
fn write_to_code_is_reported_as_a_fault() {
    let j = fail_then_ok(21);
    let c = &j["calls"][0];
    assert_eq!(c["status"], "Fault");
    assert_eq!(c["code"], 5);
    let f = &c["fault"];
    assert_eq!(f["vector"], 14, "page fault: {f}");
    assert_eq!(f["error_code"].as_u64().unwrap() & 2, 2, "a write: {f}");
    assert_eq!(f["region"], "segment");
    assert_eq!(f["stack_overflow"], false);
    // The written address is the agent's own handler, in its RX segment.
    let base = u64::from_str_radix(
        j["images"][0]["zone_base"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let addr =
        u64::from_str_radix(f["addr"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let inspect = tetd_pack(&["inspect", &example("faulty"), "--json"]);
    let ij: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let in_rx = ij["segments"].as_array().unwrap().iter().any(|s| {
        let v = base + s["vaddr"].as_u64().unwrap();
        s["execute"] == true && addr >= v && addr < v + s["mem_size"].as_u64().unwrap()
    });
    assert!(in_rx, "fault address {addr:#x} not in the RX segment: {ij}");
    assert!(f["rip_offset"].as_str().unwrap().starts_with("0x"));
    let info = j["info"].as_str().unwrap();
    assert!(info.contains("last fault: vector 14"), "{info}");
}

#[test]
fn endless_loop_is_stopped_by_the_watchdog() {
    let t = std::time::Instant::now();
    let j = fail_then_ok(22);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    let c = &j["calls"][0];
    assert_eq!(c["status"], "Timeout");
    assert_eq!(c["code"], 6);
    assert!(c["elapsed_ns"].as_u64().unwrap() >= 300_000_000);
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    let j = fail_then_ok(23);
    let c = &j["calls"][0];
    assert_eq!(c["status"], "StackOverflow");
    assert_eq!(c["code"], 16);
    assert_eq!(c["fault"]["region"], "stack-guard");
    assert_eq!(c["fault"]["stack_overflow"], true);
}

#[test]
fn all_failures_in_one_process_then_success() {
    let img = example("faulty");
    let mut s = Session::start(&[&img], &["--timeout-ms", "200"]);
    for round in 0..2 {
        assert_eq!(s.call("20:text:x"), Err("Panicked".into()), "round {round}");
        assert_eq!(s.call("24:text:1"), Ok(b"fine: 1".to_vec()));
        assert_eq!(s.call("21"), Err("Fault".into()));
        assert_eq!(s.call("24:text:2"), Ok(b"fine: 2".to_vec()));
        assert_eq!(s.call("22"), Err("Timeout".into()));
        assert_eq!(s.call("24:text:3"), Ok(b"fine: 3".to_vec()));
        assert_eq!(s.call("23"), Err("StackOverflow".into()));
        assert_eq!(s.call("24:text:4"), Ok(b"fine: 4".to_vec()));
    }
    let (code, stderr) = s.finish();
    assert_eq!(code, 1);
    assert_eq!(stderr.matches("agent timed out").count(), 2, "{stderr}");
}

#[test]
fn text_mode_error_messages() {
    let img = example("faulty");
    let o = run(&[&img, "--agent", "23"]);
    o.expect_code(1);
    assert!(
        o.stderr
            .contains("agent 23: agent overflowed its stack (E16)"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("(stack-guard)"), "{}", o.stderr);
    let o = run(&[&img, "--agent", "21"]);
    assert!(o.stderr.contains("vector 14"), "{}", o.stderr);
    assert!(
        o.stderr.contains("instruction at image offset"),
        "{}",
        o.stderr
    );
}
