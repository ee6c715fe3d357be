//! The agent crate: where it is and what it is called (from `cargo
//! metadata`), and its image settings (`[package.metadata.tetd]` of its
//! `Cargo.toml`, read strictly: an unknown key is an error naming the key and
//! the file).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tetd::abi::{Mode, PAGE_SIZE};
use tetd::image::{MAX_IO, MAX_STACK_OR_HEAP};

/// Default stack of an agent (64 KiB).
pub const DEFAULT_STACK_SIZE: u32 = 64 << 10;
/// Default heap of an agent (64 KiB).
pub const DEFAULT_HEAP_SIZE: u32 = 64 << 10;
/// Default per-call input / output limit (64 KiB).
pub const DEFAULT_MAX_IO: u32 = 64 << 10;

/// Image-wide settings, after defaults and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Agent stack in bytes (non-zero page multiple).
    pub stack_size: u32,
    /// Agent heap in bytes (page multiple, may be 0).
    pub heap_size: u32,
    /// Mode of agents that do not set one in `#[tetd::agent]`.
    pub mode: Mode,
    /// Default max input of an agent.
    pub max_input: u32,
    /// Default max output of an agent.
    pub max_output: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stack_size: DEFAULT_STACK_SIZE,
            heap_size: DEFAULT_HEAP_SIZE,
            mode: Mode::Exclusive,
            max_input: DEFAULT_MAX_IO,
            max_output: DEFAULT_MAX_IO,
        }
    }
}

/// Everything `tetd-pack build` needs to know about the agent crate.
#[derive(Debug, Clone)]
pub struct AgentCrate {
    /// Absolute path of its `Cargo.toml`.
    pub manifest_path: PathBuf,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Crate name of the library target (`-` replaced by `_`).
    pub lib_name: String,
    /// Cargo's target directory for the crate (workspace aware).
    pub target_directory: PathBuf,
    /// Settings from `[package.metadata.tetd]` plus defaults.
    pub settings: Settings,
    /// False when the manifest has no `[package.metadata.tetd]` table.
    pub has_metadata: bool,
    /// The deepest directory holding the crate and every path dependency
    /// (e.g. the repository root): remapped in the compiled code so panic
    /// locations, and so the measurement, do not depend on where the
    /// sources are checked out.
    pub source_root: PathBuf,
}

#[derive(Deserialize)]
struct CargoMetadata {
    packages: Vec<MetaPackage>,
    target_directory: PathBuf,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    version: String,
    manifest_path: PathBuf,
    targets: Vec<MetaTarget>,
    /// `None` for path (local) packages.
    source: Option<String>,
}

#[derive(Deserialize)]
struct MetaTarget {
    name: String,
    kind: Vec<String>,
}

/// Resolve `path` (a crate directory or its `Cargo.toml`) to the manifest.
pub fn manifest_path(path: &Path) -> Result<PathBuf> {
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.to_path_buf()
    };
    if !manifest.is_file() {
        bail!(
            "{}: no Cargo.toml here (expected an agent crate directory or its Cargo.toml)",
            manifest.display()
        );
    }
    manifest
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", manifest.display()))
}

/// Locate and describe the agent crate at `path`.
pub fn load(cargo: &Path, path: &Path) -> Result<AgentCrate> {
    let manifest = manifest_path(path)?;
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .with_context(|| format!("cannot run `{} metadata`", cargo.display()))?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed for {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let meta: CargoMetadata = serde_json::from_slice(&out.stdout)
        .context("cannot parse the output of `cargo metadata`")?;
    let source_root = meta
        .packages
        .iter()
        .filter(|p| p.source.is_none())
        .filter_map(|p| p.manifest_path.parent())
        .fold(None::<PathBuf>, |acc, dir| {
            Some(match acc {
                None => dir.to_path_buf(),
                Some(a) => common_ancestor(&a, dir),
            })
        })
        .unwrap_or_else(|| manifest.parent().unwrap_or(Path::new("/")).to_path_buf());
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| same_file(&p.manifest_path, &manifest))
        .ok_or_else(|| {
            anyhow!(
                "{} is a virtual workspace manifest, not a package: point tetd-pack at the agent crate",
                manifest.display()
            )
        })?;
    let lib = pkg
        .targets
        .iter()
        .find(|t| {
            t.kind
                .iter()
                .any(|k| matches!(k.as_str(), "lib" | "rlib" | "staticlib" | "cdylib" | "dylib"))
        })
        .ok_or_else(|| {
            anyhow!(
                "package `{}` ({}) has no library target: an agent crate is a library (src/lib.rs) with `#![no_std]`",
                pkg.name,
                manifest.display()
            )
        })?;
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let (settings, has_metadata) = parse_settings(&text, &manifest)?;
    Ok(AgentCrate {
        lib_name: lib.name.replace('-', "_"),
        name: pkg.name,
        version: pkg.version,
        manifest_path: manifest,
        target_directory: meta.target_directory,
        settings,
        has_metadata,
        source_root,
    })
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------
// [package.metadata.tetd]
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct ManifestToml {
    package: Option<PackageToml>,
}

#[derive(Deserialize)]
struct PackageToml {
    metadata: Option<MetadataToml>,
}

#[derive(Deserialize)]
struct MetadataToml {
    tetd: Option<TetdToml>,
}

/// The keys of `[package.metadata.tetd]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TetdToml {
    stack_size: Option<Size>,
    heap_size: Option<Size>,
    mode: Option<String>,
    max_input: Option<Size>,
    max_output: Option<Size>,
}

