//! `tetd-pack build` on the real examples (examples/echo, examples/sha256)
//! with the real binary, then `inspect` (text and JSON) and a load-and-call
//! of the packed code.

mod build_util;

use build_util::*;
use sha2::{Digest, Sha256};
use tetd::image::Image;

fn segments(json: &serde_json::Value) -> &Vec<serde_json::Value> {
    json["segments"].as_array().expect("segments array")
}

/// Checks shared by both examples.
fn check_common(json: &serde_json::Value, bytes: &[u8]) {
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["file_size"], bytes.len() as u64);
    assert_eq!(
        json["body_size"],
        bytes.len() as u64,
        "unsigned: body = file"
    );
    // Measurement: recomputed here with sha2, independently of tetd-sdk.
    assert_eq!(
        json["measurement"].as_str().unwrap(),
        recompute_measurement(bytes)
    );
    let segs = segments(json);
    assert!(
        segs.iter()
            .any(|s| s["perms"] == "r-x" && s["execute"] == true && s["write"] == false),
        "an RX segment"
    );
    assert!(
        segs.iter()
            .any(|s| s["perms"] == "rw-" && s["write"] == true && s["execute"] == false),
        "an RW segment"
    );
    let mut end = 0u64;
    for s in segs {
        assert!(
            !(s["write"] == true && s["execute"] == true),
            "W+X segment {s}"
        );
        let vaddr = s["vaddr"].as_u64().unwrap();
        let mem = s["mem_size"].as_u64().unwrap();
        assert_eq!(vaddr % 4096, 0, "page aligned: {s}");
        assert_eq!(mem % 4096, 0, "page multiple: {s}");
        assert!(vaddr >= end, "sorted, disjoint: {s}");
        assert!(s["file_size"].as_u64().unwrap() <= mem);
        end = vaddr + mem;
    }
    assert_eq!(json["load_size"].as_u64().unwrap(), end);
    assert!(json["relocations"].as_u64().unwrap() > 0);
    // Every entry lies in the executable segment.
    for a in json["agents"].as_array().unwrap() {
        let entry = a["entry"].as_u64().unwrap();
        assert!(
            segs.iter().any(|s| s["execute"] == true
                && entry >= s["vaddr"].as_u64().unwrap()
                && entry < s["vaddr"].as_u64().unwrap() + s["mem_size"].as_u64().unwrap()),
            "entry {entry:#x} not in an RX segment"
        );
    }
    assert_eq!(json["signature"]["signed"], false);
    assert_eq!(json["signature"]["status"], "unsigned");
}

