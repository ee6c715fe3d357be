//! The agent's end of an encrypted session (feature `session`): X25519
//! (`ed25519-compact`), HKDF-SHA256 (`hkdf` + `sha2`), AES-256-GCM
//! (`aes-gcm`), a fixed-size session table, and the dispatch wrapper that
//! makes all of it invisible to the handler.
//!
//! Every crate here is portable integer code on the agent target: `sha2`
//! with `force-soft`, and `aes` / `polyval` with `--cfg aes_force_soft
//! --cfg polyval_force_soft`, which `tetd-pack build` passes (without them
//! the AES-NI / CLMUL back ends do not even compile for the soft-float
//! `x86_64-unknown-none` target, so a wrongly built agent fails loudly).
//! No vector registers, no CPUID-based back-end selection.

use core::cell::UnsafeCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use ed25519_compact::x25519;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::{
    check_prefix, data_header, nonce, parse_data_header, split_okm, transcript, Direction,
    ACK_COUNTER, AGENT_KEY_LABEL, DATA_HEADER_LEN, FIRST_COUNTER, HELLO_ACK_AAD_LEN, HELLO_ACK_LEN,
    HELLO_LEN, HKDF_SALT, KEY_LEN, MSG_DATA, MSG_DATA_REPLY, MSG_HELLO, MSG_HELLO_ACK, OKM_LEN,
    PREFIX_LEN, PUBLIC_KEY_LEN, REPLY_OVERHEAD, SESSION_ID_LEN, STATUS_LEN, TAG_LEN,
};
use crate::abi::{CallFrame, Error};
use crate::image::MEASUREMENT_LEN;
use crate::{Call, Result};

/// Sessions one agent image keeps at once (shared by all its encrypted
/// entry points; each session is bound to one agent id). A HELLO when all
/// are in use replaces the least recently used session.
pub const MAX_SESSIONS: usize = 8;

/// The keys of one session.
pub struct SessionKeys {
    /// Client → agent key.
    pub c2a: [u8; KEY_LEN],
    /// Agent → client key.
    pub a2c: [u8; KEY_LEN],
    /// Session id.
    pub session_id: [u8; SESSION_ID_LEN],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.c2a.zeroize();
        self.a2c.zeroize();
    }
}

/// HKDF-SHA256 over the X25519 shared secret with the transcript as info.
pub fn derive_keys(
    shared: &[u8; 32],
    transcript: &[u8; super::TRANSCRIPT_LEN],
) -> Result<SessionKeys> {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), shared);
    let mut okm = [0u8; OKM_LEN];
    hk.expand(transcript, &mut okm)
        .map_err(|_| Error::Internal)?;
    let (c2a, a2c, session_id) = split_okm(&okm);
    okm.zeroize();
    Ok(SessionKeys {
        c2a,
        a2c,
        session_id,
    })
}

/// AES-256-GCM encrypt `buf` in place; returns the tag.
pub fn seal_in_place(
    key: &[u8; KEY_LEN],
    dir: Direction,
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let n = nonce(dir, counter);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&n), aad, buf)
        .map_err(|_| Error::Crypto)?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&tag);
    Ok(out)
}

/// AES-256-GCM verify and decrypt `buf` in place. On failure `buf` is left
/// as it was (`aes-gcm` checks the tag before decrypting).
pub fn open_in_place(
    key: &[u8; KEY_LEN],
    dir: Direction,
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<()> {
    if tag.len() != TAG_LEN {
        return Err(Error::Crypto);
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let n = nonce(dir, counter);
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(&n), aad, buf, Tag::from_slice(tag))
        .map_err(|_| Error::Crypto)
}

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    agent_id: u32,
    session_id: [u8; SESSION_ID_LEN],
    c2a: [u8; KEY_LEN],
    a2c: [u8; KEY_LEN],
    /// The counter the next request must carry.
    next: u64,
    /// LRU clock value of the last use.
    last_use: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        used: false,
        agent_id: 0,
        session_id: [0; SESSION_ID_LEN],
        c2a: [0; KEY_LEN],
        a2c: [0; KEY_LEN],
        next: 0,
        last_use: 0,
    };

    fn clear(&mut self) {
        self.c2a.zeroize();
        self.a2c.zeroize();
        *self = Slot::EMPTY;
    }
}

