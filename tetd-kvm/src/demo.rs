//! `tetd-vmm demo`: the README's first command, end to end in a real guest.
//!
//! [`pack_images`] builds the example agents with `tetd-pack build`, signs
//! them with a demo key and writes the guest's signer allow-list.
//! [`run_demo`] then
//!
//! 1. picks the engine ([`select_engine`]; on a PVM host that is QEMU/TCG)
//!    and says why and whether zone blocking is enforced there;
//! 2. makes two bad variants of the signed images on the host (an unsigned
//!    copy of `echo`, and a copy of `signer` with one code byte patched and
//!    the SHA-384 measurement recomputed, so only the signature can notice)
//!    and checks with [`tetd::verify`] what the guest must answer;
//! 3. writes the guest script ([`DemoPlan::script`]): `insmod tetdg.ko
//!    require_signed=1`, loads (before and after `tetdctl trust`), calls of
//!    every agent in both modes, a kernel read of a blocked zone,
//!    `/proc/tetdg_info`, the RTMR3 log, unload, `rmmod`, `dmesg`;
//! 4. builds the busybox initramfs (module, `tetdctl`, images, allow-list,
//!    script), boots the guest with TETD-H attached and follows the guest's
//!    progress on the console (stderr) and TETD-H's agent events over
//!    eventfd + io_uring;
//! 5. reads the guest's results — one `TETD-RESULT {json}` console line per
//!    step, the command's exit status and its stdout/stderr in hex, so no
//!    output can break the framing — and checks each against what the host
//!    computes independently (SHA-256 of the input, Ed25519 verification of
//!    the signer's signatures with `ring`, the RTMR3 value replayed from the
//!    image files with [`tetd::measure::replay`]);
//! 6. compares the guest's view with TETD-H's (calls, failures and faults
//!    per image, measurements, RTMR3).
//!
//! The result is a [`DemoReport`]: [`DemoReport::render`] prints the
//! tables, [`DemoReport::to_json`] the same as JSON; [`DemoReport::passed`]
//! is true only if every step and every host check came out as expected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tetd::abi::{Error as AbiError, Mode, AGENT_RTMR_INDEX};
use tetd::image::{compute_measurement, Image, MEASUREMENT_LEN, MEASUREMENT_OFFSET, PERM_X};
use tetd::verify::{verify_image, AllowList, Policy};

use crate::hv::{select_engine, Engine, EngineChoice, TetdHandler, TetdOptions, TetdReport};
use crate::notify::{Event, EventKind, Notifier, UringConsumer};
use crate::qemu::QemuVm;
use crate::vmm::initramfs::{build_busybox_initramfs, InitramfsSpec, DEFAULT_BUSYBOX};
use crate::vmm::{GuestKernel, Vm, VmConfig, VmExit, VmOutcome, VmmError, DEFAULT_CMDLINE};

/// The example packages the demo loads (`examples/<name>`, image
/// `<name>.tetd`), in load order. `secure-echo` and `registrar` are left
/// out: their ids collide with `faulty`'s, and `secure-echo` needs a client
/// that speaks the session protocol (`tetd-pack run --encrypt`).
pub const PACKAGES: &[&str] = &["echo", "sha256", "signer", "audit-log", "admin", "faulty"];

/// Signing key file [`pack_images`] creates in the output directory
/// (`tetd-pack keygen` writes the public half next to it as `.pub`).
pub const KEY_FILE: &str = "demo-signer.pk8";
/// The guest's allow-list [`pack_images`] writes (the demo key, `admin`).
pub const ALLOW_LIST_FILE: &str = "allow.list";

/// Where the guest finds its files.
const GUEST_DIR: &str = "/tetd";
/// Console line prefixes of the guest script.
const RESULT_PREFIX: &str = "TETD-RESULT ";
const PROGRESS_PREFIX: &str = "TETD-PROGRESS ";
const END_PREFIX: &str = "TETD-RESULTS-END ";
const BOOT_MARK: &str = "tetd-init: up";

/// Why the demo could not run (as opposed to: it ran and something did
/// not match, which is a [`DemoReport`] with `passed() == false`).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Neither a usable `/dev/kvm` nor QEMU.
    #[error("{0}")]
    NoEngine(String),
    /// A missing or unusable input (file, tool), with what to do about it.
    #[error("{0}")]
    Setup(String),
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn progress(on: bool, msg: impl AsRef<str>) {
    if on {
        eprintln!("demo: {}", msg.as_ref());
    }
}

/// Picks the engine like `tetd-vmm boot --engine`; without any, the error
/// says what is missing and points to the host simulator.
pub fn check_engine(choice: EngineChoice) -> Result<crate::hv::Selection, DemoError> {
    select_engine(choice).map_err(|e| {
        DemoError::NoEngine(format!(
            "no way to run a guest on this machine: {e}.\n\
             The demo needs a usable /dev/kvm (the project's KVM VMM) or QEMU \
             (qemu-system-x86_64; `bash scripts/setup.sh` installs it as root).\n\
             Without either, run the agents in the host simulator instead, e.g.\n  \
             tetd-pack build examples/echo -o echo.tetd && \
             tetd-pack run echo.tetd --agent 1 --input hello"
        ))
    })
}

// ---------------------------------------------------------------------------
// Building and signing the images
// ---------------------------------------------------------------------------

