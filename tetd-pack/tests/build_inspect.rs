//! `tetd-pack inspect` on malformed images: exit status 1, the message of
//! `tetd::image::ImageError` naming the field, never a panic. Usage errors
//! exit with 2.

mod build_util;

use build_util::*;

/// A valid image to corrupt.
fn echo_bytes() -> Vec<u8> {
    let (path, _) = example("echo");
    std::fs::read(path).unwrap()
}

fn inspect_bad(name: &str, bytes: &[u8], json: bool) -> String {
    let path = scratch().join(format!("bad-{name}.tetd"));
    std::fs::write(&path, bytes).unwrap();
    let mut args = vec!["inspect".as_ref(), path.as_os_str()];
    if json {
        args.push("--json".as_ref());
    }
    let o = tetd_pack(&args);
    o.expect_code(1);
    assert!(o.stdout.is_empty(), "nothing on stdout: {}", o.stdout);
    assert!(
        o.stderr
            .starts_with(&format!("error: {}: malformed image: ", path.display())),
        "{}",
        o.stderr
    );
    o.stderr
}

/// Rewrite the measurement so a structural change is not masked by the
/// measurement check.
fn remeasure(b: &mut [u8]) {
    let m = tetd::image::compute_measurement(b);
    b[64..112].copy_from_slice(&m);
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn empty_file() {
    let e = inspect_bad("empty", b"", false);
    assert!(
        e.contains("bad magic") && e.contains("[BadMagic, E100]"),
        "{e}"
    );
}

#[test]
fn not_an_image() {
    let e = inspect_bad("text", b"hello, this is not an image", true);
    assert!(e.contains("bad magic"), "{e}");
}

#[test]
fn truncated_body() {
    let b = echo_bytes();
    let e = inspect_bad("truncated", &b[..b.len() - 100], false);
    assert!(e.contains("image truncated: image body needs"), "{e}");
}

#[test]
fn truncated_header() {
    let b = echo_bytes();
    let e = inspect_bad("short-header", &b[..40], false);
    assert!(e.contains("header needs 128 bytes"), "{e}");
}

#[test]
fn future_version() {
    let mut b = echo_bytes();
    b[8] = 9;
    let e = inspect_bad("version", &b, false);
    assert!(e.contains("unsupported image format version 9"), "{e}");
}

#[test]
fn flipped_code_byte_breaks_the_measurement() {
    let mut b = echo_bytes();
    let n = b.len();
    b[n - 200] ^= 0x01;
    let e = inspect_bad("flipped", &b, true);
    assert!(e.contains("measurement mismatch"), "{e}");
}

#[test]
fn zero_agents_names_the_field() {
    let mut b = echo_bytes();
    let manifest_off = u32::from_le_bytes(b[24..28].try_into().unwrap()) as usize;
    put32(&mut b, manifest_off, 0);
    remeasure(&mut b);
    let e = inspect_bad("agents0", &b, false);
    assert!(e.contains("`agent_count`"), "{e}");
}

#[test]
fn write_execute_segment() {
    let mut b = echo_bytes();
    let segtab = u32::from_le_bytes(b[32..36].try_into().unwrap()) as usize;
    // Segment 0 is the code: make it rwx.
    put32(&mut b, segtab + 24, 7);
    remeasure(&mut b);
    let e = inspect_bad("wx", &b, false);
    assert!(
        e.contains("segment #0 is both writable and executable"),
        "{e}"
    );
}

#[test]
fn trailing_garbage_is_a_bad_signature_block() {
    let mut b = echo_bytes();
    b.extend_from_slice(&[0xAA; 17]);
    let e = inspect_bad("trailing", &b, false);
    assert!(e.contains("malformed signature block"), "{e}");
}

#[test]
fn missing_and_directory_inputs() {
    let o = tetd_pack(&["inspect", "/nonexistent/x.tetd"]);
    o.expect_code(1);
    assert!(
        o.stderr.contains("cannot read /nonexistent/x.tetd"),
        "{}",
        o.stderr
    );
    let dir = scratch();
    let o = tetd_pack(&["inspect".as_ref(), dir.as_os_str()]);
    o.expect_code(1);
    assert!(o.stderr.contains("not a file"), "{}", o.stderr);
}

#[test]
fn usage_errors_exit_2() {
    tetd_pack::<&str>(&["inspect"]).expect_code(2);
    tetd_pack(&["build", "--no-such-flag"]).expect_code(2);
    tetd_pack::<&str>(&[]).expect_code(2);
}
