//! `tetd::verify`: signed images verify; every single-byte change is
//! rejected with the error for the region it hits; the policy (allow-list,
//! single key, self-consistency, unsigned images, admin keys); the
//! allow-list parser.
//!
//! Images are signed here with `ring` (what `tetd-pack` uses), so every test
//! that verifies also shows the host signer and the no_std verifier agree.

use ring::signature::{Ed25519KeyPair, KeyPair};
use tetd::abi::{self, Error, Mode};
use tetd::image::*;
use tetd::verify::*;

fn sample() -> ImageBuilder {
    let mut text = vec![0x90u8; 100];
    text.push(0xc3);
    let mut data = vec![0u8; 64];
    data[..8].copy_from_slice(&0x10u64.to_le_bytes());
    data[8..16].copy_from_slice(&0x20u64.to_le_bytes());
    ImageBuilder {
        manifest: ManifestHeader {
            agent_count: 0,
            flags: 0,
            stack_size: 16384,
            heap_size: 4096,
            max_input: 4096,
            max_output: 4096,
            mode: Mode::Exclusive,
            required_services: 0,
            package: encode_padded("signed-sample").unwrap(),
            version: encode_padded("1.2.3").unwrap(),
        },
        agents: vec![
            AgentRecord {
                id: 1,
                mode: Mode::Exclusive,
                flags: 0,
                max_input: 4096,
                max_output: 4096,
                entry: 0,
                name: abi::encode_name("one"),
            },
            AgentRecord {
                id: 2,
                mode: Mode::Collaborative,
                flags: abi::AGENT_FLAG_ADMIN,
                max_input: 128,
                max_output: 256,
                entry: 0x10,
                name: abi::encode_name("admin"),
            },
        ],
        segments: vec![
            SegmentSpec {
                vaddr: 0,
                mem_size: 4096,
                perms: PERM_R | PERM_X,
                data: text,
            },
            SegmentSpec {
                vaddr: 4096,
                mem_size: 8192,
                perms: PERM_R | PERM_W,
                data,
            },
        ],
        relocations: vec![4096, 4104],
        load_size: 12288,
    }
}

/// A sample image with no admin agent.
fn sample_plain() -> ImageBuilder {
    let mut b = sample();
    b.agents.truncate(1);
    b
}

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
}

fn pk(kp: &Ed25519KeyPair) -> [u8; 32] {
    kp.public_key().as_ref().try_into().unwrap()
}

/// Sign `image` with `ring`, the way `tetd-pack sign` does.
fn sign(image: &[u8], kp: &Ed25519KeyPair) -> Vec<u8> {
    let img = Image::parse(image).unwrap();
    let msg: Vec<u8> = img.signed_message_parts().concat();
    let sig: [u8; 64] = kp.sign(&msg).as_ref().try_into().unwrap();
    with_signature(image, &SignatureBlock::new(pk(kp), sig)).unwrap()
}

fn list_text(entries: &[(&Ed25519KeyPair, bool)]) -> String {
    let mut s = String::from("# test allow-list\n");
    for (kp, admin) in entries {
        let k = TrustedKey {
            public_key: pk(kp),
            admin: *admin,
        };
        s += &format!("{}  # key id {}\n", k.line(), Hex(&k.key_id()));
    }
    s
}

/// Parse then verify: the whole loader-side decision.
fn check(bytes: &[u8], policy: &Policy) -> Result<Verified, Error> {
    let img = Image::parse(bytes).map_err(|e| e.code())?;
    verify_image(&img, policy)
}

#[test]
fn signed_image_verifies() {
    let signer = key(1);
    let unsigned = sample().build().unwrap();
    let signed = sign(&unsigned, &signer);
    let text = list_text(&[(&key(9), false), (&signer, true)]);
    let list = AllowList::parse(&text).unwrap();
    assert_eq!(list.len(), 2);

    let v = check(&signed, &Policy::require_signed(list)).unwrap();
    let img = Image::parse(&signed).unwrap();
    assert_eq!(&v.measurement, img.measurement());
    let s = v.signer.unwrap();
    assert_eq!(s.public_key, pk(&signer));
    assert_eq!(s.key_id, key_id(&pk(&signer)));
    assert!(s.trusted && s.admin);
    assert!(v.is_trusted() && v.is_admin());
    v.check_admin_agents(&img).unwrap();

    // The same with the key given alone.
    let only = TrustedKey {
        public_key: pk(&signer),
        admin: false,
    };
    let v = check(&signed, &Policy::single_key(only)).unwrap();
    assert!(v.is_trusted() && !v.is_admin());
    // Self-consistency: verifies, but says nothing about trust.
    let v = check(&signed, &Policy::self_consistent()).unwrap();
    assert!(!v.is_trusted() && !v.is_admin());
    assert_eq!(v.signer.unwrap().key_id, key_id(&pk(&signer)));
}

