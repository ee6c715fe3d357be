//! `tetd-vmm boot --engine`: engine choice, the not-enforced notice, exit
//! status through the QEMU engine.

mod vmm_common;

use std::process::Command;

fn tetd_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
}

#[test]
fn unknown_engine_is_refused() {
    let out = tetd_vmm()
        .args(["boot", "--engine", "tcg", "--kernel", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected kvm, qemu or auto"), "{err}");
}

#[test]
fn boot_on_qemu_reports_engine_status_and_enforcement() {
    let test = "boot_on_qemu_reports_engine_status_and_enforcement";
    if let Err(e) = tetd_kvm::qemu::qemu_binary() {
        vmm_common::skip(test, &e);
        return;
    }
    let kernel = match tetd_kvm::vmm::GuestKernel::locate(&vmm_common::repo_root()) {
        Ok(k) => k,
        Err(e) => {
            vmm_common::skip(test, &format!("no guest kernel: {e}"));
            return;
        }
    };
    if !std::path::Path::new("/bin/busybox").is_file() {
        vmm_common::skip(test, "no /bin/busybox (run scripts/setup.sh)");
        return;
    }
    let run = vmm_common::scratch().join("qemu-cli-run.sh");
    std::fs::write(&run, "echo cli-guest-up\nexit 4\n").unwrap();
    let out = tetd_vmm()
        .arg("boot")
        .args([
            "--engine",
            "qemu",
            "--quiet",
            "--timeout",
            "300",
            "--kernel",
        ])
        .arg(kernel.boot_image())
        .arg("--extra-file")
        .arg(format!("{}:/tetd/run.sh", run.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("engine qemu (requested)"), "{err}");
    assert!(
        err.contains("zone blocking enforced (QEMU/TCG engine)"),
        "{err}"
    );
    assert!(err.contains("blocked-zone violation(s)"), "{err}");
    assert!(err.contains("exit status 4 (console sentinel)"), "{err}");
    assert!(out.stdout.is_empty(), "--quiet echoes nothing");
}
