//! The `tetd-vmm` command line: initramfs building, exit-status propagation,
//! clear errors.

mod vmm_common;

use std::process::Command;

fn tetd_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
}

#[test]
fn initramfs_command_packs_busybox_init_and_files() {
    if !std::path::Path::new("/bin/busybox").is_file() {
        vmm_common::skip(
            "initramfs_command_packs_busybox_init_and_files",
            "no /bin/busybox (run scripts/setup.sh)",
        );
        return;
    }
    let dir = vmm_common::scratch();
    let extra = dir.join("cli-extra.txt");
    std::fs::write(&extra, "hello guest\n").unwrap();
    let out = dir.join("cli.cpio");
    let st = tetd_vmm()
        .arg("initramfs")
        .arg("-o")
        .arg(&out)
        .arg("--file")
        .arg(format!("{}:/tetd/extra.txt", extra.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let listing = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(std::fs::File::open(&out).unwrap())
        .output();
    let Ok(listing) = listing else {
        vmm_common::skip(
            "initramfs_command_packs_busybox_init_and_files (listing)",
            "no cpio tool",
        );
        return;
    };
    let names = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "init",
        "bin/busybox",
        "bin/sh",
        "dev/console",
        "tetd/extra.txt",
        "proc",
        "sys",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} missing from:\n{names}"
        );
    }
}

#[test]
fn bad_arguments_give_clear_errors() {
    let out = tetd_vmm()
        .args(["initramfs", "-o", "/tmp/x.cpio", "--file", "no-colon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST_PATH:/GUEST/PATH"));
    let out = tetd_vmm()
        .args(["boot", "--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vmlinux"));
}

#[test]
fn boot_exit_code_is_the_guest_status() {
    if vmm_common::skip_without_kvm("boot_exit_code_is_the_guest_status") {
        return;
    }
    let elf = match vmm_common::build_micro("cli", "EXIT") {
        Ok(e) => e,
        Err(e) => {
            vmm_common::skip("boot_exit_code_is_the_guest_status", &e);
            return;
        }
    };
    let out = tetd_vmm()
        .arg("boot")
        .arg("--kernel")
        .arg(&elf)
        .args(["--engine", "kvm", "--timeout", "20"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exit status 7 (exit port)"));
}
