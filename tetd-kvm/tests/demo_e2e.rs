//! The README's demo, end to end (`tetd_kvm::demo`, `tetd-vmm demo`).
//!
//! `demo_runs_every_agent_in_both_modes` builds and signs the example
//! agents with `tetd-pack` (into this test's scratch directory), uses the
//! module of `scripts/build-module.sh` (rebuilt when its sources are newer),
//! boots the Debian guest with TETD-H attached on the engine `auto` picks
//! (QEMU/TCG on a PVM host), and checks the parsed results — here again,
//! independently of the demo's own checks where the test can: SHA-256 and
//! echo outputs, the faults being contained (the kernel answers afterwards),
//! the tampered image refused with `BadSignature`, TETD-H having seen every
//! call, RTMR3 equal to the replay of the image files.
//!
//! Skipped (with `SKIP:` and the reason) only where no engine can run a guest
//! or the guest artifacts cannot be built here (no guest kernel/headers from
//! `scripts/setup.sh`, no busybox). The CLI tests run everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tetd::abi::Error as AbiError;
use tetd::image::Image;
use tetd_kvm::demo::{self, DemoConfig, PackOptions};
use tetd_kvm::hv::{select_engine, Engine, EngineChoice};
use tetd_kvm::vmm::GuestKernel;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The cargo profile directory the tests run from (target/debug).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Newest modification time of the files under `dirs` (target dirs skipped).
fn newest(dirs: &[PathBuf]) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            t = t.max(m);
        }
    }
    t
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Why the guest part cannot run here, if so.
fn skip_reason(root: &Path) -> Option<String> {
    if let Err(e) = select_engine(EngineChoice::Auto) {
        return Some(format!("no engine to run a guest: {e}"));
    }
    let kernel = match GuestKernel::locate(root) {
        Ok(k) => k,
        Err(e) => return Some(format!("no guest kernel (scripts/setup.sh as root): {e}")),
    };
    if !kernel.headers.join("Makefile").is_file() {
        return Some(format!(
            "no {} to build tetdg.ko (scripts/setup.sh as root)",
            kernel.headers.display()
        ));
    }
    if !Path::new(tetd_kvm::vmm::initramfs::DEFAULT_BUSYBOX).is_file() {
        return Some("no /bin/busybox (scripts/setup.sh installs busybox-static)".into());
    }
    None
}

/// tetdg.ko + tetdctl, rebuilt when older than their sources.
fn ensure_module(root: &Path) {
    let ko = root.join("build/module/tetdg.ko");
    let ctl = root.join("build/module/tetdctl");
    let src = newest(&[
        root.join("tetd-kernel/module"),
        root.join("tetd-kernel/src"),
        root.join("tetd-kernel/tetdctl"),
        root.join("tetd-sdk/src"),
    ]);
    let built = mtime(&ko).min(mtime(&ctl));
    if built.is_some_and(|b| b >= src) {
        return;
    }
    eprintln!("demo_e2e: building tetdg.ko and tetdctl (scripts/build-module.sh)");
    let st = Command::new("bash")
        .arg(root.join("scripts/build-module.sh"))
        .current_dir(root)
        .status()
        .expect("run scripts/build-module.sh");
    assert!(st.success(), "scripts/build-module.sh failed ({st})");
}

/// The tetd-pack binary of this profile, built if missing or older than its
/// sources (`cargo test --workspace` has built it already).
fn tetd_pack(root: &Path) -> PathBuf {
    let bin = profile_dir().join("tetd-pack");
    let src = newest(&[root.join("tetd-pack/src"), root.join("tetd-sdk/src")]);
    if mtime(&bin).is_some_and(|b| b >= src) {
        return bin;
    }
    eprintln!("demo_e2e: cargo build -p tetd-pack");
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "tetd-pack"])
        .current_dir(root)
        .status()
        .expect("run cargo");
    assert!(st.success(), "cargo build -p tetd-pack failed ({st})");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