/// What [`pack_images`] needs.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The `tetd-pack` binary.
    pub tetd_pack: PathBuf,
    /// Repository root (the examples are `<repo>/examples/<name>`).
    pub repo: PathBuf,
    /// Output directory: `<name>.tetd`, [`KEY_FILE`], [`ALLOW_LIST_FILE`].
    pub out: PathBuf,
    /// Progress lines on stderr.
    pub progress: bool,
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<String, DemoError> {
    let out = cmd
        .output()
        .map_err(|e| DemoError::Setup(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(DemoError::Setup(format!(
            "{what} failed ({}):\n{msg}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds every [`PACKAGES`] example with `tetd-pack build`, creates the
/// demo signing key once (`tetd-pack keygen`), signs the images
/// (`tetd-pack sign`) and writes the allow-list: the demo key with the
/// `admin` attribute (the `admin` example is an admin agent, which the
/// module loads only from an admin signer).
pub fn pack_images(o: &PackOptions) -> Result<(), DemoError> {
    if !o.tetd_pack.is_file() {
        return Err(DemoError::Setup(format!(
            "{} not found (cargo build --release -p tetd-pack)",
            o.tetd_pack.display()
        )));
    }
    std::fs::create_dir_all(&o.out).map_err(io_err(&o.out))?;
    for (i, pkg) in PACKAGES.iter().enumerate() {
        let src = o.repo.join("examples").join(pkg);
        let img = o.out.join(format!("{pkg}.tetd"));
        progress(
            o.progress,
            format!(
                "[{}/{}] tetd-pack build examples/{pkg} -o {}",
                i + 1,
                PACKAGES.len(),
                img.display()
            ),
        );
        let t = Instant::now();
        // Compiler errors go straight to the terminal.
        let st = Command::new(&o.tetd_pack)
            .args(["build", "-q"])
            .arg(&src)
            .arg("-o")
            .arg(&img)
            .status()
            .map_err(|e| DemoError::Setup(format!("{}: {e}", o.tetd_pack.display())))?;
        if !st.success() {
            return Err(DemoError::Setup(format!(
                "tetd-pack build examples/{pkg} failed ({st})"
            )));
        }
        progress(
            o.progress,
            format!("      built in {:.1} s", t.elapsed().as_secs_f64()),
        );
    }
    let key = o.out.join(KEY_FILE);
    let public = key.with_extension("pub");
    if key.is_file() && public.is_file() {
        progress(o.progress, format!("signing key {} (kept)", key.display()));
    } else {
        progress(o.progress, format!("tetd-pack keygen -o {}", key.display()));
        run_tool(
            Command::new(&o.tetd_pack)
                .args(["keygen", "--force", "-o"])
                .arg(&key),
            "tetd-pack keygen",
        )?;
    }
    for pkg in PACKAGES {
        let img = o.out.join(format!("{pkg}.tetd"));
        run_tool(
            Command::new(&o.tetd_pack)
                .arg("sign")
                .arg(&img)
                .arg("--key")
                .arg(&key),
            &format!("tetd-pack sign {}", img.display()),
        )?;
    }
    progress(
        o.progress,
        format!("signed {} images with {}", PACKAGES.len(), public.display()),
    );
    let pub_text = std::fs::read_to_string(&public).map_err(io_err(&public))?;
    let key_line = pub_text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .ok_or_else(|| DemoError::Setup(format!("{}: no key line", public.display())))?;
    let list = format!(
        "# TETD-rs demo: the signer of build/demo/*.tetd, allowed to sign admin agents\n\
         {key_line} admin\n"
    );
    let parsed = AllowList::parse(&list)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", public.display())))?;
    if parsed.len() != 1 || !parsed.keys().all(|k| k.admin) {
        return Err(DemoError::Setup(format!(
            "{}: expected exactly one key",
            public.display()
        )));
    }
    let allow = o.out.join(ALLOW_LIST_FILE);
    std::fs::write(&allow, list).map_err(io_err(&allow))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Configuration and images
// ---------------------------------------------------------------------------

/// Inputs of [`run_demo`].
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Guest kernel (the vmlinux or bzImage of `scripts/setup.sh`).
    pub kernel: PathBuf,
    /// `tetdg.ko`.
    pub module: PathBuf,
    /// Static `tetdctl`.
    pub tetdctl: PathBuf,
    /// Directory with the signed `<name>.tetd` images and [`ALLOW_LIST_FILE`].
    pub images: PathBuf,
    /// Working directory: variants, guest script, initramfs, console log.
    pub work: PathBuf,
    /// Static busybox for the initramfs.
    pub busybox: PathBuf,
    /// Engine choice.
    pub engine: EngineChoice,
    /// vCPUs (the guest runs with 2 by default).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Wall-clock limit of the guest run.
    pub timeout: Duration,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl DemoConfig {
    /// The defaults for a checkout at `repo`: the kernel of
    /// `scripts/setup.sh`, `build/module/{tetdg.ko,tetdctl}` of
    /// `scripts/build-module.sh`, images and work files in `build/demo`.
    pub fn for_repo(repo: &Path) -> Result<DemoConfig, DemoError> {
        let kernel = GuestKernel::locate(repo).map_err(|e| {
            DemoError::Setup(format!(
                "guest kernel: {e} (bash scripts/setup.sh installs it)"
            ))
        })?;
        Ok(DemoConfig::with_kernel(
            repo,
            kernel.boot_image().to_path_buf(),
        ))
    }

    /// The same defaults with another guest kernel.
    pub fn with_kernel(repo: &Path, kernel: PathBuf) -> DemoConfig {
        let module_dir = repo.join("build/module");
        DemoConfig {
            kernel,
            module: module_dir.join("tetdg.ko"),
            tetdctl: module_dir.join("tetdctl"),
            images: repo.join("build/demo"),
            work: repo.join("build/demo"),
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            engine: EngineChoice::Auto,
            vcpus: 2,
            mem_mib: 512,
            timeout: Duration::from_secs(300),
            progress: true,
        }
    }
}

/// One agent of an image, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAgent {
    /// Agent id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Mode the manifest declares.
    pub mode: Mode,
}

/// A signed example image as the host parsed it.
#[derive(Debug, Clone)]
pub struct DemoImage {
    /// Package name (`echo`, ...).
    pub package: String,
    /// The file.
    pub path: PathBuf,
    /// SHA-384 measurement from the (parsed, checked) header.
    pub measurement: [u8; MEASUREMENT_LEN],
    /// Its agents.
    pub agents: Vec<ImageAgent>,
    bytes: Vec<u8>,
}

impl DemoImage {
    fn read(package: &str, path: &Path) -> Result<DemoImage, DemoError> {
        let bytes = std::fs::read(path).map_err(|source| DemoError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(
                source.kind(),
                format!("{source} (bash scripts/demo.sh builds and signs the images)"),
            ),
        })?;
        let img = Image::parse(&bytes)
            .map_err(|e| DemoError::Setup(format!("{}: not a valid image: {e}", path.display())))?;
        match img.signature() {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(DemoError::Setup(format!(
                    "{}: not signed (tetd-pack sign {} --key KEY)",
                    path.display(),
                    path.display()
                )))
            }
            Err(e) => return Err(DemoError::Setup(format!("{}: {e}", path.display()))),
        }
        let agents = img
            .agents()
            .map(|a| ImageAgent {
                id: a.id,
                name: a.name().to_string(),
                mode: a.mode,
            })
            .collect();
        Ok(DemoImage {
            package: package.to_string(),
            path: path.to_path_buf(),
            measurement: *img.measurement(),
            agents,
            bytes,
        })
    }

    fn first_id(&self) -> u32 {
        self.agents.first().map_or(0, |a| a.id)
    }

    fn file_name(&self) -> String {
        format!("{}.tetd", self.package)
    }
}

/// The unsigned copy: the body without the signature block.
fn unsigned_copy(img: &DemoImage) -> Result<Vec<u8>, DemoError> {
    let parsed = Image::parse(&img.bytes)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", img.path.display())))?;
    Ok(parsed.body().to_vec())
}

/// The tampered copy: one byte in the middle of the first executable
/// segment inverted and the measurement recomputed, so the image is
/// structurally valid and self-consistent; only the signature (over the
/// measurement) no longer verifies. Returns the bytes and the file offset
/// of the patched byte.
fn tampered_copy(img: &DemoImage) -> Result<(Vec<u8>, usize), DemoError> {
    let parsed = Image::parse(&img.bytes)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", img.path.display())))?;
    let seg = parsed
        .segments()
        .find(|s| s.perms & PERM_X != 0 && s.file_size > 0)
        .ok_or_else(|| {
            DemoError::Setup(format!("{}: no executable segment", img.path.display()))
        })?;
    let data = parsed.segment_data(&seg);
    // The segment's file offset: where its data slice starts in the file.
    let start = data.as_ptr() as usize - img.bytes.as_ptr() as usize;
    let at = start + data.len() / 2;
    let body_len = parsed.body().len();
    let mut out = img.bytes.clone();
    out[at] ^= 0xff;
    let m = compute_measurement(&out[..body_len]);
    out[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
    Ok((out, at))
}

// ---------------------------------------------------------------------------
// The plan: guest steps and what each must answer
// ---------------------------------------------------------------------------

/// A guest command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `insmod tetdg.ko require_signed=1 test_ioctl=1`.
    Insmod,
    /// `tetdctl trust allow.list`.
    Trust,
    /// `tetdctl load FILE`.
    Load(String),
    /// `tetdctl list --json`.
    List,
    /// `tetdctl call ID --mode M --hex INPUT --json`.
    Call {
        /// Agent id.
        agent: u32,
        /// Mode to run in.
        mode: Mode,
        /// Input bytes.
        input: Vec<u8>,
    },
    /// `tetdctl test-blob peek-zone --arg ID`: the guest kernel reads the
    /// agent's zone outside any call window.
    PeekZone(u32),
    /// `tetdctl measurements`.
    Measurements,
    /// `cat /proc/tetdg_info`.
    ProcInfo,
    /// `tetdctl info --json`.
    InfoJson,
    /// `tetdctl unload ID`.
    Unload(u32),
    /// `rmmod tetdg`.
    Rmmod,
    /// The module's and any error lines of `dmesg`.
    Dmesg,
}

/// What a step must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exit status 0.
    Success,
    /// The image loads with exactly these agent ids.
    Loaded(Vec<u32>),
    /// The load is refused with this error.
    Refused(AbiError),
    /// `list --json` names exactly these ids.
    Listed(Vec<u32>),
    /// The call returns its input.
    Echo,
    /// The call returns SHA-256 of its input (computed on the host).
    Sha256,
    /// The call returns a 32-byte Ed25519 public key (kept for `Signs`).
    PublicKey,
    /// The call returns an Ed25519 signature of this message that verifies
    /// with the key from the `PublicKey` step.
    Signs(Vec<u8>),
    /// Audit-log `append`: sequence number and 32-byte MAC.
    AuditAppend(u64),
    /// The call returns exactly this text.
    Text(String),
    /// Admin `list`: one line per agent, these ids.
    AdminList(Vec<u32>),
    /// The call fails with this status, and the kernel goes on.
    Fails(AbiError),
    /// The call faults with this status and exception vector; contained.
    Faults(AbiError, u64),
    /// The kernel's read of a blocked zone: the engine's blocked-read value
    /// ([`Engine::blocked_read_value`]: all-ones on KVM, zero on QEMU) and a
    /// violation counted by TETD-H; on an engine that does not take zones
    /// away, the zone's first code bytes (the image's).
    ZoneRead {
        /// What a blocked read returns (`None`: blocking not enforced).
        blocked: Option<u64>,
        /// The first 8 code bytes of the image whose zone is read.
        code: [u8; 8],
    },
    /// `rtmr3 expected:` equals the replay of the loaded images.
    Rtmr([u8; MEASUREMENT_LEN]),
    /// `/proc/tetdg_info` lists every loaded agent by name.
    ProcLists(Vec<String>),
    /// `info --json` counts these images and agents.
    Info {
        /// Images loaded.
        images: u64,
        /// Agents loaded.
        agents: u64,
    },
    /// `unload` reports this many agents.
    Unloaded(usize),
    /// No BUG/Oops/WARNING in `dmesg`; one `image rejected` line per
    /// refused load, and one `faulted in its zone` line per contained fault.
    CleanDmesg {
        /// Refused loads.
        rejected: usize,
        /// Contained faults.
        faults: usize,
    },
}

/// One step of the plan.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based.
    pub seq: usize,
    /// What the guest runs.
    pub action: Action,
    /// What it must answer.
    pub expect: Expect,
    /// Short description (progress lines, tables).
    pub label: String,
    /// Why this answer is the right one (shown for expected failures).
    pub note: &'static str,
}

/// The demo's guest steps, built from the images.
#[derive(Debug, Clone)]
pub struct DemoPlan {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Images, in load order.
    pub images: Vec<DemoImage>,
    /// Extra files for the initramfs (host path, guest path).
    pub files: Vec<(PathBuf, String)>,
    /// Where the tampered copy was patched (file offset).
    pub tamper_offset: usize,
}

fn find_image<'a>(images: &'a [DemoImage], pkg: &str) -> Result<&'a DemoImage, DemoError> {
    images
        .iter()
        .find(|i| i.package == pkg)
        .ok_or_else(|| DemoError::Setup(format!("image {pkg}.tetd missing")))
}

fn agent_id(images: &[DemoImage], pkg: &str, name: &str) -> Result<u32, DemoError> {
    find_image(images, pkg)?
        .agents
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.id)
        .ok_or_else(|| {
            DemoError::Setup(format!(
                "{pkg}.tetd has no agent named {name:?} (the demo expects the repository's examples)"
            ))
        })
}

