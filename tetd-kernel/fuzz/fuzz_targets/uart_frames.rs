//! The uart transport's frame decoders (tetd::abi::uart).
#![no_main]

#[path = "../../tests/fuzz_oracles/mod.rs"]
mod fuzz_oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_oracles::uart_frames(data);
});