#[test]
fn wrong_and_unlisted_keys_are_rejected() {
    let signer = key(1);
    let other = key(2);
    let signed = sign(&sample().build().unwrap(), &signer);
    let text = list_text(&[(&other, true)]);
    let list = AllowList::parse(&text).unwrap();
    assert_eq!(
        check(&signed, &Policy::require_signed(list)),
        Err(Error::SignerNotAllowed)
    );
    assert_eq!(
        check(&signed, &Policy::allow_unsigned(list)),
        Err(Error::SignerNotAllowed),
        "dev mode still checks signed images"
    );
    assert_eq!(
        check(&signed, &Policy::require_signed(AllowList::empty())),
        Err(Error::SignerNotAllowed)
    );
    let only_other = TrustedKey {
        public_key: pk(&other),
        admin: true,
    };
    assert_eq!(
        check(&signed, &Policy::single_key(only_other)),
        Err(Error::SignerNotAllowed)
    );

    // A block that claims the trusted key (with a consistent key id) but
    // carries a signature made by another key: the signature is invalid.
    let img = Image::parse(&signed).unwrap();
    let real = img.signature().unwrap().unwrap();
    let forged = with_signature(&signed, &SignatureBlock::new(pk(&other), real.signature)).unwrap();
    assert_eq!(
        check(&forged, &Policy::require_signed(list)),
        Err(Error::BadSignature)
    );
    // A signature by the right key over a different image's message.
    let mut b2 = sample();
    b2.manifest.stack_size = 32768;
    let other_image = sign(&b2.build().unwrap(), &other);
    let sig_other = Image::parse(&other_image)
        .unwrap()
        .signature()
        .unwrap()
        .unwrap();
    let transplanted = with_signature(&signed, &sig_other).unwrap();
    assert_eq!(
        check(&transplanted, &Policy::require_signed(list)),
        Err(Error::BadSignature)
    );
}

#[test]
fn unsigned_images_follow_the_policy() {
    let unsigned = sample_plain().build().unwrap();
    let text = list_text(&[(&key(1), true)]);
    let list = AllowList::parse(&text).unwrap();
    assert_eq!(
        check(&unsigned, &Policy::require_signed(list)),
        Err(Error::Unsigned)
    );
    assert_eq!(
        check(&unsigned, &Policy::self_consistent()),
        Err(Error::Unsigned)
    );
    let v = check(&unsigned, &Policy::allow_unsigned(list)).unwrap();
    assert_eq!(v.signer, None);
    assert!(!v.is_trusted() && !v.is_admin());
    // An unsigned image with an admin agent is accepted in dev mode but its
    // admin agent is not.
    let with_admin = sample().build().unwrap();
    let v = check(&with_admin, &Policy::allow_unsigned(list)).unwrap();
    let img = Image::parse(&with_admin).unwrap();
    assert_eq!(v.check_admin_agents(&img), Err(Error::Denied));
    let plain = Image::parse(&unsigned).unwrap();
    v.check_admin_agents(&plain).unwrap();
}

#[test]
fn admin_agents_need_an_admin_key() {
    let signer = key(3);
    let signed = sign(&sample().build().unwrap(), &signer);
    let img = Image::parse(&signed).unwrap();
    let t_user = list_text(&[(&signer, false)]);
    let v = verify_image(
        &img,
        &Policy::require_signed(AllowList::parse(&t_user).unwrap()),
    )
    .unwrap();
    assert!(v.is_trusted() && !v.is_admin());
    assert_eq!(v.check_admin_agents(&img), Err(Error::Denied));
    let t_admin = list_text(&[(&signer, true)]);
    let v = verify_image(
        &img,
        &Policy::require_signed(AllowList::parse(&t_admin).unwrap()),
    )
    .unwrap();
    v.check_admin_agents(&img).unwrap();
    // Self-consistency never grants admin.
    let v = verify_image(&img, &Policy::self_consistent()).unwrap();
    assert_eq!(v.check_admin_agents(&img), Err(Error::Denied));
}

