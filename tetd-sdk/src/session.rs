//! Encrypted sessions between a host-side client and an agent: the wire
//! format, the key schedule's inputs and the size accounting — the one
//! definition both ends use. The full protocol, its security argument and
//! its limits are in `docs/encryption.md`.
//!
//! ```text
//! client (host, ring)                      guest kernel            agent (in its zone)
//!  HELLO  = 01 01 0000 | client_pub(32)  ───── bytes ─────▶  X25519, HKDF(transcript)
//!  ACK    = 02 01 0000 | agent_pub(32) | session_id(8) | tag(16)   ◀─────
//!  DATA   = 03 01 0000 | session_id(8) | counter(8) | AES-256-GCM(plaintext) | tag(16)  ─────▶
//!  REPLY  = 04 01 0000 | session_id(8) | counter(8) | AES-256-GCM(status(4) ‖ output) | tag(16) ◀─────
//! ```
//!
//! * Key agreement: X25519 between a fresh client key and a fresh agent key.
//! * Keys: `HKDF-SHA256(salt = `[`HKDF_SALT`]`, ikm = shared secret, info =
//!   `[`transcript`]`)` → 72 bytes: client→agent key, agent→client key,
//!   session id. The transcript binds the protocol version, the agent's
//!   image measurement, the agent id and both public keys.
//! * AEAD: AES-256-GCM; nonce = direction (u32 LE) ‖ counter (u64 LE)
//!   ([`nonce`]); additional data = the message header (type, version,
//!   reserved, session id, counter).
//! * Counters: requests carry 1, 2, 3, … and the agent accepts exactly the
//!   next one (replayed, reordered or skipped requests fail); a reply
//!   carries the counter of the request it answers; the ACK is counter 0 of
//!   the agent→client direction.
//!
//! This module has no dependencies and is always compiled (the host client
//! in `tetd-kvm` uses it); the agent side — key agreement, AES-GCM, the
//! session table and the dispatch wrapper — needs the `session` feature,
//! which encrypted agents enable next to `agent`.

use crate::image::MEASUREMENT_LEN;

#[cfg(feature = "session")]
mod agent;
#[cfg(feature = "session")]
pub(crate) use agent::dispatch_encrypted;
#[cfg(feature = "session")]
pub use agent::{
    derive_keys, open_in_place, seal_in_place, Opened, ReplyKey, SessionKeys, SessionTable,
    MAX_SESSIONS,
};

/// Protocol version (byte 1 of every message).
pub const VERSION: u8 = 1;

/// Message type: client → agent, opens a session.
pub const MSG_HELLO: u8 = 0x01;
/// Message type: agent → client, answers HELLO.
pub const MSG_HELLO_ACK: u8 = 0x02;
/// Message type: client → agent, an encrypted request.
pub const MSG_DATA: u8 = 0x03;
/// Message type: agent → client, the encrypted reply to a DATA message.
pub const MSG_DATA_REPLY: u8 = 0x04;

/// X25519 public key length.
pub const PUBLIC_KEY_LEN: usize = 32;
/// AES-256 key length.
pub const KEY_LEN: usize = 32;
/// Session id length.
pub const SESSION_ID_LEN: usize = 8;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// Length of the authenticated status word at the start of a reply's
/// plaintext.
pub const STATUS_LEN: usize = 4;

/// Length of the common prefix: type, version, two reserved zero bytes.
pub const PREFIX_LEN: usize = 4;
/// HELLO: prefix ‖ client public key.
pub const HELLO_LEN: usize = PREFIX_LEN + PUBLIC_KEY_LEN;
/// HELLO_ACK: prefix ‖ agent public key ‖ session id ‖ tag.
pub const HELLO_ACK_LEN: usize = PREFIX_LEN + PUBLIC_KEY_LEN + SESSION_ID_LEN + TAG_LEN;
/// Bytes of the HELLO_ACK covered by its tag (everything before it).
pub const HELLO_ACK_AAD_LEN: usize = HELLO_ACK_LEN - TAG_LEN;
/// DATA / DATA reply header: prefix ‖ session id ‖ counter (the AAD).
pub const DATA_HEADER_LEN: usize = PREFIX_LEN + SESSION_ID_LEN + 8;
/// Bytes a DATA message adds to the plaintext request.
pub const REQUEST_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Bytes a DATA reply adds to the plaintext output (header, status, tag).
pub const REPLY_OVERHEAD: usize = DATA_HEADER_LEN + STATUS_LEN + TAG_LEN;

/// Offsets inside a DATA / DATA reply header.
pub const SESSION_ID_OFFSET: usize = PREFIX_LEN;
/// Offset of the counter (u64 LE).
pub const COUNTER_OFFSET: usize = PREFIX_LEN + SESSION_ID_LEN;

