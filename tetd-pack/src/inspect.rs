//! `tetd-pack inspect IMAGE [--json]`: everything an image says about
//! itself, after the full structural check of [`Image::parse`].
//!
//! The JSON object ([`Report`]) is a stable interface, documented in
//! `docs/cli.md` (`schema_version` 1). Fields are only ever added.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tetd::image::{Image, PERM_R, PERM_W, PERM_X};

use crate::util::{hex, human_size};

/// Version of the JSON schema printed by `inspect --json` / `build --json`.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest file `inspect` reads (an image is at most 64 MiB of segments plus
/// small tables).
const MAX_FILE_SIZE: u64 = 128 << 20;

/// Arguments of `tetd-pack inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The image file.
    pub image: PathBuf,
    /// Print the report as JSON (schema in docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Check the signer against a key or allow-list (default: the signature's
    /// self-consistency only).
    #[command(flatten)]
    pub policy: crate::sign::PolicyArgs,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The file as given on the command line.
    pub file: String,
    /// File size in bytes (body + signature block).
    pub file_size: u64,
    /// Image format version.
    pub format_version: u16,
    /// Package name and version.
    pub package: PackageInfo,
    /// Bytes of address space the image needs.
    pub load_size: u64,
    /// Bytes covered by the measurement.
    pub body_size: u64,
    /// Agent stack in bytes.
    pub stack_size: u32,
    /// Agent heap in bytes.
    pub heap_size: u32,
    /// Image-wide defaults.
    pub defaults: Defaults,
    /// `required_services` bitmask.
    pub required_services: u32,
    /// Agents, in manifest order.
    pub agents: Vec<AgentInfo>,
    /// Segments, in address order.
    pub segments: Vec<SegmentInfo>,
    /// Number of base-relative relocations.
    pub relocations: u32,
    /// SHA-384 measurement, lower-case hex (96 characters).
    pub measurement: String,
    /// Signature state; see `docs/cli.md`.
    pub signature: serde_json::Value,
}

/// Package identity from the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct PackageInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
}

/// Image-wide defaults of the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    /// `exclusive` or `collaborative`.
    pub mode: &'static str,
    /// Max input in bytes.
    pub max_input: u32,
    /// Max output in bytes.
    pub max_output: u32,
}

/// One agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    /// Id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// `exclusive` or `collaborative`.
    pub mode: &'static str,
    /// Flag names: `admin`, `encrypted`.
    pub flags: Vec<&'static str>,
    /// Entry offset from the image base.
    pub entry: u64,
    /// Max input in bytes.
    pub max_input: u32,
    /// Max output in bytes.
    pub max_output: u32,
}

/// One segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    /// Offset from the image base.
    pub vaddr: u64,
    /// Size in memory.
    pub mem_size: u64,
    /// Bytes stored in the file (the rest is zero-filled).
    pub file_size: u32,
    /// `r-x`-style string.
    pub perms: &'static str,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

/// Build the report of a parsed image.
pub fn report(file: &str, img: &Image<'_>) -> Report {
    let m = img.manifest();
    let h = img.header();
    Report {
        schema_version: SCHEMA_VERSION,
        file: file.to_string(),
        file_size: img.bytes().len() as u64,
        format_version: h.version,
        package: PackageInfo {
            name: m.package_name().to_string(),
            version: m.package_version().to_string(),
        },
        load_size: h.load_size,
        body_size: h.body_len as u64,
        stack_size: m.stack_size,
        heap_size: m.heap_size,
        defaults: Defaults {
            mode: m.mode.name(),
            max_input: m.max_input,
            max_output: m.max_output,
        },
        required_services: m.required_services,
        agents: img
            .agents()
            .map(|a| {
                let mut flags = Vec::new();
                if a.is_admin() {
                    flags.push("admin");
                }
                if a.is_encrypted() {
                    flags.push("encrypted");
                }
                AgentInfo {
                    id: a.id,
                    name: a.name().to_string(),
                    mode: a.mode.name(),
                    flags,
                    entry: a.entry,
                    max_input: a.max_input,
                    max_output: a.max_output,
                }
            })
            .collect(),
        segments: img
            .segments()
            .map(|s| SegmentInfo {
                vaddr: s.vaddr,
                mem_size: s.mem_size,
                file_size: s.file_size,
                perms: s.perms_str(),
                read: s.perms & PERM_R != 0,
                write: s.perms & PERM_W != 0,
                execute: s.perms & PERM_X != 0,
            })
            .collect(),
        relocations: h.reloc_count,
        measurement: hex(img.measurement()),
        signature: signature_section(img).1,
    }
}

