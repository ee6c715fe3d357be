//! Entry points registered at run time (examples/registrar) and the admin
//! agent managing them, through `tetd-pack run`: ids are checked for
//! collisions with every registered id, the per-image limit holds, the admin
//! agent lists, disables, re-enables and measures dynamic and encrypted
//! agents, and an encrypted agent can register an encrypted entry.

mod run_util;

use run_util::*;

#[test]
fn register_call_and_collide() {
    let reg = example("registrar");
    let echo = example("echo");
    let mut s = Session::start(&[&reg, &echo], &[]);
    assert_eq!(s.call("40:text:abc"), Err("NotFound".into()), "not yet");
    assert_eq!(s.call("30:text:upper 40"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("40:text:Hello, World"), Ok(b"HELLO, WORLD".to_vec()));
    assert_eq!(s.call("30:text:reverse 41"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("41:text:abc"), Ok(b"cba".to_vec()));
    // Collisions: a dynamic id, the registrar's own id, another image's
    // static id, the image's other static id.
    for id in [40, 30, 1, 31] {
        assert_eq!(
            s.call(&format!("30:text:upper {id}")),
            Err("DuplicateAgentId".into()),
            "id {id}"
        );
    }
    // Id 0 is reserved; unknown kinds are the agent's own error.
    assert_eq!(s.call("30:text:upper 0"), Err("InvalidInput".into()));
    assert_eq!(s.call("30:text:lower 50"), Err("InvalidInput".into()));
    // The registered entries still work; echo is untouched.
    assert_eq!(s.call("40:text:x"), Ok(b"X".to_vec()));
    assert_eq!(s.call("1:text:x"), Ok(b"x".to_vec()));
    let (code, _) = s.finish();
    assert_eq!(code, 1);
}

#[test]
fn per_image_limit() {
    let reg = example("registrar");
    let mut s = Session::start(&[&reg], &[]);
    // tetd_kernel::MAX_DYNAMIC_PER_IMAGE entries, then TableFull.
    let max = tetd_kernel::MAX_DYNAMIC_PER_IMAGE;
    for i in 0..max {
        assert_eq!(
            s.call(&format!("30:text:upper {}", 100 + i)),
            Ok(b"ok".to_vec())
        );
    }
    assert_eq!(
        s.call(&format!("30:text:upper {}", 100 + max)),
        Err("TableFull".into())
    );
    assert_eq!(
        s.call(&format!("{}:text:last", 100 + max - 1)),
        Ok(b"LAST".to_vec())
    );
    let _ = s.finish();
}

#[test]
fn admin_lists_disables_enables_and_measures_dynamic_entries() {
    let admin = example("admin");
    let reg = example("registrar");
    let mut s = Session::start(&[&admin, &reg], &["--insecure-admin"]);
    assert_eq!(s.call("30:text:upper 40"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("40:text:a"), Ok(b"A".to_vec()));
    let listing = String::from_utf8(s.call("5:text:list").unwrap()).unwrap();
    assert!(
        listing.contains("\n40 upper exclusive enabled calls=1 failures=0\n"),
        "{listing}"
    );
    assert!(
        listing.contains("\n31 secure-registrar exclusive enabled calls=0 failures=0\n"),
        "{listing}"
    );
    assert_eq!(s.call("5:text:disable 40"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("40:text:a"), Err("Disabled".into()));
    // Disabling one entry leaves its image's other agents alone.
    assert_eq!(s.call("30:text:reverse 41"), Ok(b"ok".to_vec()));
    let listing = String::from_utf8(s.call("5:text:list").unwrap()).unwrap();
    assert!(
        listing.contains("\n40 upper exclusive disabled calls=1 failures=1\n"),
        "{listing}"
    );
    assert_eq!(s.call("5:text:enable 40"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("40:text:b"), Ok(b"B".to_vec()));
    // A dynamic entry's measurement is its image's.
    let m = String::from_utf8(s.call("5:text:measure 40").unwrap()).unwrap();
    assert_eq!(m, measurement(&reg));
    // The unprivileged probe may not do any of it.
    assert_eq!(s.call("6:text:list"), Err("Denied".into()));
    let _ = s.finish();
}

#[test]
fn encrypted_agents_register_encrypted_entries() {
    let reg = example("registrar");
    let o = run(&[
        &reg,
        "--encrypt",
        "--call",
        "31:text:upper 42",
        "--call",
        "42:text:quiet please",
        "--call",
        "42:text:again",
        "--json",
    ]);
    o.expect_code(0);
    let j = o.json();
    let calls = j["calls"].as_array().unwrap();
    assert_eq!(unhex(calls[0]["output"].as_str().unwrap()), b"ok");
    assert_eq!(calls[1]["encrypted"], true, "the new id inherited the flag");
    assert_eq!(unhex(calls[1]["output"].as_str().unwrap()), b"QUIET PLEASE");
    // Its own session (bound to id 42), opened on its first call.
    assert!(calls[1]["wire"]["hello"].is_string());
    let req = unhex(calls[1]["wire"]["request"].as_str().unwrap());
    assert!(!req.windows(5).any(|w| w == b"quiet"));
    assert_eq!(unhex(calls[2]["output"].as_str().unwrap()), b"AGAIN");
    // A --script session with --encrypt goes through the same client.
    let mut s = Session::start(&[&reg], &["--encrypt"]);
    assert_eq!(s.call("31:text:upper 43"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("43:text:abc"), Ok(b"ABC".to_vec()));
    let _ = s.finish();
    // Without --encrypt the encrypted registrar refuses plaintext.
    let o = run(&[&reg, "--call", "31:text:upper 43", "--json"]);
    o.expect_code(1);
    assert_eq!(o.json()["calls"][0]["status"], "Crypto");
}

#[test]
fn admin_disabling_an_encrypted_agent_stops_its_calls() {
    let admin = example("admin");
    let secure = example("secure-echo");
    let o = run(&[
        &admin,
        &secure,
        "--insecure-admin",
        "--encrypt",
        "--call",
        "20:text:before",
        "--call",
        "5:text:disable 20",
        "--call",
        "20:text:while disabled",
        "--call",
        "5:text:enable 20",
        "--call",
        "20:text:after",
        "--json",
    ]);
    o.expect_code(1);
    let j = o.json();
    let c = j["calls"].as_array().unwrap();
    assert_eq!(unhex(c[0]["output"].as_str().unwrap()), b"before");
    assert_eq!(c[1]["status"], "ok");
    assert_eq!(c[2]["status"], "Disabled");
    assert_eq!(c[2]["ran"], false, "refused before the agent ran");
    assert_eq!(c[3]["status"], "ok");
    // The client dropped its session after the failure and opened a new
    // one.
    assert_eq!(unhex(c[4]["output"].as_str().unwrap()), b"after");
    assert!(c[4]["wire"]["hello"].is_string());
}
