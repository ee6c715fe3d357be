//! The fixed-budget, stable-Rust fuzz run that CI does (`cargo test`): the
//! oracles of the coverage-guided targets (tetd-kernel/fuzz, cargo-fuzz on
//! nightly; see docs/threat-model.md for the long on-demand command) driven
//! by proptest with a fixed number of cases over a seed corpus of real
//! images (every example packed by tetd-pack, plus a signed one:
//! tests/data/seed-*.tetd, rebuilt by tetd-kernel/fuzz/make-seeds.sh).
//!
//! Mutations are structure-aware where it pays: 32-bit fields set to
//! boundary values, byte flips, truncation, splices, insertions — each
//! input is tried as-is and with its measurement recomputed, so mutations
//! reach the structural checks and the loader instead of stopping at the
//! measurement. Case counts are chosen to keep this file at about 15 s in
//! a debug build; `TETD_FUZZ_CASES=N` overrides the image count.

mod fuzz_oracles;

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use tetd::image::Image;

fn seeds() -> &'static Vec<(String, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "tetd")
                    && p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("seed-")
            })
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        assert!(v.len() >= 8, "seed corpus missing in {}", dir.display());
        v
    })
}

fn image_cases() -> u32 {
    std::env::var("TETD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(800)
}

/// Every seed is a valid image today (else: rerun make-seeds.sh).
#[test]
fn seeds_are_current_images() {
    for (name, bytes) in seeds() {
        let img = Image::parse(bytes).unwrap_or_else(|e| {
            panic!("{name} no longer parses ({e}): run tetd-kernel/fuzz/make-seeds.sh")
        });
        assert!(img.agents().count() > 0, "{name}");
        fuzz_oracles::image_and_load(bytes);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Set the little-endian u32 at a 4-aligned offset.
    Field(prop::sample::Index, u32),
    /// XOR a byte.
    Flip(prop::sample::Index, u8),
    /// Cut the image here.
    Truncate(prop::sample::Index),
    /// Copy `len` bytes from one place over another.
    Splice(prop::sample::Index, prop::sample::Index, u8),
    /// Insert bytes.
    Insert(prop::sample::Index, Vec<u8>),
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(0x7f),
        Just(0x80),
        Just(0xff),
        Just(0x1000),
        Just(0xfff),
        Just(0x1001),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(64 << 20),
        Just((64 << 20) + 1),
        Just(16 << 20),
        0u32..0x2_0000,
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), interesting_u32()).prop_map(|(i, v)| Mutation::Field(i, v)),
        3 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, v)| Mutation::Flip(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=64)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Field(i, v) => {
            let at = i.index(bytes.len()) & !3;
            if at + 4 <= bytes.len() {
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        Mutation::Flip(i, v) => {
            let at = i.index(bytes.len());
            bytes[at] ^= v;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Splice(from, to, n) => {
            let n = *n as usize;
            if bytes.len() > n {
                let f = from.index(bytes.len() - n);
                let t = to.index(bytes.len() - n);
                let src = bytes[f..f + n].to_vec();
                bytes[t..t + n].copy_from_slice(&src);
            }
        }
        Mutation::Insert(i, v) => {
            let at = i.index(bytes.len());
            bytes.splice(at..at, v.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: image_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Mutated real images through parse, verify and the loader.
    #[test]
    fn mutated_seed_images(
        seed in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let s = seeds();
        let (_, base) = &s[seed.index(s.len())];
        let mut bytes = base.clone();
        for m in &muts {
            apply(&mut bytes, m);
        }
        fuzz_oracles::image_and_load(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The header of a real image followed by random bytes (random tables).
    #[test]
    fn real_header_random_rest(
        seed in any::<prop::sample::Index>(),
        rest in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let s = seeds();
        let (_, base) = &s[seed.index(s.len())];
        let mut bytes = base[..128.min(base.len())].to_vec();
        bytes.extend_from_slice(&rest);
        fuzz_oracles::image(&bytes);
        if let Some(b) = fuzz_oracles::remeasured(&bytes) {
            fuzz_oracles::image(&b);
        }
    }

    /// Allow-list texts: the seed key line mutated, and random bytes.
    #[test]
    fn allow_lists(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        junk in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut t = fuzz_oracles::SEED_ALLOW_LIST.as_bytes().to_vec();
        t.extend_from_slice(b"ed25519:");
        t.extend_from_slice(&junk);
        for (i, v) in edits {
            let at = i.index(t.len());
            t[at] = v;
        }
        fuzz_oracles::allow_list(&t);
        fuzz_oracles::allow_list(&junk);
    }

    /// uart frames: random bytes, and valid frames with random fields.
    #[test]
    fn uart_frames(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzz_oracles::uart_frames(&bytes);
    }
}
