//! `tetd-pack build [PATH]`: agent crate → `.tetd` image.
//!
//! 1. [`metadata`]: find the crate (`cargo metadata`) and read
//!    `[package.metadata.tetd]`;
//! 2. [`cargo`]: `cargo rustc --crate-type staticlib` for
//!    `x86_64-unknown-none`, release, PIE code, `panic=abort`;
//! 3. [`link`]: link the archive with `agent.ld` into a PIE (`rust-lld`);
//! 4. [`elf`]: convert the PIE into an image with `tetd::image::ImageBuilder`;
//! 5. write the image (atomically) and report.
//!
//! Intermediate files live in `<target-dir>/x86_64-unknown-none/release/tetd/`
//! (the linker script as used, the linked ELF with symbols for debugging);
//! everything there is rebuilt on every run.

pub mod cargo;
pub mod elf;
pub mod link;
pub mod metadata;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tetd::image::Image;

use crate::inspect;
use crate::util::{hex, human_size};

/// Arguments of `tetd-pack build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The agent crate: its directory or its Cargo.toml.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Where to write the image [default: <package>.tetd in the current directory].
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Print a JSON summary of the image on stdout (the `inspect --json` object plus a `build` member).
    #[arg(long)]
    pub json: bool,
    /// Cargo target directory for the agent build [default: <crate target dir>/tetd].
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// Linker to use instead of the toolchain's rust-lld (ld.lld or GNU ld).
    #[arg(long, value_name = "PATH")]
    pub linker: Option<PathBuf>,
    /// No progress output (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,
    /// Pack this already linked agent ELF (a PIE) instead of compiling and
    /// linking; PATH still supplies the package name, version and metadata.
    #[arg(long, value_name = "ELF")]
    pub elf: Option<PathBuf>,
    /// Sign the image with this private key (PKCS#8 DER) before writing it.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

/// Progress lines on stderr, in cargo's style.
pub struct Progress {
    quiet: bool,
}

impl Progress {
    /// A reporter; silent when `quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress { quiet }
    }
    /// `{verb:>12} {msg}` on stderr.
    pub fn step(&self, verb: &str, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{verb:>12} {msg}");
        }
    }
}

/// Everything a build produced.
#[derive(Debug)]
pub struct Built {
    /// The image bytes (unsigned).
    pub image: Vec<u8>,
    /// Package name.
    pub package: String,
    /// The linked ELF (kept for debugging / symbolization).
    pub elf: PathBuf,
    /// The cargo target directory used.
    pub target_dir: PathBuf,
}

/// Compile, link and pack; returns the image without writing it.
pub fn build_image(args: &BuildArgs, progress: &Progress) -> Result<Built> {
    let tc = cargo::Toolchain::detect()?;
    tc.check_target()?;
    let krate = metadata::load(&tc.cargo, &args.path)?;
    if !krate.has_metadata {
        progress.step(
            "Note",
            format_args!(
                "{} has no [package.metadata.tetd]; using the defaults (stack {}, heap {}, {}, max input/output {})",
                krate.manifest_path.display(),
                human_size(krate.settings.stack_size as u64),
                human_size(krate.settings.heap_size as u64),
                krate.settings.mode,
                human_size(krate.settings.max_input as u64),
            ),
        );
    }
    let target_dir = match &args.target_dir {
        Some(d) => absolute(d)?,
        None => krate.target_directory.join("tetd"),
    };
    let elf_path = match &args.elf {
        Some(p) => p.clone(),
        None => compile_and_link(args, progress, &tc, &krate, &target_dir)?,
    };
    let elf_bytes =
        std::fs::read(&elf_path).with_context(|| format!("cannot read {}", elf_path.display()))?;
    let converted = elf::convert(
        &elf_bytes,
        &elf::Package {
            name: &krate.name,
            version: &krate.version,
            settings: krate.settings,
        },
    )
    .map_err(|e| anyhow!("{}: {e}", elf_path.display()))?;
    progress.step(
        "Packing",
        format_args!(
            "agents [{}], {} segments, {} relocations",
            elf::agent_summary(&converted.agents),
            converted.builder.segments.len(),
            converted.builder.relocations.len()
        ),
    );
    let image = converted.builder.build().map_err(|e| {
        anyhow!(
            "internal error: the image packed from {} does not pass the image checks: {e}",
            elf_path.display()
        )
    })?;
    Ok(Built {
        image,
        package: krate.name,
        elf: elf_path,
        target_dir,
    })
}

