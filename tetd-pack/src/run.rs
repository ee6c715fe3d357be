//! `tetd-pack run`: the simulation runner. Loads images with the TETD-G
//! loader core (`tetd_kernel`) into this process — mmap'ed zones with real
//! page permissions, fault capture, watchdog — and calls agents, like SGX's
//! simulation mode. Reference: `docs/cli.md`, section `run`.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tetd::abi::{Error, Mode};
use tetd::verify::{AllowList, Policy, Signers, UnsignedImages};
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{CallOptions, CallReport, ImageId, LoadOptions, Registry};

use crate::util::hex;

mod encrypt;

/// Largest output buffer the runner offers a call (the image format's limit).
const MAX_OUTPUT: usize = tetd::image::MAX_IO as usize;

/// Arguments of `tetd-pack run`.
#[derive(Args, Debug)]
#[command(after_help = "\
CALL SPEC (--call, one per line in --script):
  ID                 call agent ID with empty input
  ID:text:STRING     input is STRING (UTF-8; in a script, the rest of the line)
  ID:hex:HEX         input is the bytes HEX encodes
  ID:file:PATH       input is the contents of PATH

EXAMPLES:
  tetd-pack run echo.tetd --agent 1 --hex 68656c6c6f
  tetd-pack run signer.tetd --call 3:text:pubkey --call '3:text:sign hello' --hex-output
  tetd-pack run admin.tetd echo.tetd --allow trusted.keys --allow-unsigned --call 5:text:list --info
  tetd-pack run audit-log.tetd --script - --hex-output     (one call per input line)
  tetd-pack run secure-echo.tetd --encrypt --agent 20 --input hello")]
pub struct RunArgs {
    /// Images to load, in order (all their agents are registered).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,

    /// Agent id to call once (with --input, --hex or --input-file).
    #[arg(long, value_name = "ID", conflicts_with_all = ["calls", "script"])]
    pub agent: Option<u32>,
    /// Input as a UTF-8 string.
    #[arg(long, value_name = "STR", requires = "agent", conflicts_with_all = ["hex", "input_file"])]
    pub input: Option<String>,
    /// Input as hex digits.
    #[arg(
        long,
        value_name = "HEX",
        requires = "agent",
        conflicts_with = "input_file"
    )]
    pub hex: Option<String>,
    /// Input read from a file (`-` = standard input).
    #[arg(long, value_name = "FILE", requires = "agent")]
    pub input_file: Option<PathBuf>,

    /// A call to make (repeatable; made in order, in one process, so agents
    /// keep their state between calls). See CALL SPEC below.
    #[arg(long = "call", value_name = "SPEC")]
    pub calls: Vec<String>,
    /// A file with one call spec per line (`#` comments, blank lines
    /// ignored); its calls run after the --call ones. `-` reads standard
    /// input and runs each line as it arrives (an interactive session; use
    /// with --hex-output).
    #[arg(long, value_name = "FILE", conflicts_with = "input_file")]
    pub script: Option<PathBuf>,

    /// Print outputs as hex, one line per call (default: raw bytes). A
    /// failed call prints `! <ErrorName> (E<code>)` on its line.
    #[arg(long)]
    pub hex_output: bool,
    /// Print one JSON document (status, output, timing, faults, logs).
    #[arg(long, conflicts_with = "hex_output")]
    pub json: bool,
    /// Print the /proc/tetdg_info text after the calls.
    #[arg(long)]
    pub info: bool,

    /// Watchdog: stop an agent call after this many milliseconds (0 = never).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Run in this mode instead of each agent's own (reported to the agent
    /// through CALL_FLAG_COLLABORATIVE; the simulator runs both the same way).
    #[arg(long, value_parser = ["exclusive", "collaborative"])]
    pub mode: Option<String>,

    /// Allow-list of trusted signer keys: images must be signed by one of
    /// them (see docs/signing.md for the format).
    #[arg(long, value_name = "FILE")]
    pub allow: Option<PathBuf>,
    /// Accept unsigned images (the default without --allow; with --allow,
    /// unsigned images are accepted and signed ones must be on the list).
    #[arg(long, conflicts_with = "require_signed")]
    pub allow_unsigned: bool,
    /// Reject unsigned images; without --allow any valid signature is
    /// accepted (self-consistency only).
    #[arg(long)]
    pub require_signed: bool,
    /// Simulation only: load admin agents even if their image is not signed
    /// by a trusted key with the `admin` attribute.
    #[arg(long)]
    pub insecure_admin: bool,

    /// Act as the host-side client of encrypted agents (docs/encryption.md):
    /// calls to an agent flagged `encrypted` open a session (X25519
    /// handshake bound to the image's measurement) and send the input
    /// AES-256-GCM encrypted; the reply is verified and decrypted. Calls to
    /// other agents stay plaintext. With --json each encrypted call shows
    /// the bytes that crossed the call interface (`wire`).
    #[arg(long)]
    pub encrypt: bool,
    /// With --encrypt: the measurement (96 hex digits) the client expects
    /// of encrypted agents, instead of their image file's.
    #[arg(long, value_name = "HEX", requires = "encrypt")]
    pub measurement: Option<String>,
}