/// A size: bytes as an integer, or a string such as `"64 KiB"`, `"1M"`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Size {
    Int(i64),
    Str(String),
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Int(i) => write!(f, "{i}"),
            Size::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Size {
    fn bytes(&self) -> Option<u64> {
        match self {
            Size::Int(i) => u64::try_from(*i).ok(),
            Size::Str(s) => parse_size(s),
        }
    }
}

/// Parse `"4096"`, `"64K"`, `"64 KiB"`, `"1M"`, `"1 MiB"` (binary units).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return None;
    }
    let n: u64 = s[..digits_end].parse().ok()?;
    let mult = match s[digits_end..].trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse the settings of a manifest's text; `file` is used in errors.
/// Returns the settings and whether the table was present.
pub fn parse_settings(text: &str, file: &Path) -> Result<(Settings, bool)> {
    let m: ManifestToml = toml::from_str(text).map_err(|e| {
        anyhow!(
            "{}: invalid [package.metadata.tetd]: {}",
            file.display(),
            e.to_string().trim_end()
        )
    })?;
    let raw = m.package.and_then(|p| p.metadata).and_then(|m| m.tetd);
    let present = raw.is_some();
    let raw = raw.unwrap_or_default();
    let mut s = Settings::default();
    let key_err = |key: &str, v: &dyn fmt::Display, why: &str| {
        anyhow!(
            "{}: [package.metadata.tetd] {key} = {v}: {why}",
            file.display()
        )
    };
    let size = |key: &str,
                v: &Option<Size>,
                default: u32,
                max: u32,
                page: bool,
                zero_ok: bool|
     -> Result<u32> {
        let Some(v) = v else { return Ok(default) };
        let n = v.bytes().ok_or_else(|| {
            key_err(
                key,
                v,
                "expected a size in bytes: an integer, or a string like \"64 KiB\" or \"1 MiB\"",
            )
        })?;
        if n == 0 && !zero_ok {
            return Err(key_err(key, v, "must not be 0"));
        }
        if n > max as u64 {
            return Err(key_err(
                key,
                v,
                &format!("larger than the image format allows ({max} bytes)"),
            ));
        }
        if page && n % PAGE_SIZE != 0 {
            return Err(key_err(
                key,
                v,
                &format!("must be a multiple of the page size ({PAGE_SIZE} bytes)"),
            ));
        }
        Ok(n as u32)
    };
    s.stack_size = size(
        "stack_size",
        &raw.stack_size,
        DEFAULT_STACK_SIZE,
        MAX_STACK_OR_HEAP,
        true,
        false,
    )?;
    s.heap_size = size(
        "heap_size",
        &raw.heap_size,
        DEFAULT_HEAP_SIZE,
        MAX_STACK_OR_HEAP,
        true,
        true,
    )?;
    s.max_input = size(
        "max_input",
        &raw.max_input,
        DEFAULT_MAX_IO,
        MAX_IO,
        false,
        false,
    )?;
    s.max_output = size(
        "max_output",
        &raw.max_output,
        DEFAULT_MAX_IO,
        MAX_IO,
        false,
        false,
    )?;
    if let Some(m) = &raw.mode {
        s.mode = match m.as_str() {
            "exclusive" => Mode::Exclusive,
            "collaborative" => Mode::Collaborative,
            _ => {
                return Err(key_err(
                    "mode",
                    &format!("{m:?}"),
                    "expected \"exclusive\" or \"collaborative\"",
                ))
            }
        };
    }
    Ok((s, present))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<(Settings, bool)> {
        parse_settings(t, Path::new("x/Cargo.toml"))
    }

    #[test]
    fn defaults_without_table() {
        let (s, present) = parse("[package]\nname = \"a\"\n").unwrap();
        assert!(!present);
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn all_keys() {
        let (s, present) = parse(
            "[package]\nname=\"a\"\n[package.metadata.tetd]\nstack_size = \"128 KiB\"\nheap_size = 0\nmode = \"collaborative\"\nmax_input = 100\nmax_output = \"1M\"\n",
        )
        .unwrap();
        assert!(present);
        assert_eq!(
            s,
            Settings {
                stack_size: 128 << 10,
                heap_size: 0,
                mode: Mode::Collaborative,
                max_input: 100,
                max_output: 1 << 20,
            }
        );
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let e = parse("[package.metadata.tetd]\nstak_size = 4096\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/Cargo.toml"), "{e}");
        assert!(e.contains("stak_size"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (t, key) in [
            ("stack_size = 5000", "stack_size"),
            ("stack_size = 0", "stack_size"),
            ("stack_size = \"64 KB\"", "stack_size"),
            ("heap_size = -4096", "heap_size"),
            ("heap_size = \"32M\"", "heap_size"),
            ("max_input = 0", "max_input"),
            ("max_output = \"17 MiB\"", "max_output"),
            ("mode = \"shared\"", "mode"),
        ] {
            let e = parse(&format!("[package.metadata.tetd]\n{t}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("x/Cargo.toml"), "{t}: {e}");
        }
        let e = parse("[package.metadata.tetd]\nmode = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("64 KiB"), Some(65536));
        assert_eq!(parse_size("2 MiB"), Some(2 << 20));
        assert_eq!(parse_size("1 GiB"), None);
        assert_eq!(parse_size("KiB"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999"), None);
    }
}
