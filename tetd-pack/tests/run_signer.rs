//! The signer example through `tetd-pack run`: the key is made inside the
//! agent, signatures verify on the host with an independent implementation.

mod run_util;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use run_util::*;

fn pubkey(out: &[u8]) -> VerifyingKey {
    VerifyingKey::from_bytes(out.try_into().expect("32-byte public key")).unwrap()
}

#[test]
fn signatures_verify_with_the_returned_public_key() {
    let signer = example("signer");
    let msg_bin: Vec<u8> = (0..200u8).collect();
    let o = run(&[
        &signer,
        "--call",
        "3:text:pubkey",
        "--call",
        "3:text:sign hello world",
        "--call",
        &format!("3:hex:{}{}", hex(b"sign "), hex(&msg_bin)),
        "--call",
        "3:text:sign ",
        "--call",
        "3:text:sign hello world",
        "--call",
        "3:text:pubkey",
        "--json",
    ]);
    o.expect_code(0);
    let j = o.json();
    let out = |i: usize| unhex(j["calls"][i]["output"].as_str().unwrap());
    let pk = pubkey(&out(0));
    let verify = |i: usize, msg: &[u8]| {
        let sig = Signature::from_slice(&out(i)).expect("64-byte signature");
        pk.verify(msg, &sig)
    };
    verify(1, b"hello world").expect("signature of 'hello world'");
    verify(2, &msg_bin).expect("signature of binary data");
    verify(3, b"").expect("signature of the empty message");
    assert!(verify(1, b"hello worle").is_err(), "wrong message verifies");
    assert_eq!(out(1), out(4), "Ed25519 signatures are deterministic");
    assert_eq!(out(0), out(5), "the key is kept across calls");
    // The key was generated once, inside the agent.
    let logs = j["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0]["message"].as_str().unwrap().contains("generated"));
}

#[test]
fn each_load_gets_its_own_key_and_bad_ops_fail() {
    let signer = example("signer");
    let a = run(&[&signer, "--agent", "3", "--input", "pubkey"]);
    let b = run(&[&signer, "--agent", "3", "--input", "pubkey"]);
    a.expect_code(0);
    b.expect_code(0);
    assert_eq!(a.stdout.len(), 32);
    assert_ne!(a.stdout, b.stdout, "keys come from the random service");
    for bad in ["privkey", "seed", "", "pubkey now", "SIGN x"] {
        let o = run(&[&signer, "--agent", "3", "--input", bad, "--json"]);
        o.expect_code(1);
        let c = &o.json()["calls"][0];
        assert_eq!(c["status"], "InvalidInput", "{bad:?}");
        assert_eq!(c["output"], "", "{bad:?}");
    }
}
