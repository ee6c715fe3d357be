//! Real packed agents (examples/echo and examples/sha256, built with
//! `tetd-pack build`) loaded by the loader core at random page-aligned
//! bases: every relocated slot holds base + addend and the agents compute
//! the same results everywhere.

mod run_util;

use proptest::prelude::*;
use run_util::*;
use sha2::{Digest, Sha256};
use tetd::abi::PAGE_SIZE;
use tetd::image::Image;
use tetd::verify::{Policy, Signers, UnsignedImages};
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{CallOptions, LoadOptions, Registry};

fn options() -> LoadOptions<'static> {
    LoadOptions::new(Policy {
        signers: Signers::AnyKey,
        unsigned: UnsignedImages::Accept,
    })
}

/// Load `bytes` at `base`; check every relocation slot.
fn load_at(reg: &mut Registry<SimPlatform>, bytes: &[u8], base: u64) {
    reg.platform().set_next_base(base);
    let id = reg.load(bytes, &options()).expect("load");
    let zone = *reg.image(id).unwrap().zone();
    assert_eq!(zone.base, base);
    let img = Image::parse(bytes).unwrap();
    let mut n = 0;
    for off in img.relocations() {
        let off = off as u64;
        let seg = img
            .segments()
            .find(|s| off >= s.vaddr && off < s.end())
            .unwrap();
        let at = (off - seg.vaddr) as usize;
        let addend = u64::from_le_bytes(img.segment_data(&seg)[at..at + 8].try_into().unwrap());
        // SAFETY: relocation slots lie in readable segments of the zone.
        let slot = unsafe { std::ptr::read_unaligned(zone.view.add(off as usize) as *const u64) };
        assert_eq!(slot, base + addend, "slot at image offset {off:#x}");
        n += 1;
    }
    assert!(n > 0, "the real images have relocations");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn echo_and_sha256_behave_the_same_at_any_base(
        page_a in 0x2_0000_0000u64..0x2_8000_0000u64,
        page_b in 0x2_8000_0000u64..0x3_0000_0000u64,
        input in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let echo = std::fs::read(example("echo")).unwrap();
        let sha = std::fs::read(example("sha256")).unwrap();
        let mut reg: Box<Registry<SimPlatform>> =
            Box::new(Registry::new(SimPlatform::new(LogTarget::Capture)));
        load_at(&mut reg, &echo, page_a * PAGE_SIZE);
        load_at(&mut reg, &sha, page_b * PAGE_SIZE);
        let mut out = vec![0u8; 65536];
        let r = reg.call(1, &input, &mut out, &CallOptions::default());
        prop_assert_eq!(r.status, Ok(()));
        prop_assert_eq!(&out[..r.output_len], &input[..]);
        let r = reg.call(2, &input, &mut out, &CallOptions::default());
        prop_assert_eq!(r.status, Ok(()));
        prop_assert_eq!(&out[..r.output_len], &Sha256::digest(&input)[..]);
    }
}
