//! The `.tetd` image format: parse (no allocation), check, measure, write.
//!
//! The byte-by-byte specification is `docs/image-format.md`; this module is
//! its one implementation. In short (all integers little-endian):
//!
//! ```text
//! header (128) | manifest | segment table | relocation table | segment data | [signature block]
//! \_____________________________ body _______________________________________/
//! ```
//!
//! * The **measurement** is SHA-384 over the body with the header's
//!   measurement field (bytes 64..112) read as zeros. It covers everything
//!   that is loaded and everything that decides how (manifest, segments,
//!   relocations).
//! * The optional **signature block** follows the body; signing never changes
//!   the body, so the measurement of an image is the same signed or not.
//!
//! Every length and offset is checked; [`Image::parse`] returns an
//! [`ImageError`] naming the field at fault for any malformed input and never
//! panics.

use core::fmt;

use sha2::{Digest, Sha384};

use crate::abi::{self, Error, Mode, AGENT_FLAGS_ALL, AGENT_NAME_LEN, PAGE_SIZE};

/// First 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"TETDIMG\0";
/// Current format version.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the header.
pub const HEADER_SIZE: usize = 128;
/// Offset of the measurement within the header.
pub const MEASUREMENT_OFFSET: usize = 64;
/// Length of the measurement (SHA-384).
pub const MEASUREMENT_LEN: usize = 48;
/// Size of the manifest header.
pub const MANIFEST_HEADER_SIZE: usize = 96;
/// Size of one agent record in the manifest.
pub const AGENT_RECORD_SIZE: usize = 80;
/// Size of one segment table entry.
pub const SEGMENT_ENTRY_SIZE: usize = 32;
/// Size of one relocation entry.
pub const RELOC_ENTRY_SIZE: usize = 4;
/// Largest address space an image may ask for (64 MiB).
pub const MAX_LOAD_SIZE: u64 = 64 << 20;
/// Most agents one image may carry.
pub const MAX_AGENTS: u32 = 64;
/// Most segments one image may carry.
pub const MAX_SEGMENTS: u32 = 16;
/// Largest stack / heap an image may ask for (16 MiB each).
pub const MAX_STACK_OR_HEAP: u32 = 16 << 20;
/// Largest per-call input or output (16 MiB).
pub const MAX_IO: u32 = 16 << 20;

/// Segment permission: readable.
pub const PERM_R: u32 = 1;
/// Segment permission: writable.
pub const PERM_W: u32 = 2;
/// Segment permission: executable.
pub const PERM_X: u32 = 4;

/// Magic of the signature block.
pub const SIG_MAGIC: [u8; 8] = *b"TETDSIG\0";
/// Signature block format version.
pub const SIG_VERSION: u16 = 1;
/// Signature algorithm: Ed25519.
pub const SIG_ALG_ED25519: u16 = 1;
/// Size of the signature block.
pub const SIG_BLOCK_SIZE: usize = 128;
/// Domain separator at the start of the signed message.
pub const SIG_DOMAIN: &[u8] = b"TETD-IMAGE-SIG-v1\0";

