//! The encrypted example agent (examples/secure-echo) end to end through
//! the simulator:
//!
//! * `tetd-pack run --encrypt`: the runner as the host-side client;
//! * a `tetd-pack run --script - --hex-output` process as the untrusted
//!   transport (it plays the guest kernel: it carries bytes to the agent and
//!   back), driven by the ring client in this test, which tampers with,
//!   replays and reorders messages on the way.

mod run_util;

use run_util::*;
use tetd::session::{
    COUNTER_OFFSET, DATA_HEADER_LEN, REPLY_OVERHEAD, REQUEST_OVERHEAD, SESSION_ID_OFFSET, TAG_LEN,
};
use tetd_kvm::session::{Session as Client, SessionError};

const SECURE: u32 = 20;
const WHOAMI: u32 = 21;

fn secure() -> String {
    example("secure-echo")
}

fn measurement_bytes(image: &str) -> [u8; 48] {
    unhex(&measurement(image)).try_into().unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encrypted_round_trip_through_the_runner() {
    let img = secure();
    let secret = "attack at dawn, bring the secret sauce";
    let o = run(&[
        &img,
        "--encrypt",
        "--agent",
        "20",
        "--input",
        secret,
        "--json",
    ]);
    o.expect_code(0);
    let j = o.json();
    let c = &j["calls"][0];
    assert_eq!(c["status"], "ok");
    assert_eq!(c["encrypted"], true);
    assert_eq!(unhex(c["output"].as_str().unwrap()), secret.as_bytes());
    let wire = &c["wire"];
    let request = unhex(wire["request"].as_str().unwrap());
    let reply = unhex(wire["reply"].as_str().unwrap());
    let hello = unhex(wire["hello"].as_str().unwrap());
    let ack = unhex(wire["hello_ack"].as_str().unwrap());
    assert_eq!(request.len(), secret.len() + REQUEST_OVERHEAD);
    assert_eq!(reply.len(), secret.len() + REPLY_OVERHEAD);
    assert_eq!((hello.len(), ack.len()), (36, 60));
    assert_eq!((request[0], reply[0]), (3, 4), "DATA and DATA reply");
    // Nothing the call interface carried contains the plaintext (or any
    // 6-byte piece of it).
    for bytes in [&request, &reply, &hello, &ack] {
        for piece in secret.as_bytes().windows(6) {
            assert!(!contains(bytes, piece), "plaintext visible on the wire");
        }
    }
    // Plain text mode prints the decrypted output.
    let o = run(&[&img, "--encrypt", "--agent", "20", "--input", secret]);
    o.expect_code(0);
    assert_eq!(o.stdout, secret.as_bytes());
}

#[test]
fn several_calls_share_one_session_and_errors_are_authenticated() {
    let img = secure();
    let o = run(&[
        &img,
        "--encrypt",
        "--call",
        "20:text:one",
        "--call",
        "20:text:",
        "--call",
        "20:text:three",
        "--call",
        "21",
        "--json",
    ]);
    o.expect_code(1);
    let j = o.json();
    let calls = j["calls"].as_array().unwrap();
    assert_eq!(calls[0]["status"], "ok");
    assert_eq!(unhex(calls[0]["output"].as_str().unwrap()), b"one");
    // The handshake ran once, before the first call.
    assert!(calls[0]["wire"]["hello"].is_string());
    assert!(calls[1]["wire"]["hello"].is_null());
    assert!(calls[2]["wire"]["hello"].is_null());
    // The empty request fails in the handler; the status came back inside
    // the encrypted reply (the transport saw a successful call).
    assert_eq!(calls[1]["status"], "InvalidInput");
    assert_eq!(
        calls[1]["session_detail"],
        "status authenticated by the session"
    );
    assert_eq!(unhex(calls[2]["output"].as_str().unwrap()), b"three");
    // Counters 1, 2, 3 of one session.
    for (i, c) in calls[..3].iter().enumerate() {
        let req = unhex(c["wire"]["request"].as_str().unwrap());
        let ctr = u64::from_le_bytes(req[COUNTER_OFFSET..DATA_HEADER_LEN].try_into().unwrap());
        assert_eq!(ctr, i as u64 + 1);
    }
    // whoami is a plain agent: its own measurement, in the clear.
    assert!(calls[3]["encrypted"].is_null());
    assert_eq!(calls[3]["output"], measurement(&img));
}

#[test]
fn plaintext_to_an_encrypted_agent_is_rejected() {
    let img = secure();
    let o = run(&[&img, "--agent", "20", "--input", "hello", "--json"]);
    o.expect_code(1);
    let c = &o.json()["calls"][0];
    assert_eq!(c["status"], "Crypto");
    assert_eq!(c["ran"], true, "the agent itself refused it");
    assert_eq!(c["output"], "");
    // Input that merely starts like a session message is refused too.
    for spec in ["20:hex:01", "20:hex:0301", "20:hex:03010000", "20:text:"] {
        let o = run(&[&img, "--call", spec, "--json"]);
        o.expect_code(1);
        assert_eq!(o.json()["calls"][0]["status"], "Crypto", "{spec}");
    }
}

#[test]
fn a_client_expecting_another_measurement_does_not_get_a_session() {
    let img = secure();
    let mut wrong = measurement_bytes(&img);
    wrong[47] ^= 1;
    let o = run(&[
        &img,
        "--encrypt",
        "--agent",
        "20",
        "--input",
        "x",
        "--measurement",
        &hex(&wrong),
    ]);
    o.expect_code(1);
    assert!(o.stdout.is_empty());
    assert!(
        o.stderr.contains("cryptographic check failed (E10)"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("HELLO_ACK"), "{}", o.stderr);
    // The right one works.
    let o = run(&[
        &img,
        "--encrypt",
        "--agent",
        "20",
        "--input",
        "x",
        "--measurement",
        &measurement(&img),
    ]);
    o.expect_code(0);
    assert_eq!(o.stdout, b"x");
}

/// A session through a `tetd-pack run --script -` process: this test is
/// the client, the process is the transport plus the agent. Every byte the
/// transport sees is recorded.
struct Wire {
    transport: run_util::Session,
    seen: Vec<Vec<u8>>,
}

impl Wire {
    fn start(img: &str) -> Wire {
        Wire {
            transport: run_util::Session::start(&[img], &[]),
            seen: Vec::new(),
        }
    }

    fn call(&mut self, id: u32, msg: &[u8]) -> Result<Vec<u8>, String> {
        self.seen.push(msg.to_vec());
        let r = self.transport.call_bytes(id, msg);
        if let Ok(out) = &r {
            self.seen.push(out.clone());
        }
        r
    }

    fn connect(&mut self, img: &str) -> Client {
        let (hs, hello) = Client::hello(measurement_bytes(img), SECURE).unwrap();
        let ack = self.call(SECURE, &hello).unwrap();
        hs.finish(&ack).unwrap()
    }
}

#[test]
fn tampered_replayed_and_reordered_messages_are_rejected() {
    let img = secure();
    let mut w = Wire::start(&img);
    let mut s = w.connect(&img);
    let secret = b"the vault code is 4711";

    // Tampering with each region of a request: the agent answers Crypto
    // (Unsupported for the version byte) and its session is unaffected.
    let req = s.seal(secret).unwrap();
    let body = DATA_HEADER_LEN + 3;
    let tag = req.len() - TAG_LEN + 5;
    for (what, at, expect) in [
        ("type", 0, "Crypto"),
        ("version", 1, "Unsupported"),
        ("reserved", 2, "Crypto"),
        ("session id", SESSION_ID_OFFSET + 1, "Crypto"),
        ("counter", COUNTER_OFFSET, "Crypto"),
        ("body", body, "Crypto"),
        ("tag", tag, "Crypto"),
    ] {
        let mut bad = req.clone();
        bad[at] ^= 0x40;
        assert_eq!(w.call(SECURE, &bad), Err(expect.into()), "{what}");
    }
    // Truncated (tag cut, header only, one byte) and extended.
    for n in [
        req.len() - 1,
        DATA_HEADER_LEN + TAG_LEN - 1,
        DATA_HEADER_LEN,
        1,
    ] {
        assert_eq!(w.call(SECURE, &req[..n]), Err("Crypto".into()), "{n} bytes");
    }
    let mut long = req.clone();
    long.push(0);
    assert_eq!(w.call(SECURE, &long), Err("Crypto".into()));
    // None of it disturbed the session: the genuine request still works.
    let reply = w.call(SECURE, &req).unwrap();
    assert_eq!(s.open(&reply).unwrap(), secret);

    // Replay of a request the agent already answered.
    assert_eq!(w.call(SECURE, &req), Err("Crypto".into()));

    // Reordering: requests 2 and 3 sealed, 3 delivered first.
    let r2 = s.seal(b"second").unwrap();
    let r3 = s.seal(b"third").unwrap();
    assert_eq!(w.call(SECURE, &r3), Err("Crypto".into()), "3 before 2");
    let a2 = w.call(SECURE, &r2).unwrap();
    let a3 = w.call(SECURE, &r3).unwrap();
    // The client waits for the reply to its last request (3): the reply to
    // 2 does not pass for it.
    assert!(matches!(s.open(&a2), Err(SessionError::Rejected(_))));
    assert_eq!(s.open(&a3).unwrap(), b"third");

    // Tampering with each region of a reply: the client rejects it, then
    // accepts the genuine one.
    let r4 = s.seal(b"fourth").unwrap();
    let a4 = w.call(SECURE, &r4).unwrap();
    for at in [
        0,
        1,
        2,
        SESSION_ID_OFFSET,
        COUNTER_OFFSET,
        DATA_HEADER_LEN,
        DATA_HEADER_LEN + 5,
        a4.len() - 1,
    ] {
        let mut bad = a4.clone();
        bad[at] ^= 0x01;
        assert!(
            matches!(s.open(&bad), Err(SessionError::Rejected(_))),
            "reply byte {at}"
        );
    }
    // A replayed old reply is rejected too.
    assert!(matches!(s.open(&a3), Err(SessionError::Rejected(_))));
    assert_eq!(s.open(&a4).unwrap(), b"fourth");

    // An empty request fails in the handler: authenticated status.
    let r5 = s.seal(b"").unwrap();
    let a5 = w.call(SECURE, &r5).unwrap();
    assert_eq!(
        s.open(&a5),
        Err(SessionError::Agent {
            code: tetd::Error::InvalidInput.code()
        })
    );

    // Nothing the transport carried contains the plaintexts.
    for m in &w.seen {
        for p in [&secret[..], b"second", b"third", b"fourth"] {
            assert!(!contains(m, p), "plaintext on the wire");
        }
    }
    let (code, _) = w.transport.finish();
    assert_eq!(code, 1, "the rejected calls count as failures");
}

#[test]
fn sessions_are_bound_to_their_agent_and_plain_agents_are_unaffected() {
    let img = secure();
    let mut w = Wire::start(&img);
    let mut s = w.connect(&img);
    // whoami (plain) still works in the same process and says which image
    // the session is bound to.
    assert_eq!(w.call(WHOAMI, b""), Ok(measurement_bytes(&img).to_vec()));
    // A second client gets its own session; both work, interleaved.
    let mut s2 = w.connect(&img);
    assert_ne!(s.session_id(), s2.session_id());
    let a = s.seal(b"from one").unwrap();
    let b = s2.seal(b"from two").unwrap();
    let rb = w.call(SECURE, &b).unwrap();
    let ra = w.call(SECURE, &a).unwrap();
    assert_eq!(s.open(&ra).unwrap(), b"from one");
    assert_eq!(s2.open(&rb).unwrap(), b"from two");
    // A reply of one session does not open in the other.
    let a = s.seal(b"x").unwrap();
    let ra = w.call(SECURE, &a).unwrap();
    let _ = s2.seal(b"y").unwrap();
    assert!(matches!(s2.open(&ra), Err(SessionError::Rejected(_))));
    assert_eq!(s.open(&ra).unwrap(), b"x");
    let _ = w.transport.finish();
}

#[test]
fn encrypted_agent_code_uses_no_vector_registers() {
    // The agent target is soft-float kernel context: the crypto crates must
    // run their portable back ends (tetd-pack passes aes_force_soft /
    // polyval_force_soft). Disassemble every executable segment.
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
    let bytes = std::fs::read(secure()).unwrap();
    let img = tetd::image::Image::parse(&bytes).unwrap();
    let (mut n, mut cpuid, mut rdrand) = (0usize, 0usize, 0usize);
    for seg in img.segments() {
        if seg.perms & tetd::image::PERM_X == 0 {
            continue;
        }
        let code = img.segment_data(&seg);
        let mut d = Decoder::with_ip(64, code, seg.vaddr, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        while d.can_decode() {
            d.decode_out(&mut ins);
            n += 1;
            match ins.mnemonic() {
                Mnemonic::Cpuid => cpuid += 1,
                Mnemonic::Rdrand => rdrand += 1,
                Mnemonic::Aesenc | Mnemonic::Aesenclast | Mnemonic::Pclmulqdq => {
                    panic!("AES-NI/CLMUL at {:#x}: {:?}", ins.ip(), ins.mnemonic())
                }
                _ => {}
            }
            for i in 0..ins.op_count() {
                if ins.op_kind(i) == OpKind::Register {
                    let r: Register = ins.op_register(i);
                    assert!(
                        !(r.is_xmm() || r.is_ymm() || r.is_zmm()),
                        "vector register {r:?} at {:#x} ({:?})",
                        ins.ip(),
                        ins.mnemonic()
                    );
                }
            }
        }
    }
    assert!(n > 1000, "decoded {n} instructions");
    assert_eq!(cpuid, 1, "only the RDRAND feature check");
    assert!(rdrand >= 1);
}
