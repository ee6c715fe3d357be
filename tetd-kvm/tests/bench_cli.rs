//! `tetd-vmm bench` runs and writes a well-formed report (a smoke test with
//! tiny iteration counts: no timing is asserted, only the machinery).
//! Sections host (TETD-H on the TDX model) and kvm (micro guests; listed as
//! not measured where /dev/kvm is missing).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn out_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn quick_bench_writes_a_well_formed_report() {
    let out = out_dir("bench-smoke");
    let r = Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
        .args(["bench", "--quick", "--only", "host", "--only", "kvm", "-q"])
        .arg("--root")
        .arg(root())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("| section | measurement | median |"),
        "{stdout}"
    );

    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["meta"]["quick"], true);
    assert_eq!(j["meta"]["failed_sections"], serde_json::json!([]));
    let figures = j["figures"].as_array().unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    // host always runs: 4 zone sizes, ENTER+RESUME each, per-page and life
    // for 3, and the QEMU backend's ENTER+RESUME (zone taken out of the
    // file) for each size against the same backend model-only.
    let host: Vec<&Value> = figures.iter().filter(|f| f["section"] == "host").collect();
    assert_eq!(host.len(), 14, "{host:#?}");
    for pages in [1, 16, 256, 4096] {
        let f = host
            .iter()
            .find(|f| f["key"] == format!("host.qemu_call.{pages}p"))
            .unwrap_or_else(|| panic!("no host.qemu_call.{pages}p"));
        assert!(f["baseline"]["what"]
            .as_str()
            .is_some_and(|l| l.contains("model only")));
    }
    let mut keys = std::collections::HashSet::new();
    for f in figures {
        let key = f["key"].as_str().unwrap();
        assert!(keys.insert(key.to_string()), "duplicate key {key}");
        let v = &f["value"];
        let (min, med, p99) = (
            v["min"].as_f64().unwrap(),
            v["median"].as_f64().unwrap(),
            v["p99"].as_f64().unwrap(),
        );
        assert!(min <= med && med <= p99, "{key}: {v}");
        assert!(v["n"].as_u64().unwrap() >= 1, "{key}");
        assert!(
            ["ns", "ns/MiB", "ns/page", "1/s"].contains(&f["unit"].as_str().unwrap()),
            "{key}"
        );
        match f["baseline"].as_object() {
            Some(b) => {
                let bm = b["value"]["median"].as_f64().unwrap();
                let ratio = f["ratio"].as_f64().unwrap();
                assert!(
                    (ratio - med / bm).abs() <= 1e-9 * ratio.abs().max(1.0),
                    "{key}"
                );
                assert!(!b["what"].as_str().unwrap().is_empty());
            }
            None => assert!(f["ratio"].is_null(), "{key}"),
        }
        assert!(
            md.contains(f["what"].as_str().unwrap()),
            "{key} not in report.md"
        );
    }
    // kvm: either measured (the bare exit and the call windows) or skipped with a reason
    let kvm_measured = figures.iter().any(|f| f["key"] == "kvm.exit.port");
    let kvm_skipped = j["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["section"] == "kvm" && !s["reason"].as_str().unwrap().starts_with("FAILED"));
    assert!(kvm_measured ^ kvm_skipped, "{j:#}");
    if kvm_measured {
        for k in ["kvm.call.1p", "kvm.call.16p", "kvm.calls_per_sec.2vcpu"] {
            assert!(figures.iter().any(|f| f["key"] == k), "{k} missing");
        }
    }
}

#[test]
fn bench_argument_errors_are_named() {
    let r = Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
        .args(["bench", "--only", "nonsense"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown section \"nonsense\""));
    let r = Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
        .args(["bench", "--only", "host", "--skip", "host"])
        .arg("--root")
        .arg(root())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no section left to run"));
    let r = Command::new(env!("CARGO_BIN_EXE_tetd-vmm"))
        .args(["bench", "--root", "/nonexistent-dir"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a TETD-rs checkout"));
}
