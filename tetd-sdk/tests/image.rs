//! Image format: round trip and malformed images, each with its own error.

use tetd::abi::{self, Error, Mode};
use tetd::image::*;

fn sample() -> ImageBuilder {
    let mut text = vec![0x90u8; 100];
    text.push(0xc3);
    // data segment with one relocated slot at offset 0x1000 pointing to 0x10
    let mut data = vec![0u8; 64];
    data[..8].copy_from_slice(&0x10u64.to_le_bytes());
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
            package: encode_padded("sample").unwrap(),
            version: encode_padded("0.1.0").unwrap(),
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
                name: abi::encode_name("two"),
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
        relocations: vec![4096],
        load_size: 12288,
    }
}

fn remeasure(b: &mut [u8]) {
    let body_len = u32::from_le_bytes(b[56..60].try_into().unwrap()) as usize;
    let body_len = body_len.min(b.len());
    let m = compute_measurement(&b[..body_len]);
    b[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn round_trip() {
    let b = sample().build().unwrap();
    let img = Image::parse(&b).unwrap();
    assert_eq!(img.manifest().agent_count, 2);
    assert_eq!(img.manifest().package_name(), "sample");
    assert_eq!(img.manifest().package_version(), "0.1.0");
    let agents: Vec<_> = img.agents().collect();
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[1].name(), "two");
    assert!(agents[1].is_admin());
    assert_eq!(agents[1].mode, Mode::Collaborative);
    assert_eq!(img.agent(2).unwrap().max_output, 256);
    let segs: Vec<_> = img.segments().collect();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].perms_str(), "r-x");
    assert_eq!(segs[1].perms_str(), "rw-");
    assert_eq!(img.segment_data(&segs[0]).len(), 101);
    assert_eq!(img.relocations().collect::<Vec<_>>(), vec![4096]);
    assert_eq!(img.measurement(), &compute_measurement(img.body()));
    assert!(img.signature().unwrap().is_none());
    // signing keeps the body and the measurement
    let block = SignatureBlock::new([7; 32], [9; 64]);
    let signed = with_signature(&b, &block).unwrap();
    let simg = Image::parse(&signed).unwrap();
    assert_eq!(simg.measurement(), img.measurement());
    assert_eq!(simg.signature().unwrap(), Some(block));
    assert_eq!(without_signature(&signed).unwrap(), b);
    // the signed message covers measurement and manifest
    let parts = simg.signed_message_parts();
    assert_eq!(parts[0], SIG_DOMAIN);
    assert_eq!(parts[1], &img.measurement()[..]);
    assert_eq!(parts[2], img.manifest_bytes());
}

