//! `tetd-vmm bench`: where TETD-rs stands, every figure as a ratio against a
//! baseline measured in the same run (issue 9, `docs/performance.md`).
//!
//! Sections (each can be left out; a missing prerequisite skips a section
//! with the reason, it never fails the run):
//!
//! | section | what | baseline |
//! |---|---|---|
//! | `tools` | `tetd-pack build` of examples; `tetd-pack sign`/`verify` of a large image | plain `cargo build --release` of the same crate; SHA-384 of the same bytes (`sha384sum`, in process) |
//! | `sim` | image load (parse + verify + relocate + map) per MiB; agent call round trip (empty, 4 KiB) on the host simulator; encrypted vs plain calls (64 B, 4 KiB, 64 KiB) | SHA-384 of the image; one bare syscall; the plain call |
//! | `host` | TETD-H core on the TDX model: VMM_ENTER + VMM_RESUME by zone size (block/unblock per page), zone life | the 1-page figure |
//! | `kvm` | micro guest on `/dev/kvm` (KVM engine): bare exit round trip, TETD-H no-op, call round trip with real memory-slot changes by zone size, 1 and 2 vCPUs | the bare exit |
//! | `guest` | a Linux guest (engine `auto`: QEMU/TCG on this machine) with `tetdg.ko`: `tetdctl bench` loops in exclusive and collaborative mode, 1 and 2 callers | a bare hypercall from guest user space and a plain ioctl into the module |
//!
//! Results: [`report::Report`], written as `report.json` and `report.md`.

pub mod guest;
pub mod host;
pub mod kvm;
pub mod report;
pub mod sim;
pub mod stats;
pub mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

pub use report::{Report, Unit};
pub use stats::Summary;

/// One part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// tetd-pack build / sign / verify.
    Tools,
    /// The host simulator (loader core, calls, encryption).
    Sim,
    /// TETD-H core on the TDX model.
    Host,
    /// Micro guests on /dev/kvm.
    Kvm,
    /// A Linux guest with the module.
    Guest,
}

impl Section {
    /// Every section, in run order.
    pub const ALL: [Section; 5] = [
        Section::Tools,
        Section::Sim,
        Section::Host,
        Section::Kvm,
        Section::Guest,
    ];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Section::Tools => "tools",
            Section::Sim => "sim",
            Section::Host => "host",
            Section::Kvm => "kvm",
            Section::Guest => "guest",
        }
    }
}

impl std::str::FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Section::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown section {s:?} (tools, sim, host, kvm, guest)"))
    }
}

/// How to run the bench.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The TETD-rs checkout (examples/, build/guest, build/module).
    pub root: PathBuf,
    /// Where images, scratch files and the report go (`target/bench`).
    pub out_dir: PathBuf,
    /// The `tetd-pack` binary.
    pub tetd_pack: PathBuf,
    /// Tiny iteration counts (smoke test: checks the machinery, the numbers
    /// mean little).
    pub quick: bool,
    /// Sections to run.
    pub sections: Vec<Section>,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl BenchConfig {
    /// Iteration count: `full`, or `quick` with [`BenchConfig::quick`].
    pub fn iters(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// Print a progress line (with `verbose`).
    pub fn log(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!("bench: {}", msg.as_ref());
        }
    }

    fn wants(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }
}

/// Why a section did not produce (all) its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionError {
    /// A prerequisite is missing here (no /dev/kvm, no guest kernel, ...).
    Skip(String),
    /// Something that should have worked failed.
    Fail(String),
}

impl SectionError {
    /// A failure from any error.
    pub fn fail(e: impl std::fmt::Display) -> SectionError {
        SectionError::Fail(e.to_string())
    }
}

/// Result of a section.
pub type SectionResult<T> = Result<T, SectionError>;

/// Images the sections share (built by [`tools::build_images`]).
#[derive(Debug, Clone)]
pub struct Images {
    /// examples/echo.
    pub echo: PathBuf,
    /// examples/secure-echo.
    pub secure_echo: PathBuf,
}