/// What the agent needs to answer one request: the agent→client key, the
/// session id and the request's counter. Zeroized when dropped.
pub struct ReplyKey {
    key: [u8; KEY_LEN],
    session_id: [u8; SESSION_ID_LEN],
    counter: u64,
}

impl Drop for ReplyKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ReplyKey {
    /// The counter of the request (and so of its reply).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Build the DATA reply in `out`, whose bytes
    /// `[DATA_HEADER_LEN + STATUS_LEN ..][..output_len]` already hold the
    /// plaintext output. `status` is 0 or the handler's error code. Returns
    /// the reply's length.
    pub fn seal_reply(&self, status: u32, out: &mut [u8], output_len: usize) -> Result<usize> {
        let total = output_len
            .checked_add(REPLY_OVERHEAD)
            .ok_or(Error::OutputTooLarge)?;
        if out.len() < total {
            return Err(Error::OutputTooLarge);
        }
        let (hdr, rest) = out.split_at_mut(DATA_HEADER_LEN);
        hdr.copy_from_slice(&data_header(MSG_DATA_REPLY, &self.session_id, self.counter));
        rest[..STATUS_LEN].copy_from_slice(&status.to_le_bytes());
        let body_len = STATUS_LEN + output_len;
        let tag = seal_in_place(
            &self.key,
            Direction::AgentToClient,
            self.counter,
            hdr,
            &mut rest[..body_len],
        )?;
        rest[body_len..body_len + TAG_LEN].copy_from_slice(&tag);
        Ok(total)
    }
}

/// A request that verified: where its plaintext is (decrypted in place)
/// and the key to answer it with.
pub struct Opened {
    /// Range of the plaintext inside the message buffer.
    pub plaintext: Range<usize>,
    /// Answers this request.
    pub reply: ReplyKey,
}