#[test]
fn resigning_replaces_the_block() {
    let a = key(1);
    let b = key(2);
    let once = sign(&sample().build().unwrap(), &a);
    let twice = sign(&once, &b);
    assert_eq!(once.len(), twice.len());
    let only = |kp: &Ed25519KeyPair| {
        Policy::single_key(TrustedKey {
            public_key: pk(kp),
            admin: false,
        })
    };
    check(&twice, &only(&b)).unwrap();
    assert_eq!(check(&twice, &only(&a)), Err(Error::SignerNotAllowed));
    // Stripping gives back the unsigned image.
    assert_eq!(
        without_signature(&twice).unwrap(),
        sample().build().unwrap()
    );
}

/// Names the region of a signed sample image that `pos` lies in, and the
/// errors a change there may produce.
fn region(img: &Image, pos: usize) -> (String, &'static [Error]) {
    const STRUCTURAL: &[Error] = &[
        Error::BadMagic,
        Error::BadVersion,
        Error::Truncated,
        Error::BadHeader,
        Error::BadManifest,
        Error::BadSegment,
        Error::WriteExecute,
        Error::BadRelocation,
        Error::DuplicateAgentId,
        Error::BadEntry,
        Error::MeasurementMismatch,
    ];
    let h = img.header();
    let body = h.body_len as usize;
    let rel = |base: u32, size: usize| (pos - base as usize) / size;
    if pos < 8 {
        ("header.magic".into(), &[Error::BadMagic])
    } else if pos < 10 {
        ("header.version".into(), &[Error::BadVersion])
    } else if (MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN).contains(&pos) {
        ("header.measurement".into(), &[Error::MeasurementMismatch])
    } else if pos < HEADER_SIZE {
        // Size/offset fields: either the structure no longer holds or the
        // body no longer matches its measurement.
        (format!("header byte {pos}"), STRUCTURAL)
    } else if pos < body {
        let name = if pos < (h.manifest_off + h.manifest_len) as usize {
            let m = pos - h.manifest_off as usize;
            if m < MANIFEST_HEADER_SIZE {
                "manifest header".to_string()
            } else {
                format!(
                    "agent record {}",
                    (m - MANIFEST_HEADER_SIZE) / AGENT_RECORD_SIZE
                )
            }
        } else if pos < h.segtab_off as usize {
            "padding after manifest".into()
        } else if pos < h.segtab_off as usize + h.seg_count as usize * SEGMENT_ENTRY_SIZE {
            format!("segment entry {}", rel(h.segtab_off, SEGMENT_ENTRY_SIZE))
        } else if pos < h.reloc_off as usize + h.reloc_count as usize * RELOC_ENTRY_SIZE {
            format!("relocation entry {}", rel(h.reloc_off, RELOC_ENTRY_SIZE))
        } else if pos < h.data_off as usize {
            "padding before data".into()
        } else {
            let d = (pos - h.data_off as usize) as u32;
            match img
                .segments()
                .position(|s| d >= s.file_off && d < s.file_off + s.file_size)
            {
                Some(i) => format!("segment {i} data"),
                None => "data padding".into(),
            }
        };
        // The measurement is checked before anything after the header is
        // interpreted: every body change is exactly a measurement mismatch.
        (name, &[Error::MeasurementMismatch])
    } else {
        let s = pos - body;
        match s {
            0..=15 => ("signature block header".into(), &[Error::BadSignatureBlock]),
            // The key id no longer matches the key.
            16..=47 => (
                "signature block public key".into(),
                &[Error::BadSignatureBlock],
            ),
            48..=111 => ("signature".into(), &[Error::BadSignature]),
            112..=119 => ("signature block key id".into(), &[Error::BadSignatureBlock]),
            _ => (
                "signature block reserved".into(),
                &[Error::BadSignatureBlock],
            ),
        }
    }
}

