//! Image signature verification and signer trust policy (`no_std`, no alloc).
//!
//! This is the one implementation of "may this image be loaded?", shared by
//! `tetd-pack verify`/`inspect`, the guest module (TETD-G) and the simulator.
//! The format of what is verified is in `docs/image-format.md`; keys, the
//! allow-list and what a successful verification proves are in
//! `docs/signing.md`.
//!
//! ```text
//! bytes --Image::parse--> Image --verify_image(&Image, &Policy)--> Verified
//!          structure,                 signature (Ed25519), signer
//!          measurement,               allowed?, admin key?
//!          block layout
//! ```
//!
//! * [`Image::parse`] already rejects bad magic, truncation, a measurement
//!   that does not match the body and a malformed signature block (see
//!   [`ImageError`](crate::image::ImageError)).
//! * [`verify_image`] checks the Ed25519 signature over
//!   [`Image::signed_message_parts`] (domain separator, measurement,
//!   manifest) and then the signer against the [`Policy`]. Its errors are
//!   [`Error::Unsigned`], [`Error::BadSignature`] and
//!   [`Error::SignerNotAllowed`].
//!
//! Ed25519 here is `ed25519-compact`: portable 64-bit integer code with no
//! SIMD and no runtime CPU-feature detection, so it is safe in kernel context
//! (`x86_64-unknown-none`) where vector registers may not be touched. It
//! verifies strictly: the signer key and the signature's `R` must be
//! canonical and not of small order, and `S` must be reduced. Signatures made
//! by `ring` (what `tetd-pack` signs with) verify; the tests check both
//! implementations agree on RFC 8032's vectors and on each other's output.
//!
//! # Allow-list format
//!
//! UTF-8 text, one trusted key per line:
//!
//! ```text
//! # TETD signer allow-list
//! ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c admin  # release key
//! ed25519:fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025        # CI key
//! ```
//!
//! * A key is `ed25519:` followed by exactly 64 hex digits (either case): the
//!   32-byte Ed25519 public key.
//! * After the key, optional whitespace-separated attributes. The only one
//!   defined is `admin`: images signed by this key may contain admin agents
//!   (see [`Verified::check_admin_agents`]).
//! * `#` starts a comment that runs to the end of the line (at the start of
//!   a line or after whitespace). Blank lines are ignored. `\r\n` line ends
//!   are accepted.
//! * The same key may appear only once. A key that is not a valid Ed25519
//!   point (or is of small order) is an error, not silently ignored.
//!
//! Errors name the line (1-based) and, where useful, the column; they never
//! echo the line's content (so pointing the parser at a private key file
//! by mistake prints nothing secret).

use core::fmt;

use ed25519_compact::{PublicKey, Signature};

use crate::abi::Error;
use crate::image::{key_id, Image, SignatureBlock, MEASUREMENT_LEN, SIG_ALG_ED25519};

/// Prefix of a key in the allow-list format.
pub const KEY_PREFIX: &str = "ed25519:";
/// The `admin` attribute in the allow-list format.
pub const ADMIN_ATTRIBUTE: &str = "admin";
/// Ed25519 public key length.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
/// Key id length (first bytes of SHA-384 of the public key).
pub const KEY_ID_LEN: usize = 8;

// ---------------------------------------------------------------------------
// Hex (for key lines, key ids and measurements; no alloc)
// ---------------------------------------------------------------------------

/// Displays bytes as lowercase hex without allocating: `Hex(&key_id)`.
#[derive(Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode exactly `2 * N` hex digits. On failure returns the index of the
/// first bad digit (or `s.len()` if the length is wrong).
pub fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], usize> {
    let b = s.as_bytes();
    if let Some(i) = b.iter().position(|&c| hex_val(c).is_none()) {
        return Err(i);
    }
    if b.len() != 2 * N {
        return Err(b.len());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        // Both digits were checked above.
        *o = (hex_val(b[2 * i]).unwrap_or(0) << 4) | hex_val(b[2 * i + 1]).unwrap_or(0);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// A signer key the policy trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedKey {
    /// Ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// Images signed by this key may contain admin agents.
    pub admin: bool,
}

impl TrustedKey {
    /// The key id (first 8 bytes of SHA-384 of the public key), as in the
    /// signature block.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(&self.public_key)
    }

    /// The allow-list line for this key (without comment), e.g.
    /// `ed25519:<hex> admin`. Implements `Display`; no allocation.
    pub fn line(&self) -> KeyLine<'_> {
        KeyLine(self)
    }
}

/// `Display` of a [`TrustedKey`] in the allow-list format.
#[derive(Debug, Clone, Copy)]
pub struct KeyLine<'a>(&'a TrustedKey);

