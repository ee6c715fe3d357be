//! The host-side client of an encrypted agent session (`ring`).
//!
//! Protocol and wire format: `docs/encryption.md` and [`tetd::session`]
//! (the one definition of the message layout, the transcript and the
//! nonces). This end does X25519 with `ring::agreement`, HKDF-SHA256 with
//! `ring::hkdf` and AES-256-GCM with `ring::aead`; the agent's end is the
//! SDK's (`ed25519-compact`, `hkdf`, `aes-gcm`). Both are pinned to the same
//! known-answer vectors (`tests/session_interop.rs`).
//!
//! ```no_run
//! # fn transport(_: &[u8]) -> Vec<u8> { unimplemented!() }
//! # fn demo(measurement: [u8; 48]) -> Result<(), tetd_kvm::session::SessionError> {
//! use tetd_kvm::session::Session;
//! let (handshake, hello) = Session::hello(measurement, 20)?;
//! let mut s = handshake.finish(&transport(&hello))?; // the agent's HELLO_ACK
//! let request = s.seal(b"secret input")?;
//! let output = s.open(&transport(&request))?; // the agent's DATA reply
//! # Ok(()) }
//! ```
//!
//! `transport` is whatever carries bytes to the agent and back (the
//! simulator's `Registry::call`, `/dev/tetdg` through `tetdctl` in a guest):
//! it only ever sees ciphertext.

use ring::{aead, agreement, hkdf, rand};
use tetd::image::MEASUREMENT_LEN;
use tetd::session::{
    check_prefix, data_header, nonce, parse_data_header, prefix, split_okm, transcript, Direction,
    ACK_COUNTER, DATA_HEADER_LEN, FIRST_COUNTER, HELLO_ACK_AAD_LEN, HELLO_ACK_LEN, HKDF_SALT,
    MSG_DATA, MSG_DATA_REPLY, MSG_HELLO, MSG_HELLO_ACK, OKM_LEN, PREFIX_LEN, PUBLIC_KEY_LEN,
    SESSION_ID_LEN, STATUS_LEN, TAG_LEN,
};
use tetd::Error;

/// Why a session step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A message from the agent did not verify (bad tag, wrong session,
    /// replayed or reordered reply, malformed): [`Error::Crypto`].
    #[error("message rejected: {0}")]
    Rejected(&'static str),
    /// The agent's handler failed; the status arrived encrypted and
    /// authenticated. `code` is the raw status.
    #[error("agent reported {} (authenticated)", describe_code(*.code))]
    Agent {
        /// The handler's status code.
        code: u32,
    },
    /// The API was used out of order (no request in flight, counter
    /// exhausted).
    #[error("session misuse: {0}")]
    State(&'static str),
    /// The system random generator failed.
    #[error("no randomness for the session key")]
    Random,
}

fn describe_code(code: u32) -> String {
    match Error::try_from_code(code as u64) {
        Some(e) => e.to_string(),
        None => format!("status {code}"),
    }
}

impl SessionError {
    /// The TETD status this corresponds to.
    pub fn error(&self) -> Error {
        match self {
            SessionError::Rejected(_) => Error::Crypto,
            SessionError::Agent { code } => Error::from_code(*code as u64),
            SessionError::State(_) => Error::BadRequest,
            SessionError::Random => Error::Internal,
        }
    }
}

type Result<T> = std::result::Result<T, SessionError>;

/// A client that has sent HELLO and waits for the HELLO_ACK.
pub struct Handshake {
    private: agreement::EphemeralPrivateKey,
    client_pub: [u8; PUBLIC_KEY_LEN],
    measurement: [u8; MEASUREMENT_LEN],
    agent_id: u32,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

/// An established session: one request in flight at a time.
pub struct Session {
    c2a: aead::LessSafeKey,
    a2c: aead::LessSafeKey,
    session_id: [u8; SESSION_ID_LEN],
    agent_id: u32,
    next: u64,
    pending: Option<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("agent_id", &self.agent_id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

struct OkmLen;

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        OKM_LEN
    }
}

fn aes_key(k: &[u8]) -> aead::LessSafeKey {
    // A 32-byte key is always valid for AES-256-GCM.
    aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, k).expect("32-byte AES-256 key"),
    )
}

impl Session {
    /// Start a session with agent `agent_id`, whose image has
    /// `measurement` (what the client expects: from the image file, or a
    /// verified quote): a fresh X25519 key from the system RNG. Returns the
    /// HELLO to send.
    pub fn hello(
        measurement: [u8; MEASUREMENT_LEN],
        agent_id: u32,
    ) -> Result<(Handshake, Vec<u8>)> {
        Self::hello_with_rng(measurement, agent_id, &rand::SystemRandom::new())
    }