impl DemoPlan {
    /// Reads the images from `cfg.images`, writes the variants and the
    /// allow-list copy to `cfg.work`, and plans the steps for an engine
    /// whose blocked zones read as `blocked` (`None`: not enforced).
    pub fn new(cfg: &DemoConfig, blocked: Option<u64>) -> Result<DemoPlan, DemoError> {
        std::fs::create_dir_all(&cfg.work).map_err(io_err(&cfg.work))?;
        let images = PACKAGES
            .iter()
            .map(|p| DemoImage::read(p, &cfg.images.join(format!("{p}.tetd"))))
            .collect::<Result<Vec<_>, _>>()?;
        let allow = cfg.images.join(ALLOW_LIST_FILE);
        let allow_text = std::fs::read_to_string(&allow).map_err(io_err(&allow))?;
        let list = AllowList::parse(&allow_text)
            .map_err(|e| DemoError::Setup(format!("{}: {e}", allow.display())))?;

        let echo = find_image(&images, "echo")?;
        let signer = find_image(&images, "signer")?;
        let unsigned = unsigned_copy(echo)?;
        let (tampered, tamper_offset) = tampered_copy(signer)?;
        // The host's own verdicts with the guest's policy: the plan states
        // what tetd::verify answers, never a hoped-for value.
        let verdict = |bytes: &[u8]| -> Result<(), AbiError> {
            let img = Image::parse(bytes).map_err(|e| e.code())?;
            verify_image(&img, &Policy::require_signed(list)).map(|_| ())
        };
        let unsigned_err = verdict(&unsigned).err().ok_or_else(|| {
            DemoError::Setup("the unsigned copy of echo verifies: cannot demo".into())
        })?;
        let tampered_err = verdict(&tampered).err().ok_or_else(|| {
            DemoError::Setup("the tampered copy of signer verifies: cannot demo".into())
        })?;
        let no_trust = verify_image(
            &Image::parse(&signer.bytes).map_err(|e| DemoError::Setup(e.to_string()))?,
            &Policy::require_signed(AllowList::parse("").expect("empty list")),
        )
        .err()
        .unwrap_or(AbiError::Internal);
        for img in &images {
            let parsed = Image::parse(&img.bytes).map_err(|e| DemoError::Setup(e.to_string()))?;
            verify_image(&parsed, &Policy::require_signed(list)).map_err(|e| {
                DemoError::Setup(format!(
                    "{} does not verify with {}: {e} (re-run bash scripts/demo.sh)",
                    img.path.display(),
                    allow.display()
                ))
            })?;
        }
        let unsigned_path = cfg.work.join("echo-unsigned.tetd");
        std::fs::write(&unsigned_path, &unsigned).map_err(io_err(&unsigned_path))?;
        let tampered_path = cfg.work.join("signer-tampered.tetd");
        std::fs::write(&tampered_path, &tampered).map_err(io_err(&tampered_path))?;

        let mut files = vec![
            (cfg.module.clone(), format!("{GUEST_DIR}/tetdg.ko")),
            (cfg.tetdctl.clone(), format!("{GUEST_DIR}/tetdctl")),
            (allow.clone(), format!("{GUEST_DIR}/{ALLOW_LIST_FILE}")),
            (unsigned_path, format!("{GUEST_DIR}/echo-unsigned.tetd")),
            (tampered_path, format!("{GUEST_DIR}/signer-tampered.tetd")),
        ];
        for img in &images {
            files.push((img.path.clone(), format!("{GUEST_DIR}/{}", img.file_name())));
        }

        let mut steps: Vec<Step> = Vec::new();
        let mut push = |action: Action, expect: Expect, label: String, note: &'static str| {
            steps.push(Step {
                seq: steps.len() + 1,
                action,
                expect,
                label,
                note,
            })
        };
        push(
            Action::Insmod,
            Expect::Success,
            "insmod tetdg.ko require_signed=1".into(),
            "",
        );
        push(
            Action::Load("signer.tetd".into()),
            Expect::Refused(no_trust),
            "load signer.tetd before `tetdctl trust`".into(),
            "no key trusted yet",
        );
        push(
            Action::Trust,
            Expect::Success,
            format!("tetdctl trust {ALLOW_LIST_FILE} (demo key, admin)"),
            "",
        );
        push(
            Action::Load("echo-unsigned.tetd".into()),
            Expect::Refused(unsigned_err),
            "load echo-unsigned.tetd (signature block removed)".into(),
            "require_signed=1",
        );
        push(
            Action::Load("signer-tampered.tetd".into()),
            Expect::Refused(tampered_err),
            "load signer-tampered.tetd (1 code byte patched, SHA-384 fixed up)".into(),
            "the signature covers the SHA-384",
        );
        let mut all_ids = Vec::new();
        for img in &images {
            let ids: Vec<u32> = img.agents.iter().map(|a| a.id).collect();
            all_ids.extend_from_slice(&ids);
            push(
                Action::Load(img.file_name()),
                Expect::Loaded(ids),
                format!("load {} (signed)", img.file_name()),
                "",
            );
        }
        push(
            Action::List,
            Expect::Listed(all_ids.clone()),
            "tetdctl list".into(),
            "",
        );

        let both = [Mode::Exclusive, Mode::Collaborative];
        let call = |agent: u32, mode: Mode, input: &[u8]| Action::Call {
            agent,
            mode,
            input: input.to_vec(),
        };
        let echo_id = agent_id(&images, "echo", "echo")?;
        for m in both {
            push(
                call(echo_id, m, b"hello from inside the trust domain"),
                Expect::Echo,
                "echo".into(),
                "",
            );
        }
        let sha = agent_id(&images, "sha256", "sha256")?;
        for m in both {
            push(
                call(sha, m, b"The quick brown fox jumps over the lazy dog"),
                Expect::Sha256,
                "sha256".into(),
                "",
            );
        }
        let sig = agent_id(&images, "signer", "signer")?;
        let msg = b"TETD-rs demo: signed inside the TD".to_vec();
        let mut sign_input = b"sign ".to_vec();
        sign_input.extend_from_slice(&msg);
        push(
            call(sig, Mode::Exclusive, b"pubkey"),
            Expect::PublicKey,
            "signer pubkey".into(),
            "",
        );
        for m in both {
            push(
                call(sig, m, &sign_input),
                Expect::Signs(msg.clone()),
                "signer sign".into(),
                "",
            );
        }
        let audit = agent_id(&images, "audit-log", "audit-log")?;
        push(
            call(
                audit,
                Mode::Exclusive,
                b"append demo: entry written in exclusive mode",
            ),
            Expect::AuditAppend(0),
            "audit-log append".into(),
            "",
        );
        push(
            call(
                audit,
                Mode::Collaborative,
                b"append demo: entry written in collaborative mode",
            ),
            Expect::AuditAppend(1),
            "audit-log append".into(),
            "",
        );
        for m in both {
            push(
                call(audit, m, b"verify"),
                Expect::Text("ok 2".into()),
                "audit-log verify".into(),
                "",
            );
        }
        let admin = agent_id(&images, "admin", "admin")?;
        push(
            call(admin, Mode::Exclusive, b"list"),
            Expect::AdminList(all_ids.clone()),
            "admin list".into(),
            "",
        );
        push(
            call(admin, Mode::Collaborative, b"list"),
            Expect::Fails(AbiError::Unsupported),
            "admin list".into(),
            "no admin services inside a zone",
        );
        let probe = agent_id(&images, "admin", "admin-probe")?;
        push(
            call(probe, Mode::Exclusive, b"list"),
            Expect::Fails(AbiError::Denied),
            "admin-probe list".into(),
            "not an admin agent",
        );
        let ok = agent_id(&images, "faulty", "ok")?;
        for m in both {
            push(
                call(ok, m, b"demo"),
                Expect::Text("fine: demo".into()),
                "faulty/ok".into(),
                "",
            );
        }
        let panic = agent_id(&images, "faulty", "panic")?;
        for m in both {
            push(
                call(panic, m, b"x"),
                Expect::Fails(AbiError::Panicked),
                "faulty/panic".into(),
                "panic aborts the call",
            );
        }
        let wc = agent_id(&images, "faulty", "write-code")?;
        push(
            call(wc, Mode::Collaborative, b"x"),
            Expect::Faults(AbiError::Fault, 14),
            "faulty/write-code".into(),
            "#PF in the zone, contained",
        );
        let so = agent_id(&images, "faulty", "stack-overflow")?;
        push(
            call(so, Mode::Collaborative, b"x"),
            Expect::Faults(AbiError::StackOverflow, 14),
            "faulty/stack-overflow".into(),
            "guard page hit, contained",
        );
        push(
            call(
                echo_id,
                Mode::Collaborative,
                b"still alive after the faults",
            ),
            Expect::Echo,
            "echo".into(),
            "",
        );
        push(
            call(echo_id, Mode::Exclusive, b"kernel still fine"),
            Expect::Echo,
            "echo".into(),
            "",
        );

        let code = {
            let parsed = Image::parse(&echo.bytes).map_err(|e| DemoError::Setup(e.to_string()))?;
            let seg = parsed
                .segments()
                .find(|s| s.vaddr == 0)
                .ok_or_else(|| DemoError::Setup("echo.tetd: no segment at offset 0".into()))?;
            let d = parsed.segment_data(&seg);
            let mut c = [0u8; 8];
            let n = d.len().min(8);
            c[..n].copy_from_slice(&d[..n]);
            c
        };
        push(
            Action::PeekZone(echo_id),
            Expect::ZoneRead { blocked, code },
            "guest kernel reads echo's zone outside a call".into(),
            match blocked {
                Some(u64::MAX) => "blocked: the VMM answers all-ones and reports a violation",
                Some(_) => "blocked: the page is out of the zone file; TETD-H counts the touch",
                None => "blocking not enforced here",
            },
        );
        let rtmr = tetd::measure::replay(images.iter().map(|i| &i.measurement));
        push(
            Action::Measurements,
            Expect::Rtmr(rtmr),
            "tetdctl measurements (RTMR3 event log)".into(),
            "",
        );
        push(
            Action::ProcInfo,
            Expect::ProcLists(
                images
                    .iter()
                    .flat_map(|i| i.agents.iter().map(|a| a.name.clone()))
                    .collect(),
            ),
            "cat /proc/tetdg_info".into(),
            "",
        );
        push(
            Action::InfoJson,
            Expect::Info {
                images: images.len() as u64,
                agents: all_ids.len() as u64,
            },
            "tetdctl info --json".into(),
            "",
        );
        for img in &images {
            push(
                Action::Unload(img.first_id()),
                Expect::Unloaded(img.agents.len()),
                format!("unload {}", img.file_name()),
                "",
            );
        }
        push(Action::Rmmod, Expect::Success, "rmmod tetdg".into(), "");
        let rejected = steps
            .iter()
            .filter(|s| matches!(s.expect, Expect::Refused(_)))
            .count();
        let faults = steps
            .iter()
            .filter(|s| matches!(s.expect, Expect::Faults(..)))
            .count();
        steps.push(Step {
            seq: steps.len() + 1,
            action: Action::Dmesg,
            expect: Expect::CleanDmesg { rejected, faults },
            label: "dmesg: no BUG/Oops/WARNING".into(),
            note: "",
        });
        Ok(DemoPlan {
            steps,
            images,
            files,
            tamper_offset,
        })
    }

    /// The guest script (`/tetd/run.sh`, run by the initramfs' init).
    pub fn script(&self) -> String {
        let mut s = String::from(
            "#!/bin/sh\n\
             # Generated by `tetd-vmm demo` (tetd-kvm/src/demo.rs). Each step prints\n\
             # TETD-PROGRESS before it runs and one TETD-RESULT line after it: the\n\
             # exit status and stdout/stderr in hex, parsed by the host.\n\
             T=/tetd/tetdctl\n\
             # Only emergencies on the console: nothing interleaves with the results.\n\
             dmesg -n 1\n\
             hexof() { od -An -v -tx1 < \"$1\" | tr -d ' \\n'; }\n\
             step() {\n\
             \x20   seq=$1; shift\n\
             \x20   echo \"TETD-PROGRESS $seq\"\n\
             \x20   \"$@\" > /tmp/out 2> /tmp/err\n\
             \x20   rc=$?\n\
             \x20   echo \"TETD-RESULT {\\\"seq\\\":$seq,\\\"rc\\\":$rc,\\\"out\\\":\\\"$(hexof /tmp/out)\\\",\\\"err\\\":\\\"$(hexof /tmp/err)\\\"}\"\n\
             }\n",
        );
        for st in &self.steps {
            let cmd = match &st.action {
                Action::Insmod => {
                    format!("insmod {GUEST_DIR}/tetdg.ko require_signed=1 test_ioctl=1")
                }
                Action::Trust => format!("$T trust {GUEST_DIR}/{ALLOW_LIST_FILE}"),
                Action::Load(f) => format!("$T load {GUEST_DIR}/{f}"),
                Action::List => "$T list --json".into(),
                Action::Call { agent, mode, input } => {
                    let mut c = format!("$T call {agent} --mode {} --json", mode.name());
                    if !input.is_empty() {
                        let _ = write!(c, " --hex {}", hex(input));
                    }
                    c
                }
                Action::PeekZone(id) => format!("$T test-blob peek-zone --arg {id}"),
                Action::Measurements => "$T measurements".into(),
                Action::ProcInfo => "cat /proc/tetdg_info".into(),
                Action::InfoJson => "$T info --json".into(),
                Action::Unload(id) => format!("$T unload {id}"),
                Action::Rmmod => "rmmod tetdg".into(),
                Action::Dmesg => {
                    "sh -c \"dmesg | grep -E 'tetdg|BUG:|Oops|WARNING:|Call Trace|general protection'\""
                        .into()
                }
            };
            let _ = writeln!(s, "step {} {cmd}", st.seq);
        }
        let _ = writeln!(s, "echo \"{END_PREFIX}{}\"", self.steps.len());
        s.push_str("exit 0\n");
        s
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Guest results
// ---------------------------------------------------------------------------

/// One step's result as the guest reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestResult {
    /// Step number.
    pub seq: usize,
    /// Exit status of the command.
    pub rc: i64,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

/// What [`parse_results`] found on the console.
#[derive(Debug, Clone, Default)]
pub struct ParsedResults {
    /// By step number.
    pub results: BTreeMap<usize, GuestResult>,
    /// The `TETD-RESULTS-END n` count, if the script got there.
    pub end: Option<usize>,
    /// Lines with the result prefix that did not parse (with why).
    pub malformed: Vec<String>,
}

/// Parses the `TETD-RESULT {json}` lines (and the end marker) out of the
/// console text. A line that does not parse is listed in `malformed`, never
/// guessed at.
pub fn parse_results(console: &str) -> ParsedResults {
    let mut p = ParsedResults::default();
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(END_PREFIX) {
            p.end = rest.trim().parse().ok();
            continue;
        }
        let Some(rest) = line.strip_prefix(RESULT_PREFIX) else {
            continue;
        };
        let parsed = serde_json::from_str::<Value>(rest)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let seq = v["seq"].as_u64().ok_or("no seq")? as usize;
                let rc = v["rc"].as_i64().ok_or("no rc")?;
                let stdout = unhex(v["out"].as_str().ok_or("no out")?).ok_or("bad out hex")?;
                let stderr = unhex(v["err"].as_str().ok_or("no err")?).ok_or("bad err hex")?;
                Ok(GuestResult {
                    seq,
                    rc,
                    stdout,
                    stderr,
                })
            });
        match parsed {
            Ok(r) => {
                if p.results.insert(r.seq, r.clone()).is_some() {
                    p.malformed.push(format!("step {}: reported twice", r.seq));
                }
            }
            Err(e) => p.malformed.push(format!(
                "{e}: {}",
                line.chars().take(120).collect::<String>()
            )),
        }
    }
    p
}

