//! The ring client (`tetd_kvm::session`) against the agent's end of the
//! session protocol (`tetd::session`, RustCrypto + ed25519-compact):
//!
//! * known-answer vectors computed independently with Python's
//!   `cryptography` (OpenSSL) by `scripts/session-vectors.py`: both ends
//!   must produce exactly these bytes from the same keys;
//! * round trips with random keys and many sizes;
//! * every byte of every message tampered with, replays, reordering,
//!   truncation: rejected, and the honest messages still work afterwards.
#![allow(deprecated)] // ring::test::rand: fixed "random" keys for the vectors.

use ring::test::rand::FixedSliceRandom;
use tetd::session::{
    self, data_header, derive_keys, nonce, seal_in_place, transcript, Direction, SessionTable,
    DATA_HEADER_LEN, HELLO_ACK_LEN, MSG_DATA, REPLY_OVERHEAD, STATUS_LEN,
};
use tetd::Error;
use tetd_kvm::session::{Session, SessionError};

// --- scripts/session-vectors.py output --------------------------------------
const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
const TRANSCRIPT: &str = "544554442d53455353494f4e2d56310001404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f140000008520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6ade9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
const K_C2A: &str = "c7a41594294abf992f2712207dde0328367e5685c1f76de8abd519a66c7aa7bb";
const K_A2C: &str = "50aa37034b5d1144a33d0fb45dc9dcfdfdc196af06959addc97c365d6128ee76";
const SESSION_ID: &str = "2b9da8d9301236f3";
const HELLO: &str = "010100008520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
const ACK: &str = "02010000de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f2b9da8d9301236f329ebb964d98f4b6c152e5591736faba4";
const REQUEST_1: &str = "030100002b9da8d9301236f30100000000000000d4d94ef6a2ac84414a2c163be5e813eed8ce1f4bcb04626305d1aa3b";
const REPLY_1: &str = "040100002b9da8d9301236f30100000000000000261e587faf9e39be1f91dcbb53e8f6b168f50fbd9248775c9179a35db50e1ddc77";
const REQUEST_2: &str = "030100002b9da8d9301236f302000000000000001c5e8a3b065a939ec61af9b47b3c08ff";
const REPLY_2: &str =
    "040100002b9da8d9301236f30200000000000000d9b2970bd233aa3ad95378aefa0356d93db08f0d";

// RFC 7748 section 6.1 keys: the client is Alice, the agent Bob.
const CLIENT_SK: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const AGENT_SK: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
const AGENT_ID: u32 = 20;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    unhex(s).try_into().unwrap()
}

fn measurement() -> [u8; 48] {
    core::array::from_fn(|i| 0x40 + i as u8)
}

/// The agent answers a request: decrypt in place, "handler" output, seal.
fn agent_answer(
    t: &mut SessionTable,
    id: u32,
    req: &[u8],
    handler: impl FnOnce(&[u8]) -> Result<Vec<u8>, Error>,
) -> Result<Vec<u8>, Error> {
    let mut msg = req.to_vec();
    let o = t.open_request(id, &mut msg)?;
    let (status, out) = match handler(&msg[o.plaintext.clone()]) {
        Ok(v) => (0, v),
        Err(e) => (e.code(), Vec::new()),
    };
    let mut buf = vec![0u8; REPLY_OVERHEAD + out.len()];
    buf[DATA_HEADER_LEN + STATUS_LEN..][..out.len()].copy_from_slice(&out);
    let n = o.reply.seal_reply(status, &mut buf, out.len())?;
    buf.truncate(n);
    Ok(buf)
}

fn agent_hello(t: &mut SessionTable, id: u32, secret: &[u8; 32], hello: &[u8]) -> Vec<u8> {
    let mut ack = vec![0u8; HELLO_ACK_LEN];
    let n = t
        .hello(&measurement(), id, secret, hello, &mut ack)
        .unwrap();
    ack.truncate(n);
    ack
}

/// A session with fresh random keys on both ends.
fn open_session(t: &mut SessionTable, id: u32) -> Session {
    let (hs, hello) = Session::hello(measurement(), id).unwrap();
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).unwrap();
    let ack = agent_hello(t, id, &secret, &hello);
    hs.finish(&ack).unwrap()
}