    /// [`Session::hello`] with a given random source (tests use ring's
    /// fixed-output generators for known-answer vectors).
    pub fn hello_with_rng(
        measurement: [u8; MEASUREMENT_LEN],
        agent_id: u32,
        rng: &dyn rand::SecureRandom,
    ) -> Result<(Handshake, Vec<u8>)> {
        let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, rng)
            .map_err(|_| SessionError::Random)?;
        let public = private
            .compute_public_key()
            .map_err(|_| SessionError::Random)?;
        let mut client_pub = [0u8; PUBLIC_KEY_LEN];
        client_pub.copy_from_slice(public.as_ref());
        let mut msg = prefix(MSG_HELLO).to_vec();
        msg.extend_from_slice(&client_pub);
        Ok((
            Handshake {
                private,
                client_pub,
                measurement,
                agent_id,
            },
            msg,
        ))
    }

    /// The session id (both ends derive it; the agent echoes it).
    pub fn session_id(&self) -> [u8; SESSION_ID_LEN] {
        self.session_id
    }

    /// The agent this session is bound to.
    pub fn agent_id(&self) -> u32 {
        self.agent_id
    }

    /// The counter the next request will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Encrypt a request. Each call uses the next counter; a request whose
    /// reply never came is abandoned by sealing the next one (the agent may
    /// or may not have consumed its counter: if not, it rejects the next
    /// request and the client starts a new session).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let counter = self.next;
        if counter == u64::MAX {
            return Err(SessionError::State("request counter exhausted"));
        }
        let header = data_header(MSG_DATA, &self.session_id, counter);
        let mut msg = Vec::with_capacity(DATA_HEADER_LEN + plaintext.len() + TAG_LEN);
        msg.extend_from_slice(&header);
        msg.extend_from_slice(plaintext);
        let tag = self
            .c2a
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce(Direction::ClientToAgent, counter)),
                aead::Aad::from(&header),
                &mut msg[DATA_HEADER_LEN..],
            )
            .map_err(|_| SessionError::State("request too large"))?;
        msg.extend_from_slice(tag.as_ref());
        self.next = counter + 1;
        self.pending = Some(counter);
        Ok(msg)
    }

    /// Verify and decrypt the agent's reply to the request in flight.
    /// `Ok(output)` when the handler succeeded; [`SessionError::Agent`] with
    /// its (authenticated) status when it failed; [`SessionError::Rejected`]
    /// for anything that does not verify (the request stays in flight, so
    /// the genuine reply is still accepted).
    pub fn open(&mut self, reply: &[u8]) -> Result<Vec<u8>> {
        let h = parse_data_header(reply, MSG_DATA_REPLY)
            .map_err(|e| SessionError::Rejected(e.description()))?;
        let counter = self
            .pending
            .ok_or(SessionError::State("no request in flight"))?;
        if h.session_id != self.session_id {
            return Err(SessionError::Rejected("reply belongs to another session"));
        }
        if h.counter != counter {
            return Err(SessionError::Rejected(
                "reply counter is not the request's (replayed or reordered reply)",
            ));
        }
        let mut body = reply[DATA_HEADER_LEN..].to_vec();
        let plain = self
            .a2c
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce(Direction::AgentToClient, counter)),
                aead::Aad::from(&reply[..DATA_HEADER_LEN]),
                &mut body,
            )
            .map_err(|_| SessionError::Rejected("reply failed authentication (AES-GCM tag)"))?;
        self.pending = None;
        let mut status = [0u8; STATUS_LEN];
        status.copy_from_slice(&plain[..STATUS_LEN]);
        match u32::from_le_bytes(status) {
            0 => Ok(plain[STATUS_LEN..].to_vec()),
            code => Err(SessionError::Agent { code }),
        }
    }
}

impl Handshake {
    /// The agent this handshake is with.
    pub fn agent_id(&self) -> u32 {
        self.agent_id
    }

    /// Check the agent's HELLO_ACK: agree on the keys and verify the
    /// agent's confirmation tag, which only an agent that derived the same
    /// keys — from the same measurement, agent id and public keys — can
    /// produce.
    pub fn finish(self, ack: &[u8]) -> Result<Session> {
        check_prefix(ack, MSG_HELLO_ACK).map_err(|e| SessionError::Rejected(e.description()))?;
        if ack.len() != HELLO_ACK_LEN {
            return Err(SessionError::Rejected("HELLO_ACK has the wrong length"));
        }
        let mut agent_pub = [0u8; PUBLIC_KEY_LEN];
        agent_pub.copy_from_slice(&ack[PREFIX_LEN..PREFIX_LEN + PUBLIC_KEY_LEN]);
        let t = transcript(
            &self.measurement,
            self.agent_id,
            &self.client_pub,
            &agent_pub,
        );
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, agent_pub);
        // ring refuses an all-zero shared secret (a low-order agent key).
        let okm = agreement::agree_ephemeral(self.private, &peer, |shared| {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(shared);
            let mut okm = [0u8; OKM_LEN];
            prk.expand(&[&t], OkmLen)
                .and_then(|o| o.fill(&mut okm))
                .map(|()| okm)
        })
        .map_err(|_| SessionError::Rejected("key agreement failed (invalid agent key)"))?
        .map_err(|_| SessionError::Rejected("key derivation failed"))?;
        let (c2a, a2c, session_id) = split_okm(&okm);
        if ack[PREFIX_LEN + PUBLIC_KEY_LEN..HELLO_ACK_AAD_LEN] != session_id {
            return Err(SessionError::Rejected(
                "HELLO_ACK session id differs (other measurement, agent id or key)",
            ));
        }
        let a2c = aes_key(&a2c);
        let mut tag = ack[HELLO_ACK_AAD_LEN..].to_vec();
        a2c.open_in_place(
            aead::Nonce::assume_unique_for_key(nonce(Direction::AgentToClient, ACK_COUNTER)),
            aead::Aad::from(&ack[..HELLO_ACK_AAD_LEN]),
            &mut tag,
        )
        .map_err(|_| SessionError::Rejected("HELLO_ACK failed authentication"))?;
        Ok(Session {
            c2a: aes_key(&c2a),
            a2c,
            session_id,
            agent_id: self.agent_id,
            next: FIRST_COUNTER,
            pending: None,
        })
    }
}