/// What went wrong with an image. `Display` names the field and the values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    /// Fewer bytes than a structure needs.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed (end offset).
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// The magic is wrong.
    BadMagic,
    /// Unknown format version.
    BadVersion(u16),
    /// A header field is invalid.
    BadHeader {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// A table or region lies outside the body or overlaps another.
    BadRegion {
        /// Region name.
        region: &'static str,
        /// Start offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// A manifest field is invalid.
    BadManifest {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// An agent record is invalid.
    BadAgent {
        /// Index in the manifest.
        index: u32,
        /// Agent id.
        id: u32,
        /// Field name.
        field: &'static str,
        /// Why it is wrong.
        why: &'static str,
    },
    /// Two agents share an id.
    DuplicateAgentId(u32),
    /// An agent entry point is not inside an executable segment.
    BadEntry {
        /// Agent id.
        id: u32,
        /// Entry offset.
        entry: u64,
    },
    /// A segment is invalid.
    BadSegment {
        /// Index in the segment table.
        index: u32,
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// A segment is writable and executable.
    WriteExecute {
        /// Index in the segment table.
        index: u32,
    },
    /// A relocation is invalid.
    BadRelocation {
        /// Index in the relocation table.
        index: u32,
        /// Its offset.
        offset: u64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// The measurement in the header does not match the content.
    MeasurementMismatch,
    /// The signature block is malformed.
    BadSignatureBlock {
        /// Field name.
        field: &'static str,
        /// Why it is wrong.
        why: &'static str,
    },
}

impl ImageError {
    /// The ABI error code for this failure.
    pub fn code(&self) -> Error {
        match self {
            ImageError::Truncated { .. } => Error::Truncated,
            ImageError::BadMagic => Error::BadMagic,
            ImageError::BadVersion(_) => Error::BadVersion,
            ImageError::BadHeader { .. } | ImageError::BadRegion { .. } => Error::BadHeader,
            ImageError::BadManifest { .. } | ImageError::BadAgent { .. } => Error::BadManifest,
            ImageError::DuplicateAgentId(_) => Error::DuplicateAgentId,
            ImageError::BadEntry { .. } => Error::BadEntry,
            ImageError::BadSegment { .. } => Error::BadSegment,
            ImageError::WriteExecute { .. } => Error::WriteExecute,
            ImageError::BadRelocation { .. } => Error::BadRelocation,
            ImageError::MeasurementMismatch => Error::MeasurementMismatch,
            ImageError::BadSignatureBlock { .. } => Error::BadSignatureBlock,
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Truncated { what, need, have } => write!(
                f,
                "image truncated: {what} needs {need} bytes, the image has {have}"
            ),
            ImageError::BadMagic => write!(f, "not a TETD image: bad magic (expected \"TETDIMG\\0\")"),
            ImageError::BadVersion(v) => write!(
                f,
                "unsupported image format version {v} (this build reads version {FORMAT_VERSION})"
            ),
            ImageError::BadHeader { field, value, why } => {
                write!(f, "invalid header field `{field}` = {value:#x}: {why}")
            }
            ImageError::BadRegion { region, offset, len, why } => write!(
                f,
                "invalid {region} region (offset {offset:#x}, length {len:#x}): {why}"
            ),
            ImageError::BadManifest { field, value, why } => {
                write!(f, "invalid manifest field `{field}` = {value:#x}: {why}")
            }
            ImageError::BadAgent { index, id, field, why } => {
                write!(f, "invalid agent #{index} (id {id}): field `{field}`: {why}")
            }
            ImageError::DuplicateAgentId(id) => write!(f, "duplicate agent id {id} in manifest"),
            ImageError::BadEntry { id, entry } => write!(
                f,
                "agent {id}: entry offset {entry:#x} is not inside an executable segment"
            ),
            ImageError::BadSegment { index, field, value, why } => {
                write!(f, "invalid segment #{index}: field `{field}` = {value:#x}: {why}")
            }
            ImageError::WriteExecute { index } => write!(
                f,
                "segment #{index} is both writable and executable (W+X is never allowed)"
            ),
            ImageError::BadRelocation { index, offset, why } => {
                write!(f, "invalid relocation #{index} at offset {offset:#x}: {why}")
            }
            ImageError::MeasurementMismatch => write!(
                f,
                "measurement mismatch: the SHA-384 in the header does not match the image content (modified or corrupted)"
            ),
            ImageError::BadSignatureBlock { field, why } => {
                write!(f, "malformed signature block: field `{field}`: {why}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ImageError {}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Error {
        e.code()
    }
}

// ---------------------------------------------------------------------------
// Little-endian readers over checked ranges
// ---------------------------------------------------------------------------

fn slice<'a>(b: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ImageError> {
    let end = off.checked_add(len).ok_or(ImageError::Truncated {
        what,
        need: u64::MAX,
        have: b.len() as u64,
    })?;
    if end > b.len() as u64 {
        return Err(ImageError::Truncated {
            what,
            need: end,
            have: b.len() as u64,
        });
    }
    Ok(&b[off as usize..end as usize])
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

// ---------------------------------------------------------------------------
// Structures
// ---------------------------------------------------------------------------

/// The image header (first [`HEADER_SIZE`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Bytes of address space the image needs (page multiple).
    pub load_size: u64,
    /// Manifest offset.
    pub manifest_off: u32,
    /// Manifest length.
    pub manifest_len: u32,
    /// Segment table offset.
    pub segtab_off: u32,
    /// Number of segments.
    pub seg_count: u32,
    /// Relocation table offset.
    pub reloc_off: u32,
    /// Number of relocations.
    pub reloc_count: u32,
    /// Segment data offset.
    pub data_off: u32,
    /// Segment data length.
    pub data_len: u32,
    /// Length of the measured body.
    pub body_len: u32,
    /// SHA-384 measurement of the body.
    pub measurement: [u8; MEASUREMENT_LEN],
}

impl Header {
    fn read(b: &[u8]) -> Result<Header, ImageError> {
        if b.len() < 8 || b[..8] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        let h = slice(b, 0, HEADER_SIZE as u64, "header")?;
        let version = u16_at(h, 8);
        if version != FORMAT_VERSION {
            return Err(ImageError::BadVersion(version));
        }
        let header_size = u16_at(h, 10);
        if header_size as usize != HEADER_SIZE {
            return Err(ImageError::BadHeader {
                field: "header_size",
                value: header_size as u64,
                why: "must be 128",
            });
        }
        let flags = u32_at(h, 12);
        if flags != 0 {
            return Err(ImageError::BadHeader {
                field: "flags",
                value: flags as u64,
                why: "reserved, must be 0",
            });
        }
        if u32_at(h, 60) != 0 || h[112..128].iter().any(|&x| x != 0) {
            return Err(ImageError::BadHeader {
                field: "reserved",
                value: 0,
                why: "reserved bytes must be 0",
            });
        }
        Ok(Header {
            version,
            load_size: u64_at(h, 16),
            manifest_off: u32_at(h, 24),
            manifest_len: u32_at(h, 28),
            segtab_off: u32_at(h, 32),
            seg_count: u32_at(h, 36),
            reloc_off: u32_at(h, 40),
            reloc_count: u32_at(h, 44),
            data_off: u32_at(h, 48),
            data_len: u32_at(h, 52),
            body_len: u32_at(h, 56),
            measurement: arr(h, MEASUREMENT_OFFSET),
        })
    }

    #[cfg(feature = "alloc")]
    fn write(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10..12].copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
        out[12..16].copy_from_slice(&0u32.to_le_bytes());
        out[16..24].copy_from_slice(&self.load_size.to_le_bytes());
        let fields = [
            self.manifest_off,
            self.manifest_len,
            self.segtab_off,
            self.seg_count,
            self.reloc_off,
            self.reloc_count,
            self.data_off,
            self.data_len,
            self.body_len,
        ];
        for (i, v) in fields.iter().enumerate() {
            out[24 + 4 * i..28 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        out[60..64].fill(0);
        out[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN]
            .copy_from_slice(&self.measurement);
        out[112..128].fill(0);
    }
}

/// Image-wide settings of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestHeader {
    /// Number of agent records.
    pub agent_count: u32,
    /// Reserved flags (0).
    pub flags: u32,
    /// Agent stack size in bytes (page multiple).
    pub stack_size: u32,
    /// Agent heap size in bytes (page multiple, may be 0).
    pub heap_size: u32,
    /// Default max input in bytes.
    pub max_input: u32,
    /// Default max output in bytes.
    pub max_output: u32,
    /// Default mode.
    pub mode: Mode,
    /// Services the image requires (bitmask, reserved for now).
    pub required_services: u32,
    /// Package name (NUL padded).
    pub package: [u8; 32],
    /// Package version (NUL padded).
    pub version: [u8; 16],
}

impl ManifestHeader {
    /// The package name.
    pub fn package_name(&self) -> &str {
        decode_padded(&self.package).unwrap_or("")
    }
    /// The package version.
    pub fn package_version(&self) -> &str {
        decode_padded(&self.version).unwrap_or("")
    }
}

/// One agent as the manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentRecord {
    /// Agent id (non-zero).
    pub id: u32,
    /// Mode.
    pub mode: Mode,
    /// `AGENT_FLAG_*`.
    pub flags: u32,
    /// Max input in bytes.
    pub max_input: u32,
    /// Max output in bytes.
    pub max_output: u32,
    /// Entry offset from the image base.
    pub entry: u64,
    /// Name (NUL padded UTF-8).
    pub name: [u8; AGENT_NAME_LEN],
}

impl AgentRecord {
    /// The agent's name.
    pub fn name(&self) -> &str {
        abi::decode_name(&self.name).unwrap_or("")
    }
    /// True for an admin agent.
    pub fn is_admin(&self) -> bool {
        self.flags & abi::AGENT_FLAG_ADMIN != 0
    }
    /// True when arguments/results are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.flags & abi::AGENT_FLAG_ENCRYPTED != 0
    }
}

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset from the image base (page aligned).
    pub vaddr: u64,
    /// Size in memory (page multiple).
    pub mem_size: u64,
    /// Offset of the contents within the data region.
    pub file_off: u32,
    /// Bytes of contents (the rest of `mem_size` is zero-filled).
    pub file_size: u32,
    /// `PERM_*` bits.
    pub perms: u32,
}

impl Segment {
    /// `r-x`-style permission string.
    pub fn perms_str(&self) -> &'static str {
        match self.perms & 7 {
            1 => "r--",
            3 => "rw-",
            5 => "r-x",
            7 => "rwx",
            0 => "---",
            2 => "-w-",
            4 => "--x",
            _ => "-wx",
        }
    }
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.vaddr + self.mem_size
    }
}

/// The signature block after the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureBlock {
    /// [`SIG_ALG_ED25519`].
    pub algorithm: u16,
    /// Signer's Ed25519 public key.
    pub public_key: [u8; 32],
    /// The signature over [`Image::signed_message_parts`].
    pub signature: [u8; 64],
    /// Key id: first 8 bytes of SHA-384(public key).
    pub key_id: [u8; 8],
}