/// Run `cmd`; its stdout on success, an error naming the command and its
/// stderr otherwise.
pub fn run_cmd(cmd: &mut Command) -> SectionResult<String> {
    let out = cmd
        .output()
        .map_err(|e| SectionError::Fail(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(SectionError::Fail(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wall time of `cmd` (which must succeed).
pub fn time_cmd(cmd: &mut Command) -> SectionResult<Duration> {
    let t = Instant::now();
    run_cmd(cmd)?;
    Ok(t.elapsed())
}

/// Run every configured section into one report.
pub fn run(cfg: &BenchConfig) -> Report {
    let started = Instant::now();
    let mut rep = Report {
        meta: host_facts(),
        ..Report::default()
    };
    rep.meta.insert("quick".into(), json!(cfg.quick));
    rep.meta.insert(
        "sections".into(),
        json!(cfg.sections.iter().map(|s| s.name()).collect::<Vec<_>>()),
    );
    let mut failed: Vec<&'static str> = Vec::new();
    let record = |rep: &mut Report,
                  failed: &mut Vec<&'static str>,
                  s: Section,
                  r: SectionResult<()>,
                  t: Instant| {
        rep.meta.insert(
            format!("seconds_{}", s.name()),
            json!((t.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        match r {
            Ok(()) => {}
            Err(SectionError::Skip(why)) => rep.skip(s.name(), why),
            Err(SectionError::Fail(why)) => {
                rep.skip(s.name(), format!("FAILED: {why}"));
                failed.push(s.name());
            }
        }
    };

    // Images: built (and, in `tools`, timed) first; the other sections load them.
    let t = Instant::now();
    let images = if cfg.wants(Section::Tools) {
        cfg.log("tools: tetd-pack build / sign / verify");
        let r = tools::run(cfg, &mut rep);
        let images = r.as_ref().ok().cloned();
        record(&mut rep, &mut failed, Section::Tools, r.map(|_| ()), t);
        images
    } else if !cfg.wants(Section::Sim) && !cfg.wants(Section::Guest) {
        None
    } else {
        match tools::build_images(cfg) {
            Ok(i) => Some(i),
            Err(e) => {
                let why = match e {
                    SectionError::Skip(s) | SectionError::Fail(s) => s,
                };
                rep.skip("images", format!("FAILED: {why}"));
                failed.push("images");
                None
            }
        }
    };
    for s in [Section::Sim, Section::Host, Section::Kvm, Section::Guest] {
        if !cfg.wants(s) {
            continue;
        }
        let t = Instant::now();
        cfg.log(format!("{}: start", s.name()));
        let r = match (s, &images) {
            (Section::Host, _) => host::run(cfg, &mut rep),
            (Section::Kvm, _) => kvm::run(cfg, &mut rep),
            (_, None) => Err(SectionError::Skip("no agent images (see images)".into())),
            (Section::Sim, Some(i)) => sim::run(cfg, i, &mut rep),
            (Section::Guest, Some(i)) => guest::run(cfg, i, &mut rep),
            (Section::Tools, _) => Ok(()),
        };
        record(&mut rep, &mut failed, s, r, t);
    }
    rep.meta
        .insert("failed_sections".into(), json!(failed.clone()));
    rep.meta.insert(
        "seconds_total".into(),
        json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
    );
    rep
}

/// Write `report.json` and `report.md` into `dir`; returns their paths.
pub fn write(rep: &Report, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let j = dir.join("report.json");
    let m = dir.join("report.md");
    let text = serde_json::to_string_pretty(&rep.to_json()).map_err(std::io::Error::other)?;
    std::fs::write(&j, text + "\n")?;
    std::fs::write(&m, markdown_document(rep))?;
    Ok((j, m))
}

/// `report.md`: a heading with the run's facts, the table, skips, notes.
pub fn markdown_document(rep: &Report) -> String {
    let meta = |k: &str| {
        rep.meta
            .get(k)
            .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
            .unwrap_or_default()
    };
    format!(
        "# TETD-rs bench report\n\nHost: {} ({} CPUs), Linux {}, /dev/kvm: {}. Run took {} s{}. \
         Ratio = median / baseline median (both measured in this run).\n\n{}",
        meta("cpu"),
        meta("cpus"),
        meta("kernel"),
        meta("kvm"),
        meta("seconds_total"),
        if meta("quick") == "true" {
            " with --quick iteration counts (smoke run: the numbers are not meaningful)"
        } else {
            ""
        },
        rep.to_markdown()
    )
}

fn host_facts() -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    m.insert("cpu".into(), json!(cpu));
    m.insert(
        "cpus".into(),
        json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    m.insert("kernel".into(), json!(kernel.trim()));
    let kvm = match crate::vmm::kvm_available() {
        Err(e) => format!("unavailable ({e})"),
        Ok(()) if crate::vmm::kvm_emulates_guest_kernel() => {
            "PVM backend (kvm_pvm): guest kernel code is emulated".into()
        }
        Ok(()) => "hardware-assisted".into(),
    };
    m.insert("kvm".into(), json!(kvm));
    m
}

/// `tetd-vmm bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Tiny iteration counts: checks that everything runs and the report is
    /// well formed (a smoke test; the numbers mean little).
    #[arg(long)]
    pub quick: bool,
    /// Run only these sections (tools, sim, host, kvm, guest); repeatable.
    #[arg(long = "only", value_name = "SECTION")]
    pub only: Vec<Section>,
    /// Leave these sections out; repeatable.
    #[arg(long = "skip", value_name = "SECTION")]
    pub skip: Vec<Section>,
    /// The TETD-rs checkout (default: the current directory if it is one,
    /// else the one this binary was built in).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Output directory (default ROOT/target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The tetd-pack binary (default: next to this binary).
    #[arg(long)]
    pub tetd_pack: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

fn is_checkout(p: &Path) -> bool {
    p.join("Cargo.toml").is_file() && p.join("examples").is_dir() && p.join("tetd-sdk").is_dir()
}

impl BenchArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> Result<BenchConfig, String> {
        let root = match &self.root {
            Some(r) => r.clone(),
            None => {
                let cwd = std::env::current_dir().map_err(|e| format!("current dir: {e}"))?;
                let built = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .map(Path::to_path_buf);
                if is_checkout(&cwd) {
                    cwd
                } else {
                    built
                        .filter(|b| is_checkout(b))
                        .ok_or_else(|| "not in a TETD-rs checkout (give --root)".to_string())?
                }
            }
        };
        if !is_checkout(&root) {
            return Err(format!(
                "{} is not a TETD-rs checkout (no Cargo.toml, examples/, tetd-sdk/)",
                root.display()
            ));
        }
        let tetd_pack = match &self.tetd_pack {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("current exe: {e}"))?
                .with_file_name("tetd-pack"),
        };
        let sections: Vec<Section> = Section::ALL
            .into_iter()
            .filter(|s| self.only.is_empty() || self.only.contains(s))
            .filter(|s| !self.skip.contains(s))
            .collect();
        if sections.is_empty() {
            return Err("no section left to run (--only / --skip)".into());
        }
        Ok(BenchConfig {
            out_dir: self
                .out
                .clone()
                .unwrap_or_else(|| root.join("target").join("bench")),
            root,
            tetd_pack,
            quick: self.quick,
            sections,
            verbose: !self.quiet,
        })
    }
}

/// `tetd-vmm bench`: run, print the markdown table, write the report.
/// Exit code 0, or 1 if a section failed (skipped sections are not
/// failures), 2 for bad arguments or an unwritable output directory.
pub fn main(args: &BenchArgs) -> u8 {
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tetd-vmm bench: {e}");
            return 2;
        }
    };
    let rep = run(&cfg);
    print!("{}", markdown_document(&rep));
    match write(&rep, &cfg.out_dir) {
        Ok((j, m)) => eprintln!("tetd-vmm bench: wrote {} and {}", j.display(), m.display()),
        Err(e) => {
            eprintln!(
                "tetd-vmm bench: cannot write the report to {}: {e}",
                cfg.out_dir.display()
            );
            return 2;
        }
    }
    let failed = rep.skipped.iter().any(|s| s.reason.starts_with("FAILED"));
    u8::from(failed)
}
