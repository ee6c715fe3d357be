//! Every diagnostic of `#[tetd::agent]`, checked against the expected
//! compiler output in `tests/ui/*.stderr`. Regenerate after an intended
//! change with `TRYBUILD=overwrite cargo test -p tetd-macros --test compile_fail`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