#[test]
fn demo_runs_every_agent_in_both_modes() {
    let root = repo_root();
    if let Some(why) = skip_reason(&root) {
        eprintln!("SKIP: demo_runs_every_agent_in_both_modes: {why}");
        return;
    }
    ensure_module(&root);
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-e2e");
    let _ = std::fs::remove_dir_all(&work);
    demo::pack_images(&PackOptions {
        tetd_pack: tetd_pack(&root),
        repo: root.clone(),
        out: work.clone(),
        progress: true,
    })
    .expect("build and sign the example images");

    let mut cfg = DemoConfig::for_repo(&root).expect("demo configuration");
    cfg.images = work.clone();
    cfg.work = work.clone();
    let report = demo::run_demo(&cfg).expect("demo runs");
    let text = report.render();
    eprintln!("{text}");
    assert!(
        report.passed(),
        "demo failures: {:#?}\nconsole: {}",
        report.failures(),
        report.console_log.display()
    );

    // --- independent checks on the parsed rows ---------------------------
    let calls: Vec<_> = report.rows.iter().filter(|r| r.call.is_some()).collect();
    let find = |id: u32, mode: &str| {
        calls
            .iter()
            .filter(move |r| {
                let (a, _, m) = r.call.as_ref().unwrap();
                *a == id && m.name() == mode
            })
            .collect::<Vec<_>>()
    };
    // Every working agent answered in both modes.
    for id in [1, 2, 3, 4, 24] {
        for mode in ["exclusive", "collaborative"] {
            let rows = find(id, mode);
            assert!(!rows.is_empty(), "no {mode} call of agent {id}");
            assert!(
                rows.iter().all(|r| r.status == Some(0)),
                "agent {id} {mode}: {:?}",
                rows.iter().map(|r| &r.result).collect::<Vec<_>>()
            );
            assert!(rows.iter().all(|r| r.latency_ns.is_some_and(|n| n > 0)));
        }
    }
    for r in find(1, "exclusive").iter().chain(&find(1, "collaborative")) {
        assert_eq!(r.output_bytes, r.input, "echo");
    }
    for r in find(2, "exclusive").iter().chain(&find(2, "collaborative")) {
        let want = Sha256::digest(r.input.as_ref().unwrap());
        assert_eq!(r.output_bytes.as_deref(), Some(want.as_slice()), "sha256");
    }
    // The signer keeps one key across modes: both signatures are the same
    // (Ed25519 is deterministic) and the demo verified them.
    let sigs: Vec<_> = calls
        .iter()
        .filter(|r| r.call.as_ref().unwrap().0 == 3 && r.output_bytes.as_ref().unwrap().len() == 64)
        .map(|r| r.output_bytes.clone().unwrap())
        .collect();
    assert_eq!(sigs.len(), 2);
    assert_eq!(sigs[0], sigs[1]);
    // Faults contained: Fault / StackOverflow, then the kernel still answers.
    let fault_at = calls
        .iter()
        .position(|r| r.status == Some(AbiError::Fault as u64))
        .expect("a Fault call");
    assert_eq!(
        find(21, "collaborative")[0].status,
        Some(AbiError::Fault as u64)
    );
    assert_eq!(
        find(23, "collaborative")[0].status,
        Some(AbiError::StackOverflow as u64)
    );
    assert!(
        calls[fault_at..]
            .iter()
            .any(|r| r.call.as_ref().unwrap().0 == 1 && r.status == Some(0)),
        "echo answers after the faults"
    );
    // Restricted services in a zone, privilege enforced by the runtime.
    assert_eq!(
        find(5, "collaborative")[0].status,
        Some(AbiError::Unsupported as u64)
    );
    assert_eq!(
        find(6, "exclusive")[0].status,
        Some(AbiError::Denied as u64)
    );
    // Refused images.
    let result_of = |prefix: &str| {
        report
            .rows
            .iter()
            .find(|r| r.label.starts_with(prefix))
            .unwrap_or_else(|| panic!("no step {prefix:?}"))
            .result
            .clone()
    };
    assert_eq!(result_of("load signer-tampered"), "refused: BadSignature");
    assert_eq!(result_of("load echo-unsigned"), "refused: Unsigned");
    assert_eq!(
        result_of("load signer.tetd before"),
        "refused: SignerNotAllowed"
    );

    // --- the host's view ---------------------------------------------------
    assert_eq!(report.host.len(), demo::PACKAGES.len());
    for h in &report.host {
        assert!(h.calls >= 2, "{}: host saw {} calls", h.package, h.calls);
        assert_eq!(h.calls, h.expected_calls, "{}", h.package);
        assert!(h.measurement_ok, "{}", h.package);
    }
    let faulty = report.host.iter().find(|h| h.package == "faulty").unwrap();
    assert_eq!(faulty.faults, 2);
    assert_eq!(report.events.by_kind.get("fault"), Some(&2));
    assert_eq!(
        report.events.by_kind.get("access"),
        Some(&(demo::PACKAGES.len() as u64))
    );
    // RTMR3 = replay of the image files, recomputed here from the files.
    let measurements: Vec<[u8; 48]> = demo::PACKAGES
        .iter()
        .map(|p| {
            let bytes = std::fs::read(work.join(format!("{p}.tetd"))).unwrap();
            *Image::parse(&bytes).unwrap().measurement()
        })
        .collect();
    let want = tetd::measure::replay(measurements.iter());
    assert_eq!(report.rtmr_host, want);
    assert_ne!(want, [0; 48]);
    assert_eq!(report.rtmr_extends, demo::PACKAGES.len() as u64);
    // What this engine enforces is reported as it is.
    let zone = report
        .rows
        .iter()
        .find(|r| r.label.starts_with("guest kernel reads"))
        .unwrap();
    // Both engines take blocked zones away: the kernel's read got nothing
    // of echo's zone (all-ones on KVM, zeroes on QEMU) and TETD-H counted it.
    assert!(report.enforces_blocking);
    assert_eq!(zone.result, "denied", "{zone:?}");
    assert!(report.violations >= 1, "the zone read was counted");
    assert!(text.contains("zone blocking: ENFORCED"), "{text}");
    assert!(!text.contains("NOT enforced"), "{text}");
    match report.engine {
        Engine::Qemu => assert_eq!(zone.output, "zone read 0x0000000000000000"),
        Engine::Kvm => assert_eq!(zone.output, "zone read 0xffffffffffffffff"),
    }
    let j = report.to_json();
    assert_eq!(j["blocking_enforced"], true);
    // The JSON carries the same verdict.
    assert_eq!(j["passed"], true);
    assert_eq!(j["steps"].as_array().unwrap().len(), report.rows.len());
    assert!(std::fs::read_to_string(&report.console_log)
        .unwrap()
        .contains("TETD-RESULTS-END"));
}

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
}

