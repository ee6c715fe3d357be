//! The audit-log example through `tetd-pack run`: the HMAC chain, its
//! verification and tamper detection on an exported copy.

mod run_util;

use run_util::*;

const ID: &str = "4";

fn call(op: &str) -> String {
    format!("{ID}:text:{op}")
}

/// Append three entries, export, then run `extra` calls in the same process.
fn session(extra: &[String]) -> serde_json::Value {
    let img = example("audit-log");
    let mut args: Vec<String> = vec![img];
    for c in [
        call("append alice logged in"),
        call("append bob read /etc/secret"),
        format!("{ID}:hex:{}{}", hex(b"append "), hex(&[0, 1, 2, 255])),
        call("head"),
        call("verify"),
        call("export"),
    ] {
        args.push("--call".into());
        args.push(c);
    }
    for c in extra {
        args.push("--call".into());
        args.push(c.clone());
    }
    args.push("--json".into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a).json()
}

fn output(j: &serde_json::Value, i: usize) -> Vec<u8> {
    unhex(j["calls"][i]["output"].as_str().unwrap())
}

fn status(j: &serde_json::Value, i: usize) -> String {
    j["calls"][i]["status"].as_str().unwrap().to_string()
}

/// Parse the export format: (seq, data, mac) records.
fn records(export: &[u8]) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < export.len() {
        let seq = u64::from_le_bytes(export[at..at + 8].try_into().unwrap());
        let len = u32::from_le_bytes(export[at + 8..at + 12].try_into().unwrap()) as usize;
        let data = export[at + 12..at + 12 + len].to_vec();
        let mac = export[at + 12 + len..at + 12 + len + 32].to_vec();
        v.push((seq, data, mac));
        at += 12 + len + 32;
    }
    v
}

#[test]
fn chain_head_verify_and_export() {
    let j = session(&[]);
    for i in 0..6 {
        assert_eq!(status(&j, i), "ok", "call {i}: {}", j["calls"][i]);
    }
    let macs: Vec<Vec<u8>> = (0..3).map(|i| output(&j, i)).collect();
    for (i, m) in macs.iter().enumerate() {
        assert_eq!(m.len(), 40);
        assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), i as u64);
    }
    assert_ne!(macs[0][8..], macs[1][8..]);
    let head = output(&j, 3);
    assert_eq!(u64::from_le_bytes(head[..8].try_into().unwrap()), 3);
    assert_eq!(head[8..], macs[2][8..], "head = MAC of the last entry");
    assert_eq!(output(&j, 4), b"ok 3");
    let recs = records(&output(&j, 5));
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].1, b"alice logged in");
    assert_eq!(recs[1].1, b"bob read /etc/secret");
    assert_eq!(recs[2].1, vec![0, 1, 2, 255]);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.0, i as u64);
        assert_eq!(r.2, macs[i][8..]);
    }
}

#[test]
fn exported_log_checks_and_tampering_is_detected() {
    let img = example("audit-log");
    let mut s = Session::start(&[&img], &[]);
    let id = 4u32;
    for e in [
        "append alice logged in",
        "append bob read /etc/secret",
        "append carol left",
    ] {
        s.call_bytes(id, e.as_bytes()).unwrap();
    }
    let export = s.call_bytes(id, b"export").unwrap();
    let recs = records(&export);
    assert_eq!(recs.len(), 3);
    let check = |s: &mut Session, blob: &[u8]| {
        let mut input = b"check ".to_vec();
        input.extend_from_slice(blob);
        s.call_bytes(id, &input)
    };
    assert_eq!(check(&mut s, &export), Ok(b"ok 3".to_vec()));

    // Offsets in the export: entry 1's first data byte, entry 2's start.
    let e0 = 12 + recs[0].1.len() + 32;
    let e1 = e0 + 12 + recs[1].1.len() + 32;
    let tampered: Vec<(&str, Vec<u8>)> = vec![
        ("data byte of entry 1 changed", {
            let mut t = export.clone();
            t[e0 + 12] ^= 0x20;
            t
        }),
        ("MAC of the last entry changed", {
            let mut t = export.clone();
            let n = t.len();
            t[n - 1] ^= 1;
            t
        }),
        ("sequence number changed", {
            let mut t = export.clone();
            t[e0] = 5;
            t
        }),
        ("last entry dropped (rollback)", export[..e1].to_vec()),
        ("cut inside a record", export[..export.len() - 5].to_vec()),
        ("entries swapped", {
            let mut t = export[e0..e1].to_vec();
            t.extend_from_slice(&export[..e0]);
            t.extend_from_slice(&export[e1..]);
            t
        }),
        ("all removed", Vec::new()),
        ("entry appended by an outsider", {
            let mut t = export.clone();
            t.extend_from_slice(&3u64.to_le_bytes());
            t.extend_from_slice(&1u32.to_le_bytes());
            t.push(b'x');
            t.extend_from_slice(&[0u8; 32]);
            t
        }),
    ];
    for (what, blob) in &tampered {
        assert_eq!(check(&mut s, blob), Err("Crypto".into()), "{what}");
    }
    // The stored log itself is untouched and still verifies; a new entry
    // makes the old export stale.
    assert_eq!(s.call_bytes(id, b"verify"), Ok(b"ok 3".to_vec()));
    s.call_bytes(id, b"append dave").unwrap();
    assert_eq!(check(&mut s, &export), Err("Crypto".into()), "stale export");
    let export2 = s.call_bytes(id, b"export").unwrap();
    assert_eq!(check(&mut s, &export2), Ok(b"ok 4".to_vec()));
    assert_eq!(&export2[..export.len()], &export[..], "append-only");
    let (code, stderr) = s.finish();
    assert_eq!(code, 1, "failed checks make the exit status 1");
    assert!(
        stderr.contains("entry 1 does not verify"),
        "the agent names the first bad entry:\n{stderr}"
    );
    assert!(stderr.contains("do not end in the head"), "{stderr}");
}

#[test]
fn another_process_has_another_key() {
    let img = example("audit-log");
    let mut a = Session::start(&[&img], &[]);
    let mut b = Session::start(&[&img], &[]);
    a.call_bytes(4, b"append same").unwrap();
    b.call_bytes(4, b"append same").unwrap();
    let ea = a.call_bytes(4, b"export").unwrap();
    let eb = b.call_bytes(4, b"export").unwrap();
    assert_ne!(ea, eb, "MAC keys are random per agent instance");
    let mut input = b"check ".to_vec();
    input.extend_from_slice(&ea);
    assert_eq!(b.call_bytes(4, &input), Err("Crypto".into()));
    a.finish();
    b.finish();
}

#[test]
fn unknown_ops_and_full_log() {
    let img = example("audit-log");
    let mut s = Session::start(&[&img], &[]);
    assert_eq!(s.call_bytes(4, b"delete 1"), Err("InvalidInput".into()));
    assert_eq!(s.call_bytes(4, b"head extra"), Err("InvalidInput".into()));
    // 64 KiB heap: appends of 8 KiB fill it; the log refuses, stays valid.
    let big = vec![b'z'; 8192];
    let mut input = b"append ".to_vec();
    input.extend_from_slice(&big);
    let mut appended = 0;
    loop {
        match s.call_bytes(4, &input) {
            Ok(_) => appended += 1,
            Err(e) => {
                assert_eq!(e, "NoMemory");
                break;
            }
        }
        assert!(appended < 100);
    }
    assert_eq!(appended, 7);
    assert_eq!(
        s.call_bytes(4, b"verify"),
        Ok(format!("ok {appended}").into_bytes())
    );
    s.finish();
}