/// The sessions of one agent image (fixed size, no allocation).
pub struct SessionTable {
    slots: [Slot; MAX_SESSIONS],
    clock: u64,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionTable {
    /// No sessions.
    pub const fn new() -> Self {
        SessionTable {
            slots: [Slot::EMPTY; MAX_SESSIONS],
            clock: 0,
        }
    }

    /// Sessions in use.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }

    /// Forget every session (keys zeroized).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(Slot::clear);
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    /// Answer a HELLO: agree on keys with the client's public key, using
    /// `agent_secret` as this session's X25519 private key; write the
    /// HELLO_ACK to `out` and return its length.
    pub fn hello(
        &mut self,
        measurement: &[u8; MEASUREMENT_LEN],
        agent_id: u32,
        agent_secret: &[u8; 32],
        msg: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        check_prefix(msg, MSG_HELLO).map_err(|e| e.error())?;
        if msg.len() != HELLO_LEN {
            return Err(Error::Crypto);
        }
        if out.len() < HELLO_ACK_LEN {
            return Err(Error::OutputTooLarge);
        }
        let mut client_pub = [0u8; PUBLIC_KEY_LEN];
        client_pub.copy_from_slice(&msg[PREFIX_LEN..]);
        let sk = x25519::SecretKey::new(*agent_secret);
        let agent_pub = sk.recover_public_key().map_err(|_| Error::Crypto)?;
        // `dh` rejects an all-zero result (a low-order client key).
        let shared = x25519::PublicKey::new(client_pub)
            .dh(&sk)
            .map_err(|_| Error::Crypto)?;
        let t = transcript(measurement, agent_id, &client_pub, &agent_pub);
        let keys = derive_keys(&shared, &t)?;
        drop(shared); // DHOutput zeroizes itself.
        drop(sk); // so does SecretKey.

        let ack = &mut out[..HELLO_ACK_LEN];
        ack[..PREFIX_LEN].copy_from_slice(&super::prefix(MSG_HELLO_ACK));
        ack[PREFIX_LEN..PREFIX_LEN + PUBLIC_KEY_LEN].copy_from_slice(&agent_pub[..]);
        ack[PREFIX_LEN + PUBLIC_KEY_LEN..HELLO_ACK_AAD_LEN].copy_from_slice(&keys.session_id);
        let (aad, tag_out) = ack.split_at_mut(HELLO_ACK_AAD_LEN);
        let tag = seal_in_place(
            &keys.a2c,
            Direction::AgentToClient,
            ACK_COUNTER,
            aad,
            &mut [],
        )?;
        tag_out.copy_from_slice(&tag);

        let now = self.tick();
        // The same session id again (2^-64): replace it. Else a free slot,
        // else the least recently used one.
        let i = self
            .slots
            .iter()
            .position(|s| s.used && s.session_id == keys.session_id)
            .or_else(|| self.slots.iter().position(|s| !s.used))
            .unwrap_or_else(|| {
                let mut lru = 0;
                for (i, s) in self.slots.iter().enumerate() {
                    if s.last_use < self.slots[lru].last_use {
                        lru = i;
                    }
                }
                lru
            });
        let slot = &mut self.slots[i];
        slot.clear();
        *slot = Slot {
            used: true,
            agent_id,
            session_id: keys.session_id,
            c2a: keys.c2a,
            a2c: keys.a2c,
            next: FIRST_COUNTER,
            last_use: now,
        };
        Ok(HELLO_ACK_LEN)
    }

    /// Verify a DATA message for agent `agent_id` and decrypt it in place.
    /// Fails with [`Error::Crypto`] for an unknown session, a session of
    /// another agent, a counter other than the next expected one (replay,
    /// reordering, a skipped message) and a bad tag (modified or truncated
    /// message, wrong key); nothing changes then.
    pub fn open_request(&mut self, agent_id: u32, msg: &mut [u8]) -> Result<Opened> {
        let h = parse_data_header(msg, MSG_DATA).map_err(|e| e.error())?;
        let now = self.tick();
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.used && s.session_id == h.session_id && s.agent_id == agent_id)
            .ok_or(Error::Crypto)?;
        if h.counter != slot.next || h.counter == u64::MAX {
            return Err(Error::Crypto);
        }
        let (hdr, rest) = msg.split_at_mut(DATA_HEADER_LEN);
        let body_len = rest.len() - TAG_LEN;
        let (body, tag) = rest.split_at_mut(body_len);
        open_in_place(
            &slot.c2a,
            Direction::ClientToAgent,
            h.counter,
            hdr,
            body,
            tag,
        )?;
        slot.next = h.counter + 1;
        slot.last_use = now;
        Ok(Opened {
            plaintext: DATA_HEADER_LEN..DATA_HEADER_LEN + body_len,
            reply: ReplyKey {
                key: slot.a2c,
                session_id: h.session_id,
                counter: h.counter,
            },
        })
    }
}

// ---------------------------------------------------------------------------
// The per-image table and the dispatch wrapper
// ---------------------------------------------------------------------------

/// The image's session table. Calls into one image are serialised by the
/// runtime; the flag turns a violation of that into `Error::Busy` instead
/// of a data race. It is never held while handler code runs (a panicking
/// handler aborts the call without unwinding, which would leave it set).
struct Table {
    busy: AtomicBool,
    table: UnsafeCell<SessionTable>,
}

// SAFETY: `table` is only reached through `with_table`, which gives one
// caller at a time exclusive access (the `busy` flag).
unsafe impl Sync for Table {}

static TABLE: Table = Table {
    busy: AtomicBool::new(false),
    table: UnsafeCell::new(SessionTable::new()),
};

fn with_table<R>(f: impl FnOnce(&mut SessionTable) -> Result<R>) -> Result<R> {
    if TABLE
        .busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(Error::Busy);
    }
    // SAFETY: the flag was clear and is now ours: no other reference to the
    // table exists until we clear it below.
    let r = f(unsafe { &mut *TABLE.table.get() });
    TABLE.busy.store(false, Ordering::Release);
    r
}