#[test]
fn every_single_byte_change_is_rejected_with_the_right_error() {
    let signer = key(7);
    let signed = sign(&sample().build().unwrap(), &signer);
    let text = list_text(&[(&signer, true)]);
    let policy = Policy::require_signed(AllowList::parse(&text).unwrap());
    check(&signed, &policy).unwrap();
    let img = Image::parse(&signed).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for pos in 0..signed.len() {
        let (name, allowed) = region(&img, pos);
        seen.insert(name.split(' ').take(2).collect::<Vec<_>>().join(" "));
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = signed.clone();
            b[pos] ^= mask;
            match check(&b, &policy) {
                Ok(_) => panic!("byte {pos} ({name}) ^ {mask:#x}: accepted"),
                Err(e) => assert!(
                    allowed.contains(&e),
                    "byte {pos} ({name}) ^ {mask:#x}: got {e:?}, expected one of {allowed:?}"
                ),
            }
        }
    }
    // The loop really went through every kind of region.
    for r in [
        "header.magic",
        "header.version",
        "header.measurement",
        "manifest header",
        "agent record",
        "segment entry",
        "relocation entry",
        "segment 0",
        "segment 1",
        "signature block",
        "signature",
    ] {
        assert!(
            seen.iter().any(|s| s.starts_with(r)),
            "region {r} not covered: {seen:?}"
        );
    }
}

/// An attacker who changes the body and recomputes the measurement is
/// caught by the signature (or by the structural checks).
#[test]
fn every_body_change_with_a_recomputed_measurement_is_rejected() {
    let signer = key(8);
    let signed = sign(&sample().build().unwrap(), &signer);
    let text = list_text(&[(&signer, false)]);
    let policy = Policy::require_signed(AllowList::parse(&text).unwrap());
    let img = Image::parse(&signed).unwrap();
    let body_len = img.header().body_len as usize;
    // The code segment's bytes (no relocations in it): any change that keeps
    // the structure is caught by the signature alone.
    let text = img.segments().next().unwrap();
    let text_start = img.header().data_off as usize + text.file_off as usize;
    let text_range = text_start..text_start + text.file_size as usize;
    let mut bad_signature = 0;
    for pos in (0..body_len).filter(|p| !(MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + 48).contains(p))
    {
        let mut b = signed.clone();
        b[pos] ^= 0x01;
        let m = compute_measurement(&b[..body_len]);
        b[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
        let r = check(&b, &policy);
        if text_range.contains(&pos) {
            assert_eq!(r.map(|_| ()), Err(Error::BadSignature), "code byte {pos}");
        }
        match r {
            Ok(_) => panic!("byte {pos} changed and re-measured: accepted"),
            Err(Error::BadSignature) => bad_signature += 1,
            Err(
                Error::BadMagic
                | Error::BadVersion
                | Error::Truncated
                | Error::BadHeader
                | Error::BadManifest
                | Error::BadSegment
                | Error::WriteExecute
                | Error::BadRelocation
                | Error::DuplicateAgentId
                | Error::BadEntry
                | Error::BadSignatureBlock,
            ) => {}
            Err(e) => panic!("byte {pos}: unexpected {e:?}"),
        }
    }
    // Besides the code: names, sizes, data... are caught by the signature.
    assert!(bad_signature > text_range.len() + 64, "{bad_signature}");
}

#[test]
fn truncated_or_extended_signed_images_are_rejected() {
    let signer = key(4);
    let signed = sign(&sample().build().unwrap(), &signer);
    let text = list_text(&[(&signer, false)]);
    let policy = Policy::require_signed(AllowList::parse(&text).unwrap());
    let body_len = Image::parse(&signed).unwrap().header().body_len as usize;
    for len in 0..signed.len() {
        let e = check(&signed[..len], &policy).unwrap_err();
        let want: &[Error] = if len < 8 {
            &[Error::BadMagic]
        } else if len < body_len {
            &[Error::Truncated]
        } else if len == body_len {
            &[Error::Unsigned]
        } else {
            &[Error::BadSignatureBlock]
        };
        assert!(want.contains(&e), "length {len}: {e:?}, want {want:?}");
    }
    let mut longer = signed.clone();
    longer.push(0);
    assert_eq!(check(&longer, &policy), Err(Error::BadSignatureBlock));
}

// ---------------------------------------------------------------------------
// Ed25519: ring (host signer) and the no_std verifier agree
// ---------------------------------------------------------------------------

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    decode_hex::<N>(s).unwrap()
}