#[test]
fn demo_without_an_engine_points_to_the_simulator() {
    let out = vmm()
        .args(["demo", "--engine", "qemu", "--quiet"])
        .env("TETD_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no way to run a guest"), "{err}");
    assert!(err.contains("TETD_QEMU=/nonexistent"), "{err}");
    assert!(err.contains("tetd-pack run"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn demo_names_what_is_missing() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-missing");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // QEMU "present" (any file will do for the selection), nothing else.
    let run = |extra: &[&str]| {
        let out = vmm()
            .args(["demo", "--engine", "qemu", "--quiet", "--repo"])
            .arg(&tmp)
            .args(extra)
            .env("TETD_QEMU", "/bin/true")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KERNEL_VERSION"), "{err}");
    assert!(err.contains("scripts/setup.sh"), "{err}");

    let kernel = tmp.join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let (code, err) = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("build/module/tetdg.ko missing"), "{err}");
    assert!(err.contains("scripts/build-module.sh"), "{err}");

    // Module and tetdctl present: the images are named next.
    std::fs::create_dir_all(tmp.join("build/module")).unwrap();
    std::fs::write(tmp.join("build/module/tetdg.ko"), b"x").unwrap();
    std::fs::write(tmp.join("build/module/tetdctl"), b"x").unwrap();
    let (code, err) = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("build/demo/echo.tetd"), "{err}");
    assert!(err.contains("scripts/demo.sh"), "{err}");

    // A file that is not an image.
    std::fs::create_dir_all(tmp.join("build/demo")).unwrap();
    std::fs::write(tmp.join("build/demo/echo.tetd"), b"not an image").unwrap();
    let (code, err) = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("echo.tetd: not a valid image"), "{err}");
}