#[test]
fn known_answer_vectors_ring_client() {
    let client_sk = unhex(CLIENT_SK);
    let rng = FixedSliceRandom { bytes: &client_sk };
    let (hs, hello) = Session::hello_with_rng(measurement(), AGENT_ID, &rng).unwrap();
    assert_eq!(hello, unhex(HELLO));
    let mut s = hs.finish(&unhex(ACK)).expect("the reference ACK verifies");
    assert_eq!(s.session_id().to_vec(), unhex(SESSION_ID));
    assert_eq!(s.seal(b"hello, agent").unwrap(), unhex(REQUEST_1));
    assert_eq!(s.open(&unhex(REPLY_1)).unwrap(), b"hello, client");
    assert_eq!(s.seal(b"").unwrap(), unhex(REQUEST_2));
    assert_eq!(
        s.open(&unhex(REPLY_2)),
        Err(SessionError::Agent {
            code: Error::InvalidInput.code()
        })
    );
}

#[test]
fn known_answer_vectors_agent_side() {
    // The agent's X25519 (ed25519-compact), HKDF and AES-GCM (RustCrypto).
    let mut t = SessionTable::new();
    let ack = agent_hello(&mut t, AGENT_ID, &arr(AGENT_SK), &unhex(HELLO));
    assert_eq!(ack, unhex(ACK));
    let r1 = agent_answer(&mut t, AGENT_ID, &unhex(REQUEST_1), |p| {
        assert_eq!(p, b"hello, agent");
        Ok(b"hello, client".to_vec())
    })
    .unwrap();
    assert_eq!(r1, unhex(REPLY_1));
    let r2 = agent_answer(&mut t, AGENT_ID, &unhex(REQUEST_2), |p| {
        assert!(p.is_empty());
        Err(Error::InvalidInput)
    })
    .unwrap();
    assert_eq!(r2, unhex(REPLY_2));
}