/// 32 bytes from the CPU's RDRAND, if it has one (CPUID.01H:ECX[30]).
///
/// RDRAND runs in the TD without the VMM or the guest kernel seeing or
/// influencing it; the runtime's `random` service is the guest kernel's
/// (untrusted in the TETD model). The agent key mixes both.
#[cfg(target_arch = "x86_64")]
fn cpu_entropy(out: &mut [u8; 32]) -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86-64 CPU; leaf 1 has no side
    // effects (inside a TD the TDX module answers it without a #VE).
    let leaf1 = unsafe { core::arch::x86_64::__cpuid(1) };
    if leaf1.ecx & (1 << 30) == 0 {
        return false;
    }
    for chunk in out.chunks_exact_mut(8) {
        let mut got = None;
        // Intel's guidance: retry a few times on a transient underflow.
        for _ in 0..10 {
            let v: u64;
            let ok: u8;
            // SAFETY: RDRAND is supported (checked above); it only writes
            // the output register and the flags.
            unsafe {
                core::arch::asm!(
                    "rdrand {v}",
                    "setc {ok}",
                    v = out(reg) v,
                    ok = out(reg_byte) ok,
                    options(nomem, nostack)
                )
            };
            if ok == 1 {
                got = Some(v);
                break;
            }
        }
        match got {
            Some(v) => chunk.copy_from_slice(&v.to_le_bytes()),
            None => return false,
        }
    }
    true
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_entropy(_out: &mut [u8; 32]) -> bool {
    false
}

/// The agent's X25519 key for a new session: SHA-256 over a label, the
/// runtime's random bytes, RDRAND output and the client's public key.
fn agent_secret(call: &Call<'_>, client_hello: &[u8]) -> Result<[u8; 32]> {
    let mut rt = [0u8; 32];
    call.random(&mut rt)?;
    let mut hw = [0u8; 32];
    if !cpu_entropy(&mut hw) {
        call.log(
            "tetd session: no RDRAND on this CPU; the session key comes from the \
             runtime's randomness only",
        );
    }
    let mut h = Sha256::new();
    h.update(AGENT_KEY_LABEL);
    h.update(rt);
    h.update(hw);
    h.update(client_hello);
    rt.zeroize();
    hw.zeroize();
    Ok(h.finalize().into())
}

