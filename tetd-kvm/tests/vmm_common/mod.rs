//! Helpers shared by the VMM integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `Some(reason)` when KVM tests cannot run here.
pub fn kvm_skip_reason() -> Option<String> {
    tetd_kvm::vmm::kvm_available().err()
}

/// Prints a visible SKIP line and returns true when KVM is unusable.
pub fn skip_without_kvm(test: &str) -> bool {
    match kvm_skip_reason() {
        Some(reason) => {
            eprintln!("SKIP {test}: {reason} (needs /dev/kvm)");
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