#[test]
fn known_answer_vectors_primitives() {
    // X25519 of the agent's crate gives RFC 7748's shared secret; the key
    // schedule and AEAD primitives give the reference keys and bytes.
    use ed25519_compact::x25519::{PublicKey, SecretKey};
    let client_pub = SecretKey::new(arr(CLIENT_SK)).recover_public_key().unwrap();
    let agent_sk = SecretKey::new(arr(AGENT_SK));
    let agent_pub = agent_sk.recover_public_key().unwrap();
    let shared = PublicKey::new(*client_pub).dh(&agent_sk).unwrap();
    assert_eq!(shared.to_vec(), unhex(SHARED));
    let t = transcript(&measurement(), AGENT_ID, &client_pub, &agent_pub);
    assert_eq!(t.to_vec(), unhex(TRANSCRIPT));
    let k = derive_keys(&arr(SHARED), &t).unwrap();
    assert_eq!(k.c2a.to_vec(), unhex(K_C2A));
    assert_eq!(k.a2c.to_vec(), unhex(K_A2C));
    assert_eq!(k.session_id.to_vec(), unhex(SESSION_ID));
    // The client's request built with the agent's primitives is the same
    // bytes ring produced.
    let mut msg = data_header(MSG_DATA, &k.session_id, 1).to_vec();
    let mut body = b"hello, agent".to_vec();
    let tag = seal_in_place(&k.c2a, Direction::ClientToAgent, 1, &msg, &mut body).unwrap();
    msg.extend_from_slice(&body);
    msg.extend_from_slice(&tag);
    assert_eq!(msg, unhex(REQUEST_1));
    assert_eq!(
        nonce(Direction::AgentToClient, 1),
        [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn rfc7748_x25519_in_ring() {
    // ring's X25519 with Alice's private key and Bob's public key gives the
    // RFC's shared secret (the agent's crate is checked above).
    use ring::agreement;
    let sk = unhex(CLIENT_SK);
    let rng = FixedSliceRandom { bytes: &sk };
    let k = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
    let bob_pub = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let shared = agreement::agree_ephemeral(
        k,
        &agreement::UnparsedPublicKey::new(&agreement::X25519, bob_pub),
        |s| s.to_vec(),
    )
    .unwrap();
    assert_eq!(shared, unhex(SHARED));
}

#[test]
fn round_trips_random_keys_many_sizes() {
    let mut t = SessionTable::new();
    let mut s = open_session(&mut t, 7);
    for size in [0usize, 1, 15, 16, 17, 31, 255, 4096, 65_536] {
        let pt: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let req = s.seal(&pt).unwrap();
        assert_eq!(req.len(), pt.len() + session::REQUEST_OVERHEAD);
        let rep = agent_answer(&mut t, 7, &req, |p| {
            assert_eq!(p, &pt[..]);
            Ok(p.iter().rev().copied().collect())
        })
        .unwrap();
        assert_eq!(rep.len(), pt.len() + REPLY_OVERHEAD);
        let out = s.open(&rep).unwrap();
        assert_eq!(out, pt.iter().rev().copied().collect::<Vec<_>>());
    }
}

#[test]
fn ciphertext_never_contains_the_plaintext() {
    let mut t = SessionTable::new();
    let mut s = open_session(&mut t, 7);
    let secret = b"the launch code is 0000 and must stay inside the zone";
    let req = s.seal(secret).unwrap();
    assert!(!req.windows(8).any(|w| secret.windows(8).any(|x| x == w)));
    let rep = agent_answer(&mut t, 7, &req, |p| Ok(p.to_vec())).unwrap();
    assert!(!rep.windows(8).any(|w| secret.windows(8).any(|x| x == w)));
    assert_eq!(s.open(&rep).unwrap(), secret);
}

#[test]
fn every_tampered_request_byte_is_rejected() {
    let mut t = SessionTable::new();
    let mut s = open_session(&mut t, 7);
    let req = s.seal(b"pay 10 to alice").unwrap();
    for i in 0..req.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = req.clone();
            bad[i] ^= bit;
            let r = agent_answer(&mut t, 7, &bad, |_| panic!("handler ran on tampered input"));
            let expect = if i == 1 {
                Error::Unsupported
            } else {
                Error::Crypto
            };
            assert_eq!(r.err(), Some(expect), "byte {i} bit {bit:#x}");
        }
    }
    // Truncated (each length) and extended.
    for n in 0..req.len() {
        let r = agent_answer(&mut t, 7, &req[..n], |_| panic!("handler ran"));
        assert!(r.is_err(), "truncated to {n}");
    }
    let mut long = req.clone();
    long.push(0);
    assert_eq!(
        agent_answer(&mut t, 7, &long, |_| panic!("handler ran")).err(),
        Some(Error::Crypto)
    );
    // Wrong agent id (the session is bound to agent 7).
    assert_eq!(
        agent_answer(&mut t, 8, &req, |_| panic!("handler ran")).err(),
        Some(Error::Crypto)
    );
    // None of it disturbed the session: the genuine request still works.
    let rep = agent_answer(&mut t, 7, &req, |p| Ok(p.to_vec())).unwrap();
    assert_eq!(s.open(&rep).unwrap(), b"pay 10 to alice");
}

#[test]
fn every_tampered_reply_byte_is_rejected() {
    let mut t = SessionTable::new();
    let mut s = open_session(&mut t, 7);
    let req = s.seal(b"balance?").unwrap();
    let rep = agent_answer(&mut t, 7, &req, |_| Ok(b"42".to_vec())).unwrap();
    for i in 0..rep.len() {
        let mut bad = rep.clone();
        bad[i] ^= 0x04;
        match s.open(&bad) {
            Err(SessionError::Rejected(_)) => {}
            other => panic!("byte {i}: {other:?}"),
        }
    }
    for n in 0..rep.len() {
        assert!(
            matches!(s.open(&rep[..n]), Err(SessionError::Rejected(_))),
            "truncated to {n}"
        );
    }
    assert_eq!(s.open(&rep).unwrap(), b"42");
    // Replaying the reply for the next request is rejected.
    let _req2 = s.seal(b"balance?").unwrap();
    assert!(matches!(s.open(&rep), Err(SessionError::Rejected(_))));
    assert_eq!(s.open(&rep).unwrap_err().error(), Error::Crypto);
}

#[test]
fn replayed_and_reordered_requests_are_rejected() {
    let mut t = SessionTable::new();
    let mut s = open_session(&mut t, 7);
    let r1 = s.seal(b"one").unwrap();
    let r2 = s.seal(b"two").unwrap();
    let r3 = s.seal(b"three").unwrap();
    let echo = |p: &[u8]| Ok(p.to_vec());
    // Reordered: 2 before 1.
    assert_eq!(
        agent_answer(&mut t, 7, &r2, echo).err(),
        Some(Error::Crypto)
    );
    assert!(agent_answer(&mut t, 7, &r1, echo).is_ok());
    // Replayed: 1 again.
    assert_eq!(
        agent_answer(&mut t, 7, &r1, echo).err(),
        Some(Error::Crypto)
    );
    // Skipped: 3 before 2.
    assert_eq!(
        agent_answer(&mut t, 7, &r3, echo).err(),
        Some(Error::Crypto)
    );
    let a2 = agent_answer(&mut t, 7, &r2, echo).unwrap();
    let a3 = agent_answer(&mut t, 7, &r3, echo).unwrap();
    // The client waits for the reply to 3 (its last request): the reply to
    // 2 is rejected, 3's is accepted.
    assert!(matches!(s.open(&a2), Err(SessionError::Rejected(_))));
    assert_eq!(s.open(&a3).unwrap(), b"three");
}

#[test]
fn handshake_binds_measurement_and_agent_id() {
    let mut secret = [5u8; 32];
    secret[0] = 1;
    // Agent computes with a different measurement: the client's check fails.
    let (hs, hello) = Session::hello(measurement(), 7).unwrap();
    let mut t = SessionTable::new();
    let mut other = measurement();
    other[0] ^= 1;
    let mut ack = vec![0u8; HELLO_ACK_LEN];
    t.hello(&other, 7, &secret, &hello, &mut ack).unwrap();
    assert!(matches!(hs.finish(&ack), Err(SessionError::Rejected(_))));
    // ... or a different agent id.
    let (hs, hello) = Session::hello(measurement(), 7).unwrap();
    let ack = agent_hello(&mut t, 8, &secret, &hello);
    assert!(matches!(hs.finish(&ack), Err(SessionError::Rejected(_))));
    // A man in the middle who answers with its own key but cannot make the
    // agent's confirmation tag for the client's key: rejected.
    let (hs, hello) = Session::hello(measurement(), 7).unwrap();
    let mut ack = agent_hello(&mut t, 7, &secret, &hello);
    let mitm = ed25519_compact::x25519::SecretKey::new([9; 32])
        .recover_public_key()
        .unwrap();
    ack[4..36].copy_from_slice(&mitm[..]);
    assert!(matches!(hs.finish(&ack), Err(SessionError::Rejected(_))));
    // The honest ACK for the same agent and measurement is accepted.
    let (hs, hello) = Session::hello(measurement(), 7).unwrap();
    let ack = agent_hello(&mut t, 7, &secret, &hello);
    assert!(hs.finish(&ack).is_ok());
}

#[test]
fn tampered_ack_bytes_are_rejected() {
    // One handshake per tampered byte, with a fixed client key so the
    // agent's genuine ACK is the same each time.
    let sk = [0x11u8; 32];
    let agent_secret = [0x22u8; 32];
    let hello_for = || {
        let rng = FixedSliceRandom { bytes: &sk };
        Session::hello_with_rng(measurement(), 9, &rng).unwrap()
    };
    let mut t = SessionTable::new();
    let (_, hello) = hello_for();
    let ack = agent_hello(&mut t, 9, &agent_secret, &hello);
    for i in 0..ack.len() {
        let mut bad = ack.clone();
        bad[i] ^= 0x10;
        let (hs, _) = hello_for();
        assert!(
            matches!(hs.finish(&bad), Err(SessionError::Rejected(_))),
            "ACK byte {i}"
        );
    }
    let (hs, _) = hello_for();
    assert!(hs.finish(&ack[..ack.len() - 1]).is_err());
    let (hs, _) = hello_for();
    hs.finish(&ack).unwrap();
}

#[test]
fn low_order_keys_are_refused_on_both_ends() {
    // The agent refuses a client key whose shared secret is zero.
    let mut t = SessionTable::new();
    let mut hello = tetd::session::prefix(tetd::session::MSG_HELLO).to_vec();
    hello.extend_from_slice(&[0u8; 32]);
    let mut ack = [0u8; HELLO_ACK_LEN];
    assert_eq!(
        t.hello(&measurement(), 1, &[3; 32], &hello, &mut ack),
        Err(Error::Crypto)
    );
    // The client refuses such an agent key.
    let (hs, _) = Session::hello(measurement(), 1).unwrap();
    let mut bad = tetd::session::prefix(tetd::session::MSG_HELLO_ACK).to_vec();
    bad.extend_from_slice(&[0u8; 32 + 8 + 16]);
    assert!(matches!(hs.finish(&bad), Err(SessionError::Rejected(_))));
}

#[test]
fn open_without_a_request_is_misuse() {
    let mut t = SessionTable::new();
    let mut s = open_session(&mut t, 3);
    let req = s.seal(b"x").unwrap();
    let rep = agent_answer(&mut t, 3, &req, |p| Ok(p.to_vec())).unwrap();
    s.open(&rep).unwrap();
    assert!(matches!(s.open(&rep), Err(SessionError::State(_))));
}