impl SignatureBlock {
    /// Build a block for a key and signature (key id derived).
    pub fn new(public_key: [u8; 32], signature: [u8; 64]) -> Self {
        SignatureBlock {
            algorithm: SIG_ALG_ED25519,
            public_key,
            signature,
            key_id: key_id(&public_key),
        }
    }

    fn read(b: &[u8]) -> Result<SignatureBlock, ImageError> {
        if b.len() != SIG_BLOCK_SIZE {
            return Err(ImageError::BadSignatureBlock {
                field: "length",
                why: if b.len() < SIG_BLOCK_SIZE {
                    "block shorter than 128 bytes (truncated)"
                } else {
                    "trailing bytes after the 128-byte block"
                },
            });
        }
        if b[..8] != SIG_MAGIC {
            return Err(ImageError::BadSignatureBlock {
                field: "magic",
                why: "expected \"TETDSIG\\0\"",
            });
        }
        if u16_at(b, 8) != SIG_VERSION {
            return Err(ImageError::BadSignatureBlock {
                field: "version",
                why: "unsupported version",
            });
        }
        let algorithm = u16_at(b, 10);
        if algorithm != SIG_ALG_ED25519 {
            return Err(ImageError::BadSignatureBlock {
                field: "algorithm",
                why: "only 1 (Ed25519) is defined",
            });
        }
        if u32_at(b, 12) != SIG_BLOCK_SIZE as u32 {
            return Err(ImageError::BadSignatureBlock {
                field: "block_len",
                why: "must be 128",
            });
        }
        let public_key = arr(b, 16);
        let block = SignatureBlock {
            algorithm,
            public_key,
            signature: arr(b, 48),
            key_id: arr(b, 112),
        };
        if block.key_id != key_id(&public_key) {
            return Err(ImageError::BadSignatureBlock {
                field: "key_id",
                why: "does not match the public key",
            });
        }
        if b[120..128].iter().any(|&x| x != 0) {
            return Err(ImageError::BadSignatureBlock {
                field: "reserved",
                why: "must be 0",
            });
        }
        Ok(block)
    }

