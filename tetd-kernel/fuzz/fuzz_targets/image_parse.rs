//! tetd::image::Image::parse and tetd::verify on arbitrary bytes (as-is and
//! with the measurement recomputed). Oracle: tetd-kernel/tests/fuzz_oracles.
#![no_main]

#[path = "../../tests/fuzz_oracles/mod.rs"]
mod fuzz_oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_oracles::image(data);
    if let Some(b) = fuzz_oracles::remeasured(data) {
        fuzz_oracles::image(&b);
    }
});
