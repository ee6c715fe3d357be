//! `tetd-pack run` with the echo example: the acceptance command, every
//! input and output form, multiple calls, policies and error messages.

mod run_util;

use run_util::*;

#[test]
fn acceptance_hex_input_prints_input_back() {
    let echo = example("echo");
    let o = run(&[&echo, "--agent", "1", "--hex", "68656c6c6f"]);
    o.expect_code(0);
    assert_eq!(o.stdout, b"hello");
}

#[test]
fn input_forms() {
    let echo = example("echo");
    let o = run(&[&echo, "--agent", "1", "--input", "héllo wörld"]);
    assert_eq!(o.expect_code(0).stdout, "héllo wörld".as_bytes());
    let bin: Vec<u8> = (0..=255u8).collect();
    let f = scratch().join("bin.in");
    std::fs::write(&f, &bin).unwrap();
    let o = run(&[&echo, "--agent", "1", "--input-file", f.to_str().unwrap()]);
    assert_eq!(o.expect_code(0).stdout, bin);
    let o = tetd_pack_stdin(
        &["run", &echo, "--agent", "1", "--input-file", "-"],
        Some(b"from stdin"),
    );
    assert_eq!(o.expect_code(0).stdout, b"from stdin");
    let o = run(&[&echo, "--agent", "1"]);
    assert!(o.expect_code(0).stdout.is_empty());
    let o = run(&[&echo, "--agent", "1", "--hex", "00ff10", "--hex-output"]);
    assert_eq!(o.expect_code(0).stdout_str(), "00ff10\n");
}

#[test]
fn several_calls_in_order_and_script() {
    let echo = example("echo");
    let o = run(&[
        &echo,
        "--call",
        "1:text:one",
        "--call",
        "1:hex:0002",
        "--call",
        "1",
        "--call",
        "1:text:a:b c",
        "--hex-output",
    ]);
    o.expect_code(0);
    assert_eq!(
        o.hex_lines(),
        vec![b"one".to_vec(), vec![0, 2], vec![], b"a:b c".to_vec()]
    );
    let script = scratch().join("calls.txt");
    std::fs::write(
        &script,
        "# two calls\n1:text:first line with spaces\n\n  1:hex:ff\n",
    )
    .unwrap();
    let o = run(&[&echo, "--script", script.to_str().unwrap(), "--hex-output"]);
    o.expect_code(0);
    assert_eq!(
        o.hex_lines(),
        vec![b"first line with spaces".to_vec(), vec![0xff]]
    );
    // A bad line is reported with file and line number.
    std::fs::write(&script, "1:text:ok\nx:text:bad\n").unwrap();
    let o = run(&[&echo, "--script", script.to_str().unwrap()]);
    o.expect_code(1);
    assert!(o.stderr.contains("calls.txt:2"), "{}", o.stderr);
}

#[test]
fn json_result() {
    let echo = example("echo");
    let o = run(&[&echo, "--call", "1:text:hi", "--call", "9:text:x", "--json"]);
    o.expect_code(1);
    let j = o.json();
    assert_eq!(j["schema"], "tetd-run/1");
    assert_eq!(j["ok"], false);
    let c = &j["calls"][0];
    assert_eq!(c["agent"], 1);
    assert_eq!(c["status"], "ok");
    assert_eq!(c["code"], 0);
    assert_eq!(c["output"], hex(b"hi"));
    assert_eq!(c["output_len"], 2);
    assert_eq!(c["ran"], true);
    assert_eq!(c["mode"], "exclusive");
    assert!(c["elapsed_ns"].as_u64().unwrap() > 0);
    assert!(c["fault"].is_null());
    let c = &j["calls"][1];
    assert_eq!(c["status"], "NotFound");
    assert_eq!(c["code"], 8);
    assert_eq!(c["ran"], false);
    let img = &j["images"][0];
    assert_eq!(img["package"], "echo");
    assert_eq!(img["measurement"], measurement(&echo));
    assert_eq!(img["agents"], serde_json::json!([1]));
    assert!(img["signer"].is_null());
    assert!(img["zone_base"].as_str().unwrap().starts_with("0x"));
}

