//! `tetd-pack run --encrypt`: the runner as a host-side client of encrypted
//! agents (`docs/encryption.md`). For an agent flagged `encrypted` the
//! runner opens a session (HELLO / HELLO_ACK through the loader core, like
//! any call), then sends every call's input as a DATA message and decrypts
//! the reply with `tetd_kvm::session` (ring). What crosses the call
//! interface — what a guest kernel would carry — is only ciphertext; with
//! `--json` it is shown per call (`wire`).

use std::collections::HashMap;

use serde_json::{json, Value};
use tetd::abi::{Error, AGENT_FLAG_ENCRYPTED};
use tetd::image::MEASUREMENT_LEN;
use tetd_kernel::sim::SimPlatform;
use tetd_kernel::{CallOptions, CallReport, ImageId, Registry};
use tetd_kvm::session::{Session, SessionError};

use crate::util::hex;

/// Open sessions (one per agent id) and what the client expects.
#[derive(Default)]
pub struct Clients {
    sessions: HashMap<u32, Session>,
    /// Expected measurement per loaded image (from the image files; entries
    /// registered at run time belong to the image that registered them).
    expected: HashMap<ImageId, [u8; MEASUREMENT_LEN]>,
    /// `--measurement`: expect this for every encrypted agent instead.
    forced: Option<[u8; MEASUREMENT_LEN]>,
}

/// One encrypted call as the runner reports it.
pub struct EncryptedCall {
    /// The DATA call's report, with `status` / `raw_status` replaced by the
    /// end-to-end result (the agent's authenticated status, or `Crypto`
    /// when a message did not verify).
    pub report: CallReport,
    /// The decrypted output.
    pub output: Vec<u8>,
    /// Why it failed, beyond the status (session errors).
    pub detail: Option<String>,
    /// Guest-visible bytes of this call (and of the handshake, if one ran).
    pub wire: Value,
}

impl Clients {
    /// Clients expecting `forced` (if given) or each image's measurement.
    pub fn new(forced: Option<[u8; MEASUREMENT_LEN]>) -> Self {
        Clients {
            forced,
            ..Default::default()
        }
    }

    /// Remember that the loaded image `image` came from a file with
    /// `measurement`.
    pub fn expect(&mut self, image: ImageId, measurement: [u8; MEASUREMENT_LEN]) {
        self.expected.insert(image, measurement);
    }
}

/// True if calls to `id` go through a session.
pub fn is_encrypted(reg: &Registry<SimPlatform>, id: u32) -> bool {
    reg.agent(id)
        .is_some_and(|a| a.flags() & AGENT_FLAG_ENCRYPTED != 0)
}

/// A report for a call the client did not make (a client-side failure).
fn not_run(reg: &Registry<SimPlatform>, id: u32) -> CallReport {
    CallReport {
        status: Err(Error::Internal),
        raw_status: Error::Internal.code(),
        output_len: 0,
        ran: false,
        mode: reg.agent(id).map(|a| a.mode()).unwrap_or_default(),
        elapsed_ns: 0,
        fault: None,
    }
}

fn failed(mut r: CallReport, e: Error, detail: String, wire: Value) -> EncryptedCall {
    r.status = Err(e);
    r.raw_status = e.code();
    r.output_len = 0;
    EncryptedCall {
        report: r,
        output: Vec::new(),
        detail: Some(detail),
        wire,
    }
}

/// Call encrypted agent `id` with the plaintext `input` (opening a session
/// first if there is none).
pub fn call(
    reg: &mut Registry<SimPlatform>,
    clients: &mut Clients,
    id: u32,
    input: &[u8],
    opts: &CallOptions,
    out_cap: usize,
) -> EncryptedCall {
    let mut wire = json!({});
    if !clients.sessions.contains_key(&id) {
        let m = clients
            .forced
            .or_else(|| {
                let image = reg.agent(id)?.image();
                clients.expected.get(&image).copied()
            })
            .unwrap_or([0; MEASUREMENT_LEN]);
        let (hs, hello) = match Session::hello(m, id) {
            Ok(x) => x,
            Err(e) => {
                return failed(not_run(reg, id), e.error(), format!("session: {e}"), wire);
            }
        };
        let mut buf = vec![0u8; out_cap];
        let r = reg.call(id, &hello, &mut buf, opts);
        let ack = &buf[..r.output_len];
        wire["hello"] = json!(hex(&hello));
        wire["hello_ack"] = json!(hex(ack));
        if let Err(e) = r.status {
            return failed(r, e, "session handshake (HELLO) failed".into(), wire);
        }
        match hs.finish(ack) {
            Ok(s) => {
                clients.sessions.insert(id, s);
            }
            Err(e) => {
                let detail = format!(
                    "session handshake: {e} (the agent is not the image the client expects, \
                     or a man in the middle answered)"
                );
                return failed(r, e.error(), detail, wire);
            }
        }
    }
    let Some(s) = clients.sessions.get_mut(&id) else {
        return failed(not_run(reg, id), Error::Internal, "no session".into(), wire);
    };
    let request = match s.seal(input) {
        Ok(m) => m,
        Err(e) => {
            clients.sessions.remove(&id);
            return failed(not_run(reg, id), e.error(), format!("session: {e}"), wire);
        }
    };
    let mut buf = vec![0u8; out_cap];
    let r = reg.call(id, &request, &mut buf, opts);
    let reply = &buf[..r.output_len];
    wire["request"] = json!(hex(&request));
    wire["reply"] = json!(hex(reply));
    if let Err(e) = r.status {
        // The agent refused or failed before answering: the session may be
        // out of step; the next call starts a new one.
        clients.sessions.remove(&id);
        return failed(r, e, "the agent answered without a reply".into(), wire);
    }
    match s.open(reply) {
        Ok(output) => {
            let mut report = r;
            report.output_len = output.len();
            EncryptedCall {
                report,
                output,
                detail: None,
                wire,
            }
        }
        Err(SessionError::Agent { code }) => {
            let mut report = r;
            report.status = Err(Error::from_code(code as u64));
            report.raw_status = code;
            report.output_len = 0;
            EncryptedCall {
                report,
                output: Vec::new(),
                detail: Some("status authenticated by the session".into()),
                wire,
            }
        }
        Err(e) => {
            clients.sessions.remove(&id);
            failed(r, e.error(), format!("session: {e}"), wire)
        }
    }
}