/// The body of an encrypted agent's trampoline (see
/// `tetd::__private::dispatch_encrypted`): HELLO is answered here; DATA is
/// verified and decrypted in place in the input area, the handler runs on
/// the plaintext through an ordinary [`Call`], and its status and output
/// are encrypted in place in the output area. Anything else — plaintext
/// included — fails with [`Error::Crypto`] before the handler runs.
///
/// # Safety
/// `frame` satisfies the [`CallFrame`] contract, including that the input
/// area is writable by the agent for `input_len` bytes.
pub(crate) unsafe fn dispatch_encrypted(
    frame: &mut CallFrame,
    handler: fn(&mut Call<'_>) -> Result<()>,
) -> Result<()> {
    let input: &mut [u8] = if frame.input_len == 0 || frame.input.is_null() {
        &mut []
    } else {
        // SAFETY: the input area is valid and writable for input_len bytes
        // and does not alias the output area (CallFrame contract).
        unsafe { core::slice::from_raw_parts_mut(frame.input as *mut u8, frame.input_len as usize) }
    };
    match input.first().copied() {
        Some(MSG_HELLO) => {
            let (measurement, mut secret, id) = {
                // SAFETY: contract forwarded; `call` ends with this block,
                // before the frame is touched again.
                let call = unsafe { Call::from_frame(frame) };
                if call.output_capacity() < HELLO_ACK_LEN {
                    return Err(Error::OutputTooLarge);
                }
                let measurement = call.measurement()?;
                (measurement, agent_secret(&call, input)?, call.agent_id())
            };
            let out = output_slice(frame);
            let r = with_table(|t| t.hello(&measurement, id, &secret, input, out));
            secret.zeroize();
            frame.output_len = r? as u64;
            Ok(())
        }
        Some(MSG_DATA) => {
            if (frame.output_cap as usize) < REPLY_OVERHEAD {
                // Checked before the request is accepted, so its counter is
                // not used up.
                return Err(Error::OutputTooLarge);
            }
            let id = frame.agent_id;
            let opened = with_table(|t| t.open_request(id, input))?;
            let plain = &mut input[opened.plaintext.clone()];
            let inner_cap = frame.output_cap as usize - REPLY_OVERHEAD;
            let mut inner = CallFrame {
                abi_version: frame.abi_version,
                agent_id: frame.agent_id,
                input: plain.as_ptr(),
                input_len: plain.len() as u64,
                // SAFETY (pointer arithmetic): output_cap >= REPLY_OVERHEAD,
                // so the offset stays inside the output area.
                output: unsafe { frame.output.add(DATA_HEADER_LEN + STATUS_LEN) },
                output_cap: inner_cap as u64,
                output_len: 0,
                services: frame.services,
                heap: frame.heap,
                heap_len: frame.heap_len,
                flags: frame.flags,
            };
            // SAFETY: `inner` describes the plaintext (inside the input
            // area) and a sub-range of the output area: valid, disjoint,
            // and not otherwise used while the handler runs.
            let status = {
                let mut call = unsafe { Call::from_frame(&mut inner) };
                match handler(&mut call) {
                    Ok(()) => 0,
                    Err(e) => e.code(),
                }
            };
            // The plaintext request does not outlive the call.
            plain.zeroize();
            let out_len = if status == 0 {
                if inner.output_len > inner_cap as u64 {
                    return Err(Error::OutputTooLarge);
                }
                inner.output_len as usize
            } else {
                0
            };
            let out = output_slice(frame);
            let n = opened.reply.seal_reply(status, out, out_len)?;
            frame.output_len = n as u64;
            Ok(())
        }
        _ => Err(Error::Crypto),
    }
}

fn output_slice(frame: &mut CallFrame) -> &mut [u8] {
    if frame.output_cap == 0 || frame.output.is_null() {
        return &mut [];
    }
    // SAFETY: `output` is valid and exclusive for `output_cap` bytes for the
    // call (CallFrame contract); the borrow of `frame` keeps it unique here.
    unsafe { core::slice::from_raw_parts_mut(frame.output, frame.output_cap as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{HELLO_ACK_LEN, MSG_DATA};

    fn client_hello(sk: &[u8; 32]) -> [u8; HELLO_LEN] {
        let pk = x25519::SecretKey::new(*sk).recover_public_key().unwrap();
        let mut m = [0u8; HELLO_LEN];
        m[..4].copy_from_slice(&super::super::prefix(MSG_HELLO));
        m[4..].copy_from_slice(&pk[..]);
        m
    }

    /// Client-side key derivation with the same crates (the ring client is
    /// tested against this table in tetd-kvm).
    fn client_keys(sk: &[u8; 32], ack: &[u8], m: &[u8; 48], id: u32) -> SessionKeys {
        let csk = x25519::SecretKey::new(*sk);
        let cpk = csk.recover_public_key().unwrap();
        let mut apk = [0u8; 32];
        apk.copy_from_slice(&ack[4..36]);
        let shared = x25519::PublicKey::new(apk).dh(&csk).unwrap();
        derive_keys(&shared, &transcript(m, id, &cpk, &apk)).unwrap()
    }

    fn request(k: &SessionKeys, counter: u64, pt: &[u8]) -> std::vec::Vec<u8> {
        let mut m = data_header(MSG_DATA, &k.session_id, counter).to_vec();
        let mut body = pt.to_vec();
        let tag = seal_in_place(&k.c2a, Direction::ClientToAgent, counter, &m, &mut body).unwrap();
        m.extend_from_slice(&body);
        m.extend_from_slice(&tag);
        m
    }

    #[test]
    fn handshake_request_reply() {
        let m = [9u8; 48];
        let mut t = SessionTable::new();
        let mut ack = [0u8; HELLO_ACK_LEN];
        let hello = client_hello(&[1; 32]);
        assert_eq!(
            t.hello(&m, 7, &[2; 32], &hello, &mut ack),
            Ok(HELLO_ACK_LEN)
        );
        let k = client_keys(&[1; 32], &ack, &m, 7);
        assert_eq!(&ack[36..44], &k.session_id);
        open_in_place(
            &k.a2c,
            Direction::AgentToClient,
            0,
            &ack[..44],
            &mut [],
            &ack[44..],
        )
        .unwrap();

        let mut req = request(&k, 1, b"secret");
        let o = t.open_request(7, &mut req).unwrap();
        assert_eq!(&req[o.plaintext.clone()], b"secret");
        let mut out = [0u8; 64];
        out[24..27].copy_from_slice(b"abc");
        let n = o.reply.seal_reply(0, &mut out, 3).unwrap();
        assert_eq!(n, 43);
        let (hdr, rest) = out[..n].split_at_mut(20);
        let (body, tag) = rest.split_at_mut(7);
        open_in_place(&k.a2c, Direction::AgentToClient, 1, hdr, body, tag).unwrap();
        assert_eq!(&body[..4], &[0, 0, 0, 0]);
        assert_eq!(&body[4..], b"abc");

        // Replay of request 1, a skipped counter, another agent id.
        let mut again = request(&k, 1, b"secret");
        assert!(t.open_request(7, &mut again).is_err());
        let mut skip = request(&k, 3, b"x");
        assert!(t.open_request(7, &mut skip).is_err());
        let mut other = request(&k, 2, b"x");
        assert!(t.open_request(8, &mut other).is_err());
        // Still in step after the failures.
        let mut next = request(&k, 2, b"x");
        assert!(t.open_request(7, &mut next).is_ok());
    }

    #[test]
    fn rejects_bad_hellos() {
        let m = [0u8; 48];
        let mut t = SessionTable::new();
        let mut out = [0u8; 64];
        let mut h = client_hello(&[1; 32]);
        assert_eq!(
            t.hello(&m, 1, &[2; 32], &h[..35], &mut out),
            Err(Error::Crypto)
        );
        assert_eq!(
            t.hello(&m, 1, &[2; 32], &h, &mut out[..59]),
            Err(Error::OutputTooLarge)
        );
        // Low-order point (0): all-zero shared secret.
        h[4..].fill(0);
        assert_eq!(t.hello(&m, 1, &[2; 32], &h, &mut out), Err(Error::Crypto));
        h[1] = 9;
        assert_eq!(
            t.hello(&m, 1, &[2; 32], &h, &mut out),
            Err(Error::Unsupported)
        );
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn lru_eviction() {
        let m = [0u8; 48];
        let mut t = SessionTable::new();
        let mut keys = std::vec::Vec::new();
        for i in 0..=MAX_SESSIONS as u8 {
            let mut ack = [0u8; HELLO_ACK_LEN];
            t.hello(&m, 1, &[i + 10; 32], &client_hello(&[i + 1; 32]), &mut ack)
                .unwrap();
            keys.push(client_keys(&[i + 1; 32], &ack, &m, 1));
            if i as usize == MAX_SESSIONS - 1 {
                // The table is full; session 0 is used again, so session 1
                // is the least recently used when the next HELLO comes.
                let mut r = request(&keys[0], 1, b"");
                t.open_request(1, &mut r).unwrap();
            }
        }
        assert_eq!(t.active(), MAX_SESSIONS);
        let mut r0 = request(&keys[0], 2, b"");
        assert!(t.open_request(1, &mut r0).is_ok(), "recently used: kept");
        let mut r1 = request(&keys[1], 1, b"");
        assert_eq!(
            t.open_request(1, &mut r1).err(),
            Some(Error::Crypto),
            "evicted"
        );
        t.clear();
        assert_eq!(t.active(), 0);
    }
}
