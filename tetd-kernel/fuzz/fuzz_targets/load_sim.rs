//! The loader core's whole load path (parse, verify, lay out, allocate,
//! copy, relocate, protect, register) on the simulator platform, then
//! unload; as-is and with the measurement recomputed.
#![no_main]

#[path = "../../tests/fuzz_oracles/mod.rs"]
mod fuzz_oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_oracles::image_and_load(data);
});