    /// Serialize.
    pub fn to_bytes(&self) -> [u8; SIG_BLOCK_SIZE] {
        let mut b = [0u8; SIG_BLOCK_SIZE];
        b[..8].copy_from_slice(&SIG_MAGIC);
        b[8..10].copy_from_slice(&SIG_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&self.algorithm.to_le_bytes());
        b[12..16].copy_from_slice(&(SIG_BLOCK_SIZE as u32).to_le_bytes());
        b[16..48].copy_from_slice(&self.public_key);
        b[48..112].copy_from_slice(&self.signature);
        b[112..120].copy_from_slice(&self.key_id);
        b
    }
}

/// Key id of an Ed25519 public key: the first 8 bytes of its SHA-384.
pub fn key_id(public_key: &[u8; 32]) -> [u8; 8] {
    let d = Sha384::digest(public_key);
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

fn decode_padded(raw: &[u8]) -> Option<&str> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    if raw[end..].iter().any(|&c| c != 0) {
        return None;
    }
    core::str::from_utf8(&raw[..end]).ok()
}

/// SHA-384 of an image body with the measurement field read as zeros.
/// `body` must be at least [`HEADER_SIZE`] bytes (shorter input is hashed
/// as is).
pub fn compute_measurement(body: &[u8]) -> [u8; MEASUREMENT_LEN] {
    let mut h = Sha384::new();
    if body.len() >= MEASUREMENT_OFFSET + MEASUREMENT_LEN {
        h.update(&body[..MEASUREMENT_OFFSET]);
        h.update([0u8; MEASUREMENT_LEN]);
        h.update(&body[MEASUREMENT_OFFSET + MEASUREMENT_LEN..]);
    } else {
        h.update(body);
    }
    let mut out = [0u8; MEASUREMENT_LEN];
    out.copy_from_slice(&h.finalize());
    out
}