/// The signature part of the report: text lines and the JSON value of
/// `signature`. Without verification options this reports what the block
/// says; the signing module (sign.rs) extends it with verification status
/// (same JSON keys, more `status` values: see docs/cli.md).
pub fn signature_section(img: &Image<'_>) -> (Vec<String>, serde_json::Value) {
    match img.signature() {
        Ok(None) => (
            vec!["signature:    none (unsigned image)".to_string()],
            serde_json::json!({ "signed": false, "status": "unsigned" }),
        ),
        Ok(Some(b)) => {
            let key_id = hex(&b.key_id);
            (
                vec![
                    format!("signature:    Ed25519, signer key id {key_id}"),
                    format!("public key:   {}", hex(&b.public_key)),
                    "verification: not checked (use `tetd-pack verify`)".to_string(),
                ],
                serde_json::json!({
                    "signed": true,
                    "status": "not-verified",
                    "algorithm": "ed25519",
                    "key_id": key_id,
                    "public_key": hex(&b.public_key),
                }),
            )
        }
        // `Image::parse` already checked the block; keep the report total.
        Err(e) => (
            vec![format!("signature:    {e}")],
            serde_json::json!({ "signed": true, "status": "malformed", "message": e.to_string() }),
        ),
    }
}

/// The human-readable report.
pub fn render_text(r: &Report, sig_lines: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: TETD image, format version {}, {} bytes",
        r.file, r.format_version, r.file_size
    );
    let _ = writeln!(s, "package:      {} {}", r.package.name, r.package.version);
    let _ = writeln!(s, "measurement:  {} (SHA-384)", r.measurement);
    let _ = writeln!(
        s,
        "load size:    {:#x} ({})",
        r.load_size,
        human_size(r.load_size)
    );
    let _ = writeln!(
        s,
        "stack:        {}   heap: {}",
        human_size(r.stack_size as u64),
        human_size(r.heap_size as u64)
    );
    let _ = writeln!(
        s,
        "defaults:     mode {}, max input {}, max output {}",
        r.defaults.mode,
        human_size(r.defaults.max_input as u64),
        human_size(r.defaults.max_output as u64)
    );
    let _ = writeln!(s, "agents:       {}", r.agents.len());
    let name_w = r
        .agents
        .iter()
        .map(|a| a.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "  {:>10}  {:<name_w$}  {:<13}  {:<15}  {:>10}  {:>10}  {:>10}",
        "ID", "NAME", "MODE", "FLAGS", "ENTRY", "MAX IN", "MAX OUT"
    );
    for a in &r.agents {
        let flags = if a.flags.is_empty() {
            "-".to_string()
        } else {
            a.flags.join(",")
        };
        let _ = writeln!(
            s,
            "  {:>10}  {:<name_w$}  {:<13}  {:<15}  {:>#10x}  {:>10}  {:>10}",
            a.id, a.name, a.mode, flags, a.entry, a.max_input, a.max_output
        );
    }
    let _ = writeln!(s, "segments:     {}", r.segments.len());
    let _ = writeln!(
        s,
        "  {:>10}  {:>10}  {:>10}  PERMS",
        "VADDR", "MEM SIZE", "FILE SIZE"
    );
    for g in &r.segments {
        let _ = writeln!(
            s,
            "  {:>#10x}  {:>#10x}  {:>#10x}  {}",
            g.vaddr, g.mem_size, g.file_size, g.perms
        );
    }
    let _ = writeln!(s, "relocations:  {} (base-relative)", r.relocations);
    for l in sig_lines {
        let _ = writeln!(s, "{l}");
    }
    s
}

/// `tetd-pack inspect`.
pub fn run(args: &InspectArgs) -> Result<i32> {
    let path = &args.image;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a file", path.display());
    }
    if meta.len() > MAX_FILE_SIZE {
        bail!(
            "{}: {} bytes is larger than any valid image ({} at most)",
            path.display(),
            meta.len(),
            human_size(MAX_FILE_SIZE)
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let img = Image::parse(&bytes).map_err(|e| {
        anyhow!(
            "{}: malformed image: {e} [{}, E{}]",
            path.display(),
            e.code().name(),
            e.code().code()
        )
    })?;
    let label = path.display().to_string();
    let mut r = report(&label, &img);
    let (sig_lines, sig_json) = crate::sign::inspect_signature(&img, &args.policy.source()?);
    r.signature = sig_json;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        out.write_all(render_text(&r, &sig_lines).as_bytes())?;
    }
    Ok(0)
}
