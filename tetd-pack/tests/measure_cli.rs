//! `tetd-pack measure`: the RTMR value recomputed from image files matches
//! an independent SHA-384 computation and the host's RTMR model
//! (`tetd_kvm::rtmr::Rtmrs`, what TETD-H keeps for a TD) fed with the same
//! extensions in load order.

mod run_util;

use run_util::*;
use sha2::{Digest, Sha384};

fn measurement_bytes(image: &str) -> [u8; 48] {
    unhex(&measurement(image)).try_into().unwrap()
}

fn sha384_extend(old: &[u8; 48], m: &[u8; 48]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(old);
    h.update(m);
    h.finalize().into()
}

#[test]
fn replay_matches_independent_computation_and_the_host_model() {
    let a = example("echo");
    let b = example("secure-echo");
    let (ma, mb) = (measurement_bytes(&a), measurement_bytes(&b));
    let o = tetd_pack(&["measure", &a, &b, "--json"]);
    o.expect_code(0);
    let j = o.json();
    assert_eq!(j["schema"], "tetd-measure/1");
    assert_eq!(j["rtmr_index"], tetd::abi::AGENT_RTMR_INDEX);
    let step1 = sha384_extend(&[0; 48], &ma);
    let step2 = sha384_extend(&step1, &mb);
    assert_eq!(j["images"][0]["measurement"], hex(&ma));
    assert_eq!(j["images"][0]["rtmr_after"], hex(&step1));
    assert_eq!(j["images"][1]["measurement"], hex(&mb));
    assert_eq!(j["rtmr"], hex(&step2));
    // TETD-H's register after the guest's two RTMR_EXTENDs.
    let mut host = tetd_kvm::rtmr::Rtmrs::new();
    host.extend(tetd::abi::AGENT_RTMR_INDEX, &ma).unwrap();
    host.extend(tetd::abi::AGENT_RTMR_INDEX, &mb).unwrap();
    assert_eq!(
        host.get(tetd::abi::AGENT_RTMR_INDEX as usize).unwrap(),
        &step2
    );
    // Text output: one line per image, then the register.
    let o = tetd_pack(&["measure", &a, &b]);
    o.expect_code(0);
    let text = o.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with(&format!("{}  ", hex(&ma))), "{text}");
    assert!(lines[0].ends_with("(echo)"), "{text}");
    assert_eq!(lines[2], format!("RTMR3 {}", hex(&step2)));
}

#[test]
fn order_initial_value_and_index() {
    let a = example("echo");
    let b = example("secure-echo");
    let rtmr = |args: &[&str]| -> String {
        let mut v = vec!["measure"];
        v.extend_from_slice(args);
        v.push("--json");
        let o = tetd_pack(&v);
        o.expect_code(0);
        o.json()["rtmr"].as_str().unwrap().to_string()
    };
    let ab = rtmr(&[&a, &b]);
    assert_ne!(ab, rtmr(&[&b, &a]), "load order matters");
    // Continuing from the value after `a` gives the same as `a b`.
    let after_a = rtmr(&[&a]);
    assert_eq!(rtmr(&[&b, "--initial", &after_a]), ab);
    // The index is only a label.
    assert_eq!(rtmr(&[&a, &b, "--rtmr-index", "2"]), ab);
    let o = tetd_pack(&["measure", &a, "--rtmr-index", "4"]);
    o.expect_code(1);
    assert!(o.stderr.contains("RTMR0..RTMR3"), "{}", o.stderr);
    let o = tetd_pack(&["measure", &a, "--initial", "abcd"]);
    o.expect_code(1);
    assert!(o.stderr.contains("96 hex digits"), "{}", o.stderr);
}

#[test]
fn a_file_whose_content_does_not_match_its_measurement_is_rejected() {
    let a = example("echo");
    let mut bytes = std::fs::read(&a).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = scratch().join("echo-corrupt.tetd");
    std::fs::write(&bad, &bytes).unwrap();
    let bad = bad.to_str().unwrap();
    let o = tetd_pack(&["measure", &a, bad]);
    o.expect_code(1);
    assert!(o.stderr.contains("echo-corrupt.tetd"), "{}", o.stderr);
    assert!(o.stdout.is_empty(), "nothing printed for a partial list");
    let o = tetd_pack(&["measure", "/nonexistent.tetd"]);
    o.expect_code(1);
    assert!(o.stderr.contains("/nonexistent.tetd"), "{}", o.stderr);
}