fn page_aligned(v: u64) -> bool {
    v % PAGE_SIZE == 0
}

/// A parsed, structurally checked image. Holds the bytes by reference.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    bytes: &'a [u8],
    header: Header,
    manifest: ManifestHeader,
}

impl<'a> Image<'a> {
    /// Parse and check an image: every offset, length, table entry, the
    /// W^X rule, relocation targets, agent entries and ids, the measurement
    /// and (structurally) the signature block. Signature *verification* is
    /// a separate step (it needs a trust policy).
    pub fn parse(bytes: &'a [u8]) -> Result<Image<'a>, ImageError> {
        let header = Header::read(bytes)?;
        let file_len = bytes.len() as u64;
        let body_len = header.body_len as u64;
        if body_len < HEADER_SIZE as u64 {
            return Err(ImageError::BadHeader {
                field: "body_len",
                value: body_len,
                why: "smaller than the header",
            });
        }
        if body_len > file_len {
            return Err(ImageError::Truncated {
                what: "image body",
                need: body_len,
                have: file_len,
            });
        }
        if header.load_size == 0
            || !page_aligned(header.load_size)
            || header.load_size > MAX_LOAD_SIZE
        {
            return Err(ImageError::BadHeader {
                field: "load_size",
                value: header.load_size,
                why: "must be a non-zero multiple of 4096 and at most 64 MiB",
            });
        }
        // Regions: in order, non-overlapping, inside the body.
        let regions: [(&'static str, u64, u64); 4] = [
            (
                "manifest",
                header.manifest_off as u64,
                header.manifest_len as u64,
            ),
            (
                "segment table",
                header.segtab_off as u64,
                header.seg_count as u64 * SEGMENT_ENTRY_SIZE as u64,
            ),
            (
                "relocation table",
                header.reloc_off as u64,
                header.reloc_count as u64 * RELOC_ENTRY_SIZE as u64,
            ),
            (
                "segment data",
                header.data_off as u64,
                header.data_len as u64,
            ),
        ];
        let mut prev_end = HEADER_SIZE as u64;
        for (region, offset, len) in regions {
            if offset < prev_end {
                return Err(ImageError::BadRegion {
                    region,
                    offset,
                    len,
                    why: "overlaps the header or the region before it",
                });
            }
            let end = offset + len; // both < 2^36: no overflow
            if end > body_len {
                return Err(ImageError::BadRegion {
                    region,
                    offset,
                    len,
                    why: "extends past the end of the body",
                });
            }
            prev_end = end;
        }
        if prev_end != body_len {
            return Err(ImageError::BadHeader {
                field: "body_len",
                value: body_len,
                why: "unaccounted bytes between the segment data and the end of the body",
            });
        }
        // Measurement before anything else is interpreted further: any change
        // to the body is reported as such.
        let measured = compute_measurement(&bytes[..body_len as usize]);
        if measured != header.measurement {
            return Err(ImageError::MeasurementMismatch);
        }
        let manifest = Self::read_manifest(bytes, &header)?;
        let img = Image {
            bytes,
            header,
            manifest,
        };
        img.check_segments()?;
        img.check_relocations()?;
        img.check_agents()?;
        img.signature()?;
        Ok(img)
    }

    fn read_manifest(bytes: &[u8], h: &Header) -> Result<ManifestHeader, ImageError> {
        let m = slice(
            bytes,
            h.manifest_off as u64,
            h.manifest_len as u64,
            "manifest",
        )?;
        if m.len() < MANIFEST_HEADER_SIZE {
            return Err(ImageError::BadManifest {
                field: "length",
                value: m.len() as u64,
                why: "shorter than the 96-byte manifest header",
            });
        }
        let agent_count = u32_at(m, 0);
        if agent_count == 0 || agent_count > MAX_AGENTS {
            return Err(ImageError::BadManifest {
                field: "agent_count",
                value: agent_count as u64,
                why: "must be between 1 and 64",
            });
        }
        let want = MANIFEST_HEADER_SIZE as u64 + agent_count as u64 * AGENT_RECORD_SIZE as u64;
        if m.len() as u64 != want {
            return Err(ImageError::BadManifest {
                field: "length",
                value: m.len() as u64,
                why: "does not equal 96 + 80 * agent_count",
            });
        }
        let flags = u32_at(m, 4);
        if flags != 0 {
            return Err(ImageError::BadManifest {
                field: "flags",
                value: flags as u64,
                why: "reserved, must be 0",
            });
        }
        let stack_size = u32_at(m, 8);
        if stack_size == 0 || stack_size > MAX_STACK_OR_HEAP || !page_aligned(stack_size as u64) {
            return Err(ImageError::BadManifest {
                field: "stack_size",
                value: stack_size as u64,
                why: "must be a non-zero multiple of 4096, at most 16 MiB",
            });
        }
        let heap_size = u32_at(m, 12);
        if heap_size > MAX_STACK_OR_HEAP || !page_aligned(heap_size as u64) {
            return Err(ImageError::BadManifest {
                field: "heap_size",
                value: heap_size as u64,
                why: "must be a multiple of 4096, at most 16 MiB",
            });
        }
        let max_input = u32_at(m, 16);
        let max_output = u32_at(m, 20);
        for (field, v) in [("max_input", max_input), ("max_output", max_output)] {
            if v == 0 || v > MAX_IO {
                return Err(ImageError::BadManifest {
                    field,
                    value: v as u64,
                    why: "must be between 1 and 16 MiB",
                });
            }
        }
        let mode_raw = u32_at(m, 24);
        let mode = Mode::from_u32(mode_raw).ok_or(ImageError::BadManifest {
            field: "mode",
            value: mode_raw as u64,
            why: "must be 0 (exclusive) or 1 (collaborative)",
        })?;
        let package: [u8; 32] = arr(m, 32);
        if decode_padded(&package).is_none() {
            return Err(ImageError::BadManifest {
                field: "package",
                value: 0,
                why: "not NUL-padded UTF-8",
            });
        }
        let version: [u8; 16] = arr(m, 64);
        if decode_padded(&version).is_none() {
            return Err(ImageError::BadManifest {
                field: "version",
                value: 0,
                why: "not NUL-padded UTF-8",
            });
        }
        if m[80..96].iter().any(|&x| x != 0) {
            return Err(ImageError::BadManifest {
                field: "reserved",
                value: 0,
                why: "must be 0",
            });
        }
        Ok(ManifestHeader {
            agent_count,
            flags,
            stack_size,
            heap_size,
            max_input,
            max_output,
            mode,
            required_services: u32_at(m, 28),
            package,
            version,
        })
    }

    fn check_segments(&self) -> Result<(), ImageError> {
        let n = self.header.seg_count;
        if n == 0 || n > MAX_SEGMENTS {
            return Err(ImageError::BadHeader {
                field: "seg_count",
                value: n as u64,
                why: "must be between 1 and 16",
            });
        }
        let mut prev_end = 0u64;
        for (i, s) in self.segments().enumerate() {
            let i = i as u32;
            let bad = |field, value, why| ImageError::BadSegment {
                index: i,
                field,
                value,
                why,
            };
            if !page_aligned(s.vaddr) {
                return Err(bad("vaddr", s.vaddr, "not page aligned"));
            }
            if s.mem_size == 0 || !page_aligned(s.mem_size) {
                return Err(bad(
                    "mem_size",
                    s.mem_size,
                    "must be a non-zero multiple of 4096",
                ));
            }
            if s.vaddr < prev_end {
                return Err(bad(
                    "vaddr",
                    s.vaddr,
                    "overlaps or precedes the previous segment",
                ));
            }
            let end =
                s.vaddr
                    .checked_add(s.mem_size)
                    .ok_or(bad("mem_size", s.mem_size, "overflows"))?;
            if end > self.header.load_size {
                return Err(bad("mem_size", s.mem_size, "segment ends past load_size"));
            }
            if s.file_size as u64 > s.mem_size {
                return Err(bad("file_size", s.file_size as u64, "larger than mem_size"));
            }
            if s.file_off as u64 + s.file_size as u64 > self.header.data_len as u64 {
                return Err(bad(
                    "file_off",
                    s.file_off as u64,
                    "contents lie outside the data region",
                ));
            }
            if s.perms & !(PERM_R | PERM_W | PERM_X) != 0 || s.perms & PERM_R == 0 {
                return Err(bad(
                    "perms",
                    s.perms as u64,
                    "must be readable and use only R/W/X bits",
                ));
            }
            if s.perms & PERM_W != 0 && s.perms & PERM_X != 0 {
                return Err(ImageError::WriteExecute { index: i });
            }
            let entry = self.header.segtab_off as usize + i as usize * SEGMENT_ENTRY_SIZE;
            let reserved = u32_at(self.bytes, entry + 28);
            if reserved != 0 {
                return Err(bad("reserved", reserved as u64, "must be 0"));
            }
            prev_end = end;
        }
        Ok(())
    }

    fn check_relocations(&self) -> Result<(), ImageError> {
        let mut prev: Option<u64> = None;
        for (i, off) in self.relocations().enumerate() {
            let i = i as u32;
            let off = off as u64;
            let bad = |why| ImageError::BadRelocation {
                index: i,
                offset: off,
                why,
            };
            if let Some(p) = prev {
                if off < p + 8 {
                    return Err(bad("not sorted, or overlaps the previous relocation"));
                }
            }
            let seg = self
                .segments()
                .find(|s| off >= s.vaddr && off + 8 <= s.vaddr + s.file_size as u64)
                .ok_or(bad(
                    "8-byte slot not inside the file-backed part of a segment",
                ))?;
            let at = self.header.data_off as u64 + seg.file_off as u64 + (off - seg.vaddr);
            let addend = u64_at(self.bytes, at as usize);
            if addend > self.header.load_size {
                return Err(bad("target (implicit addend) lies outside the image"));
            }
            prev = Some(off);
        }
        Ok(())
    }

    fn check_agents(&self) -> Result<(), ImageError> {
        for (i, a) in self.agent_records().enumerate() {
            let a = a?;
            for b in self.agent_records().take(i) {
                if b?.id == a.id {
                    return Err(ImageError::DuplicateAgentId(a.id));
                }
            }
            let exec = self
                .segments()
                .any(|s| s.perms & PERM_X != 0 && a.entry >= s.vaddr && a.entry < s.end());
            if !exec {
                return Err(ImageError::BadEntry {
                    id: a.id,
                    entry: a.entry,
                });
            }
        }
        Ok(())
    }

    fn agent_record(&self, index: u32) -> Result<AgentRecord, ImageError> {
        let off = self.header.manifest_off as usize
            + MANIFEST_HEADER_SIZE
            + index as usize * AGENT_RECORD_SIZE;
        let r = &self.bytes[off..off + AGENT_RECORD_SIZE];
        let id = u32_at(r, 0);
        let bad = |field, why| ImageError::BadAgent {
            index,
            id,
            field,
            why,
        };
        if id == 0 {
            return Err(bad("id", "agent id 0 is reserved"));
        }
        let mode = Mode::from_u32(u32_at(r, 4)).ok_or(bad("mode", "must be 0 or 1"))?;
        let flags = u32_at(r, 8);
        if flags & !AGENT_FLAGS_ALL != 0 {
            return Err(bad("flags", "unknown flag bits"));
        }
        let max_input = u32_at(r, 12);
        let max_output = u32_at(r, 16);
        if max_input == 0 || max_input > MAX_IO {
            return Err(bad("max_input", "must be between 1 and 16 MiB"));
        }
        if max_output == 0 || max_output > MAX_IO {
            return Err(bad("max_output", "must be between 1 and 16 MiB"));
        }
        if u32_at(r, 20) != 0 || r[64..80].iter().any(|&x| x != 0) {
            return Err(bad("reserved", "must be 0"));
        }
        let name: [u8; AGENT_NAME_LEN] = arr(r, 32);
        if abi::decode_name(&name).is_none() {
            return Err(bad("name", "not NUL-padded UTF-8"));
        }
        Ok(AgentRecord {
            id,
            mode,
            flags,
            max_input,
            max_output,
            entry: u64_at(r, 24),
            name,
        })
    }

    fn agent_records(&self) -> impl Iterator<Item = Result<AgentRecord, ImageError>> + '_ {
        (0..self.manifest.agent_count).map(move |i| self.agent_record(i))
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Image-wide manifest settings.
    pub fn manifest(&self) -> &ManifestHeader {
        &self.manifest
    }

    /// The raw manifest bytes (part of the signed message).
    pub fn manifest_bytes(&self) -> &'a [u8] {
        let off = self.header.manifest_off as usize;
        &self.bytes[off..off + self.header.manifest_len as usize]
    }

    /// The agents (all checked by `parse`).
    pub fn agents(&self) -> impl Iterator<Item = AgentRecord> + '_ {
        self.agent_records().filter_map(|r| r.ok())
    }