fn unhex_vec(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// RFC 8032 section 7.1, tests 1, 2, 3 and SHA(abc).
/// (seed, public key, message, signature)
type Vector = ([u8; 32], [u8; 32], Vec<u8>, [u8; 64]);

fn rfc8032() -> Vec<Vector> {
    use sha2::Digest;
    vec![
        (
            unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
            unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
            vec![],
            unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
        ),
        (
            unhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"),
            unhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),
            unhex_vec("72"),
            unhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
        ),
        (
            unhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7"),
            unhex("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"),
            unhex_vec("af82"),
            unhex("6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
        ),
        (
            unhex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42"),
            unhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"),
            sha2::Sha512::digest(b"abc").to_vec(),
            unhex("dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
        ),
    ]
}

fn ring_verify(pk: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
        .verify(msg, sig)
        .is_ok()
}

#[test]
fn rfc8032_vectors_ring_and_tetd_verify_agree() {
    for (n, (seed, public, msg, sig)) in rfc8032().into_iter().enumerate() {
        // ring derives the same key and makes the same signature.
        let kp = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(pk(&kp), public, "vector {n}: public key");
        assert_eq!(
            kp.sign(&msg).as_ref(),
            &sig[..],
            "vector {n}: ring signature"
        );
        // Both verify it, whole and in parts.
        assert!(ring_verify(&public, &msg, &sig), "vector {n}: ring");
        verify_signature(&public, &sig, &[&msg]).unwrap();
        for cut in 0..=msg.len() {
            verify_signature(&public, &sig, &[&msg[..cut], &[], &msg[cut..]]).unwrap();
        }
        // Both reject every single-bit change of the signature and the key,
        // and a changed message.
        for i in 0..64 * 8 {
            let mut s = sig;
            s[i / 8] ^= 1 << (i % 8);
            assert!(
                !ring_verify(&public, &msg, &s),
                "vector {n} sig bit {i}: ring"
            );
            assert_eq!(
                verify_signature(&public, &s, &[&msg]),
                Err(Error::BadSignature),
                "vector {n} sig bit {i}: tetd"
            );
        }
        for i in 0..32 * 8 {
            let mut k = public;
            k[i / 8] ^= 1 << (i % 8);
            assert!(!ring_verify(&k, &msg, &sig), "vector {n} key bit {i}: ring");
            assert!(
                verify_signature(&k, &sig, &[&msg]).is_err(),
                "vector {n} key bit {i}: tetd"
            );
        }
        let mut m2 = msg.clone();
        m2.push(0);
        assert!(!ring_verify(&public, &m2, &sig));
        assert_eq!(
            verify_signature(&public, &sig, &[&m2]),
            Err(Error::BadSignature)
        );
    }
}

#[test]
fn ed25519_compact_signer_matches_ring() {
    // The no_std side's own signer (ed25519-compact, deterministic RFC 8032
    // signing) and ring produce identical signatures, and each verifies the
    // other's.
    for seed in 1u8..=24 {
        let kp_ring = key(seed);
        let kp_compact =
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        assert_eq!(&kp_compact.pk[..], &pk(&kp_ring)[..]);
        let msg: Vec<u8> = (0..seed as usize * 37)
            .map(|i| (i * 31 + seed as usize) as u8)
            .collect();
        let s_ring: [u8; 64] = kp_ring.sign(&msg).as_ref().try_into().unwrap();
        let s_compact = kp_compact.sk.sign(&msg, None);
        assert_eq!(&s_compact[..], &s_ring[..], "seed {seed}");
        verify_signature(&pk(&kp_ring), &s_ring, &[&msg]).unwrap();
        assert!(ring_verify(&pk(&kp_ring), &msg, &s_compact));
    }
}

#[test]
fn ring_signed_images_verify_with_many_keys() {
    let unsigned = sample().build().unwrap();
    for seed in 0u8..16 {
        let kp = key(seed);
        let signed = sign(&unsigned, &kp);
        let img = Image::parse(&signed).unwrap();
        let block = img.signature().unwrap().unwrap();
        // ring verifies its own signature over the same message...
        let msg = img.signed_message_parts().concat();
        assert!(ring_verify(&block.public_key, &msg, &block.signature));
        // ...and so does tetd::verify.
        verify_block(&img, &block).unwrap();
        assert!(check(&signed, &Policy::self_consistent()).is_ok());
    }
}

// ---------------------------------------------------------------------------
// Allow-list format
// ---------------------------------------------------------------------------

const PK1: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const PK2: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
const PK3: &str = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025";

#[test]
fn allow_list_parses_comments_attributes_and_line_ends() {
    let text = format!(
        "# TETD signer allow-list\n\
         \n\
         ed25519:{PK1} admin # release key\r\n\
         \t  ed25519:{}\t# CI key, upper-case hex\n\
         ed25519:{PK3}#not-a-comment-without-space-is-part-of-key\n",
        PK2.to_uppercase()
    );
    // The last line glues `#...` to the key: that is a bad key, not a comment.
    let e = AllowList::parse(&text).unwrap_err();
    assert_eq!(e.line, 5);
    assert_eq!(e.kind, AllowListErrorKind::NotHex);
    assert_eq!(e.column, 8 + 64 + 1);

    let text = format!(
        "# TETD signer allow-list\n\
         \n\
         ed25519:{PK1} admin # release key\r\n\
         \t  ed25519:{}\t# CI key, upper-case hex\n\
         ed25519:{PK3}   \n\
         # end",
        PK2.to_uppercase()
    );
    let list = AllowList::parse(&text).unwrap();
    assert_eq!(list.len(), 3);
    let keys: Vec<_> = list.keys().collect();
    assert_eq!(keys[0].public_key, unhex::<32>(PK1));
    assert!(keys[0].admin);
    assert_eq!(keys[1].public_key, unhex::<32>(PK2));
    assert!(!keys[1].admin);
    assert_eq!(keys[2].public_key, unhex::<32>(PK3));
    assert_eq!(list.find(&unhex(PK2)), Some(keys[1]));
    assert_eq!(list.find(&[5; 32]), None);
    // The line format round-trips.
    assert_eq!(keys[0].line().to_string(), format!("ed25519:{PK1} admin"));
    let again = keys
        .iter()
        .map(|k| k.line().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        AllowList::parse(&again).unwrap().keys().collect::<Vec<_>>(),
        keys
    );
    // Empty and comment-only lists are valid and trust nobody.
    assert!(AllowList::parse("").unwrap().is_empty());
    assert!(AllowList::parse("# nobody\n\n").unwrap().is_empty());
    assert!(AllowList::parse_bytes(text.as_bytes()).is_ok());
}

#[test]
fn allow_list_errors_name_line_and_column() {
    let cases: Vec<(String, usize, usize, AllowListErrorKind)> = vec![
        (
            format!("# c\n{PK1}\n"),
            2,
            1,
            AllowListErrorKind::MissingPrefix,
        ),
        (
            format!("ed448:{PK1}\n"),
            1,
            1,
            AllowListErrorKind::MissingPrefix,
        ),
        (
            format!("\n\ned25519:{}\n", &PK1[..62]),
            3,
            9,
            AllowListErrorKind::KeyLength { digits: 62 },
        ),
        (
            format!("ed25519:{PK1}00\n"),
            1,
            9,
            AllowListErrorKind::KeyLength { digits: 66 },
        ),
        (
            format!("ed25519:{}g\n", &PK1[..63]),
            1,
            72,
            AllowListErrorKind::NotHex,
        ),
        (
            format!("ed25519:{PK1} admin root\n"),
            1,
            80,
            AllowListErrorKind::UnknownAttribute,
        ),
        (
            format!("ed25519:{PK1} ADMIN\n"),
            1,
            74,
            AllowListErrorKind::UnknownAttribute,
        ),
        (
            format!("ed25519:{PK1}\n# x\ned25519:{} admin\n", PK1.to_uppercase()),
            3,
            1,
            AllowListErrorKind::DuplicateKey { first_line: 1 },
        ),
        // The identity point (small order) and a non-canonical encoding.
        (
            format!("ed25519:01{}\n", "00".repeat(31)),
            1,
            9,
            AllowListErrorKind::InvalidKey,
        ),
        (
            format!("ed25519:{}7f\n", "ff".repeat(31)),
            1,
            9,
            AllowListErrorKind::InvalidKey,
        ),
    ];
    for (text, line, column, kind) in cases {
        let e = AllowList::parse(&text).unwrap_err();
        assert_eq!((e.line, e.column, e.kind), (line, column, kind), "{text:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("line {line}, column {column}: ")),
            "{msg}"
        );
    }
    let e = AllowList::parse_bytes(b"# ok\n# bad \xff byte\n").unwrap_err();
    assert_eq!(
        (e.line, e.column, e.kind),
        (2, 7, AllowListErrorKind::NotUtf8)
    );
}

#[test]
fn allow_list_errors_never_echo_the_input() {
    // A secret-looking line (e.g. a private key file passed by mistake).
    let secret = "ed25519:SECRETSECRETSECRET";
    let e = AllowList::parse(secret).unwrap_err();
    assert!(!e.to_string().contains("SECRET"));
    let secret = format!("ed25519:{PK1} c2VjcmV0a2V5bWF0ZXJpYWw=");
    let e = AllowList::parse(&secret).unwrap_err();
    assert!(!e.to_string().contains("c2Vj"));
    let e = AllowList::parse(&format!("ed25519:{}", &PK2[..40])).unwrap_err();
    assert!(!e.to_string().contains(&PK2[..8]));
}

#[test]
fn hex_helpers() {
    assert_eq!(Hex(&[0x00, 0xab, 0x7f]).to_string(), "00ab7f");
    assert_eq!(decode_hex::<2>("00aB"), Ok([0x00, 0xab]));
    assert_eq!(decode_hex::<2>("00a"), Err(3));
    assert_eq!(decode_hex::<2>("00x0"), Err(2));
    assert!(is_valid_public_key(&unhex(PK1)));
    assert!(!is_valid_public_key(&[0; 32]));
}

// ---------------------------------------------------------------------------
// Robustness: arbitrary changes never panic and are never accepted
// ---------------------------------------------------------------------------

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn random_changes_are_rejected(
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 1..6),
        cut in proptest::prelude::any::<Option<usize>>(),
    ) {
        let signer = key(5);
        let signed = sign(&sample().build().unwrap(), &signer);
        let text = list_text(&[(&signer, false)]);
        let policy = Policy::require_signed(AllowList::parse(&text).unwrap());
        let mut b = signed.clone();
        for (pos, x) in &edits {
            let p = pos % b.len();
            b[p] ^= x;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        if b != signed {
            proptest::prop_assert!(check(&b, &policy).is_err());
        }
    }

    #[test]
    fn arbitrary_allow_lists_never_panic(text in "(ed25519:[0-9a-fA-F]{0,70}| admin|#|\n|\r| |[ -~]){0,40}") {
        if let Ok(l) = AllowList::parse(&text) {
            proptest::prop_assert_eq!(l.keys().count(), l.len());
        }
    }
}

#[test]
fn segment_entry_reserved_field_must_be_zero() {
    // Every byte of the format is either checked or measured; reserved
    // fields are both (so future versions can give them a meaning).
    let mut b = sample().build().unwrap();
    let segtab = Image::parse(&b).unwrap().header().segtab_off as usize;
    b[segtab + SEGMENT_ENTRY_SIZE + 28] = 1;
    let body_len = b.len();
    let m = compute_measurement(&b[..body_len]);
    b[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
    let e = Image::parse(&b).unwrap_err();
    assert_eq!(e.code(), Error::BadSegment);
    assert!(e.to_string().contains("reserved"), "{e}");
}

#[test]
fn large_allow_list() {
    // Many keys: parse once, then look-ups re-read the text (no allocation).
    let keys: Vec<Ed25519KeyPair> = (0..200u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            seed[31] = 1;
            Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
        })
        .collect();
    let entries: Vec<(&Ed25519KeyPair, bool)> = keys.iter().map(|k| (k, false)).collect();
    let text = list_text(&entries);
    let list = AllowList::parse(&text).unwrap();
    assert_eq!(list.len(), 200);
    let signed = sign(&sample_plain().build().unwrap(), &keys[199]);
    let v = check(&signed, &Policy::require_signed(list)).unwrap();
    assert_eq!(v.signer.unwrap().public_key, pk(&keys[199]));
    // The same list with the last key repeated is rejected, naming both lines.
    let dup = format!(
        "{text}{}\n",
        TrustedKey {
            public_key: pk(&keys[17]),
            admin: true
        }
        .line()
    );
    let e = AllowList::parse(&dup).unwrap_err();
    assert_eq!(e.line, 202);
    assert_eq!(e.kind, AllowListErrorKind::DuplicateKey { first_line: 19 });
}
