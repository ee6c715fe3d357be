//! What the fuzzers check for one input, shared by the coverage-guided
//! targets (tetd-kernel/fuzz, cargo-fuzz on nightly) and the fixed-budget
//! stable run (tests/fuzz_stable.rs). Each oracle panics if the code under
//! test misbehaves on the input: a panic, an inconsistent answer (a parsed
//! image whose parts do not fit together), a load that leaves agents or
//! zones behind, a frame that does not round-trip.
#![allow(dead_code)]

use tetd::abi::regs::HypercallArgs;
use tetd::abi::uart::{Request, Response, REQUEST_LEN, RESPONSE_LEN};
use tetd::image::{compute_measurement, Image, MEASUREMENT_LEN, MEASUREMENT_OFFSET};
use tetd::verify::{verify_image, AllowList, Policy, Signers, UnsignedImages};
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{LoadOptions, Registry};

/// The allow-list the seeds' signed image is checked against.
pub const SEED_ALLOW_LIST: &str = include_str!("../data/seed-signer.pub");

/// A copy of `bytes` whose measurement field is recomputed over the body
/// the header claims (so mutations get past the measurement check and reach
/// the structural checks), or `None` if the header is too short.
pub fn remeasured(bytes: &[u8]) -> Option<Vec<u8>> {
    let len_field = bytes.get(56..60)?;
    let body_len = u32::from_le_bytes(len_field.try_into().ok()?) as usize;
    let body_len = body_len.min(bytes.len());
    if body_len < MEASUREMENT_OFFSET + MEASUREMENT_LEN {
        return None;
    }
    let mut b = bytes.to_vec();
    let m = compute_measurement(&b[..body_len]);
    b[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
    Some(b)
}

/// Parse and verify; a parsed image must be self-consistent.
pub fn image(bytes: &[u8]) {
    let Ok(img) = Image::parse(bytes) else {
        return;
    };
    let m = img.manifest();
    let agents: Vec<_> = img.agents().collect();
    assert_eq!(agents.len(), m.agent_count as usize);
    for a in &agents {
        assert!(a.max_input <= tetd::image::MAX_IO && a.max_output <= tetd::image::MAX_IO);
        let _ = (a.name(), a.is_admin(), a.is_encrypted());
        assert_eq!(img.agent(a.id).map(|x| x.id), Some(a.id));
    }
    let load = img.header().load_size;
    for s in img.segments() {
        assert!(s.end() <= load, "segment past load_size");
        assert!(img.segment_data(&s).len() as u64 <= s.end() - s.vaddr);
        assert!(!s.perms_str().is_empty());
    }
    for r in img.relocations() {
        assert!(r as u64 + 8 <= load, "relocation slot past load_size");
    }
    // (parse checked the measurement against the body)
    let _ = (
        img.manifest_bytes(),
        img.bytes(),
        img.signed_message_parts(),
    );
    let list = AllowList::parse(SEED_ALLOW_LIST).expect("seed allow-list");
    for policy in [
        Policy {
            signers: Signers::AnyKey,
            unsigned: UnsignedImages::Accept,
        },
        Policy::require_signed(list),
        Policy::allow_unsigned(AllowList::empty()),
    ] {
        if let Ok(v) = verify_image(&img, &policy) {
            assert_eq!(&v.measurement, img.measurement());
            let _ = v.check_admin_agents(&img);
        }
    }
}

/// Load into a fresh registry on the simulator platform and unload: a
/// failed load leaves nothing, a successful one registers exactly the
/// image's agents and unloads them all. (Agents are never run: a mutated
/// image is arbitrary code.)
pub fn load(bytes: &[u8]) {
    let mut reg = Box::new(Registry::<SimPlatform>::new(SimPlatform::new(
        LogTarget::Capture,
    )));
    let opts = LoadOptions {
        policy: Policy {
            signers: Signers::AnyKey,
            unsigned: UnsignedImages::Accept,
        },
        allow_untrusted_admin: true,
    };
    match reg.load(bytes, &opts) {
        Ok(id) => {
            let n = Image::parse(bytes)
                .expect("loaded, so it parses")
                .agents()
                .count();
            assert_eq!(reg.agent_count(), n);
            let img = reg.image(id).expect("the loaded image");
            assert!(img.zone().len as u64 >= img.layout().total());
            assert_eq!(reg.unload(id), Ok(n));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let _ = e.code();
        }
    }
    assert_eq!(reg.agent_count(), 0);
    assert_eq!(reg.images().count(), 0);
}

/// Image bytes, then the same with the measurement fixed up.
pub fn image_and_load(bytes: &[u8]) {
    image(bytes);
    load(bytes);
    if let Some(b) = remeasured(bytes) {
        image(&b);
        load(&b);
    }
}

/// The allow-list parser: errors name a line and column inside the text;
/// a parsed list finds each of its keys.
pub fn allow_list(bytes: &[u8]) {
    match AllowList::parse_bytes(bytes) {
        Ok(l) => {
            assert_eq!(l.keys().count(), l.len());
            for k in l.keys() {
                assert!(l.find(&k.public_key).is_some());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The uart transport's frames: decoding arbitrary bytes never panics, and
/// a decoded frame encodes back to the same bytes.
pub fn uart_frames(bytes: &[u8]) {
    for chunk in bytes.chunks(REQUEST_LEN) {
        let mut f = [0u8; REQUEST_LEN];
        f[..chunk.len()].copy_from_slice(chunk);
        if let Ok(r) = Request::decode(&f) {
            assert_eq!(r.encode(), f);
            if let Some(a) = r.args() {
                assert_eq!(Request::new(r.seq, r.vcpu, a), r);
            }
        }
        // The same bytes with a valid checksum reach the field decoding.
        let mut g = f;
        g[0..2].copy_from_slice(&tetd::abi::uart::REQUEST_MAGIC);
        let c = tetd::abi::uart::checksum(&g[..REQUEST_LEN - 2]);
        g[REQUEST_LEN - 2..].copy_from_slice(&c.to_le_bytes());
        let r = Request::decode(&g).expect("a frame with magic and checksum decodes");
        assert_eq!(r.encode(), g);
        let _: Option<HypercallArgs> = r.args();
    }
    for chunk in bytes.chunks(RESPONSE_LEN) {
        let mut f = [0u8; RESPONSE_LEN];
        f[..chunk.len()].copy_from_slice(chunk);
        if let Ok(r) = Response::decode(&f) {
            assert_eq!(r.encode(), f);
            assert_eq!(Response::new(r.seq, r.ret()), r);
        }
    }
}