/// A call's `--json` answer from tetdctl.
#[derive(Debug, Clone)]
struct CallAnswer {
    status: u64,
    status_name: String,
    output: Vec<u8>,
    elapsed_ns: u64,
    fault: Option<(u64, u64)>, // vector, rip offset
}

fn call_answer(r: &GuestResult) -> Option<CallAnswer> {
    let text = String::from_utf8_lossy(&r.stdout);
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    Some(CallAnswer {
        status: v["status"].as_u64()?,
        status_name: v["status_name"].as_str()?.to_string(),
        output: unhex(v["output_hex"].as_str()?)?,
        elapsed_ns: v["elapsed_ns"].as_u64()?,
        fault: v
            .get("fault")
            .and_then(|f| Some((f["vector"].as_u64()?, f["rip_offset"].as_u64()?))),
    })
}

/// The `(E<code>)` of a tetdctl error message.
fn error_code(text: &str) -> Option<u64> {
    let i = text.rfind("(E")?;
    let rest = &text[i + 2..];
    let end = rest.find(')')?;
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/// One evaluated step.
#[derive(Debug, Clone)]
pub struct Row {
    /// Step number.
    pub seq: usize,
    /// Description.
    pub label: String,
    /// For calls: agent id, name, mode.
    pub call: Option<(u32, String, Mode)>,
    /// `ok`, an error name, `refused: <name>`, or `no result`.
    pub result: String,
    /// Guest-measured latency of a call (module's `elapsed_ns`).
    pub latency_ns: Option<u64>,
    /// What came back, short.
    pub output: String,
    /// What the host checked.
    pub check: String,
    /// Matched the expectation.
    pub pass: bool,
    /// Status the call ended with (calls only; 0 = ok).
    pub status: Option<u64>,
    /// Full text output for steps whose output is shown (proc info).
    pub text: Option<String>,
    /// Calls: the input sent.
    pub input: Option<Vec<u8>>,
    /// Calls: the output the agent returned.
    pub output_bytes: Option<Vec<u8>>,
}

fn short_text(b: &[u8], max: usize) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n') => {
            let one = s.replace('\n', " | ");
            if one.chars().count() > max {
                format!("\"{}…\"", one.chars().take(max).collect::<String>())
            } else {
                format!("\"{one}\"")
            }
        }
        _ => short_hex(b, max / 2),
    }
}

fn short_hex(b: &[u8], bytes: usize) -> String {
    if b.len() > bytes {
        format!("{}… ({} B)", hex(&b[..bytes]), b.len())
    } else {
        format!("{} ({} B)", hex(b), b.len())
    }
}

struct EvalCtx {
    pubkey: Option<Vec<u8>>,
}

fn evaluate(step: &Step, r: Option<&GuestResult>, plan: &DemoPlan, ctx: &mut EvalCtx) -> Row {
    let mut row = Row {
        seq: step.seq,
        label: step.label.clone(),
        call: None,
        result: "no result".into(),
        latency_ns: None,
        output: String::new(),
        check: String::new(),
        pass: false,
        status: None,
        text: None,
        input: None,
        output_bytes: None,
    };
    if let Action::Call { agent, mode, input } = &step.action {
        row.input = Some(input.clone());
        let name = plan
            .images
            .iter()
            .flat_map(|i| &i.agents)
            .find(|a| a.id == *agent)
            .map_or_else(|| "?".to_string(), |a| a.name.clone());
        row.call = Some((*agent, name, *mode));
        let Some(r) = r else {
            row.check = "the guest reported nothing".into();
            return row;
        };
        let Some(a) = call_answer(r) else {
            row.result = format!("tetdctl exit {}", r.rc);
            row.output = short_text(&[r.stdout.as_slice(), &r.stderr].concat(), 60);
            row.check = "no JSON answer from tetdctl".into();
            return row;
        };
        row.result = a.status_name.clone();
        row.status = Some(a.status);
        row.output_bytes = Some(a.output.clone());
        row.latency_ns = Some(a.elapsed_ns);
        let ok = a.status == 0;
        match &step.expect {
            Expect::Echo => {
                row.output = short_text(&a.output, 40);
                row.pass = ok && a.output == *input;
                row.check = "= input".into();
            }
            Expect::Sha256 => {
                let want = Sha256::digest(input);
                row.output = short_hex(&a.output, 8);
                row.pass = ok && a.output == want.as_slice();
                row.check = "= SHA-256(input) on the host".into();
            }
            Expect::PublicKey => {
                row.output = format!("public key {}", short_hex(&a.output, 8));
                row.pass = ok && a.output.len() == 32;
                if row.pass {
                    ctx.pubkey = Some(a.output.clone());
                }
                row.check = "32-byte Ed25519 key".into();
            }
            Expect::Signs(msg) => {
                row.output = format!("signature {}", short_hex(&a.output, 8));
                let verified = ctx.pubkey.as_ref().is_some_and(|pk| {
                    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
                        .verify(msg, &a.output)
                        .is_ok()
                });
                row.pass = ok && verified;
                row.check = "Ed25519-verified on the host".into();
            }
            Expect::AuditAppend(seq) => {
                let got = a
                    .output
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                row.output = match got {
                    Some(s) => format!("seq {s}, MAC {}", short_hex(&a.output[8..], 6)),
                    None => short_hex(&a.output, 8),
                };
                row.pass = ok && a.output.len() == 40 && got == Some(*seq);
                row.check = format!("HMAC chain entry {seq}");
            }
            Expect::Text(t) => {
                row.output = short_text(&a.output, 40);
                row.pass = ok && a.output == t.as_bytes();
                row.check = format!("= {t:?}");
            }
            Expect::AdminList(ids) => {
                let text = String::from_utf8_lossy(&a.output);
                let listed: BTreeSet<u32> = text
                    .lines()
                    .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                    .collect();
                let want: BTreeSet<u32> = ids.iter().copied().collect();
                row.output = format!("{} agents listed", listed.len());
                row.pass = ok && listed == want;
                row.check = format!("all {} agents", want.len());
            }
            Expect::Fails(e) => {
                row.output = "-".into();
                row.pass = a.status == *e as u64;
                row.check = format!("expected: {}", step.note);
            }
            Expect::Faults(e, vector) => {
                row.output = match a.fault {
                    Some((v, rip)) => format!("vector {v} at image offset {rip:#x}"),
                    None => "-".into(),
                };
                row.pass = a.status == *e as u64 && a.fault.is_some_and(|(v, _)| v == *vector);
                row.check = format!("expected: {}", step.note);
            }
            other => {
                row.check = format!("internal: {other:?} for a call");
            }
        }
        return row;
    }

    let Some(r) = r else {
        row.check = "the guest reported nothing".into();
        return row;
    };
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    row.result = if r.rc == 0 {
        "ok".into()
    } else {
        format!("exit {}", r.rc)
    };
    let first_line = |s: &str| s.lines().next().unwrap_or("").trim().to_string();
    match &step.expect {
        Expect::Success => {
            row.pass = r.rc == 0;
            row.output = first_line(if r.rc == 0 { &out } else { &err });
        }
        Expect::Loaded(ids) => {
            // "loaded /tetd/x.tetd: N agent(s): 1 2 3"
            let got: Vec<u32> = out
                .rsplit(": ")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            row.result = if r.rc == 0 {
                "loaded".into()
            } else {
                error_code(&err)
                    .map(|c| format!("refused: {}", AbiError::from_code(c).name()))
                    .unwrap_or_else(|| format!("exit {}", r.rc))
            };
            row.pass = r.rc == 0 && got == *ids;
            row.output = format!(
                "agent(s) {}",
                got.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
            );
            row.check = "ids = manifest".into();
        }
        Expect::Refused(e) => {
            let code = error_code(&err);
            row.result = match code {
                Some(c) => format!("refused: {}", AbiError::from_code(c).name()),
                None if r.rc == 0 => "loaded".into(),
                None => format!("exit {}", r.rc),
            };
            row.pass = r.rc == 1 && code == Some(*e as u64);
            // "tetdctl: load FILE: <description> (E111): <module detail>"
            let line = first_line(&err);
            row.output = line
                .split_once("): ")
                .map_or(line.as_str(), |(_, d)| d)
                .chars()
                .take(60)
                .collect();
            row.check = format!("expected {} ({})", e.name(), step.note);
        }
        Expect::Listed(ids) => {
            let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
            let got: BTreeSet<u32> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x["id"].as_u64().map(|i| i as u32))
                        .collect()
                })
                .unwrap_or_default();
            let want: BTreeSet<u32> = ids.iter().copied().collect();
            row.pass = r.rc == 0 && got == want;
            row.output = format!("{} agents", got.len());
            row.check = format!("all {} agents", want.len());
        }
        Expect::ZoneRead { blocked, code } => {
            let val = out
                .trim()
                .strip_prefix("zone read 0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            row.output = first_line(&out);
            let first = u64::from_le_bytes(*code);
            if let Some(want) = *blocked {
                row.pass = r.rc == 0 && val == Some(want) && val != Some(first);
                row.result = if row.pass {
                    "denied".into()
                } else {
                    "readable".into()
                };
                row.check = if want == u64::MAX {
                    "all-ones (no memory there); the host reports a violation".into()
                } else {
                    "zeroes (no page in the zone file), not echo's code; TETD-H counts it".into()
                };
            } else {
                row.pass = r.rc == 0 && val.is_some();
                row.result = "readable".into();
                row.check = if val == Some(first) {
                    format!("= echo's first code bytes: {}", step.note)
                } else {
                    step.note.to_string()
                };
            }
        }
        Expect::Rtmr(want) => {
            let got = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("rtmr3 expected:"))
                .map(|h| h.trim().to_string());
            row.pass = r.rc == 0 && got.as_deref() == Some(hex(want).as_str());
            row.output = format!(
                "rtmr3 {}",
                got.as_deref().map_or("?", |h| &h[..h.len().min(16)])
            );
            row.check = "= replay of the image files".into();
        }
        Expect::ProcLists(names) => {
            let missing: Vec<&String> =
                names.iter().filter(|n| !out.contains(n.as_str())).collect();
            row.pass = r.rc == 0 && missing.is_empty();
            row.output = format!("{} lines", out.lines().count());
            row.check = if missing.is_empty() {
                "names every loaded agent".into()
            } else {
                format!("missing {missing:?}")
            };
            row.text = Some(out.clone());
        }
        Expect::Info { images, agents } => {
            let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
            row.pass = r.rc == 0
                && v["images"].as_u64() == Some(*images)
                && v["agents"].as_u64() == Some(*agents);
            row.output = format!(
                "transport {}, {} images, {} agents, {} calls, {} faults",
                v["transport"].as_str().unwrap_or("?"),
                v["images"],
                v["agents"],
                v["calls"],
                v["faults"]
            );
            row.check = format!("{images} images, {agents} agents");
        }
        Expect::Unloaded(n) => {
            row.pass = r.rc == 0 && out.contains(&format!("unloaded {n} agent(s)"));
            row.output = first_line(&out);
        }
        Expect::CleanDmesg {
            rejected: want_rejected,
            faults: want_faults,
        } => {
            let bad: Vec<&str> = out
                .lines()
                .filter(|l| {
                    [
                        "BUG:",
                        "Oops",
                        "WARNING:",
                        "Call Trace",
                        "general protection",
                    ]
                    .iter()
                    .any(|p| l.contains(p))
                })
                .collect();
            let rejected = out.lines().filter(|l| l.contains("image rejected")).count();
            let faults = out
                .lines()
                .filter(|l| l.contains("faulted in its zone"))
                .count();
            row.pass = bad.is_empty() && rejected == *want_rejected && faults == *want_faults;
            row.check = format!(
                "{want_rejected} image rejection(s) and {want_faults} contained fault(s) logged"
            );
            row.result = if bad.is_empty() {
                "clean".into()
            } else {
                "errors".into()
            };
            row.output = match bad.first() {
                Some(l) => l.trim().chars().take(70).collect(),
                None => format!(
                    "{} tetdg lines: {rejected} rejection(s), {faults} fault(s)",
                    out.lines().filter(|l| l.contains("tetdg")).count()
                ),
            };
            row.text = Some(out.clone());
        }
        other => row.check = format!("internal: {other:?} for a non-call step"),
    }
    row
}