    /// The agent with `id`.
    pub fn agent(&self, id: u32) -> Option<AgentRecord> {
        self.agents().find(|a| a.id == id)
    }

    /// The segments, in address order.
    pub fn segments(&self) -> impl Iterator<Item = Segment> + 'a {
        let b = self.bytes;
        let base = self.header.segtab_off as usize;
        (0..self.header.seg_count as usize).map(move |i| {
            let e = &b[base + i * SEGMENT_ENTRY_SIZE..base + (i + 1) * SEGMENT_ENTRY_SIZE];
            Segment {
                vaddr: u64_at(e, 0),
                mem_size: u64_at(e, 8),
                file_off: u32_at(e, 16),
                file_size: u32_at(e, 20),
                perms: u32_at(e, 24),
            }
        })
    }

    /// The file contents of a segment (`file_size` bytes).
    pub fn segment_data(&self, s: &Segment) -> &'a [u8] {
        let start = self.header.data_off as usize + s.file_off as usize;
        &self.bytes[start..start + s.file_size as usize]
    }

    /// Relocation offsets (from the image base) of 8-byte slots that hold an
    /// offset from the base and must have the load base added.
    pub fn relocations(&self) -> impl Iterator<Item = u32> + 'a {
        let b = self.bytes;
        let base = self.header.reloc_off as usize;
        (0..self.header.reloc_count as usize).map(move |i| u32_at(b, base + i * RELOC_ENTRY_SIZE))
    }

    /// The SHA-384 measurement.
    pub fn measurement(&self) -> &[u8; MEASUREMENT_LEN] {
        &self.header.measurement
    }

    /// The measured body (everything but the signature block).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[..self.header.body_len as usize]
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The signature block, `Ok(None)` for an unsigned image.
    pub fn signature(&self) -> Result<Option<SignatureBlock>, ImageError> {
        let rest = &self.bytes[self.header.body_len as usize..];
        if rest.is_empty() {
            return Ok(None);
        }
        SignatureBlock::read(rest).map(Some)
    }

    /// The message a signature covers, as parts to feed a verifier in order:
    /// [`SIG_DOMAIN`], the measurement, the manifest bytes.
    pub fn signed_message_parts(&self) -> [&[u8]; 3] {
        [
            SIG_DOMAIN,
            &self.header.measurement[..],
            self.manifest_bytes(),
        ]
    }
}

/// Write `s` NUL-padded into a fixed field; `None` if it does not fit.
pub fn encode_padded<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() > N || b.contains(&0) {
        return None;
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

#[cfg(feature = "alloc")]
mod write;
#[cfg(feature = "alloc")]
pub use write::{with_signature, without_signature, ImageBuilder, SegmentSpec};
