//! The signer allow-list parser (tetd::verify::AllowList::parse_bytes).
#![no_main]

#[path = "../../tests/fuzz_oracles/mod.rs"]
mod fuzz_oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_oracles::allow_list(data);
});
