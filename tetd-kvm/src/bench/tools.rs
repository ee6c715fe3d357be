//! Section `tools`: `tetd-pack build` against a plain `cargo build
//! --release` of the same crate, and `tetd-pack sign` / `verify` against
//! SHA-384 of the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha384};
use tetd::image::Image;
use tetd::verify::{verify_image, Policy};

use super::report::Unit;
use super::stats::Summary;
use super::{run_cmd, time_cmd, BenchConfig, Images, Report, SectionError, SectionResult};

const SECTION: &str = "tools";
const MIB: f64 = 1048576.0;
/// Agent target (what `tetd-pack build` compiles for; also the baseline's).
const AGENT_TARGET: &str = "x86_64-unknown-none";
/// The cfgs `tetd-pack build` passes for encrypted agents' portable AES
/// (without them the aes crate's AES-NI back end does not build for the
/// soft-float target; scripts/test.sh passes the same to clippy).
const AGENT_CFGS: &str = "--cfg aes_force_soft --cfg polyval_force_soft";

fn pack(cfg: &BenchConfig) -> Command {
    Command::new(&cfg.tetd_pack)
}

fn pack_build(cfg: &BenchConfig, example: &str, out: &Path) -> Command {
    let mut c = pack(cfg);
    c.arg("build")
        .arg("-q")
        .arg(cfg.root.join("examples").join(example))
        .arg("-o")
        .arg(out)
        .arg("--target-dir")
        .arg(cfg.out_dir.join("pack-target"));
    c
}

fn cargo_build(cfg: &BenchConfig, example: &str) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["build", "--release", "-q", "--target", AGENT_TARGET])
        .arg("--manifest-path")
        .arg(cfg.root.join("examples").join(example).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(cfg.out_dir.join("cargo-target"))
        .env("CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS", AGENT_CFGS);
    c
}

fn images_dir(cfg: &BenchConfig) -> PathBuf {
    cfg.out_dir.join("images")
}

/// Build the example images the other sections load (untimed).
pub fn build_images(cfg: &BenchConfig) -> SectionResult<Images> {
    if !cfg.tetd_pack.is_file() {
        return Err(SectionError::Fail(format!(
            "{} missing (cargo build --release -p tetd-pack)",
            cfg.tetd_pack.display()
        )));
    }
    let dir = images_dir(cfg);
    std::fs::create_dir_all(&dir).map_err(SectionError::fail)?;
    let images = Images {
        echo: dir.join("echo.tetd"),
        secure_echo: dir.join("secure-echo.tetd"),
    };
    for (ex, out) in [("echo", &images.echo), ("secure-echo", &images.secure_echo)] {
        cfg.log(format!("building {ex}"));
        run_cmd(&mut pack_build(cfg, ex, out))?;
    }
    Ok(images)
}

/// Make the crate's sources newer than its build outputs (so the next
/// build recompiles the crate itself, not its dependencies).
fn touch(p: &Path) -> SectionResult<()> {
    std::fs::File::options()
        .write(true)
        .open(p)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(|e| SectionError::Fail(format!("touch {}: {e}", p.display())))
}

