//! Property tests of the loader core: arbitrary input never crashes it, and
//! a valid image behaves the same at any page-aligned base.

mod common;

use common::*;
use proptest::prelude::*;
use tetd::abi::PAGE_SIZE;
use tetd::image::{compute_measurement, Image, MEASUREMENT_LEN, MEASUREMENT_OFFSET};

fn remeasure(bytes: &mut [u8]) {
    if bytes.len() < MEASUREMENT_OFFSET + MEASUREMENT_LEN {
        return;
    }
    let body_len = u32::from_le_bytes(bytes[56..60].try_into().unwrap()) as usize;
    let body_len = body_len.min(bytes.len());
    if body_len < MEASUREMENT_OFFSET + MEASUREMENT_LEN {
        return;
    }
    let m = compute_measurement(&bytes[..body_len]);
    bytes[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes: `load` returns an error (it may never crash).
    #[test]
    fn random_bytes_never_crash_the_loader(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut reg = registry();
        prop_assert!(reg.load(&bytes, &dev_options()).is_err());
        prop_assert_eq!(reg.agent_count(), 0);
    }

    /// A valid image with random bytes changed and the measurement fixed up,
    /// so the change reaches the structural checks and the loader: either a
    /// clean error or a clean load and unload (the mutated code is never
    /// run).
    #[test]
    fn mutated_images_never_crash_the_loader(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = image();
        for (at, v) in edits {
            let i = at.index(bytes.len());
            if !(MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN).contains(&i) {
                bytes[i] = v;
            }
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len()));
        }
        remeasure(&mut bytes);
        let mut reg = registry();
        match reg.load(&bytes, &dev_options()) {
            Ok(id) => {
                let img = Image::parse(&bytes).unwrap();
                prop_assert_eq!(reg.agent_count(), img.agents().count());
                prop_assert_eq!(reg.unload(id), Ok(img.agents().count()));
            }
            Err(e) => {
                // Every error has a message and a code.
                prop_assert!(!e.to_string().is_empty());
                let _ = e.code();
                prop_assert_eq!(reg.agent_count(), 0);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Loaded at a random page-aligned base, every relocated slot holds
    /// base + addend and the agents compute the same results.
    #[test]
    fn relocation_at_random_bases_gives_identical_behaviour(page in 0x2_0000_0000u64..0x3_0000_0000u64) {
        let base = page * PAGE_SIZE;
        let bytes = image();
        let img = Image::parse(&bytes).unwrap();
        let mut reg = registry();
        reg.platform().set_next_base(base);
        let id = reg.load(&bytes, &dev_options()).unwrap();
        let zone = *reg.image(id).unwrap().zone();
        prop_assert_eq!(zone.base, base);
        // Every relocation slot: base + the addend stored in the image.
        for off in img.relocations() {
            let seg = img.segments().find(|s| (off as u64) >= s.vaddr && (off as u64) < s.end()).unwrap();
            let data = img.segment_data(&seg);
            let at = (off as u64 - seg.vaddr) as usize;
            let addend = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
            // SAFETY: the slot lies in a readable segment of the zone.
            let slot = unsafe { std::ptr::read_unaligned(zone.view.add(off as usize) as *const u64) };
            prop_assert_eq!(slot, base + addend);
        }
        // Bytes that are not relocated are copied unchanged.
        // SAFETY: DATA + 16 lies in the readable data segment.
        let plain = unsafe { std::ptr::read_unaligned(zone.view.add(DATA as usize + 16) as *const u64) };
        prop_assert_eq!(plain, 0x1234);
        // Behaviour: the reloc probe reads through the relocated pointers.
        let (r, out) = call(&mut reg, ids::RELOC, b"");
        prop_assert_eq!(r.status, Ok(()));
        let n = RELOC_STRING.len();
        prop_assert_eq!(&out[..n], RELOC_STRING);
        prop_assert_eq!(u64::from_le_bytes(out[n..n + 8].try_into().unwrap()), base + RODATA);
        prop_assert_eq!(u32::from_le_bytes(out[n + 16..n + 20].try_into().unwrap()), 0x2a);
        let (r, out) = call(&mut reg, ids::ECHO, b"same everywhere");
        prop_assert_eq!(r.status, Ok(()));
        prop_assert_eq!(out, b"same everywhere".to_vec());
        for i in 1..=2u64 {
            prop_assert_eq!(call(&mut reg, ids::COUNTER, b"").1, i.to_le_bytes().to_vec());
        }
    }
}

#[test]
fn a_taken_base_is_refused_cleanly() {
    let mut reg = registry();
    let id = reg.load(&image(), &dev_options()).unwrap();
    let base = reg.image(id).unwrap().zone().base;
    let spec = Spec {
        id_offset: 500,
        ..Spec::default()
    };
    reg.platform().set_next_base(base);
    let e = reg.load(&build_image(&spec), &dev_options()).unwrap_err();
    assert_eq!(e.code(), tetd::abi::Error::NoMemory, "{e}");
    assert_eq!(call(&mut reg, ids::ECHO, b"ok").1, b"ok");
}
