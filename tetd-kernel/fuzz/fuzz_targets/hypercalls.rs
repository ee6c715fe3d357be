//! TETD-H's hypercall decoder: sequences of arbitrary leaves and arguments
//! from four vCPUs through TetdHandler / TdState::handle over the TDX model.
//! Oracle: tetd-kvm/tests/fuzz_oracles (invariants: tetd-kvm/tests/core_common).
#![no_main]

#[path = "../../../tetd-kvm/tests/core_common/mod.rs"]
mod core_common;
#[path = "../../../tetd-kvm/tests/fuzz_oracles/mod.rs"]
mod fuzz_oracles;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_oracles::run(&fuzz_oracles::steps_from_bytes(data));
});