impl fmt::Display for KeyLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", Hex(&self.0.public_key))?;
        if self.0.admin {
            write!(f, " {ADMIN_ATTRIBUTE}")?;
        }
        Ok(())
    }
}

/// True if `public_key` is a canonical encoding of an Ed25519 point that is
/// not of small order (a key that can verify signatures here).
pub fn is_valid_public_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> bool {
    PublicKey::new(*public_key).validate().is_ok()
}

// ---------------------------------------------------------------------------
// Allow-list
// ---------------------------------------------------------------------------

/// What is wrong with an allow-list line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllowListErrorKind {
    /// The text is not UTF-8.
    NotUtf8,
    /// The line does not start with `ed25519:`.
    MissingPrefix,
    /// The key does not have exactly 64 hex digits.
    KeyLength {
        /// Digits found.
        digits: usize,
    },
    /// A character of the key is not a hex digit.
    NotHex,
    /// The 32 bytes are not a usable Ed25519 public key (not a canonical
    /// point, or a point of small order).
    InvalidKey,
    /// An attribute other than `admin`.
    UnknownAttribute,
    /// The key already appeared on an earlier line.
    DuplicateKey {
        /// The earlier line (1-based).
        first_line: usize,
    },
}

/// An allow-list parse error: the line (1-based), column (1-based, in bytes)
/// and what is wrong. `Display` never shows the line's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowListError {
    /// Line number, from 1.
    pub line: usize,
    /// Column (byte offset in the line), from 1.
    pub column: usize,
    /// What is wrong.
    pub kind: AllowListErrorKind,
}

impl fmt::Display for AllowListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: ", self.line, self.column)?;
        match self.kind {
            AllowListErrorKind::NotUtf8 => write!(f, "not valid UTF-8"),
            AllowListErrorKind::MissingPrefix => {
                write!(f, "expected a key `{KEY_PREFIX}<64 hex digits>`")
            }
            AllowListErrorKind::KeyLength { digits } => write!(
                f,
                "an Ed25519 key has 64 hex digits, this one has {digits}"
            ),
            AllowListErrorKind::NotHex => write!(f, "not a hex digit in the key"),
            AllowListErrorKind::InvalidKey => write!(
                f,
                "not a valid Ed25519 public key (not a canonical curve point, or of small order)"
            ),
            AllowListErrorKind::UnknownAttribute => write!(
                f,
                "unknown attribute (the only attribute is `{ADMIN_ATTRIBUTE}`; comments start with `#`)"
            ),
            AllowListErrorKind::DuplicateKey { first_line } => {
                write!(f, "duplicate key (already on line {first_line})")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AllowListError {}

/// A checked allow-list of signer keys. Borrows its text; every line was
/// checked by [`AllowList::parse`], iteration re-reads the text (no
/// allocation, any number of keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowList<'a> {
    text: &'a str,
    len: usize,
}

/// Parse one line: `Ok(None)` for blank/comment, `Ok(Some(key))`, or the
/// error with its column. `validate` also checks the key is a usable curve
/// point (done once, by [`AllowList::parse`]; lines of a parsed list are
/// re-read without it).
fn parse_line(
    line: &str,
    validate: bool,
) -> Result<Option<TrustedKey>, (usize, AllowListErrorKind)> {
    // Strip the comment: `#` at the start or after whitespace.
    let bytes = line.as_bytes();
    let mut content_end = bytes.len();
    for (i, &c) in bytes.iter().enumerate() {
        if c == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            content_end = i;
            break;
        }
    }
    let content = &line[..content_end];
    // Tokens with their byte offsets.
    let mut tokens = content
        .split(|c: char| c.is_ascii_whitespace())
        .scan(0usize, |pos, tok| {
            let start = *pos;
            *pos += tok.len() + 1;
            Some((start, tok))
        })
        .filter(|(_, t)| !t.is_empty());
    let Some((kstart, ktok)) = tokens.next() else {
        return Ok(None);
    };
    let Some(hex) = ktok.strip_prefix(KEY_PREFIX) else {
        return Err((kstart + 1, AllowListErrorKind::MissingPrefix));
    };
    let hstart = kstart + KEY_PREFIX.len();
    let public_key = match decode_hex::<PUBLIC_KEY_LEN>(hex) {
        Ok(k) => k,
        Err(i) if i < hex.len() => return Err((hstart + i + 1, AllowListErrorKind::NotHex)),
        Err(_) => {
            return Err((
                hstart + 1,
                AllowListErrorKind::KeyLength { digits: hex.len() },
            ))
        }
    };
    if validate && !is_valid_public_key(&public_key) {
        return Err((hstart + 1, AllowListErrorKind::InvalidKey));
    }
    let mut admin = false;
    for (start, tok) in tokens {
        if tok == ADMIN_ATTRIBUTE {
            admin = true;
        } else {
            return Err((start + 1, AllowListErrorKind::UnknownAttribute));
        }
    }
    Ok(Some(TrustedKey { public_key, admin }))
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

impl<'a> AllowList<'a> {
    /// Parse and check an allow-list (format in the module docs).
    pub fn parse(text: &'a str) -> Result<AllowList<'a>, AllowListError> {
        let mut len = 0;
        for (n, line) in lines(text) {
            match parse_line(line, true) {
                Ok(None) => {}
                Ok(Some(key)) => {
                    // Duplicate check against earlier lines (quadratic, but
                    // allow-lists are short and this needs no allocation).
                    let first = lines(text)
                        .take(n - 1)
                        .find(|(_, l)| matches!(parse_line(l, false), Ok(Some(k)) if k.public_key == key.public_key));
                    if let Some((first_line, _)) = first {
                        return Err(AllowListError {
                            line: n,
                            column: 1,
                            kind: AllowListErrorKind::DuplicateKey { first_line },
                        });
                    }
                    len += 1;
                }
                Err((column, kind)) => {
                    return Err(AllowListError {
                        line: n,
                        column,
                        kind,
                    })
                }
            }
        }
        Ok(AllowList { text, len })
    }

    /// Parse from bytes (as read from a file or passed in by an ioctl); the
    /// bytes must be UTF-8.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<AllowList<'a>, AllowListError> {
        match core::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text),
            Err(e) => {
                let at = e.valid_up_to();
                let before = &bytes[..at];
                let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
                let line_start = before
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |p| p + 1);
                Err(AllowListError {
                    line,
                    column: at - line_start + 1,
                    kind: AllowListErrorKind::NotUtf8,
                })
            }
        }
    }

    /// An allow-list with no keys (trusts nobody).
    pub const fn empty() -> AllowList<'static> {
        AllowList { text: "", len: 0 }
    }

    /// The keys, in file order.
    pub fn keys(&self) -> impl Iterator<Item = TrustedKey> + 'a {
        lines(self.text).filter_map(|(_, l)| parse_line(l, false).ok().flatten())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the list has no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry for `public_key`, if listed.
    pub fn find(&self, public_key: &[u8; PUBLIC_KEY_LEN]) -> Option<TrustedKey> {
        self.keys().find(|k| &k.public_key == public_key)
    }
}