/// Apply `f` to a fresh valid image, optionally re-measure, expect `code`.
fn expect(name: &str, remeasure_after: bool, code: Error, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = sample().build().unwrap();
    f(&mut b);
    if remeasure_after {
        remeasure(&mut b);
    }
    match Image::parse(&b) {
        Ok(_) => panic!("{name}: malformed image was accepted"),
        Err(e) => {
            assert_eq!(e.code(), code, "{name}: wrong error: {e}");
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
}

const MANIFEST: usize = HEADER_SIZE;
fn segtab(b: &[u8]) -> usize {
    u32::from_le_bytes(b[32..36].try_into().unwrap()) as usize
}
fn reloctab(b: &[u8]) -> usize {
    u32::from_le_bytes(b[40..44].try_into().unwrap()) as usize
}

#[test]
fn malformed_images_each_get_their_own_error() {
    expect("empty", false, Error::BadMagic, |b| b.clear());
    expect("bad magic", false, Error::BadMagic, |b| b[0] = b'X');
    expect("version", false, Error::BadVersion, |b| b[8] = 9);
    expect("short header", false, Error::Truncated, |b| b.truncate(100));
    expect("header_size", false, Error::BadHeader, |b| b[10] = 64);
    expect("flags", false, Error::BadHeader, |b| put_u32(b, 12, 1));
    expect("truncated body", false, Error::Truncated, |b| {
        let n = b.len() - 10;
        b.truncate(n)
    });
    expect("load_size unaligned", true, Error::BadHeader, |b| {
        put_u64(b, 16, 12289)
    });
    expect("load_size huge", true, Error::BadHeader, |b| {
        put_u64(b, 16, 1 << 40)
    });
    expect("manifest overlaps header", true, Error::BadHeader, |b| {
        put_u32(b, 24, 64)
    });
    expect("segtab past body", true, Error::BadHeader, |b| {
        put_u32(b, 36, 1000)
    });
    expect("content flipped", false, Error::MeasurementMismatch, |b| {
        let n = b.len() - 1;
        b[n - 30] ^= 1
    });
    expect(
        "measurement flipped",
        false,
        Error::MeasurementMismatch,
        |b| b[MEASUREMENT_OFFSET] ^= 1,
    );
    expect("zero agents", true, Error::BadManifest, |b| {
        put_u32(b, MANIFEST, 0)
    });
    expect("stack unaligned", true, Error::BadManifest, |b| {
        put_u32(b, MANIFEST + 8, 1000)
    });
    expect("bad mode", true, Error::BadManifest, |b| {
        put_u32(b, MANIFEST + 24, 5)
    });
    expect("agent id 0", true, Error::BadManifest, |b| {
        put_u32(b, MANIFEST + MANIFEST_HEADER_SIZE, 0)
    });
    expect("duplicate id", true, Error::DuplicateAgentId, |b| {
        put_u32(b, MANIFEST + MANIFEST_HEADER_SIZE + AGENT_RECORD_SIZE, 1)
    });
    expect("agent name not utf8", true, Error::BadManifest, |b| {
        b[MANIFEST + MANIFEST_HEADER_SIZE + 32] = 0xff
    });
    expect("unknown agent flag", true, Error::BadManifest, |b| {
        put_u32(b, MANIFEST + MANIFEST_HEADER_SIZE + 8, 0x80)
    });
    expect("entry in data", true, Error::BadEntry, |b| {
        put_u64(b, MANIFEST + MANIFEST_HEADER_SIZE + 24, 0x1008)
    });
    expect("entry outside image", true, Error::BadEntry, |b| {
        put_u64(b, MANIFEST + MANIFEST_HEADER_SIZE + 24, 0x100000)
    });
    expect("W+X", true, Error::WriteExecute, |b| {
        let s = segtab(b);
        put_u32(b, s + SEGMENT_ENTRY_SIZE + 24, PERM_R | PERM_W | PERM_X)
    });
    expect("segment unaligned", true, Error::BadSegment, |b| {
        let s = segtab(b);
        put_u64(b, s + SEGMENT_ENTRY_SIZE, 4097)
    });
    expect("segments overlap", true, Error::BadSegment, |b| {
        let s = segtab(b);
        put_u64(b, s + 8, 8192)
    });
    expect("segment past load_size", true, Error::BadSegment, |b| {
        let s = segtab(b);
        put_u64(b, s + SEGMENT_ENTRY_SIZE + 8, 16384)
    });
    expect("file_size > mem_size", true, Error::BadSegment, |b| {
        let s = segtab(b);
        put_u32(b, s + 20, 5000)
    });
    expect(
        "segment data outside data region",
        true,
        Error::BadSegment,
        |b| {
            let s = segtab(b);
            put_u32(b, s + 16, 100000)
        },
    );
    expect("unreadable segment", true, Error::BadSegment, |b| {
        let s = segtab(b);
        put_u32(b, s + 24, PERM_X)
    });
    expect("reloc in bss", true, Error::BadRelocation, |b| {
        let r = reloctab(b);
        put_u32(b, r, 4096 + 4000)
    });
    expect("reloc outside image", true, Error::BadRelocation, |b| {
        let r = reloctab(b);
        put_u32(b, r, 0x7fff_0000)
    });
    expect(
        "reloc target outside image",
        true,
        Error::BadRelocation,
        |b| {
            let data_off = u32::from_le_bytes(b[48..52].try_into().unwrap()) as usize;
            let s = segtab(b);
            let file_off =
                u32::from_le_bytes(b[s + SEGMENT_ENTRY_SIZE + 16..][..4].try_into().unwrap())
                    as usize;
            put_u64(b, data_off + file_off, 1 << 30)
        },
    );
    expect("trailing garbage", false, Error::BadSignatureBlock, |b| {
        b.extend_from_slice(b"junk")
    });
    expect(
        "truncated signature",
        false,
        Error::BadSignatureBlock,
        |b| {
            let block = SignatureBlock::new([1; 32], [2; 64]).to_bytes();
            b.extend_from_slice(&block[..100]);
        },
    );
    expect(
        "signature key id mismatch",
        false,
        Error::BadSignatureBlock,
        |b| {
            let mut block = SignatureBlock::new([1; 32], [2; 64]).to_bytes();
            block[112] ^= 1;
            b.extend_from_slice(&block);
        },
    );
}

#[test]
fn builder_rejects_invalid_input() {
    let mut s = sample();
    s.segments[0].perms = PERM_R | PERM_W | PERM_X;
    assert_eq!(s.build().unwrap_err().code(), Error::WriteExecute);
    let mut s = sample();
    s.agents[1].id = 1;
    assert_eq!(s.build().unwrap_err(), ImageError::DuplicateAgentId(1));
}

#[test]
fn error_messages_name_the_field() {
    let mut b = sample().build().unwrap();
    put_u32(&mut b, MANIFEST + 8, 1000);
    remeasure(&mut b);
    let msg = Image::parse(&b).unwrap_err().to_string();
    assert!(msg.contains("stack_size"), "{msg}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random bytes never crash the parser.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Image::parse(&bytes);
        }

        /// Random corruption of a valid image (re-measured so the deeper
        /// checks run) never crashes the parser.
        #[test]
        fn corrupted_valid_image_never_panics(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
            remeasured in any::<bool>(),
        ) {
            let mut b = sample().build().unwrap();
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            if remeasured && b.len() >= HEADER_SIZE { remeasure(&mut b); }
            let _ = Image::parse(&b);
        }
    }
}