// ---------------------------------------------------------------------------
// Host view
// ---------------------------------------------------------------------------

/// TETD-H's view of one image (its zone's row in the host's table; the
/// image's agent ids are aliases of it), next to what the guest's steps
/// imply.
#[derive(Debug, Clone)]
pub struct HostImageRow {
    /// Package.
    pub package: String,
    /// First agent id.
    pub id: u32,
    /// Host state at the end (`None`: the host never saw it).
    pub state: Option<String>,
    /// VMM_ENTERs the host accepted.
    pub calls: u64,
    /// The load window plus the guest's calls to the image's agents.
    pub expected_calls: u64,
    /// VMM_RESUMEs with an error status.
    pub failures: u64,
    /// Guest calls that ended with an error.
    pub expected_failures: u64,
    /// AGENT_FAULT reports.
    pub faults: u64,
    /// Guest calls that faulted (Fault, StackOverflow).
    pub expected_faults: u64,
    /// Trapped accesses to the blocked zone.
    pub violations: u64,
    /// Measurement the guest passed at AGENT_ACCESS equals the file's.
    pub measurement_ok: bool,
}

impl HostImageRow {
    fn pass(&self) -> bool {
        self.state.is_some()
            && self.calls == self.expected_calls
            && self.failures == self.expected_failures
            && self.faults == self.expected_faults
            && self.measurement_ok
    }
}

/// Agent events host userspace received.
#[derive(Debug, Clone, Default)]
pub struct EventCounts {
    /// By kind name.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// How they were received (`io_uring` or `eventfd poll`).
    pub via: String,
}