// ---------------------------------------------------------------------------
// Policy and verification
// ---------------------------------------------------------------------------

/// Which signers a [`Policy`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signers<'a> {
    /// Only keys on this allow-list (their `admin` attribute applies).
    AllowList(AllowList<'a>),
    /// Only this one key.
    Key(TrustedKey),
    /// Any key: only checks that the signature verifies against the public
    /// key in the image's own signature block (self-consistency). This
    /// proves nothing about *who* signed; never use it to decide loading.
    /// [`Signer::trusted`] is `false` and [`Signer::admin`] is `false`.
    AnyKey,
}

/// What to do with an image that has no signature block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsignedImages {
    /// Reject it with [`Error::Unsigned`] (production).
    Reject,
    /// Accept it, untrusted and without admin rights (development).
    Accept,
}

/// A trust policy: which signers are accepted, and whether unsigned images
/// are. A *signed* image is checked the same way in both modes: a bad
/// signature or an unaccepted signer is always an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy<'a> {
    /// Accepted signers.
    pub signers: Signers<'a>,
    /// Unsigned images.
    pub unsigned: UnsignedImages,
}

impl<'a> Policy<'a> {
    /// Production: the image must be signed by a key on `list`.
    pub const fn require_signed(list: AllowList<'a>) -> Policy<'a> {
        Policy {
            signers: Signers::AllowList(list),
            unsigned: UnsignedImages::Reject,
        }
    }

    /// Development: unsigned images are accepted (untrusted, no admin
    /// rights); signed images must still be signed by a key on `list`.
    pub const fn allow_unsigned(list: AllowList<'a>) -> Policy<'a> {
        Policy {
            signers: Signers::AllowList(list),
            unsigned: UnsignedImages::Accept,
        }
    }

    /// The image must be signed by exactly this key.
    pub const fn single_key(key: TrustedKey) -> Policy<'static> {
        Policy {
            signers: Signers::Key(key),
            unsigned: UnsignedImages::Reject,
        }
    }

    /// The image must be signed, by any key whose signature verifies
    /// (self-consistency only; see [`Signers::AnyKey`]).
    pub const fn self_consistent() -> Policy<'static> {
        Policy {
            signers: Signers::AnyKey,
            unsigned: UnsignedImages::Reject,
        }
    }
}

