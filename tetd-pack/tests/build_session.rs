//! Building encrypted agents: the session feature is required and named in
//! the error; with it, the manifest holds the wire limits (plaintext limits
//! plus the session overhead).

mod build_util;

use build_util::*;

#[test]
fn encrypted_agent_without_the_session_feature_is_a_clear_error() {
    let dir = root().join("tetd-pack/tests/fixtures/encrypted_no_session");
    let out = scratch().join("encrypted_no_session.tetd");
    let o = build(&dir, &out, &["-q"]);
    o.expect_code(1);
    assert!(!out.exists());
    assert!(o.stderr.contains("feature `session`"), "{}", o.stderr);
    assert!(o.stderr.contains("\"agent\", \"session\""), "{}", o.stderr);
}

#[test]
fn manifest_limits_of_encrypted_agents_include_the_session_overhead() {
    let (img, _) = example("secure-echo");
    let bytes = std::fs::read(img).unwrap();
    let img = tetd::image::Image::parse(&bytes).unwrap();
    let find = |id| img.agents().find(|a| a.id == id).unwrap();
    // [package.metadata.tetd] max_input = max_output = 64 KiB (plaintext).
    let secure = find(20);
    assert_eq!(
        secure.max_input,
        65536 + tetd::session::REQUEST_OVERHEAD as u32
    );
    assert_eq!(
        secure.max_output,
        65536 + tetd::session::REPLY_OVERHEAD as u32
    );
    // The plain agent of the same image keeps the declared limits.
    let plain = find(21);
    assert_eq!((plain.max_input, plain.max_output), (65536, 65536));
}