/// Counter of the HELLO_ACK (agent → client direction).
pub const ACK_COUNTER: u64 = 0;
/// Counter of the first request.
pub const FIRST_COUNTER: u64 = 1;

/// HKDF-SHA256 salt.
pub const HKDF_SALT: &[u8] = b"tetd-session-v1 salt";
/// First bytes of the transcript (the HKDF info).
pub const TRANSCRIPT_LABEL: &[u8; 16] = b"TETD-SESSION-V1\0";
/// Length of [`transcript`]'s output.
pub const TRANSCRIPT_LEN: usize = 16 + 1 + MEASUREMENT_LEN + 4 + 2 * PUBLIC_KEY_LEN;
/// HKDF output length: client→agent key ‖ agent→client key ‖ session id.
pub const OKM_LEN: usize = 2 * KEY_LEN + SESSION_ID_LEN;
/// Domain label the agent hashes its key entropy with.
pub const AGENT_KEY_LABEL: &[u8] = b"tetd-session-v1 agent key";

/// Largest plaintext an agent accepts is `max_input - REQUEST_OVERHEAD`.
/// Manifests of encrypted agents hold the wire limits; `tetd-pack` adds
/// the overhead to the plaintext limits an agent declares.
pub const fn wire_max_input(plain: u32) -> Option<u32> {
    let w = plain as u64 + REQUEST_OVERHEAD as u64;
    let w = if w < HELLO_LEN as u64 {
        HELLO_LEN as u64
    } else {
        w
    };
    if w > u32::MAX as u64 {
        None
    } else {
        Some(w as u32)
    }
}

/// Wire `max_output` for a plaintext output limit: room for a DATA reply
/// and for the HELLO_ACK.
pub const fn wire_max_output(plain: u32) -> Option<u32> {
    let w = plain as u64 + REPLY_OVERHEAD as u64;
    let w = if w < HELLO_ACK_LEN as u64 {
        HELLO_ACK_LEN as u64
    } else {
        w
    };
    if w > u32::MAX as u64 {
        None
    } else {
        Some(w as u32)
    }
}

/// Direction of a message (first four bytes of its nonce).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → agent (DATA).
    ClientToAgent = 1,
    /// Agent → client (HELLO_ACK, DATA reply).
    AgentToClient = 2,
}

/// The AES-GCM nonce of message `counter` in `dir`.
pub fn nonce(dir: Direction, counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&(dir as u32).to_le_bytes());
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// The HKDF info: label ‖ version ‖ measurement ‖ agent id (u32 LE) ‖
/// client public key ‖ agent public key.
pub fn transcript(
    measurement: &[u8; MEASUREMENT_LEN],
    agent_id: u32,
    client_pub: &[u8; PUBLIC_KEY_LEN],
    agent_pub: &[u8; PUBLIC_KEY_LEN],
) -> [u8; TRANSCRIPT_LEN] {
    let mut t = [0u8; TRANSCRIPT_LEN];
    let mut at = 0;
    for part in [
        &TRANSCRIPT_LABEL[..],
        &[VERSION][..],
        &measurement[..],
        &agent_id.to_le_bytes()[..],
        &client_pub[..],
        &agent_pub[..],
    ] {
        t[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    t
}

/// The 4-byte prefix of a message of type `ty`.
pub const fn prefix(ty: u8) -> [u8; PREFIX_LEN] {
    [ty, VERSION, 0, 0]
}

/// A DATA / DATA reply header (the AAD of its AEAD).
pub fn data_header(
    ty: u8,
    session_id: &[u8; SESSION_ID_LEN],
    counter: u64,
) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[..PREFIX_LEN].copy_from_slice(&prefix(ty));
    h[SESSION_ID_OFFSET..COUNTER_OFFSET].copy_from_slice(session_id);
    h[COUNTER_OFFSET..].copy_from_slice(&counter.to_le_bytes());
    h
}

/// A parsed DATA / DATA reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Message type.
    pub ty: u8,
    /// Session id.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Counter.
    pub counter: u64,
}

/// Why a message is not well formed (before any cryptography).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Empty, or the type byte is not the expected one.
    Type,
    /// A version this code does not speak.
    Version,
    /// Reserved bytes are not zero.
    Reserved,
    /// Too short / wrong length for its type.
    Length,
}

impl WireError {
    /// The status the agent answers with.
    pub const fn error(self) -> crate::Error {
        match self {
            WireError::Version => crate::Error::Unsupported,
            _ => crate::Error::Crypto,
        }
    }
    /// One-line description.
    pub const fn description(self) -> &'static str {
        match self {
            WireError::Type => "not a session message of the expected type",
            WireError::Version => "unsupported session protocol version",
            WireError::Reserved => "reserved header bytes are not zero",
            WireError::Length => "session message has the wrong length",
        }
    }
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.description())
    }
}