#[test]
fn echo_builds_and_inspects_as_json() {
    let (path, build_json) = example("echo");
    let bytes = std::fs::read(&path).unwrap();
    let o = tetd_pack(&["inspect".as_ref(), path.as_os_str(), "--json".as_ref()]);
    o.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    check_common(&json, &bytes);
    assert_eq!(json["package"]["name"], "echo");
    assert_eq!(json["package"]["version"], "0.1.0");
    let agents = json["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["id"], 1);
    assert_eq!(agents[0]["name"], "echo");
    assert_eq!(agents[0]["mode"], "exclusive");
    assert_eq!(agents[0]["flags"], serde_json::json!([]));
    // From [package.metadata.tetd] of examples/echo/Cargo.toml.
    assert_eq!(json["stack_size"], 64 * 1024);
    assert_eq!(json["heap_size"], 0);
    assert_eq!(json["defaults"]["mode"], "exclusive");
    assert_eq!(agents[0]["max_input"], 64 * 1024);
    assert_eq!(agents[0]["max_output"], 64 * 1024);
    // `build --json` prints the same object plus `build`.
    let mut b = build_json.clone();
    let build = b.as_object_mut().unwrap().remove("build").unwrap();
    assert!(build["elf"].as_str().unwrap().ends_with("echo.elf"));
    assert_eq!(build["target"], "x86_64-unknown-none");
    assert_eq!(b, json);
}

#[test]
fn sha256_builds_and_inspects_as_json() {
    let (path, _) = example("sha256");
    let bytes = std::fs::read(&path).unwrap();
    let o = tetd_pack(&["inspect".as_ref(), path.as_os_str(), "--json".as_ref()]);
    o.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    check_common(&json, &bytes);
    assert_eq!(json["package"]["name"], "sha256");
    let agents = json["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["id"], 2);
    assert_eq!(agents[0]["name"], "sha256");
    assert_eq!(agents[0]["max_input"], 1 << 20);
    assert_eq!(agents[0]["max_output"], 32);
}

#[test]
fn inspect_text_lists_everything() {
    let (path, json) = example("echo");
    let o = tetd_pack(&["inspect".as_ref(), path.as_os_str()]);
    o.expect_code(0);
    let t = &o.stdout;
    assert!(t.contains("package:      echo 0.1.0"), "{t}");
    assert!(
        t.contains(json["measurement"].as_str().unwrap()),
        "measurement in text: {t}"
    );
    let agent_line = t
        .lines()
        .find(|l| l.contains(" echo ") && l.contains("exclusive"))
        .unwrap_or_else(|| panic!("agent line: {t}"));
    let entry = format!("{:#x}", json["agents"][0]["entry"].as_u64().unwrap());
    assert!(agent_line.contains(&entry), "{agent_line}");
    assert!(agent_line.trim_start().starts_with("1 "), "{agent_line}");
    assert!(t.contains("r-x") && t.contains("rw-"), "{t}");
    assert!(
        t.contains(&format!(
            "relocations:  {} (base-relative)",
            json["relocations"]
        )),
        "{t}"
    );
    assert!(t.contains("signature:    none (unsigned image)"), "{t}");
}

#[test]
fn packed_echo_runs_and_echoes() {
    let (path, _) = example("echo");
    let bytes = std::fs::read(path).unwrap();
    let (status, out) = call_agent(&bytes, 1, b"hello from the zone");
    assert_eq!(status, 0);
    assert_eq!(out, b"hello from the zone");
    let (status, out) = call_agent(&bytes, 1, b"");
    assert_eq!(status, 0);
    assert!(out.is_empty());
    // Larger than max_output (64 KiB): the agent reports OutputTooLarge.
    let big = vec![7u8; 64 * 1024 + 1];
    let (status, _) = call_agent(&bytes, 1, &big);
    assert_eq!(status, tetd::Error::OutputTooLarge.code());
}

#[test]
fn packed_sha256_computes_sha256() {
    let (path, _) = example("sha256");
    let bytes = std::fs::read(path).unwrap();
    for input in [
        &b""[..],
        b"abc",
        &vec![0x5au8; 100_000][..],
        &(0..=255u8).cycle().take(4099).collect::<Vec<_>>()[..],
    ] {
        let (status, out) = call_agent(&bytes, 2, input);
        assert_eq!(status, 0);
        assert_eq!(
            out,
            Sha256::digest(input).to_vec(),
            "input {} bytes",
            input.len()
        );
    }
}

#[test]
fn builds_are_reproducible_and_elf_packing_matches() {
    // Building again (a cargo no-op) and packing the kept ELF with --elf give
    // byte-identical images.
    let (first, json) = example("echo");
    let again = scratch().join("echo-again.tetd");
    build(&root().join("examples/echo"), &again, &["-q"]).expect_code(0);
    let from_elf = scratch().join("echo-from-elf.tetd");
    let elf = json["build"]["elf"].as_str().unwrap();
    build(
        &root().join("examples/echo"),
        &from_elf,
        &["-q", "--elf", elf],
    )
    .expect_code(0);
    let a = std::fs::read(first).unwrap();
    assert_eq!(a, std::fs::read(again).unwrap());
    assert_eq!(a, std::fs::read(from_elf).unwrap());
}

#[test]
fn default_output_is_package_name_in_cwd_and_progress_goes_to_stderr() {
    let cwd = scratch().join("cwd-default");
    std::fs::create_dir_all(&cwd).unwrap();
    let td = agent_target_dir();
    let o = tetd_pack_in(
        &cwd,
        &[
            "build".as_ref(),
            root().join("examples/echo").as_os_str(),
            "--target-dir".as_ref(),
            td.as_os_str(),
        ],
    );
    o.expect_code(0);
    assert!(o.stdout.is_empty(), "no JSON requested: {}", o.stdout);
    for step in ["Compiling", "Linking", "Packing", "Wrote"] {
        assert!(o.stderr.contains(step), "{step} in {}", o.stderr);
    }
    let out = cwd.join("echo.tetd");
    let bytes = std::fs::read(&out).expect("echo.tetd in the current directory");
    let img = Image::parse(&bytes).unwrap();
    assert!(o
        .stderr
        .contains(&format!("(1 agent, {} bytes, measurement", bytes.len())));
    assert_eq!(img.agent(1).unwrap().name(), "echo");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else if ty.is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn measurement_does_not_depend_on_the_checkout_location() {
    // The same sources in another directory give a byte-identical image:
    // paths compiled into the agent (panic locations) are remapped.
    let (orig, _) = example("echo");
    let copy = scratch().join("elsewhere/deeper/checkout");
    for d in ["tetd-sdk", "tetd-macros", "examples/echo"] {
        copy_dir(&root().join(d), &copy.join(d));
    }
    // The workspace root, reduced to the two crates the agent depends on.
    let mut ws: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    ws["workspace"]["members"] = toml::Value::Array(vec![
        toml::Value::String("tetd-sdk".into()),
        toml::Value::String("tetd-macros".into()),
    ]);
    std::fs::write(copy.join("Cargo.toml"), toml::to_string(&ws).unwrap()).unwrap();
    let out = scratch().join("echo-elsewhere.tetd");
    build(&copy.join("examples/echo"), &out, &["-q"]).expect_code(0);
    let a = std::fs::read(orig).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert!(a == b, "images differ between checkouts");
    assert!(
        !b.windows(b"elsewhere".len()).any(|w| w == b"elsewhere"),
        "the checkout path leaked into the image"
    );
}

#[test]
fn gnu_ld_links_working_images_too() {
    let Some(ld) = ["/usr/bin/ld", "/bin/ld"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
    else {
        eprintln!("SKIPPED: no GNU ld on this machine (install binutils)");
        return;
    };
    let out = scratch().join("echo-gnu-ld.tetd");
    let o = build(
        &root().join("examples/sha256"),
        &out,
        &["--linker", ld, "--json"],
    );
    o.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(json["build"]["elf"]
        .as_str()
        .unwrap()
        .ends_with("sha256.gnu-ld.elf"));
    let bytes = std::fs::read(&out).unwrap();
    check_common(&json, &bytes);
    let (status, digest) = call_agent(&bytes, 2, b"linked by GNU ld");
    assert_eq!(status, 0);
    assert_eq!(digest, Sha256::digest(b"linked by GNU ld").to_vec());
}

/// `build --sign KEY` produces a signed image in one step: it verifies
/// against the key's public half, its measurement equals an unsigned build
/// of the same crate, and a bad key path fails before anything is built.
#[test]
fn build_with_sign_produces_a_verifying_signed_image() {
    let dir = scratch().join("build-sign");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("signer.pk8");
    tetd_pack(&[
        "keygen".as_ref(),
        "-o".as_ref(),
        key.as_os_str(),
        "--force".as_ref(),
    ])
    .expect_code(0);
    let signed = dir.join("echo-signed.tetd");
    build(
        &root().join("examples/echo"),
        &signed,
        &["-q", "--sign", key.to_str().unwrap()],
    )
    .expect_code(0);

    let pubfile = dir.join("signer.pub");
    let v = tetd_pack(&[
        "verify".as_ref(),
        signed.as_os_str(),
        "--pubkey".as_ref(),
        pubfile.as_os_str(),
    ]);
    v.expect_code(0);

    let bytes = std::fs::read(&signed).unwrap();
    let img = Image::parse(&bytes).unwrap();
    assert!(img.signature().unwrap().is_some(), "image is not signed");
    let (unsigned, _) = example("echo");
    let ubytes = std::fs::read(unsigned).unwrap();
    let uimg = Image::parse(&ubytes).unwrap();
    assert_eq!(img.measurement(), uimg.measurement());
    assert_eq!(img.body(), uimg.body());

    // Another key does not verify it.
    let other = dir.join("other.pk8");
    tetd_pack(&[
        "keygen".as_ref(),
        "-o".as_ref(),
        other.as_os_str(),
        "--force".as_ref(),
    ])
    .expect_code(0);
    let o = tetd_pack(&[
        "verify".as_ref(),
        signed.as_os_str(),
        "--pubkey".as_ref(),
        dir.join("other.pub").as_os_str(),
    ]);
    assert_eq!(o.code, 1, "verify with the wrong key must fail: {o:?}");

    // A missing key fails early with a message naming the file.
    let missing = dir.join("nope.pk8");
    let o = build(
        &root().join("examples/echo"),
        &dir.join("never.tetd"),
        &["-q", "--sign", missing.to_str().unwrap()],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("nope.pk8"), "{}", o.stderr);
    assert!(!dir.join("never.tetd").exists());
}