fn host_rows(plan: &DemoPlan, rows: &[Row], report: &TetdReport) -> Vec<HostImageRow> {
    plan.images
        .iter()
        .map(|img| {
            let ids: BTreeSet<u32> = img.agents.iter().map(|a| a.id).collect();
            let calls: Vec<&Row> = rows
                .iter()
                .filter(|r| r.call.as_ref().is_some_and(|(id, _, _)| ids.contains(id)))
                .filter(|r| r.status.is_some())
                .collect();
            let failures = calls.iter().filter(|r| r.status != Some(0)).count() as u64;
            let faults = calls
                .iter()
                .filter(|r| {
                    r.status == Some(AbiError::Fault as u64)
                        || r.status == Some(AbiError::StackOverflow as u64)
                })
                .count() as u64;
            // The image's counters live on its zone's row; its agent ids are
            // aliases of it (docs/protocol.md, AGENT_ACCESS aliases), removed
            // from the table when the unload releases the zone: then the
            // call log says which zone the first agent was registered in.
            let first = img.first_id();
            let zone_id = report
                .agents
                .iter()
                .find(|a| a.id == first)
                .and_then(|a| a.alias_of)
                .or_else(|| {
                    report.calls.iter().rev().find_map(|c| {
                        let a = c.call.args;
                        (c.call.leaf == tetd::abi::Leaf::AgentAccess as u64
                            && a[0] == u64::from(first)
                            && tetd::abi::access::is_alias(a[2])
                            && c.ret.status == 0)
                            .then_some(a[3] as u32)
                    })
                })
                .unwrap_or(first);
            let entry = report.agents.iter().find(|a| a.id == zone_id);
            HostImageRow {
                package: img.package.clone(),
                id: img.first_id(),
                state: entry.map(|e| format!("{:?}", e.state.abi()).to_lowercase()),
                calls: entry.map_or(0, |e| e.calls),
                expected_calls: 1 + calls.len() as u64,
                failures: entry.map_or(0, |e| e.failures),
                expected_failures: failures,
                faults: entry.map_or(0, |e| e.faults),
                expected_faults: faults,
                violations: entry.map_or(0, |e| e.violations),
                measurement_ok: entry
                    .and_then(|e| e.measurement)
                    .is_some_and(|m| m == img.measurement),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

/// Timings of a run.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Building the initramfs.
    pub initramfs: Duration,
    /// Guest start to `tetd-init: up` (seen on the console).
    pub boot: Option<Duration>,
    /// Guest start to the end (wall clock).
    pub guest: Duration,
    /// The whole [`run_demo`].
    pub total: Duration,
}

/// Everything the demo found.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Engine used.
    pub engine: Engine,
    /// Why.
    pub engine_reason: String,
    /// Blocked zones really inaccessible to the guest.
    pub enforces_blocking: bool,
    /// What BLOCK does on this engine.
    pub blocking_note: String,
    /// Guest kernel file.
    pub kernel: PathBuf,
    /// How the guest ended.
    pub exit: VmExit,
    /// The evaluated steps.
    pub rows: Vec<Row>,
    /// Problems with the result lines themselves (missing, malformed).
    pub protocol_errors: Vec<String>,
    /// TETD-H per image.
    pub host: Vec<HostImageRow>,
    /// Hypercalls TETD-H answered.
    pub hypercalls: u64,
    /// Trapped zone accesses.
    pub violations: u64,
    /// RTMR3 in TETD-H's model.
    pub rtmr_host: [u8; MEASUREMENT_LEN],
    /// RTMR3 replayed from the image files.
    pub rtmr_expected: [u8; MEASUREMENT_LEN],
    /// RTMR3 extensions the host counted.
    pub rtmr_extends: u64,
    /// Agent events received by host userspace.
    pub events: EventCounts,
    /// Timings.
    pub timings: Timings,
    /// The console log file.
    pub console_log: PathBuf,
    /// Images, in load order (package, measurement).
    pub images: Vec<(String, [u8; MEASUREMENT_LEN])>,
}

impl DemoReport {
    /// Every step matched, the results were complete, the host's view
    /// agrees with the guest's, RTMR3 matches, and the guest exited with 0.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// What did not match, one line each.
    pub fn failures(&self) -> Vec<String> {
        let mut f: Vec<String> = self.protocol_errors.clone();
        for r in self.rows.iter().filter(|r| !r.pass) {
            f.push(format!(
                "step {} ({}): got {} {}; expected {}",
                r.seq, r.label, r.result, r.output, r.check
            ));
        }
        for h in self.host.iter().filter(|h| !h.pass()) {
            f.push(format!(
                "host view of {} (id {}): state {:?}, calls {} (guest implies {}), failures {} ({}), faults {} ({}), measurement {}",
                h.package,
                h.id,
                h.state,
                h.calls,
                h.expected_calls,
                h.failures,
                h.expected_failures,
                h.faults,
                h.expected_faults,
                if h.measurement_ok { "matches" } else { "DIFFERS" }
            ));
        }
        if self.rtmr_host != self.rtmr_expected {
            f.push(format!(
                "RTMR3 on the host {} != replay of the images {}",
                hex(&self.rtmr_host),
                hex(&self.rtmr_expected)
            ));
        }
        if self.enforces_blocking && self.violations == 0 {
            f.push(
                "the engine enforces blocking but TETD-H reported no violation for the zone read"
                    .into(),
            );
        }
        if !matches!(self.exit, VmExit::Status { code: 0, .. }) {
            f.push(format!("guest ended with {}", self.exit));
        }
        f
    }

    /// The result tables as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let _ = writeln!(
            s,
            "TETD-rs demo: Linux guest ({}) on engine {} ({})",
            self.kernel
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            self.engine,
            self.engine_reason
        );
        let _ = writeln!(
            s,
            "zone blocking: {} ({})",
            if self.enforces_blocking {
                "ENFORCED"
            } else {
                "NOT enforced, modelled only"
            },
            self.blocking_note
        );

        // Calls.
        let mut t = Table::new(&[
            "agent",
            "name",
            "mode",
            "result",
            "latency µs",
            "output",
            "checked",
            "ok",
        ]);
        for r in &self.rows {
            if let Some((id, name, mode)) = &r.call {
                t.row(vec![
                    id.to_string(),
                    name.clone(),
                    mode.name().to_string(),
                    r.result.clone(),
                    r.latency_ns
                        .map_or_else(|| "-".into(), |n| format!("{:.1}", n as f64 / 1000.0)),
                    r.output.clone(),
                    r.check.clone(),
                    yes(r.pass).into(),
                ]);
            }
        }
        let _ = writeln!(
            s,
            "\nAgent calls (tetdctl -> /dev/tetdg -> tetdg.ko; latency measured in the guest by the module)"
        );
        s.push_str(&t.render());
        let _ = writeln!(
            s,
            "latency = the module's clock around the whole call, including its VMM_ENTER and VMM_RESUME \
             hypercalls{}",
            if self.engine == Engine::Qemu {
                "; under QEMU/TCG every guest instruction is emulated and one uart hypercall takes \
                 ~1.5 ms, so these are not hardware numbers"
            } else {
                ""
            }
        );

        // Other steps.
        let mut t = Table::new(&["#", "step", "result", "detail", "checked", "ok"]);
        for r in self.rows.iter().filter(|r| r.call.is_none()) {
            t.row(vec![
                r.seq.to_string(),
                r.label.clone(),
                r.result.clone(),
                r.output.clone(),
                r.check.clone(),
                yes(r.pass).into(),
            ]);
        }
        let _ = writeln!(s, "\nModule, images and guest kernel");
        s.push_str(&t.render());

        if let Some(info) = self.rows.iter().find_map(|r| {
            matches!(r.label.as_str(), l if l.starts_with("cat /proc/tetdg_info"))
                .then_some(r.text.as_ref())
                .flatten()
        }) {
            let _ = writeln!(s, "\n/proc/tetdg_info (in the guest, all images loaded):");
            for l in info.lines() {
                let _ = writeln!(s, "  | {l}");
            }
        }

        if let Some(dmesg) = self.rows.iter().find_map(|r| {
            matches!(r.label.as_str(), l if l.starts_with("dmesg"))
                .then_some(r.text.as_ref())
                .flatten()
        }) {
            let lines: Vec<&str> = dmesg
                .lines()
                .filter(|l| {
                    l.contains("rejected") || l.contains("faulted in") || l.contains("panicked at")
                })
                .collect();
            if !lines.is_empty() {
                let _ = writeln!(
                    s,
                    "\nguest dmesg (the module's refusals and contained faults):"
                );
                for l in lines {
                    let _ = writeln!(s, "  | {}", l.trim());
                }
            }
        }

        // Host.
        let mut t = Table::new(&[
            "image",
            "id",
            "host state",
            "calls (host/guest)",
            "failures",
            "faults",
            "violations",
            "measurement",
            "ok",
        ]);
        for h in &self.host {
            t.row(vec![
                h.package.clone(),
                h.id.to_string(),
                h.state.clone().unwrap_or_else(|| "never seen".into()),
                format!("{}/{}", h.calls, h.expected_calls),
                format!("{}/{}", h.failures, h.expected_failures),
                format!("{}/{}", h.faults, h.expected_faults),
                h.violations.to_string(),
                if h.measurement_ok {
                    "= file".into()
                } else {
                    "DIFFERS".into()
                },
                yes(h.pass()).into(),
            ]);
        }
        let _ = writeln!(
            s,
            "\nTETD-H (host) view: {} hypercalls answered, {} blocked-zone violation(s) counted \
             ({}) (guest count = load window + calls)",
            self.hypercalls,
            self.violations,
            self.engine.violation_timing()
        );
        s.push_str(&t.render());
        let _ = writeln!(
            s,
            "RTMR3 host model : {}  ({} extensions)",
            hex(&self.rtmr_host),
            self.rtmr_extends
        );
        let _ = writeln!(
            s,
            "RTMR3 recomputed : {}  (tetd::measure::replay of {} image files) {}",
            hex(&self.rtmr_expected),
            self.images.len(),
            if self.rtmr_host == self.rtmr_expected {
                "MATCH"
            } else {
                "MISMATCH"
            }
        );
        let ev: Vec<String> = self
            .events
            .by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "host userspace events ({}): {}",
            self.events.via,
            if ev.is_empty() {
                "none".into()
            } else {
                ev.join(", ")
            }
        );
        let t = &self.timings;
        let _ = writeln!(
            s,
            "\ntimings: initramfs {:.2} s, guest boot {}, guest run {:.1} s (boot + {} steps + shutdown), demo total {:.1} s",
            t.initramfs.as_secs_f64(),
            t.boot
                .map_or_else(|| "?".into(), |b| format!("{:.1} s", b.as_secs_f64())),
            t.guest.as_secs_f64(),
            self.rows.len(),
            t.total.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "guest: {}; console log {}",
            self.exit,
            self.console_log.display()
        );
        let f = self.failures();
        let calls = self.rows.iter().filter(|r| r.call.is_some()).count();
        let calls_ok = self
            .rows
            .iter()
            .filter(|r| r.call.is_some() && r.pass)
            .count();
        if f.is_empty() {
            let _ = writeln!(
                s,
                "RESULT: PASS: {calls_ok}/{calls} calls and {}/{} other steps as expected, host view consistent, RTMR3 matches",
                self.rows.len() - calls,
                self.rows.len() - calls
            );
        } else {
            let _ = writeln!(s, "RESULT: FAIL ({} problem(s)):", f.len());
            for l in f {
                let _ = writeln!(s, "  - {l}");
            }
        }
        s
    }

    /// The report as JSON (`tetd-vmm demo --json`).
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "seq": r.seq, "step": r.label, "result": r.result, "output": r.output,
                    "checked": r.check, "ok": r.pass,
                });
                if let Some((id, name, mode)) = &r.call {
                    v["agent"] = json!(id);
                    v["name"] = json!(name);
                    v["mode"] = json!(mode.name());
                    v["status"] = json!(r.status);
                    v["latency_us"] = json!(r.latency_ns.map(|n| n as f64 / 1000.0));
                    v["input_hex"] = json!(r.input.as_deref().map(hex));
                    v["output_hex"] = json!(r.output_bytes.as_deref().map(hex));
                }
                if let Some(t) = &r.text {
                    v["text"] = json!(t);
                }
                v
            })
            .collect();
        let host: Vec<Value> = self
            .host
            .iter()
            .map(|h| {
                json!({"image": h.package, "id": h.id, "state": h.state, "calls": h.calls,
                    "expected_calls": h.expected_calls, "failures": h.failures,
                    "expected_failures": h.expected_failures, "faults": h.faults,
                    "expected_faults": h.expected_faults, "violations": h.violations,
                    "measurement_ok": h.measurement_ok, "ok": h.pass()})
            })
            .collect();
        json!({
            "passed": self.passed(),
            "failures": self.failures(),
            "engine": self.engine.name(),
            "engine_reason": self.engine_reason,
            "blocking_enforced": self.enforces_blocking,
            "blocking_note": self.blocking_note,
            "kernel": self.kernel.display().to_string(),
            "guest_exit": self.exit.to_string(),
            "steps": rows,
            "host": {
                "images": host,
                "hypercalls": self.hypercalls,
                "violations": self.violations,
                "rtmr3": hex(&self.rtmr_host),
                "rtmr3_extensions": self.rtmr_extends,
                "rtmr3_recomputed": hex(&self.rtmr_expected),
                "rtmr3_match": self.rtmr_host == self.rtmr_expected,
                "events": self.events.by_kind,
                "events_via": self.events.via,
            },
            "images": self.images.iter().map(|(p, m)| json!({"package": p, "measurement": hex(m)})).collect::<Vec<_>>(),
            "timings_s": {
                "initramfs": self.timings.initramfs.as_secs_f64(),
                "boot": self.timings.boot.map(|d| d.as_secs_f64()),
                "guest": self.timings.guest.as_secs_f64(),
                "total": self.timings.total.as_secs_f64(),
            },
            "console_log": self.console_log.display().to_string(),
        })
    }
}

/// A text table with padded columns.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    fn render(&self) -> String {
        let n = self.head.len();
        let mut w = vec![0usize; n];
        for r in std::iter::once(&self.head).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let mut l = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i + 1 == n {
                    l.push_str(c);
                } else {
                    let pad = w[i] - c.chars().count();
                    l.push_str(c);
                    l.push_str(&" ".repeat(pad + 2));
                }
            }
            l.trim_end().to_string() + "\n"
        };
        let mut s = line(&self.head);
        s.push_str(&line(
            &w.iter().map(|&x| "-".repeat(x)).collect::<Vec<String>>(),
        ));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// Follows the console while the guest runs: prints the guest's progress