/// Check the 4-byte prefix: type `ty`, [`VERSION`], reserved zero.
pub fn check_prefix(msg: &[u8], ty: u8) -> Result<(), WireError> {
    if msg.is_empty() || msg[0] != ty {
        return Err(WireError::Type);
    }
    if msg.len() < PREFIX_LEN {
        return Err(WireError::Length);
    }
    if msg[1] != VERSION {
        return Err(WireError::Version);
    }
    if msg[2] != 0 || msg[3] != 0 {
        return Err(WireError::Reserved);
    }
    Ok(())
}

/// Parse the header of a DATA (`ty` = [`MSG_DATA`]) or DATA reply
/// ([`MSG_DATA_REPLY`]) message; it must be followed by at least a tag
/// (and, for a reply, the status word).
pub fn parse_data_header(msg: &[u8], ty: u8) -> Result<DataHeader, WireError> {
    check_prefix(msg, ty)?;
    let min = if ty == MSG_DATA_REPLY {
        REPLY_OVERHEAD
    } else {
        REQUEST_OVERHEAD
    };
    if msg.len() < min {
        return Err(WireError::Length);
    }
    let mut session_id = [0u8; SESSION_ID_LEN];
    session_id.copy_from_slice(&msg[SESSION_ID_OFFSET..COUNTER_OFFSET]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&msg[COUNTER_OFFSET..DATA_HEADER_LEN]);
    Ok(DataHeader {
        ty,
        session_id,
        counter: u64::from_le_bytes(c),
    })
}

/// Split the key material HKDF produced: (client→agent key, agent→client
/// key, session id).
pub fn split_okm(okm: &[u8; OKM_LEN]) -> ([u8; KEY_LEN], [u8; KEY_LEN], [u8; SESSION_ID_LEN]) {
    let mut c2a = [0u8; KEY_LEN];
    let mut a2c = [0u8; KEY_LEN];
    let mut id = [0u8; SESSION_ID_LEN];
    c2a.copy_from_slice(&okm[..KEY_LEN]);
    a2c.copy_from_slice(&okm[KEY_LEN..2 * KEY_LEN]);
    id.copy_from_slice(&okm[2 * KEY_LEN..]);
    (c2a, a2c, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(HELLO_LEN, 36);
        assert_eq!(HELLO_ACK_LEN, 60);
        assert_eq!(DATA_HEADER_LEN, 20);
        assert_eq!(REQUEST_OVERHEAD, 36);
        assert_eq!(REPLY_OVERHEAD, 40);
        assert_eq!(TRANSCRIPT_LEN, 133);
        assert_eq!(wire_max_input(0), Some(36));
        assert_eq!(wire_max_input(100), Some(136));
        assert_eq!(wire_max_output(0), Some(60));
        assert_eq!(wire_max_output(100), Some(140));
        assert_eq!(wire_max_input(u32::MAX), None);
    }

    #[test]
    fn headers_round_trip() {
        let h = data_header(MSG_DATA, &[7; 8], 0x0102_0304_0506_0708);
        assert_eq!(&h[..4], &[3, 1, 0, 0]);
        assert_eq!(&h[12..], &0x0102_0304_0506_0708u64.to_le_bytes());
        let mut m = h.to_vec();
        m.extend_from_slice(&[0; TAG_LEN]);
        let p = parse_data_header(&m, MSG_DATA).unwrap();
        assert_eq!(p.session_id, [7; 8]);
        assert_eq!(p.counter, 0x0102_0304_0506_0708);
        assert_eq!(
            parse_data_header(&m[..m.len() - 1], MSG_DATA),
            Err(WireError::Length)
        );
        assert_eq!(parse_data_header(&m, MSG_DATA_REPLY), Err(WireError::Type));
        m[1] = 2;
        assert_eq!(parse_data_header(&m, MSG_DATA), Err(WireError::Version));
        m[1] = 1;
        m[3] = 1;
        assert_eq!(parse_data_header(&m, MSG_DATA), Err(WireError::Reserved));
        assert_eq!(parse_data_header(&[], MSG_DATA), Err(WireError::Type));
        assert_eq!(parse_data_header(&[3], MSG_DATA), Err(WireError::Length));
    }

    #[test]
    fn nonce_and_transcript_layout() {
        let n = nonce(Direction::AgentToClient, 5);
        assert_eq!(n, [2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        let t = transcript(&[0xaa; 48], 0x0403_0201, &[0xbb; 32], &[0xcc; 32]);
        assert_eq!(&t[..16], TRANSCRIPT_LABEL);
        assert_eq!(t[16], VERSION);
        assert_eq!(&t[17..65], &[0xaa; 48]);
        assert_eq!(&t[65..69], &[1, 2, 3, 4]);
        assert_eq!(&t[69..101], &[0xbb; 32]);
        assert_eq!(&t[101..], &[0xcc; 32]);
    }
}