/// The section. Returns the images it built.
pub fn run(cfg: &BenchConfig, rep: &mut Report) -> SectionResult<Images> {
    // Warm-up: builds every dependency for both (pack's and the plain
    // build's target dirs), so the timed rounds rebuild only the crate.
    let images = build_images(cfg)?;
    let examples: &[&str] = if cfg.quick {
        &["echo"]
    } else {
        &["echo", "secure-echo"]
    };
    let rounds = cfg.iters(3, 1);
    for ex in examples {
        run_cmd(&mut cargo_build(cfg, ex))?;
        let src = cfg.root.join("examples").join(ex).join("src/lib.rs");
        let out = images_dir(cfg).join(format!("{ex}.timed.tetd"));
        let (mut p, mut c) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            touch(&src)?;
            p.push(time_cmd(&mut pack_build(cfg, ex, &out))?.as_nanos() as f64);
            touch(&src)?;
            c.push(time_cmd(&mut cargo_build(cfg, ex))?.as_nanos() as f64);
        }
        cfg.log(format!("build {ex}: pack {p:?} cargo {c:?}"));
        rep.add(
            &format!("tools.build.{ex}"),
            SECTION,
            &format!("`tetd-pack build examples/{ex}`"),
            Unit::Ns,
            summary(&p)?,
            Some((
                "`cargo build --release --target x86_64-unknown-none` of the crate",
                summary(&c)?,
            )),
            "warm dependency cache, crate rebuilt; pack = fat LTO + link + pack",
        );
    }

    // A large image: echo plus a table of pointers (see sim::big_image).
    let mib = if cfg.quick { 1 } else { 32 };
    let echo = std::fs::read(&images.echo).map_err(SectionError::fail)?;
    let big = super::sim::big_image(&echo, mib)?;
    let dir = images_dir(cfg);
    let big_path = dir.join("big.tetd");
    let signed_path = dir.join("big.signed.tetd");
    std::fs::write(&big_path, &big).map_err(SectionError::fail)?;
    let key = dir.join("bench.pk8");
    run_cmd(
        pack(cfg)
            .args(["keygen", "--force", "-o"])
            .arg(&key)
            .stdout(std::process::Stdio::null()),
    )?;
    let pubkey = key.with_extension("pub");
    let size_mib = big.len() as f64 / MIB;
    let rounds = cfg.iters(5, 2);
    let (mut sign, mut verify, mut sum) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = time_cmd(
            pack(cfg)
                .arg("sign")
                .arg(&big_path)
                .arg("--key")
                .arg(&key)
                .arg("-o")
                .arg(&signed_path),
        )?;
        sign.push(t.as_nanos() as f64 / size_mib);
        let t = time_cmd(
            pack(cfg)
                .arg("verify")
                .arg(&signed_path)
                .arg("--allow")
                .arg(&pubkey),
        )?;
        verify.push(t.as_nanos() as f64 / size_mib);
        let t = time_cmd(Command::new("sha384sum").arg(&big_path)).map_err(|e| match e {
            SectionError::Fail(m) => SectionError::Fail(format!("sha384sum (coreutils): {m}")),
            s => s,
        })?;
        sum.push(t.as_nanos() as f64 / size_mib);
    }
    let note = format!("{size_mib:.1} MiB image, whole command");
    let base = ("`sha384sum` of the same file", summary(&sum)?);
    rep.add(
        "tools.sign.cli",
        SECTION,
        "`tetd-pack sign`",
        Unit::NsPerMiB,
        summary(&sign)?,
        Some(base),
        &note,
    );
    rep.add(
        "tools.verify.cli",
        SECTION,
        "`tetd-pack verify --allow`",
        Unit::NsPerMiB,
        summary(&verify)?,
        Some(base),
        &note,
    );

    // In process: what the loader does (parse = structure + SHA-384
    // measurement, then the signature) against the hash alone.
    let signed = std::fs::read(&signed_path).map_err(SectionError::fail)?;
    let n = cfg.iters(9, 2);
    let mut v = Vec::new();
    let mut h = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let img = Image::parse(&signed)
            .map_err(|e| SectionError::Fail(format!("signed big image: {e}")))?;
        verify_image(&img, &Policy::self_consistent())
            .map_err(|e| SectionError::Fail(format!("signed big image: {e}")))?;
        v.push(t.elapsed().as_nanos() as f64 / size_mib);
        let t = Instant::now();
        std::hint::black_box(Sha384::digest(std::hint::black_box(&signed[..])));
        h.push(t.elapsed().as_nanos() as f64 / size_mib);
    }
    rep.add(
        "tools.verify.lib",
        SECTION,
        "parse + verify (`tetd::verify`, in process)",
        Unit::NsPerMiB,
        summary(&v)?,
        Some(("SHA-384 of the same bytes (sha2, in process)", summary(&h)?)),
        &format!("{size_mib:.1} MiB"),
    );
    Ok(images)
}

fn summary(v: &[f64]) -> SectionResult<Summary> {
    Summary::of(v).ok_or_else(|| SectionError::Fail("no samples".into()))
}