/// Where a call's input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CallSpec {
    id: u32,
    input: Vec<u8>,
    /// Where the spec came from (for messages).
    origin: String,
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    let b = s.as_bytes();
    if let Some(i) = b.iter().position(|c| !c.is_ascii_hexdigit()) {
        bail!("invalid hex digit {:?} at position {}", b[i] as char, i + 1);
    }
    if b.len() % 2 != 0 {
        bail!("odd number of hex digits ({})", b.len());
    }
    Ok(b.chunks(2)
        .map(|p| {
            let v = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            (v(p[0]) << 4) | v(p[1])
        })
        .collect())
}

fn read_input_file(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .context("reading standard input")?;
        return Ok(v);
    }
    fs::read(path).with_context(|| format!("reading input file {}", path.display()))
}

/// Parse `ID[:text:STR|:hex:HEX|:file:PATH]`.
fn parse_spec(spec: &str, origin: String) -> Result<CallSpec> {
    let (id_part, rest) = match spec.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (spec, None),
    };
    let id: u32 = id_part
        .trim()
        .parse()
        .map_err(|_| anyhow!("{origin}: agent id {:?} is not a number", id_part.trim()))?;
    let input = match rest {
        None => Vec::new(),
        Some(rest) => {
            let (kind, data) = rest.split_once(':').ok_or_else(|| {
                anyhow!("{origin}: expected ID:text:STRING, ID:hex:HEX or ID:file:PATH")
            })?;
            match kind {
                "text" => data.as_bytes().to_vec(),
                "hex" => decode_hex(data).with_context(|| format!("{origin}: input"))?,
                "file" => read_input_file(Path::new(data)).with_context(|| origin.clone())?,
                other => bail!("{origin}: unknown input kind {other:?} (text, hex or file)"),
            }
        }
    };
    Ok(CallSpec { id, input, origin })
}

fn collect_calls(a: &RunArgs) -> Result<Vec<CallSpec>> {
    let mut calls = Vec::new();
    if let Some(id) = a.agent {
        let input = if let Some(s) = &a.input {
            s.as_bytes().to_vec()
        } else if let Some(h) = &a.hex {
            decode_hex(h).context("--hex")?
        } else if let Some(p) = &a.input_file {
            read_input_file(p)?
        } else {
            Vec::new()
        };
        calls.push(CallSpec {
            id,
            input,
            origin: "--agent".into(),
        });
    }
    for (i, c) in a.calls.iter().enumerate() {
        calls.push(parse_spec(c, format!("--call #{} ({c:?})", i + 1))?);
    }
    if let Some(p) = &a.script {
        if p != Path::new("-") {
            let text =
                fs::read_to_string(p).with_context(|| format!("reading script {}", p.display()))?;
            for (n, line) in text.lines().enumerate() {
                if let Some(c) = script_line(line, &p.display().to_string(), n + 1)? {
                    calls.push(c);
                }
            }
        }
    }
    Ok(calls)
}

/// One script line: `None` for blank lines and comments.
fn script_line(line: &str, file: &str, n: usize) -> Result<Option<CallSpec>> {
    let t = line.trim_start().trim_end_matches(['\r', '\n']);
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    parse_spec(t, format!("{file}:{n}")).map(Some)
}

struct Loaded {
    path: PathBuf,
    id: ImageId,
}

fn json_call(c: &CallSpec, r: &CallReport, out: &[u8]) -> Value {
    let (status, message) = match r.status {
        Ok(()) => ("ok".to_string(), Value::Null),
        Err(e) => (e.name().to_string(), json!(e.description())),
    };
    let fault = r.fault.map(|f| {
        json!({
            "vector": f.info.vector,
            "error_code": f.info.error_code,
            "addr": format!("{:#x}", f.info.addr),
            "rip": format!("{:#x}", f.info.rip),
            "rip_offset": f.rip_offset.map(|o| format!("{o:#x}")),
            "region": f.addr_region.map(|k| k.name()),
            "stack_overflow": f.stack_overflow,
        })
    });
    json!({
        "agent": c.id,
        "status": status,
        "code": r.raw_status,
        "message": message,
        "ran": r.ran,
        "mode": r.mode.name(),
        "input_len": c.input.len(),
        "output_len": out.len(),
        "output": hex(out),
        "elapsed_ns": r.elapsed_ns,
        "fault": fault,
    })
}

