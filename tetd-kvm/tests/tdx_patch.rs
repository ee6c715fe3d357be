//! `tetd-kvm/linux/check-patch.sh`: the SKIP and FAIL outcomes (the PASS
//! outcome needs the upstream Linux v6.16 files, which this repository does
//! not ship; see tetd-kvm/linux/README.md for how it was checked) and the
//! patch's structure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn linux_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("linux")
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new("bash");
    c.arg(linux_dir().join("check-patch.sh")).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run check-patch.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

const FILES: [&str; 7] = [
    "arch/x86/include/asm/tdx.h",
    "arch/x86/include/uapi/asm/kvm.h",
    "arch/x86/kvm/vmx/tdx.c",
    "arch/x86/kvm/vmx/tdx.h",
    "arch/x86/virt/vmx/tdx/tdx.c",
    "arch/x86/virt/vmx/tdx/tdx.h",
    "include/uapi/linux/kvm.h",
];

#[test]
fn unreachable_upstream_is_a_skip_not_a_failure() {
    // Port 9 on loopback: nothing listens, the fetch fails at once.
    let (code, out) = run(&[], &[("TETD_LINUX_URL", "http://127.0.0.1:9")]);
    assert_eq!(code, 0, "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("SKIP: cannot fetch upstream http://127.0.0.1:9/"),
        "{out}"
    );
    assert!(last.contains("?h=v6.16"), "{out}");
}

#[test]
fn files_that_do_not_accept_the_patch_fail() {
    let dir = std::env::temp_dir().join(format!("tetd-patch-check-{}", std::process::id()));
    for f in FILES {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "/* not the upstream file */\n").unwrap();
    }
    let (code, out) = run(&["--tree", dir.to_str().unwrap()], &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().last().unwrap().starts_with("FAIL:"), "{out}");
    assert!(out.contains("NOTE: arch/x86/kvm/vmx/tdx.c"), "{out}");
}

#[test]
fn missing_tree_file_fails_and_bad_usage_is_refused() {
    let (code, out) = run(&["--tree", "/nonexistent-linux-tree"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL: /nonexistent-linux-tree/"), "{out}");
    let (code, _) = run(&["--bogus"], &[]);
    assert_eq!(code, 2);
}

#[test]
fn patch_touches_exactly_the_recorded_files() {
    let patch = std::fs::read_to_string(
        linux_dir().join("0001-KVM-TDX-TETD-vendor-TDVMCALL-and-zone-SEAM-ops.patch"),
    )
    .unwrap();
    let script = std::fs::read_to_string(linux_dir().join("check-patch.sh")).unwrap();
    let mut touched: Vec<&str> = patch
        .lines()
        .filter_map(|l| l.strip_prefix("diff --git a/"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    touched.sort();
    assert_eq!(touched, FILES);
    // Every pre-image blob in the patch is the one the script records.
    for l in patch.lines().filter(|l| l.starts_with("index ")) {
        let pre = l[6..].split("..").next().unwrap();
        assert!(
            script.contains(pre),
            "pre-image {pre} not recorded in check-patch.sh"
        );
    }
    // The patch only adds lines: no upstream behaviour is removed.
    assert!(!patch
        .lines()
        .any(|l| l.starts_with('-') && !l.starts_with("---")));
}

/// The real check: fetch the v6.16 files from kernel.org and
/// `git apply --check`. Where kernel.org is unreachable (this project's
/// machines and CI) the script says SKIP; it must never say FAIL.
#[test]
fn upstream_check_passes_or_skips() {
    let (code, out) = run(&[], &[]);
    let last = out.lines().last().unwrap_or_default().to_string();
    eprintln!("{last}");
    assert_eq!(code, 0, "{out}");
    assert!(
        last.starts_with("PASS: ") || last.starts_with("SKIP: cannot fetch upstream "),
        "{out}"
    );
}