/// Steps 2 and 3: compile the staticlib and link the PIE; returns the ELF.
fn compile_and_link(
    args: &BuildArgs,
    progress: &Progress,
    tc: &cargo::Toolchain,
    krate: &metadata::AgentCrate,
    target_dir: &Path,
) -> Result<PathBuf> {
    let crate_dir = krate
        .manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    progress.step(
        "Compiling",
        format_args!(
            "{} v{} ({}) for {} [release, lto, pie, panic=abort]",
            krate.name,
            krate.version,
            crate_dir.display(),
            cargo::AGENT_TARGET
        ),
    );
    let archive = cargo::build_staticlib(tc, krate, target_dir, progress.quiet)?;

    let keep = link::agent_symbols(&archive)?;
    if keep.is_empty() {
        return Err(anyhow!(
            "no agents in `{}`: no #[tetd::agent] function was compiled (looked for `{}*` symbols in {})",
            krate.name,
            link::DESCRIPTOR_SYMBOL_PREFIX,
            archive.display()
        ));
    }
    let work = archive.parent().unwrap_or(Path::new(".")).join("tetd");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // Concurrent builds of one crate may share this directory: every file
    // is written under a temporary name and renamed into place.
    let script = work.join("agent.ld");
    write_atomic(&script, link::LINKER_SCRIPT.as_bytes())?;
    let linker = link::Linker::find(tc, args.linker.as_deref())?;
    // One ELF per linker dialect, so builds with different linkers sharing a
    // target directory do not replace each other's output.
    let elf_path = work.join(match linker.flavor {
        link::Flavor::RustLld => format!("{}.elf", krate.lib_name),
        link::Flavor::Lld => format!("{}.ld-lld.elf", krate.lib_name),
        link::Flavor::Gnu => format!("{}.gnu-ld.elf", krate.lib_name),
    });
    progress.step(
        "Linking",
        format_args!(
            "{} ({} agent{}, {})",
            elf_path.display(),
            keep.len(),
            if keep.len() == 1 { "" } else { "s" },
            linker.path.display()
        ),
    );
    let tmp_elf = work.join(format!(
        ".{}.elf.tmp-{}",
        krate.lib_name,
        std::process::id()
    ));
    let linked = link::link(&linker, &archive, &script, &keep, &tmp_elf);
    let warnings = match linked {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_elf);
            return Err(e);
        }
    };
    std::fs::rename(&tmp_elf, &elf_path)
        .with_context(|| format!("cannot write {}", elf_path.display()))?;
    for w in warnings {
        progress.step("Warning", format_args!("linker: {w}"));
    }

    Ok(elf_path)
}

/// `tetd-pack build`.
pub fn run(args: &BuildArgs) -> Result<i32> {
    let progress = Progress::new(args.quiet);
    // Load the key first: a bad key path fails before a long build.
    let key = args
        .sign
        .as_deref()
        .map(crate::sign::SigningKey::load)
        .transpose()?;
    let built = build_image(args, &progress)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.tetd", built.package)));

    let image = match &key {
        Some(k) => {
            let signed = crate::sign::sign_bytes(&built.image, k, &out.display().to_string())?;
            progress.step("Signed", format_args!("with key id {}", hex(&k.key_id())));
            signed
        }
        None => built.image,
    };

    write_atomic(&out, &image)?;
    let img = Image::parse(&image).map_err(|e| anyhow!("internal error: {e}"))?;
    let n = img.manifest().agent_count;
    progress.step(
        "Wrote",
        format_args!(
            "{} ({} agent{}, {} bytes, measurement {}…)",
            out.display(),
            n,
            if n == 1 { "" } else { "s" },
            image.len(),
            &hex(img.measurement())[..16]
        ),
    );
    if args.json {
        let mut v = serde_json::to_value(inspect::report(&out.display().to_string(), &img))?;
        v["build"] = serde_json::json!({
            "elf": built.elf.display().to_string(),
            "target_dir": built.target_dir.display().to_string(),
            "target": cargo::AGENT_TARGET,
            "profile": "release",
        });
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &v)?;
        writeln!(stdout)?;
    }
    Ok(0)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .context("cannot read the current directory")?
            .join(p))
    }
}

/// Write `bytes` to `dest` through a temporary file in the same directory,
/// so a reader never sees a half-written image.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file name", dest.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {e}", dest.display())
    })
}