/// and notes when init came up.
struct Watcher {
    stop: Arc<AtomicBool>,
    boot: Arc<Mutex<Option<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(
        console: impl Fn() -> String + Send + 'static,
        labels: Vec<String>,
        on: bool,
    ) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let boot = Arc::new(Mutex::new(None));
        let (s2, b2) = (Arc::clone(&stop), Arc::clone(&boot));
        let total = labels.len();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut done = 0usize;
            loop {
                let last = s2.load(Ordering::SeqCst);
                let text = console();
                let complete = text.rfind('\n').map_or("", |i| &text[..i]);
                for line in complete.get(done..).unwrap_or("").lines() {
                    let line = line.trim_end_matches('\r');
                    if line.contains(BOOT_MARK) {
                        let t = start.elapsed();
                        *b2.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                        progress(
                            on,
                            format!("guest: init is up after {:.1} s", t.as_secs_f64()),
                        );
                    } else if let Some(n) = line.strip_prefix(PROGRESS_PREFIX) {
                        if let Some(l) = n
                            .trim()
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| labels.get(i.wrapping_sub(1)).map(|l| (i, l)))
                        {
                            progress(on, format!("guest: [{}/{total}] {}", l.0, l.1));
                        }
                    }
                }
                done = complete.len();
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        Watcher {
            stop,
            boot,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Option<Duration> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let b = *self.boot.lock().unwrap_or_else(|p| p.into_inner());
        b
    }
}

/// Receives TETD-H's agent events (eventfd, through io_uring where the
/// kernel has it) while the guest runs.
struct EventSink {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<EventCounts>,
}

impl EventSink {
    fn start(notifier: &Notifier) -> io::Result<EventSink> {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let sub = notifier.subscribe(1 << 16)?;
        let fallback = notifier.subscribe(1 << 16)?;
        let thread = std::thread::spawn(move || {
            let mut c = EventCounts::default();
            let mut count = |evs: Vec<Event>| {
                let n = evs.len();
                for e in evs {
                    *c.by_kind.entry(e.kind.name()).or_default() += 1;
                }
                n
            };
            match UringConsumer::new(sub, 8) {
                Ok(mut ring) => {
                    drop(fallback);
                    loop {
                        let last = s2.load(Ordering::SeqCst);
                        let n = count(
                            ring.wait_timeout(Duration::from_millis(100))
                                .unwrap_or_default(),
                        );
                        if last && n == 0 {
                            break;
                        }
                    }
                    c.via = "eventfd read through io_uring".into();
                }
                Err(_) => {
                    loop {
                        let last = s2.load(Ordering::SeqCst);
                        let n = count(
                            fallback
                                .recv_timeout(Duration::from_millis(100))
                                .unwrap_or_default(),
                        );
                        if last && n == 0 {
                            break;
                        }
                    }
                    c.via = "eventfd (poll; io_uring unavailable)".into();
                }
            }
            c
        });
        Ok(EventSink { stop, thread })
    }

    fn finish(self) -> EventCounts {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

// Event kinds the report lists even when zero.
const EVENT_KINDS: [EventKind; 5] = [
    EventKind::Access,
    EventKind::Enter,
    EventKind::Resume,
    EventKind::Fault,
    EventKind::Disable,
];

/// Runs the demo: see the module documentation.
pub fn run_demo(cfg: &DemoConfig) -> Result<DemoReport, DemoError> {
    let t0 = Instant::now();
    let sel = check_engine(cfg.engine)?;
    let blocked = sel.engine.blocked_read_value();
    let enforced = blocked.is_some();
    progress(
        cfg.progress,
        format!("engine {} ({})", sel.engine, sel.reason),
    );
    if enforced {
        progress(
            cfg.progress,
            format!(
                "zone blocking enforced; guest accesses to blocked zones are {}",
                sel.engine.violation_timing()
            ),
        );
    } else {
        progress(
            cfg.progress,
            "zone blocking is NOT enforced on this engine: TETD-H checks every BLOCK/UNBLOCK \
             with its TDX model, but the guest could still reach a blocked zone",
        );
    }
    for (p, what) in [
        (&cfg.module, "bash scripts/build-module.sh"),
        (&cfg.tetdctl, "bash scripts/build-module.sh"),
        (&cfg.kernel, "bash scripts/setup.sh"),
    ] {
        if !p.is_file() {
            return Err(DemoError::Setup(format!(
                "{} missing ({what} builds it)",
                p.display()
            )));
        }
    }
    let plan = DemoPlan::new(cfg, blocked)?;
    let script = cfg.work.join("run.sh");
    std::fs::write(&script, plan.script()).map_err(io_err(&script))?;

    progress(
        cfg.progress,
        "building the initramfs (busybox, tetdg.ko, tetdctl, images, allow-list, run.sh)",
    );
    let ti = Instant::now();
    let mut extra = plan.files.clone();
    extra.push((script.clone(), format!("{GUEST_DIR}/run.sh")));
    let cpio = build_busybox_initramfs(&InitramfsSpec {
        busybox: cfg.busybox.clone(),
        init: None,
        extra,
    })?;
    let initrd = cfg.work.join("initrd.cpio");
    std::fs::write(&initrd, &cpio).map_err(io_err(&initrd))?;
    let initramfs = ti.elapsed();

    let mut config = VmConfig::new(cfg.kernel.clone(), Some(initrd.clone()));
    config.cmdline = DEFAULT_CMDLINE.to_string();
    config = config.append("quiet");
    config.vcpus = cfg.vcpus;
    config.mem_mib = cfg.mem_mib;
    config.timeout = cfg.timeout;
    config.echo_console = false;

    let opts = TetdOptions::default();
    let events = EventSink::start(&opts.notifier).map_err(|source| DemoError::Io {
        path: "eventfd".into(),
        source,
    })?;
    let labels: Vec<String> = plan
        .steps
        .iter()
        .map(|s| match &s.action {
            Action::Call { agent, mode, .. } => {
                format!("call {} (id {agent}) {}", s.label, mode.name())
            }
            _ => s.label.clone(),
        })
        .collect();
    progress(
        cfg.progress,
        format!(
            "booting {} with {} vCPU(s), {} MiB, TETD-H attached ({} steps)",
            cfg.kernel.display(),
            cfg.vcpus,
            cfg.mem_mib,
            plan.steps.len()
        ),
    );
    let os = |source| VmmError::Os {
        op: "TETD-H zone pool",
        source,
    };
    let (outcome, report, boot): (VmOutcome, TetdReport, Option<Duration>) = match sel.engine {
        Engine::Kvm => {
            let vm = Vm::new(config)?;
            let h = vm.handle();
            let w = Watcher::start(move || h.console(), labels, cfg.progress);
            let res = TetdHandler::kvm(&opts)
                .map_err(os)
                .and_then(|handler| vm.run(handler));
            let boot = w.finish();
            let (out, handler) = res?;
            (out, handler.report(), boot)
        }
        Engine::Qemu => {
            let vm = QemuVm::new(config)?;
            let h = vm.handle();
            let w = Watcher::start(move || h.console(), labels, cfg.progress);
            let res = TetdHandler::qemu(&opts)
                .map_err(os)
                .and_then(|handler| vm.run(handler));
            let boot = w.finish();
            let (out, handler) = res?;
            (out, handler.report(), boot)
        }
    };
    let mut events = events.finish();
    for k in EVENT_KINDS {
        events.by_kind.entry(k.name()).or_default();
    }
    let console_log = cfg.work.join("console.log");
    std::fs::write(&console_log, &outcome.console).map_err(io_err(&console_log))?;
    progress(
        cfg.progress,
        format!(
            "guest: {} after {:.1} s; console in {}",
            outcome.exit,
            outcome.elapsed.as_secs_f64(),
            console_log.display()
        ),
    );

    let parsed = parse_results(&outcome.console);
    let mut protocol_errors: Vec<String> = parsed
        .malformed
        .iter()
        .map(|m| format!("malformed result line: {m}"))
        .collect();
    let missing: Vec<usize> = plan
        .steps
        .iter()
        .map(|s| s.seq)
        .filter(|s| !parsed.results.contains_key(s))
        .collect();
    if !missing.is_empty() {
        protocol_errors.push(format!(
            "no result for step(s) {missing:?} (see {})",
            console_log.display()
        ));
    }
    if parsed.end != Some(plan.steps.len()) {
        protocol_errors.push(format!(
            "the guest script did not finish (end marker {:?}, want {})",
            parsed.end,
            plan.steps.len()
        ));
    }
    let mut ctx = EvalCtx { pubkey: None };
    let rows: Vec<Row> = plan
        .steps
        .iter()
        .map(|s| evaluate(s, parsed.results.get(&s.seq), &plan, &mut ctx))
        .collect();
    let host = host_rows(&plan, &rows, &report);
    let idx = AGENT_RTMR_INDEX as usize;
    Ok(DemoReport {
        engine: sel.engine,
        engine_reason: sel.reason,
        enforces_blocking: report.enforces_blocking,
        blocking_note: report.blocking_note.to_string(),
        kernel: cfg.kernel.clone(),
        exit: outcome.exit.clone(),
        rows,
        protocol_errors,
        host,
        hypercalls: report.total_calls,
        violations: report.violations.len() as u64,
        rtmr_host: report
            .rtmrs
            .get(idx)
            .copied()
            .unwrap_or([0; MEASUREMENT_LEN]),
        rtmr_expected: tetd::measure::replay(plan.images.iter().map(|i| &i.measurement)),
        rtmr_extends: report.rtmrs.extend_count(idx).unwrap_or(0),
        events,
        timings: Timings {
            initramfs,
            boot,
            guest: outcome.elapsed,
            total: t0.elapsed(),
        },
        console_log,
        images: plan
            .images
            .iter()
            .map(|i| (i.package.clone(), i.measurement))
            .collect(),
    })
}

// ---------------------------------------------------------------------------
// Command line (`tetd-vmm demo`)
// ---------------------------------------------------------------------------

/// Exit status: every step and host check as expected.
pub const EXIT_PASS: u8 = 0;
/// Exit status: the demo ran, something did not match.
pub const EXIT_MISMATCH: u8 = 1;
/// Exit status: it could not run (missing file or tool, VMM error).
pub const EXIT_ERROR: u8 = 2;
/// Exit status: no engine (neither a usable /dev/kvm nor QEMU).
pub const EXIT_NO_ENGINE: u8 = 3;

/// `tetd-vmm demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Repository root (examples/, build/).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Build the example agents and sign them with this tetd-pack binary
    /// first (otherwise the signed images must already be in --images).
    #[arg(long, value_name = "PATH")]
    pub tetd_pack: Option<PathBuf>,
    /// Signed <package>.tetd images and allow.list [default: REPO/build/demo].
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Work directory: variants, run.sh, initrd.cpio, console.log,
    /// report.json [default: REPO/build/demo].
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// tetdg.ko [default: REPO/build/module/tetdg.ko].
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Static tetdctl [default: REPO/build/module/tetdctl].
    #[arg(long)]
    pub tetdctl: Option<PathBuf>,
    /// Guest kernel [default: the vmlinux of scripts/setup.sh].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// kvm, qemu or auto (kvm unless /dev/kvm is missing or emulates guest kernels).
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<EngineChoice>())]
    pub engine: EngineChoice,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[arg(long = "mem", default_value_t = 512)]
    pub mem_mib: u64,
    /// Wall-clock limit of the guest run, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print the report as JSON on stdout instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// `tetd-vmm demo`: returns the exit status ([`EXIT_PASS`], ...).