#[test]
fn info_text() {
    let echo = example("echo");
    let o = run(&[&echo, "--call", "1:text:a", "--call", "1:text:b", "--info"]);
    o.expect_code(0);
    let text = o.stdout_str();
    assert!(text.starts_with("ab"), "{text}");
    assert!(text.contains("TETD-G"), "{text}");
    let agents = text.split_once("\nagents:\n").unwrap().1;
    let line = agents
        .lines()
        .find(|l| l.trim_start().starts_with("1 ") && l.contains("echo"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "echo");
    assert_eq!(cols[3], "exclusive");
    assert_eq!(cols[5], "enabled");
    assert_eq!(cols[6], "2", "calls: {line}");
    assert_eq!(cols[10], "ok");
    assert!(text.contains(&measurement(&echo)));
}

#[test]
fn errors_are_clear() {
    let echo = example("echo");
    let o = run(&[&echo, "--agent", "1", "--hex", "6g"]);
    o.expect_code(1);
    assert!(o.stderr.contains("position 2"), "{}", o.stderr);
    let o = run(&[&echo, "--agent", "7"]);
    o.expect_code(1);
    assert!(o.stderr.contains("agent 7: not found"), "{}", o.stderr);
    let o = run(&[&echo, &echo, "--agent", "1"]);
    o.expect_code(1);
    assert!(
        o.stderr.contains("agent id 1 is already registered"),
        "{}",
        o.stderr
    );
    let o = run(&[&echo]);
    o.expect_code(1);
    assert!(o.stderr.contains("nothing to do"), "{}", o.stderr);
    let o = run(&[&echo, "--agent", "1", "--call", "1"]);
    assert_eq!(o.code, 2, "usage error: {}", o.stderr);
    // A damaged image names the file and what is wrong.
    let mut bytes = std::fs::read(&echo).unwrap();
    let bad = scratch().join("truncated.tetd");
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&[bad.to_str().unwrap(), "--agent", "1"]);
    o.expect_code(1);
    assert!(o.stderr.contains("truncated.tetd"), "{}", o.stderr);
    assert!(o.stderr.contains("truncated"), "{}", o.stderr);
    let mut bytes = std::fs::read(&echo).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    let bad = scratch().join("flipped.tetd");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&[bad.to_str().unwrap(), "--agent", "1"]);
    o.expect_code(1);
    assert!(o.stderr.contains("measurement mismatch"), "{}", o.stderr);
    // Input larger than the agent's max_input (64 KiB).
    let big = scratch().join("big.in");
    std::fs::write(&big, vec![1u8; 65537]).unwrap();
    let o = run(&[&echo, "--agent", "1", "--input-file", big.to_str().unwrap()]);
    o.expect_code(1);
    assert!(o.stderr.contains("max_input"), "{}", o.stderr);
}

#[test]
fn signature_policies() {
    let echo = example("echo");
    let k = key(1);
    let other = key(2);
    let signed = sign(&echo, &k, "k1");
    let by_other = sign(&echo, &other, "k2");
    let list = allow_list(&[(&k, false)], "echo.allow");
    let o = run(&[&signed, "--allow", &list, "--agent", "1", "--input", "s"]);
    assert_eq!(o.expect_code(0).stdout, b"s");
    let o = run(&[&by_other, "--allow", &list, "--agent", "1"]);
    o.expect_code(1);
    assert!(o.stderr.contains("not in the allow-list"), "{}", o.stderr);
    let o = run(&[&echo, "--allow", &list, "--agent", "1"]);
    o.expect_code(1);
    assert!(o.stderr.contains("not signed"), "{}", o.stderr);
    let o = run(&[&echo, "--allow", &list, "--allow-unsigned", "--agent", "1"]);
    o.expect_code(0);
    let o = run(&[&echo, "--require-signed", "--agent", "1"]);
    o.expect_code(1);
    let o = run(&[&by_other, "--require-signed", "--agent", "1", "--json"]);
    o.expect_code(0);
    let signer = &o.json()["images"][0]["signer"];
    assert_eq!(signer["trusted"], false);
    // A signature that does not verify is refused under every policy.
    let mut bytes = std::fs::read(&signed).unwrap();
    let n = bytes.len();
    bytes[n - 80] ^= 1;
    let bad = scratch().join("badsig.tetd");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&[bad.to_str().unwrap(), "--agent", "1"]);
    o.expect_code(1);
    assert!(
        o.stderr.contains("signature does not verify"),
        "{}",
        o.stderr
    );
}
