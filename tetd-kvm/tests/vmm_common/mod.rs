//! Helpers shared by the VMM integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Prints a SKIP line straight to stderr (not through the test harness's
/// output capture, so it shows in CI logs).
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// `Some(reason)` when KVM tests cannot run here.
pub fn kvm_skip_reason() -> Option<String> {
    tetd_kvm::vmm::kvm_available().err()
}

/// Prints a visible SKIP line and returns true when KVM is unusable.
pub fn skip_without_kvm(test: &str) -> bool {
    match kvm_skip_reason() {
        Some(reason) => {
            skip(test, &format!("{reason} (needs /dev/kvm)"));
            true
        }
        None => false,
    }
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Scratch directory for built guest artefacts.
pub fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vmm-tests");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Assembles micro guest `scenario` (tetd-kvm/guest/micro/micro.S) into a
/// static ELF kernel. Err = toolchain missing (a skip reason).
pub fn build_micro(test: &str, scenario: &str) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/micro/micro.S");
    let dir = scratch();
    let obj = dir.join(format!("micro-{scenario}-{test}.o"));
    let elf = dir.join(format!("micro-{scenario}-{test}.elf"));
    run(Command::new("gcc")
        .arg("-c")
        .arg(format!("-DSCENARIO_{scenario}"))
        .arg(&src)
        .arg("-o")
        .arg(&obj))?;
    run(Command::new("ld")
        .args(["-Ttext=0x200000", "-e", "_start", "--build-id=none", "-o"])
        .arg(&elf)
        .arg(&obj))?;
    Ok(elf)
}

/// Why the Linux-guest tests cannot (or should not) run here, if so.
///
/// `TETD_VMM_LINUX_TESTS=1` forces them, `=0` skips them. By default they are
/// skipped where KVM emulates guest kernel code (PVM backend): an unmodified
/// Debian kernel cannot boot there (see tetd-kvm/guest/README.md).
pub fn linux_skip_reason() -> Option<String> {
    if let Some(r) = kvm_skip_reason() {
        return Some(format!("{r} (needs /dev/kvm)"));
    }
    let mode = std::env::var("TETD_VMM_LINUX_TESTS").unwrap_or_default();
    if mode == "0" {
        return Some("TETD_VMM_LINUX_TESTS=0".into());
    }
    if mode != "1" && tetd_kvm::vmm::kvm_emulates_guest_kernel() {
        return Some(
            "this host's /dev/kvm is the PVM backend (kvm_pvm): it runs an unmodified guest kernel \
             through KVM's instruction emulator, which cannot execute INT3 in long mode, and Linux \
             6.1 executes one during boot (alternatives self-test), so the Debian kernel cannot \
             boot here (TETD_VMM_LINUX_TESTS=1 runs the test anyway)"
                .into(),
        );
    }
    if let Err(e) = tetd_kvm::vmm::GuestKernel::locate(&repo_root()) {
        return Some(format!("no guest kernel: {e}"));
    }
    if !Path::new(tetd_kvm::vmm::initramfs::DEFAULT_BUSYBOX).is_file() {
        return Some("no /bin/busybox (run scripts/setup.sh)".into());
    }
    None
}

/// Builds tetd-kvm/guest/probe.c as a static binary.
pub fn build_probe() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/probe.c");
    let out = scratch().join("tetd-probe");
    run(Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src))?;
    Ok(out)
}