fn describe_failure(c: &CallSpec, r: &CallReport) -> String {
    let e = r.status.err().unwrap_or(Error::Internal);
    let mut s = format!("agent {}: {e}", c.id);
    if r.raw_status != e.code() {
        let _ = write!(s, " (agent status {})", r.raw_status);
    }
    if let Some(f) = r.fault {
        let _ = write!(
            s,
            "\n  vector {} error {:#x} at address {:#x}",
            f.info.vector, f.info.error_code, f.info.addr
        );
        if let Some(k) = f.addr_region {
            let _ = write!(s, " ({})", k.name());
        }
        match f.rip_offset {
            Some(o) => {
                let _ = write!(s, ", instruction at image offset {o:#x}");
            }
            None => {
                let _ = write!(s, ", instruction at {:#x} (outside the agent)", f.info.rip);
            }
        }
    }
    if c.origin != "--agent" {
        let _ = write!(s, " [{}]", c.origin);
    }
    s
}

/// Run `tetd-pack run`; returns the exit status.
pub fn run(a: &RunArgs) -> Result<i32> {
    let calls = collect_calls(a)?;
    if calls.is_empty() && !a.info && a.script.is_none() {
        bail!("nothing to do: give --agent ID, --call SPEC, --script FILE or --info");
    }
    let allow_text = match &a.allow {
        Some(p) => Some(
            fs::read_to_string(p).with_context(|| format!("reading allow-list {}", p.display()))?,
        ),
        None => None,
    };
    let policy = match &allow_text {
        Some(text) => {
            let path = a.allow.as_deref().unwrap_or(Path::new(""));
            let list = AllowList::parse(text)
                .map_err(|e| anyhow!("allow-list {}: {e}", path.display()))?;
            if a.allow_unsigned {
                Policy::allow_unsigned(list)
            } else {
                Policy::require_signed(list)
            }
        }
        None => Policy {
            signers: Signers::AnyKey,
            unsigned: if a.require_signed {
                UnsignedImages::Reject
            } else {
                UnsignedImages::Accept
            },
        },
    };
    let opts = LoadOptions {
        policy,
        allow_untrusted_admin: a.insecure_admin,
    };
    let target = if a.json {
        LogTarget::Capture
    } else {
        LogTarget::Stderr
    };
    let mut reg: Box<Registry<SimPlatform>> = Box::new(Registry::new(SimPlatform::new(target)));
    let mut loaded = Vec::new();
    let forced = match &a.measurement {
        Some(h) => Some(
            decode_hex(h)
                .ok()
                .and_then(|v| <[u8; tetd::image::MEASUREMENT_LEN]>::try_from(v).ok())
                .ok_or_else(|| anyhow!("--measurement: expected 96 hex digits (SHA-384)"))?,
        ),
        None => None,
    };
    let mut clients = encrypt::Clients::new(forced);
    for path in &a.images {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let id = reg.load(&bytes, &opts).map_err(|e| {
            let hint = match e {
                tetd_kernel::LoadError::AdminNotTrusted { .. } => {
                    "\n  (pass --allow FILE with a key marked `admin`, or --insecure-admin in simulation)"
                }
                tetd_kernel::LoadError::Verify(Error::Unsigned) => {
                    "\n  (sign it with `tetd-pack sign`, or pass --allow-unsigned)"
                }
                _ => "",
            };
            anyhow!("loading {}: {e}{hint}", path.display())
        })?;
        // What the client expects of this image's agents: the measurement
        // of the file, parsed independently of the loader.
        if let Ok(img) = tetd::image::Image::parse(&bytes) {
            clients.expect(id, *img.measurement());
        }
        loaded.push(Loaded {
            path: path.clone(),
            id,
        });
    }
    let mode = match a.mode.as_deref() {
        Some("collaborative") => Some(Mode::Collaborative),
        Some(_) => Some(Mode::Exclusive),
        None => None,
    };
    let call_opts = CallOptions {
        mode,
        timeout_ns: a.timeout_ms.saturating_mul(1_000_000),
    };

    let stdout = std::io::stdout();
    let mut out_stream = stdout.lock();
    let mut failed = 0usize;
    let mut json_calls = Vec::new();
    let script_errors = {
        let mut one_call = |c: &CallSpec, out_stream: &mut std::io::StdoutLock<'_>| -> Result<()> {
            let cap = reg
                .agent(c.id)
                .map_or(0, |ag| ag.max_output() as usize)
                .min(MAX_OUTPUT);
            let (r, buf, session) = if a.encrypt && encrypt::is_encrypted(&reg, c.id) {
                let e = encrypt::call(&mut reg, &mut clients, c.id, &c.input, &call_opts, cap);
                (e.report, e.output, Some((e.detail, e.wire)))
            } else {
                let mut buf = vec![0u8; cap];
                let r = reg.call(c.id, &c.input, &mut buf, &call_opts);
                buf.truncate(r.output_len);
                (r, buf, None)
            };
            let output = &buf[..];
            if r.status.is_err() {
                failed += 1;
            }
            if a.json {
                let mut v = json_call(c, &r, output);
                if let Some((detail, wire)) = &session {
                    v["encrypted"] = json!(true);
                    v["session_detail"] = json!(detail);
                    v["wire"] = wire.clone();
                }
                json_calls.push(v);
                return Ok(());
            }
            match r.status {
                Ok(()) if a.hex_output => writeln!(out_stream, "{}", hex(output))?,
                Ok(()) => out_stream.write_all(output)?,
                Err(e) => {
                    if a.hex_output {
                        // Keeps the one-line-per-call protocol in step.
                        writeln!(out_stream, "! {} (E{})", e.name(), r.raw_status)?;
                    }
                    eprintln!("error: {}", describe_failure(c, &r));
                    if let Some((Some(d), _)) = &session {
                        eprintln!("  {d}");
                    }
                }
            }
            out_stream.flush()?;
            Ok(())
        };
        for c in &calls {
            one_call(c, &mut out_stream)?;
        }
        let mut script_errors = 0usize;
        if a.script.as_deref() == Some(Path::new("-")) {
            // Interactive: each line is run as soon as it is read, and its
            // result is flushed before the next line is read.
            let stdin = std::io::stdin();
            let mut line = String::new();
            let mut n = 0;
            loop {
                line.clear();
                if stdin
                    .read_line(&mut line)
                    .context("reading the script from standard input")?
                    == 0
                {
                    break;
                }
                n += 1;
                match script_line(&line, "<stdin>", n) {
                    Ok(Some(c)) => one_call(&c, &mut out_stream)?,
                    Ok(None) => {}
                    Err(e) => {
                        script_errors += 1;
                        if a.hex_output {
                            writeln!(out_stream, "! BadRequest (E{})", Error::BadRequest.code())?;
                            out_stream.flush()?;
                        }
                        eprintln!("error: {e:#}");
                    }
                }
            }
        }
        script_errors
    };
    failed += script_errors;
    let mut info = vec![0u8; 1 << 20];
    let info_len = if a.info {
        reg.render_info(&mut info)
    } else {
        0
    };
    let info_text = String::from_utf8_lossy(&info[..info_len]).into_owned();
    if a.json {
        let images: Vec<Value> = loaded
            .iter()
            .filter_map(|l| {
                let img = reg.image(l.id)?;
                let agents: Vec<u32> = reg
                    .agents()
                    .filter(|ag| ag.image() == l.id)
                    .map(|ag| ag.id())
                    .collect();
                Some(json!({
                    "path": l.path.display().to_string(),
                    "package": img.package(),
                    "version": img.version(),
                    "measurement": hex(img.measurement()),
                    "zone_base": format!("{:#x}", img.zone().base),
                    "zone_size": img.layout().total(),
                    "signer": img.signer().map(|s| json!({
                        "key_id": hex(&s.key_id),
                        "trusted": s.trusted,
                        "admin": s.admin,
                    })),
                    "agents": agents,
                }))
            })
            .collect();
        let logs: Vec<Value> = reg
            .platform()
            .take_logs()
            .into_iter()
            .map(|(id, m)| json!({"agent": id, "message": m}))
            .collect();
        let doc = json!({
            "schema": "tetd-run/1",
            "ok": failed == 0,
            "images": images,
            "calls": json_calls,
            "logs": logs,
            "info": if a.info { Value::String(info_text) } else { Value::Null },
        });
        writeln!(out_stream, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else if a.info {
        out_stream.write_all(info_text.as_bytes())?;
    }
    out_stream.flush()?;
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse_spec("7", "t".into()).unwrap();
        assert_eq!((s.id, s.input), (7, vec![]));
        let s = parse_spec("3:text:a b:c", "t".into()).unwrap();
        assert_eq!(s.input, b"a b:c");
        let s = parse_spec("3:hex:00ff", "t".into()).unwrap();
        assert_eq!(s.input, vec![0, 255]);
        let e = parse_spec("x:text:a", "here".into()).unwrap_err();
        assert!(e.to_string().contains("here"), "{e}");
        assert!(parse_spec("3:bin:a", "t".into()).is_err());
        assert!(parse_spec("3:text", "t".into()).is_err());
        let e = format!("{:#}", parse_spec("3:hex:0g", "t".into()).unwrap_err());
        assert!(e.contains("position 2"), "{e}");
    }
}
