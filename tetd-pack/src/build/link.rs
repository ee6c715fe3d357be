//! Step 2 of `build`: link the agent's static library into a PIE with the
//! project's linker script (`tetd-pack/agent.ld`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use object::read::archive::ArchiveFile;
use object::{Object, ObjectSymbol};

use super::cargo::Toolchain;

/// The linker script, embedded in the binary.
pub const LINKER_SCRIPT: &str = include_str!("../../agent.ld");

/// Prefix of the symbols `#[tetd::agent]` exports for its descriptors.
pub const DESCRIPTOR_SYMBOL_PREFIX: &str = "__tetd_agent_";

/// Which command-line dialect a linker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `rust-lld`, which needs `-flavor gnu` first.
    RustLld,
    /// `ld.lld`.
    Lld,
    /// GNU ld (BFD).
    Gnu,
}

/// A linker to run.
#[derive(Debug, Clone)]
pub struct Linker {
    /// Program.
    pub path: PathBuf,
    /// Dialect.
    pub flavor: Flavor,
}

impl Linker {
    /// `explicit` (from `--linker`) if given; else the toolchain's
    /// `rust-lld`; else `ld.lld` or GNU `ld` from `PATH`.
    pub fn find(tc: &Toolchain, explicit: Option<&Path>) -> Result<Linker> {
        if let Some(p) = explicit {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let flavor = if name.contains("rust-lld") {
                Flavor::RustLld
            } else if name.contains("lld") {
                Flavor::Lld
            } else {
                Flavor::Gnu
            };
            return Ok(Linker {
                path: p.to_path_buf(),
                flavor,
            });
        }
        let rust_lld = tc
            .sysroot
            .join("lib/rustlib")
            .join(&tc.host)
            .join("bin/rust-lld");
        if rust_lld.is_file() {
            return Ok(Linker {
                path: rust_lld,
                flavor: Flavor::RustLld,
            });
        }
        for (name, flavor) in [("ld.lld", Flavor::Lld), ("ld", Flavor::Gnu)] {
            if let Some(p) = which(name) {
                return Ok(Linker { path: p, flavor });
            }
        }
        bail!(
            "no linker found: the toolchain has no rust-lld ({}) and neither ld.lld nor ld is on PATH.\n\
             Install one (e.g. `rustup component add llvm-tools` or `apt-get install binutils`) or pass --linker PATH",
            rust_lld.display()
        )
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The exported descriptor symbols (`__tetd_agent_*`) defined in `archive`:
/// the linker is told to keep each (archive members are only pulled in when
/// something refers to them).
pub fn agent_symbols(archive: &Path) -> Result<Vec<String>> {
    let data =
        std::fs::read(archive).with_context(|| format!("cannot read {}", archive.display()))?;
    let ar = ArchiveFile::parse(&*data)
        .with_context(|| format!("{}: not a static library archive", archive.display()))?;
    let mut out = Vec::new();
    if let Some(index) = ar.symbols().ok().flatten() {
        for s in index.flatten() {
            if let Ok(name) = std::str::from_utf8(s.name()) {
                if name.starts_with(DESCRIPTOR_SYMBOL_PREFIX) {
                    out.push(name.to_string());
                }
            }
        }
    } else {
        // No symbol index: read every member.
        for m in ar.members() {
            let m = m.with_context(|| format!("{}: bad archive member", archive.display()))?;
            let Ok(bytes) = m.data(&*data) else { continue };
            let Ok(obj) = object::File::parse(bytes) else {
                continue;
            };
            for s in obj.symbols() {
                if s.is_global() && s.is_definition() {
                    if let Ok(n) = s.name() {
                        if n.starts_with(DESCRIPTOR_SYMBOL_PREFIX) {
                            out.push(n.to_string());
                        }
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Link `archive` into `out` (an ELF PIE). `script` is the path the linker
/// script was written to.
pub fn link(
    linker: &Linker,
    archive: &Path,
    script: &Path,
    keep: &[String],
    out: &Path,
) -> Result<Vec<String>> {
    let mut cmd = Command::new(&linker.path);
    if linker.flavor == Flavor::RustLld {
        cmd.args(["-flavor", "gnu"]);
    }
    cmd.arg("-o").arg(out);
    cmd.arg("-T").arg(script);
    cmd.args([
        "-pie",
        "--no-dynamic-linker",
        "-static",
        "--gc-sections",
        "-z",
        "text",
        "-z",
        "norelro",
        "-z",
        "max-page-size=4096",
        "-z",
        "noexecstack",
        "--hash-style=gnu",
        "--build-id=none",
        "--no-eh-frame-hdr",
    ]);
    match linker.flavor {
        Flavor::RustLld | Flavor::Lld => {
            cmd.args(["--pack-dyn-relocs=none", "--error-limit=0"]);
        }
        Flavor::Gnu => {}
    }
    for s in keep {
        cmd.arg(format!("--undefined={s}"));
    }
    cmd.arg(archive);
    let output = cmd
        .output()
        .with_context(|| format!("cannot run the linker {}", linker.path.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        let undefined = parse_undefined(&stderr);
        if !undefined.is_empty() {
            let mut msg = format!(
                "linking failed: {} unresolved symbol{} (an agent image links nothing from outside: \
                 no libc, no kernel symbols, no dynamic libraries; use the services of `tetd::Call`):",
                undefined.len(),
                if undefined.len() == 1 { "" } else { "s" }
            );
            for u in &undefined {
                let _ = write!(msg, "\n  `{}`", u.symbol);
                if !u.referenced_by.is_empty() {
                    let _ = write!(msg, ", referenced by {}", u.referenced_by.join("; "));
                }
            }
            bail!(msg);
        }
        bail!(
            "linking failed ({} {}):\n{}",
            linker.path.display(),
            output.status,
            stderr.trim_end()
        );
    }
    // Warnings the linker printed, for the caller to show.
    Ok(stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// One unresolved symbol from the linker's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undefined {
    /// The symbol (demangled when the linker demangles).
    pub symbol: String,
    /// Where it is used: functions / objects, as the linker names them.
    pub referenced_by: Vec<String>,
}

/// Extract the unresolved symbols from lld's or GNU ld's error output.
pub fn parse_undefined(stderr: &str) -> Vec<Undefined> {
    let mut out: Vec<Undefined> = Vec::new();
    let mut gnu_function: Option<String> = None;
    for line in stderr.lines() {
        // lld: "<prog>: error: undefined symbol: NAME" then ">>> referenced by"
        // lines, the second of which is "obj.o:(function) in archive lib.a".
        if let Some(pos) = line.find("error: undefined symbol: ") {
            let sym = line[pos + "error: undefined symbol: ".len()..].trim();
            out.push(Undefined {
                symbol: sym.to_string(),
                referenced_by: Vec::new(),
            });
            continue;
        }
        if let Some(rest) = line.strip_prefix(">>>") {
            let rest = rest.trim();
            if let (Some(last), Some(open)) = (out.last_mut(), rest.find(":(")) {
                let inner = &rest[open + 2..];
                if let Some(close) = inner.rfind(')') {
                    let what = strip_hash(&inner[..close]);
                    let obj = rest[..open].trim_start_matches("referenced by ");
                    let entry = format!("{what} ({})", describe_object(obj));
                    if !last.referenced_by.contains(&entry) {
                        last.referenced_by.push(entry);
                    }
                }
            }
            continue;
        }
        // GNU ld: "...: in function `F':" then "...: undefined reference to `NAME'".
        if let Some(pos) = line.find("in function `") {
            let rest = &line[pos + "in function `".len()..];
            gnu_function = rest.find('\'').map(|e| strip_hash(&rest[..e]));
            continue;
        }
        if let Some(pos) = line.find("undefined reference to `") {
            let rest = &line[pos + "undefined reference to `".len()..];
            let Some(end) = rest.find('\'') else { continue };
            let sym = rest[..end].to_string();
            let by = gnu_function.clone();
            match out.iter_mut().find(|u| u.symbol == sym) {
                Some(u) => {
                    if let Some(b) = by {
                        if !u.referenced_by.contains(&b) {
                            u.referenced_by.push(b);
                        }
                    }
                }
                None => out.push(Undefined {
                    symbol: sym,
                    referenced_by: by.into_iter().collect(),
                }),
            }
        }
    }
    out
}

/// `krate::f::h0123456789abcdef` → `krate::f` (the legacy-mangling hash);
/// `__tetd_entry_<id>_<fn>` (a trampoline the handler was inlined into) →
/// `fn <fn> (agent <id>)`.
fn strip_hash(s: &str) -> String {
    if let Some(rest) = s.strip_prefix("__tetd_entry_") {
        if let Some((id, f)) = rest.split_once('_') {
            if id.bytes().all(|b| b.is_ascii_digit()) {
                return format!("fn {f} (agent {id})");
            }
        }
    }
    if let Some(pos) = s.rfind("::h") {
        let h = &s[pos + 3..];
        if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return s[..pos].to_string();
        }
    }
    s.to_string()
}

/// `krate-0123.krate.abcd-cgu.0.rcgu.o` → `crate krate`; other names as is.
fn describe_object(obj: &str) -> String {
    let file = obj.rsplit('/').next().unwrap_or(obj);
    if file.ends_with(".rcgu.o") {
        if let Some(krate) = file.split(['-', '.']).next() {
            return format!("crate {krate}");
        }
    }
    format!("in {file}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lld_undefined_report() {
        let s = "rust-lld: error: undefined symbol: tetd_missing_helper\n\
                 >>> referenced by lib.rs:12 (src/lib.rs:12)\n\
                 >>>               bad-1.bad.abc-cgu.0.rcgu.o:(bad::handler::h0123456789abcdef) in archive /t/libbad.a\n\
                 >>> referenced by lib.rs:13 (src/lib.rs:13)\n\
                 >>>               bad-1.bad.abc-cgu.0.rcgu.o:(bad::handler) in archive /t/libbad.a\n\
                 rust-lld: error: undefined symbol: other_one\n\
                 >>> referenced by x.o:(f)\n";
        let u = parse_undefined(s);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].symbol, "tetd_missing_helper");
        assert_eq!(u[0].referenced_by, ["bad::handler (crate bad)"]);
        assert_eq!(u[1].symbol, "other_one");
        assert_eq!(u[1].referenced_by, ["f (in x.o)"]);
        assert_eq!(strip_hash("a::b::h0123456789abcdef"), "a::b");
        assert_eq!(strip_hash("a::b::hello"), "a::b::hello");
        assert_eq!(strip_hash("__tetd_entry_12_my_fn"), "fn my_fn (agent 12)");
    }

    #[test]
    fn gnu_undefined_report() {
        let s = "/usr/bin/ld: /t/libbad.a(bad.o): in function `bad::handler':\n\
                 bad.rs:(.text+0x5): undefined reference to `tetd_missing_helper'\n\
                 bad.rs:(.text+0x9): undefined reference to `tetd_missing_helper'\n";
        let u = parse_undefined(s);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].symbol, "tetd_missing_helper");
        assert_eq!(u[0].referenced_by, ["bad::handler"]);
    }

    #[test]
    fn script_keeps_descriptors_and_forbids_tls() {
        assert!(LINKER_SCRIPT.contains("KEEP(*(.tetd.agents))"));
        assert!(LINKER_SCRIPT.contains(tetd::abi::DESCRIPTOR_SECTION));
        assert!(LINKER_SCRIPT.contains("thread-local storage is not supported"));
    }
}