/// The key that signed a verified image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    /// Ed25519 public key (from the signature block).
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// Its key id.
    pub key_id: [u8; KEY_ID_LEN],
    /// The key has the `admin` attribute in the policy.
    pub admin: bool,
    /// The policy named this key (`false` only under [`Signers::AnyKey`]).
    pub trusted: bool,
}

/// The result of a successful [`verify_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The image's measurement (SHA-384 of the body).
    pub measurement: [u8; MEASUREMENT_LEN],
    /// Who signed it; `None` for an unsigned image accepted by
    /// [`UnsignedImages::Accept`].
    pub signer: Option<Signer>,
}

impl Verified {
    /// Signed by a key the policy trusts (not merely self-consistent).
    pub fn is_trusted(&self) -> bool {
        self.signer.is_some_and(|s| s.trusted)
    }

    /// Signed by a trusted key with the `admin` attribute.
    pub fn is_admin(&self) -> bool {
        self.signer.is_some_and(|s| s.trusted && s.admin)
    }

    /// The loading rule for admin agents: an image that contains an agent
    /// flagged admin may only be loaded if it was signed by a trusted admin
    /// key. Returns [`Error::Denied`] otherwise.
    pub fn check_admin_agents(&self, image: &Image<'_>) -> Result<(), Error> {
        if !self.is_admin() && image.agents().any(|a| a.is_admin()) {
            return Err(Error::Denied);
        }
        Ok(())
    }
}

/// Verify an Ed25519 `signature` by `public_key` over the concatenation of
/// `message_parts` (streamed; nothing is copied). Errors:
/// [`Error::BadSignature`] for a signature that does not verify, is not
/// canonical, or a public key that is not a valid point.
pub fn verify_signature(
    public_key: &[u8; PUBLIC_KEY_LEN],
    signature: &[u8; SIGNATURE_LEN],
    message_parts: &[&[u8]],
) -> Result<(), Error> {
    let pk = PublicKey::new(*public_key);
    let sig = Signature::new(*signature);
    let mut st = pk
        .verify_incremental(&sig)
        .map_err(|_| Error::BadSignature)?;
    for part in message_parts {
        st.absorb(part);
    }
    st.verify().map_err(|_| Error::BadSignature)
}

/// Verify a signature block against an image: the algorithm is Ed25519 and
/// the signature verifies over [`Image::signed_message_parts`] with the
/// block's own public key. Does not look at any policy.
pub fn verify_block(image: &Image<'_>, block: &SignatureBlock) -> Result<(), Error> {
    if block.algorithm != SIG_ALG_ED25519 {
        return Err(Error::BadSignatureBlock);
    }
    if block.key_id != key_id(&block.public_key) {
        return Err(Error::BadSignatureBlock);
    }
    verify_signature(
        &block.public_key,
        &block.signature,
        &image.signed_message_parts(),
    )
}

/// Decide whether a parsed image may be loaded under `policy`.
///
/// Order of checks (the first failure is returned):
/// 1. no signature block: [`Error::Unsigned`], unless the policy accepts
///    unsigned images (then `Ok` with `signer: None`);
/// 2. the signature does not verify with the block's public key over
///    domain ‖ measurement ‖ manifest: [`Error::BadSignature`];
/// 3. the signer is not accepted by the policy: [`Error::SignerNotAllowed`].
///
/// Structural problems (bad magic, truncation, measurement mismatch, a
/// malformed signature block) were already rejected by [`Image::parse`];
/// use [`ImageError::code`](crate::image::ImageError::code) for them.
pub fn verify_image(image: &Image<'_>, policy: &Policy<'_>) -> Result<Verified, Error> {
    let measurement = *image.measurement();
    let block = match image.signature().map_err(|e| e.code())? {
        Some(b) => b,
        None => {
            return match policy.unsigned {
                UnsignedImages::Reject => Err(Error::Unsigned),
                UnsignedImages::Accept => Ok(Verified {
                    measurement,
                    signer: None,
                }),
            }
        }
    };
    verify_block(image, &block)?;
    let (trusted, admin) = match policy.signers {
        Signers::AllowList(list) => match list.find(&block.public_key) {
            Some(k) => (true, k.admin),
            None => return Err(Error::SignerNotAllowed),
        },
        Signers::Key(k) => {
            if k.public_key != block.public_key {
                return Err(Error::SignerNotAllowed);
            }
            (true, k.admin)
        }
        Signers::AnyKey => (false, false),
    };
    Ok(Verified {
        measurement,
        signer: Some(Signer {
            public_key: block.public_key,
            key_id: block.key_id,
            admin,
            trusted,
        }),
    })
}
