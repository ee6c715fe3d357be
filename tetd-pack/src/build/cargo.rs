//! Step 1 of `build`: compile the agent crate with cargo into a
//! position-independent static library for the agent target.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::metadata::AgentCrate;

/// The target agents are compiled for: freestanding x86-64, soft-float (no
/// SSE state to save around kernel code), PIC, `panic = abort`.
pub const AGENT_TARGET: &str = "x86_64-unknown-none";

/// Codegen flags for every crate of an agent (set through
/// `CARGO_ENCODED_RUSTFLAGS`, so they reach the dependencies too):
/// * `relocation-model=pie`: position independent; symbols are local to the
///   image, so the linked PIE only needs base-relative relocations;
/// * `panic=abort`: no unwinding tables or landing pads;
/// * `aes_force_soft`, `polyval_force_soft`: the portable AES and GHASH code
///   of RustCrypto's `aes` / `polyval` (used by encrypted agents through
///   `tetd::session`), never the AES-NI / CLMUL back ends with their CPUID
///   detection and vector registers (which do not compile for the
///   soft-float target anyway).
pub const AGENT_RUSTFLAGS: &[&str] = &[
    "-Crelocation-model=pie",
    "-Cpanic=abort",
    "--cfg",
    "aes_force_soft",
    "--cfg",
    "polyval_force_soft",
];

/// Where the toolchain lives.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The cargo to run.
    pub cargo: PathBuf,
    /// `rustc --print sysroot`.
    pub sysroot: PathBuf,
    /// Host triple (`rustc -vV`).
    pub host: String,
}

impl Toolchain {
    /// Find cargo and rustc: `$CARGO` / `$RUSTC` when set (as under
    /// `cargo run`), else the ones on `PATH`.
    pub fn detect() -> Result<Toolchain> {
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("cargo"));
        let rustc = std::env::var_os("RUSTC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("rustc"));
        let sysroot = run_capture(&rustc, &["--print", "sysroot"])?;
        let vv = run_capture(&rustc, &["-vV"])?;
        let host = vv
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .ok_or_else(|| anyhow!("`{} -vV` printed no host triple", rustc.display()))?
            .to_string();
        Ok(Toolchain {
            cargo,
            sysroot: PathBuf::from(sysroot.trim()),
            host,
        })
    }

    /// Error unless the agent target's standard library is installed.
    pub fn check_target(&self) -> Result<()> {
        let lib = self
            .sysroot
            .join("lib/rustlib")
            .join(AGENT_TARGET)
            .join("lib");
        if !lib.is_dir() {
            bail!(
                "the Rust target {AGENT_TARGET} is not installed for this toolchain ({}).\n\
                 Install it with:\n    rustup target add {AGENT_TARGET}",
                self.sysroot.display()
            );
        }
        Ok(())
    }
}

fn run_capture(prog: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{} {}`", prog.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed: {}",
            prog.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `$CARGO_HOME`, else `$HOME/.cargo`.
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    target: Option<MsgTarget>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    message: Option<Diagnostic>,
}

#[derive(Deserialize)]
struct MsgTarget {
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Diagnostic {
    #[serde(default)]
    rendered: Option<String>,
    #[serde(default)]
    level: String,
    #[serde(default)]
    message: String,
}

/// Compile `krate` as a staticlib; return the path of the archive.
pub fn build_staticlib(
    tc: &Toolchain,
    krate: &AgentCrate,
    target_dir: &Path,
    quiet: bool,
) -> Result<PathBuf> {
    let mut cmd = Command::new(&tc.cargo);
    cmd.arg("rustc")
        .arg("--manifest-path")
        .arg(&krate.manifest_path)
        .args(["--lib", "--release", "--target", AGENT_TARGET])
        .args(["--crate-type", "staticlib"])
        .args([
            "--message-format",
            if std::io::stderr().is_terminal() {
                "json-diagnostic-rendered-ansi"
            } else {
                "json"
            },
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if quiet {
        cmd.arg("--quiet");
    }
    // Our flags replace any RUSTFLAGS of the environment: host-oriented flags
    // (e.g. -Ctarget-cpu=native) have no place in an agent.
    let mut flags: Vec<String> = AGENT_RUSTFLAGS.iter().map(|s| s.to_string()).collect();
    // Reproducible images: source paths compiled into the code (panic
    // locations) must not depend on where the sources, the cargo home or the
    // target directory are. Later remappings take precedence.
    flags.push(format!(
        "--remap-path-prefix={}=/tetd-src",
        krate.source_root.display()
    ));
    if let Some(home) = cargo_home() {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags.push(format!(
        "--remap-path-prefix={}=/target",
        target_dir.display()
    ));
    // Whole-program optimisation, whatever the crate's [profile.release]
    // says (config / environment settings take precedence over the
    // manifest): every Rust function of the agent ends up in one module, so
    // calls are direct instead of through GOT slots whose order would depend
    // on symbol-name hashes (which depend on where the sources are), and the
    // image is several times smaller.
    cmd.env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    cmd.env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", tc.cargo.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut archive = None;
    let mut missing_panic_handler = false;
    let mut errors = 0usize;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(msg) = serde_json::from_str::<Message>(&line) else {
            continue;
        };
        match msg.reason.as_str() {
            "compiler-message" => {
                let Some(d) = msg.message else { continue };
                if d.level == "error" {
                    errors += 1;
                    if d.message.contains("panic_handler") {
                        missing_panic_handler = true;
                    }
                }
                if quiet && d.level != "error" {
                    continue;
                }
                if let Some(r) = d.rendered {
                    eprint!("{r}");
                }
            }
            "compiler-artifact" => {
                let ours = msg
                    .manifest_path
                    .as_deref()
                    .is_some_and(|p| p == krate.manifest_path);
                let is_static = msg
                    .target
                    .as_ref()
                    .is_some_and(|t| t.kind.iter().any(|k| k == "staticlib"));
                if ours || is_static {
                    if let Some(a) = msg
                        .filenames
                        .iter()
                        .find(|f| f.extension().is_some_and(|e| e == "a"))
                    {
                        archive = Some(a.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        let mut msg = format!(
            "cargo failed to compile `{}` for {AGENT_TARGET} ({} error{})",
            krate.name,
            errors,
            if errors == 1 { "" } else { "s" }
        );
        if missing_panic_handler {
            msg.push_str(
                "\nhint: enable tetd-sdk's `agent` feature, which provides the agent panic handler:\n    \
                 tetd-sdk = { path = \"...\", features = [\"agent\"] }",
            );
        }
        bail!(msg);
    }
    let archive = match archive {
        Some(a) => a,
        None => {
            // Fresh build with nothing to do still reports the artifact; fall
            // back to the conventional location just in case.
            let p = target_dir
                .join(AGENT_TARGET)
                .join("release")
                .join(format!("lib{}.a", krate.lib_name));
            if !p.is_file() {
                bail!(
                    "cargo succeeded but produced no static library for `{}` (looked for {})",
                    krate.name,
                    p.display()
                );
            }
            p
        }
    };
    Ok(archive)
}