pub fn main(a: &DemoArgs) -> u8 {
    match cli(a) {
        Ok(report) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
                );
            } else {
                print!("{}", report.render());
            }
            if report.passed() {
                EXIT_PASS
            } else {
                EXIT_MISMATCH
            }
        }
        Err(e @ DemoError::NoEngine(_)) => {
            eprintln!("tetd-vmm demo: {e}");
            EXIT_NO_ENGINE
        }
        Err(e) => {
            eprintln!("tetd-vmm demo: error: {e}");
            EXIT_ERROR
        }
    }
}

fn cli(a: &DemoArgs) -> Result<DemoReport, DemoError> {
    // Fail fast, before any build: is there an engine at all?
    check_engine(a.engine)?;
    let repo = &a.repo;
    let images = a.images.clone().unwrap_or_else(|| repo.join("build/demo"));
    if let Some(tp) = &a.tetd_pack {
        pack_images(&PackOptions {
            tetd_pack: tp.clone(),
            repo: repo.clone(),
            out: images.clone(),
            progress: !a.quiet,
        })?;
    }
    let mut cfg = match &a.kernel {
        Some(k) => DemoConfig::with_kernel(repo, k.clone()),
        None => DemoConfig::for_repo(repo)?,
    };
    cfg.images = images;
    cfg.work = a.work.clone().unwrap_or_else(|| repo.join("build/demo"));
    if let Some(m) = &a.module {
        cfg.module = m.clone();
    }
    if let Some(t) = &a.tetdctl {
        cfg.tetdctl = t.clone();
    }
    cfg.engine = a.engine;
    cfg.vcpus = a.vcpus;
    cfg.mem_mib = a.mem_mib;
    cfg.timeout = Duration::from_secs(a.timeout);
    cfg.progress = !a.quiet;
    let report = run_demo(&cfg)?;
    let path = cfg.work.join("report.json");
    let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse_and_bad_ones_are_reported() {
        let console = "noise\r\n\
            TETD-RESULT {\"seq\":1,\"rc\":0,\"out\":\"6869\",\"err\":\"\"}\r\n\
            [ 1.0] kernel line\n\
            TETD-RESULT {\"seq\":2,\"rc\":1,\"out\":\"\",\"err\":\"7a\"}\n\
            TETD-RESULT {\"seq\":3,\"rc\":0,\"out\":\"6\",\"err\":\"\"}\n\
            TETD-RESULT {\"seq\":4,\"rc\":0,\"ou\n\
            TETD-RESULTS-END 4\n";
        let p = parse_results(console);
        assert_eq!(p.end, Some(4));
        assert_eq!(p.results.len(), 2);
        assert_eq!(p.results[&1].stdout, b"hi");
        assert_eq!(
            (p.results[&2].rc, p.results[&2].stderr.as_slice()),
            (1, &b"z"[..])
        );
        assert_eq!(p.malformed.len(), 2, "{:?}", p.malformed);
        assert!(p.malformed[0].contains("bad out hex"), "{:?}", p.malformed);
    }

    #[test]
    fn error_codes_come_from_the_message() {
        assert_eq!(
            error_code("tetdctl: load /tetd/x: signature invalid (E110): detail"),
            Some(110)
        );
        assert_eq!(error_code("no code"), None);
        assert_eq!(error_code("(Ex)"), None);
    }

    fn plan(steps: Vec<(Action, Expect)>) -> DemoPlan {
        DemoPlan {
            steps: steps
                .into_iter()
                .enumerate()
                .map(|(i, (action, expect))| Step {
                    seq: i + 1,
                    action,
                    expect,
                    label: format!("step {}", i + 1),
                    note: "why",
                })
                .collect(),
            images: Vec::new(),
            files: Vec::new(),
            tamper_offset: 0,
        }
    }

    fn result(rc: i64, out: &str, err: &str) -> GuestResult {
        GuestResult {
            seq: 1,
            rc,
            stdout: out.as_bytes().to_vec(),
            stderr: err.as_bytes().to_vec(),
        }
    }

    fn eval(action: Action, expect: Expect, r: Option<GuestResult>) -> Row {
        let p = plan(vec![(action, expect)]);
        evaluate(&p.steps[0], r.as_ref(), &p, &mut EvalCtx { pubkey: None })
    }

    fn echo_call() -> Action {
        Action::Call {
            agent: 1,
            mode: Mode::Collaborative,
            input: b"hi".to_vec(),
        }
    }

    #[test]
    fn answers_are_checked_not_assumed() {
        let answer = |status: u32, name: &str, out: &str, fault: &str| {
            format!(
                "{{\"agent\":1,\"status\":{status},\"status_name\":\"{name}\",\"output_hex\":\"{out}\",\"elapsed_ns\":1500{fault}}}"
            )
        };
        let ok = eval(
            echo_call(),
            Expect::Echo,
            Some(result(0, &answer(0, "ok", "6869", ""), "")),
        );
        assert!(ok.pass, "{ok:?}");
        assert_eq!((ok.result.as_str(), ok.latency_ns), ("ok", Some(1500)));
        let wrong = eval(
            echo_call(),
            Expect::Echo,
            Some(result(0, &answer(0, "ok", "6868", ""), "")),
        );
        assert!(!wrong.pass);
        let missing = eval(echo_call(), Expect::Echo, None);
        assert!(!missing.pass);
        assert_eq!(missing.result, "no result");
        // A call that should fail must fail with that error.
        let fails = |st: u32, name: &str| {
            eval(
                echo_call(),
                Expect::Fails(AbiError::Unsupported),
                Some(result(1, &answer(st, name, "", ""), "")),
            )
            .pass
        };
        assert!(fails(11, "Unsupported"));
        assert!(!fails(7, "Denied"));
        assert!(!fails(0, "ok"));
        // Contained faults: status and vector.
        let fault = |vector: u64| {
            eval(
                echo_call(),
                Expect::Faults(AbiError::Fault, 14),
                Some(result(
                    1,
                    &answer(
                        5,
                        "Fault",
                        "",
                        &format!(",\"fault\":{{\"vector\":{vector},\"error_code\":3,\"address\":1,\"rip_offset\":513}}"),
                    ),
                    "",
                )),
            )
        };
        assert!(fault(14).pass);
        assert_eq!(fault(14).output, "vector 14 at image offset 0x201");
        assert!(!fault(13).pass);
        // SHA-256 against the host's own digest.
        let sha = Action::Call {
            agent: 2,
            mode: Mode::Exclusive,
            input: b"abc".to_vec(),
        };
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(
            eval(
                sha.clone(),
                Expect::Sha256,
                Some(result(0, &answer(0, "ok", digest, ""), ""))
            )
            .pass
        );
        assert!(
            !eval(
                sha,
                Expect::Sha256,
                Some(result(
                    0,
                    &answer(0, "ok", &digest.replace('b', "c"), ""),
                    ""
                ))
            )
            .pass
        );
    }

    #[test]
    fn refusals_need_the_right_code() {
        let load = || Action::Load("x.tetd".into());
        let msg = "tetdctl: load /tetd/x.tetd: signature invalid (E110): image signature does not verify\n";
        let r = eval(
            load(),
            Expect::Refused(AbiError::BadSignature),
            Some(result(1, "", msg)),
        );
        assert!(r.pass, "{r:?}");
        assert_eq!(r.result, "refused: BadSignature");
        assert_eq!(r.output, "image signature does not verify");
        assert!(
            !eval(
                load(),
                Expect::Refused(AbiError::SignerNotAllowed),
                Some(result(1, "", msg))
            )
            .pass
        );
        // Loaded although it should have been refused.
        let r = eval(
            load(),
            Expect::Refused(AbiError::BadSignature),
            Some(result(0, "loaded /tetd/x.tetd: 1 agent(s): 3\n", "")),
        );
        assert!(!r.pass);
        assert_eq!(r.result, "loaded");
        // Loads report the manifest's ids.
        let out = "loaded /tetd/x.tetd: 5 agent(s): 20 21 22 23 24\n";
        assert!(
            eval(
                load(),
                Expect::Loaded(vec![20, 21, 22, 23, 24]),
                Some(result(0, out, ""))
            )
            .pass
        );
        assert!(!eval(load(), Expect::Loaded(vec![20]), Some(result(0, out, ""))).pass);
    }

    #[test]
    fn dmesg_must_be_clean_and_complete() {
        let want = Expect::CleanDmesg {
            rejected: 1,
            faults: 1,
        };
        let good = "[1] tetdg: image rejected: x\n[2] tetdg: agent 21 faulted in its zone: y\n";
        assert!(eval(Action::Dmesg, want.clone(), Some(result(0, good, ""))).pass);
        let oops = format!("{good}[3] BUG: kernel NULL pointer dereference\n");
        let r = eval(Action::Dmesg, want.clone(), Some(result(0, &oops, "")));
        assert!(!r.pass);
        assert!(r.output.contains("BUG:"), "{r:?}");
        let missing = "[1] tetdg: image rejected: x\n";
        assert!(!eval(Action::Dmesg, want, Some(result(0, missing, ""))).pass);
    }

    #[test]
    fn script_runs_every_step_and_marks_the_end() {
        let p = plan(vec![
            (Action::Insmod, Expect::Success),
            (echo_call(), Expect::Echo),
            (Action::Unload(1), Expect::Unloaded(1)),
        ]);
        let s = p.script();
        assert!(
            s.contains("\nstep 1 insmod /tetd/tetdg.ko require_signed=1 test_ioctl=1\n"),
            "{s}"
        );
        assert!(
            s.contains("\nstep 2 $T call 1 --mode collaborative --json --hex 6869\n"),
            "{s}"
        );
        assert!(s.contains("\nstep 3 $T unload 1\n"), "{s}");
        assert!(s.contains("echo \"TETD-RESULTS-END 3\""), "{s}");
        assert!(s.contains("dmesg -n 1"));
    }

    #[test]
    fn table_pads_columns() {
        let mut t = Table::new(&["a", "bb", "c"]);
        t.row(vec!["xxx".into(), "y".into(), "z".into()]);
        assert_eq!(t.render(), "a    bb  c\n---  --  -\nxxx  y   z\n");
    }

    #[test]
    fn short_forms() {
        assert_eq!(short_text(b"abc", 10), "\"abc\"");
        assert_eq!(short_text(b"abcdef", 3), "\"abc…\"");
        assert_eq!(short_text(&[0, 1], 10), "0001 (2 B)");
        assert_eq!(short_hex(&[1, 2, 3], 2), "0102… (3 B)");
    }
}
