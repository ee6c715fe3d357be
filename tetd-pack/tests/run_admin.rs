//! The admin example through `tetd-pack run`: listing, disabling and
//! measuring other agents through the services table; an unprivileged agent
//! is denied; admin images need a trusted admin signature.

mod run_util;

use run_util::*;

/// admin.tetd signed by a key trusted with `admin`, plus echo unsigned.
fn setup() -> (String, String, String) {
    let admin = example("admin");
    let echo = example("echo");
    let k = key(42);
    let signed = sign(&admin, &k, "admin-key");
    let list = allow_list(&[(&k, true)], "admin.allow");
    (signed, echo, list)
}

#[test]
fn list_disable_enable_measure() {
    let (admin, echo, list) = setup();
    let mut s = Session::start(&[&admin, &echo], &["--allow", &list, "--allow-unsigned"]);
    assert_eq!(s.call("1:text:x"), Ok(b"x".to_vec()));
    let listing = String::from_utf8(s.call("5:text:list").unwrap()).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert_eq!(lines[0], "1 echo exclusive enabled calls=1 failures=0");
    assert_eq!(
        lines[1],
        "5 admin exclusive enabled calls=0 failures=0 admin"
    );
    assert_eq!(
        lines[2],
        "6 admin-probe exclusive enabled calls=0 failures=0"
    );

    assert_eq!(s.call("5:text:disable 1"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("1:text:x"), Err("Disabled".into()));
    let listing = String::from_utf8(s.call("5:text:list").unwrap()).unwrap();
    assert!(
        listing.contains("1 echo exclusive disabled calls=1 failures=1"),
        "{listing}"
    );
    assert_eq!(s.call("5:text:enable 1"), Ok(b"ok".to_vec()));
    assert_eq!(s.call("1:text:back"), Ok(b"back".to_vec()));

    let m = String::from_utf8(s.call("5:text:measure 1").unwrap()).unwrap();
    assert_eq!(m, measurement(&echo));
    let m = String::from_utf8(s.call("5:text:measure 5").unwrap()).unwrap();
    assert_eq!(
        m,
        measurement(&admin),
        "measurement of the body, signed or not"
    );

    assert_eq!(s.call("5:text:disable 99"), Err("NotFound".into()));
    assert_eq!(s.call("5:text:reboot"), Err("InvalidInput".into()));
    let (code, _) = s.finish();
    assert_eq!(code, 1);
}

#[test]
fn unprivileged_agent_is_denied() {
    let (admin, echo, list) = setup();
    let o = run(&[
        &admin,
        &echo,
        "--allow",
        &list,
        "--allow-unsigned",
        "--call",
        "6:text:list",
        "--call",
        "1:text:still works",
        "--json",
    ]);
    o.expect_code(1);
    let j = o.json();
    assert_eq!(j["calls"][0]["status"], "Denied");
    assert_eq!(j["calls"][0]["output"], "");
    assert_eq!(j["calls"][1]["status"], "ok");
    assert_eq!(j["images"][0]["signer"]["admin"], true);
    assert_eq!(j["images"][0]["signer"]["trusted"], true);
}

#[test]
fn admin_images_need_a_trusted_admin_key() {
    let admin = example("admin");
    let echo = example("echo");
    // Unsigned.
    let o = run(&[&admin, &echo, "--call", "5:text:list"]);
    o.expect_code(1);
    assert!(
        o.stderr.contains("agent 5 is an admin agent"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("--insecure-admin"), "{}", o.stderr);
    // Signed by a trusted key without the admin attribute.
    let k = key(43);
    let signed = sign(&admin, &k, "plain-key");
    let list = allow_list(&[(&k, false)], "plain.allow");
    let o = run(&[&signed, "--allow", &list, "--call", "5:text:list"]);
    o.expect_code(1);
    assert!(o.stderr.contains("admin"), "{}", o.stderr);
    // Simulation escape hatch.
    let o = run(&[&admin, &echo, "--insecure-admin", "--call", "5:text:list"]);
    o.expect_code(0);
    assert!(o.stdout_str().contains("1 echo exclusive enabled"));
}
