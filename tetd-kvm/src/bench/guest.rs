//! Section `guest`: agent calls inside a real Linux guest with `tetdg.ko`,
//! TETD-H answering its hypercalls, engine `auto` (on this machine:
//! QEMU/TCG, because its `/dev/kvm` is the PVM backend — see
//! `docs/engines.md`). `tetdctl bench` runs the timing loops inside the
//! guest and prints one `TETD-BENCH {json}` line per loop on the console.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::report::Unit;
use super::stats::Summary;
use super::{run_cmd, BenchConfig, Images, Report, SectionError, SectionResult};
use crate::hv::{run_guest, select_engine, Engine, EngineChoice, TetdOptions};
use crate::vmm::initramfs::{build_busybox_initramfs, InitramfsSpec, DEFAULT_BUSYBOX};
use crate::vmm::{GuestKernel, VmConfig, VmExit};

const SECTION: &str = "guest";

/// One `TETD-BENCH` line.
#[derive(Debug, Clone)]
pub struct Line {
    /// `call`, `ioctl`, `hypercall`.
    pub kind: String,
    /// The label given to tetdctl.
    pub label: String,
    /// Summary of the samples (ns).
    pub summary: Summary,
    /// Loop start / end, guest CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Loop end.
    pub end_ns: u64,
}

/// The `TETD-BENCH` lines of a console transcript (malformed ones are
/// errors naming the line).
pub fn parse_lines(console: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for raw in console.lines() {
        let l = raw.trim_end_matches('\r');
        let Some(j) = l.strip_prefix("TETD-BENCH ") else {
            continue;
        };
        let v: Value = serde_json::from_str(j).map_err(|e| format!("{l:?}: {e}"))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("{l:?}: no number {k:?}"))
        };
        let n = num("n")? as usize;
        out.push(Line {
            kind: v["kind"].as_str().unwrap_or_default().to_string(),
            label: v["label"].as_str().unwrap_or_default().to_string(),
            summary: Summary {
                n,
                min: num("min_ns")? as f64,
                median: num("median_ns")? as f64,
                p99: num("p99_ns")? as f64,
                mean: num("mean_ns")? as f64,
            },
            start_ns: num("start_ns")?,
            end_ns: num("end_ns")?,
        });
    }
    Ok(out)
}

fn script(n: usize, m: usize) -> String {
    format!(
        r#"#!/bin/sh
T=/tetd/tetdctl
insmod /tetd/tetdg.ko || {{ echo "TETD-BENCH-ERROR insmod failed"; exit 1; }}
$T load /tetd/echo.tetd >/dev/null || {{ echo "TETD-BENCH-ERROR load failed"; exit 1; }}
run() {{ "$@" || echo "TETD-BENCH-ERROR $*"; }}
run $T bench hypercall -n {n} --label hypercall
run $T bench ioctl -n {n} --label ioctl
for mode in exclusive collaborative; do
  run $T bench call 1 --mode $mode --size 0 -n {n} --label $mode-empty
  run $T bench call 1 --mode $mode --size 4096 -n {n} --label $mode-4k
done
run $T bench call 1 --mode exclusive -n {m} --cpu 0 --label solo
$T bench call 1 --mode exclusive -n {m} --cpu 0 --label pair-a &
$T bench call 1 --mode exclusive -n {m} --cpu 1 --label pair-b &
wait
echo TETD-BENCH-DONE
"#
    )
}

fn summary(v: &[f64]) -> SectionResult<Summary> {
    Summary::of(v).ok_or_else(|| SectionError::Fail("no samples".into()))
}

/// The section.
pub fn run(cfg: &BenchConfig, images: &Images, rep: &mut Report) -> SectionResult<()> {
    let kernel = GuestKernel::locate(&cfg.root)
        .map_err(|e| SectionError::Skip(format!("no guest kernel ({e}; scripts/setup.sh)")))?;
    let module = cfg.root.join("build/module");
    let (ko, ctl) = (module.join("tetdg.ko"), module.join("tetdctl"));
    if !ko.is_file() || !ctl.is_file() {
        return Err(SectionError::Skip(format!(
            "{} or {} missing (scripts/build-module.sh)",
            ko.display(),
            ctl.display()
        )));
    }
    // tetdctl is a static x86-64 binary: ask it on the host whether it
    // knows `bench` (an old build does not).
    run_cmd(std::process::Command::new(&ctl).args(["bench", "--help"])).map_err(|_| {
        SectionError::Skip(format!(
            "{} has no `bench` subcommand (rebuild: scripts/build-module.sh)",
            ctl.display()
        ))
    })?;
    if !Path::new(DEFAULT_BUSYBOX).is_file() {
        return Err(SectionError::Skip(format!(
            "{DEFAULT_BUSYBOX} missing (scripts/setup.sh)"
        )));
    }
    let sel = select_engine(EngineChoice::Auto).map_err(|e| SectionError::Skip(e.to_string()))?;
    let dir = cfg.out_dir.join("guest");
    std::fs::create_dir_all(&dir).map_err(SectionError::fail)?;
    let n = cfg.iters(500, 10);
    let m = cfg.iters(300, 10);
    let run_sh = dir.join("run.sh");
    std::fs::write(&run_sh, script(n, m)).map_err(SectionError::fail)?;
    let spec = InitramfsSpec {
        busybox: DEFAULT_BUSYBOX.into(),
        init: None,
        extra: vec![
            (ko, "/tetd/tetdg.ko".into()),
            (ctl, "/tetd/tetdctl".into()),
            (run_sh, "/tetd/run.sh".into()),
            (images.echo.clone(), "/tetd/echo.tetd".into()),
        ],
    };
    let cpio = build_busybox_initramfs(&spec).map_err(SectionError::fail)?;
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, cpio).map_err(SectionError::fail)?;
    let mut config = VmConfig::new(kernel.boot_image(), Some(initrd));
    config.vcpus = 2;
    config.mem_mib = 512;
    config.timeout = Duration::from_secs(if cfg.quick { 120 } else { 400 });
    cfg.log(format!(
        "booting the guest ({}: {})",
        sel.engine, sel.reason
    ));
    let run = run_guest(sel.engine, config, TetdOptions::default()).map_err(SectionError::fail)?;
    let console = run.outcome.console;
    std::fs::write(dir.join("console.txt"), &console).map_err(SectionError::fail)?;
    let lines = parse_lines(&console).map_err(SectionError::Fail)?;
    if let Some(e) = console.lines().find(|l| l.contains("TETD-BENCH-ERROR")) {
        return Err(SectionError::Fail(format!(
            "in the guest: {} (console: {})",
            e.trim(),
            dir.join("console.txt").display()
        )));
    }
    if !console.contains("TETD-BENCH-DONE") {
        return Err(SectionError::Fail(format!(
            "the guest did not finish the loops ({}; console: {})",
            run.outcome.exit,
            dir.join("console.txt").display()
        )));
    }
    if !matches!(run.outcome.exit, VmExit::Status { code: 0, .. }) {
        rep.notes
            .push(format!("guest: the VM ended with {}", run.outcome.exit));
    }
    let get = |label: &str| {
        lines
            .iter()
            .find(|l| l.label == label)
            .cloned()
            .ok_or_else(|| SectionError::Fail(format!("no TETD-BENCH line {label:?}")))
    };
    let engine = match sel.engine {
        Engine::Qemu => "QEMU/TCG: software emulation, not KVM/TDX speed",
        Engine::Kvm => "KVM engine",
    };
    let transport = if sel.engine == Engine::Qemu {
        "uart"
    } else {
        "port I/O"
    };
    let hc = get("hypercall")?;
    let ioctl = get("ioctl")?;
    rep.add(
        "guest.ioctl",
        SECTION,
        "plain ioctl into the module (INFO), guest user space",
        Unit::Ns,
        ioctl.summary,
        None,
        engine,
    );
    rep.add(
        "guest.hypercall",
        SECTION,
        &format!("bare TETD hypercall from guest user space ({transport} transport, AGENT_QUERY)"),
        Unit::Ns,
        hc.summary,
        Some(("plain ioctl", ioctl.summary)),
        engine,
    );
    let floor = Summary::single(2.0 * hc.summary.median + ioctl.summary.median);
    for (mode, m) in [("exclusive", "excl"), ("collaborative", "collab")] {
        for (size, s) in [("empty", "empty"), ("4k", "4k")] {
            let l = get(&format!("{mode}-{size}"))?;
            rep.add(
                &format!("guest.call.{m}.{s}"),
                SECTION,
                &format!(
                    "agent call round trip, {mode}, {} input (CALL ioctl)",
                    if s == "empty" { "empty" } else { "4 KiB" }
                ),
                Unit::Ns,
                l.summary,
                Some(("2 bare hypercalls + 1 plain ioctl", floor)),
                engine,
            );
        }
    }
    let rate = |ls: &[&Line]| {
        let calls: usize = ls.iter().map(|l| l.summary.n).sum();
        let start = ls.iter().map(|l| l.start_ns).min().unwrap_or(0);
        let end = ls.iter().map(|l| l.end_ns).max().unwrap_or(0);
        calls as f64 * 1e9 / (end.saturating_sub(start)).max(1) as f64
    };
    let solo = get("solo")?;
    let (a, b) = (get("pair-a")?, get("pair-b")?);
    let one = rate(&[&solo]);
    let two = rate(&[&a, &b]);
    rep.add(
        "guest.calls_per_sec.1",
        SECTION,
        "agent calls per second, 1 caller (exclusive, empty)",
        Unit::PerSec,
        summary(&[one])?,
        Some((
            "1 / (2 bare hypercalls + 1 ioctl)",
            Summary::single(1e9 / floor.median),
        )),
        &format!("{engine}; 2 vCPUs"),
    );
    rep.add(
        "guest.calls_per_sec.2",
        SECTION,
        "agent calls per second, 2 callers on 2 vCPUs (exclusive, empty)",
        Unit::PerSec,
        summary(&[two])?,
        Some(("1 caller", Summary::single(one))),
        "the module serialises calls (one mutex, one frame in flight on the uart)",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines_and_names_bad_ones() {
        let c = "boot...\r\nTETD-BENCH {\"kind\":\"call\",\"label\":\"x\",\"n\":3,\"min_ns\":1,\"median_ns\":2,\"p99_ns\":3,\"mean_ns\":2,\"start_ns\":10,\"end_ns\":20}\r\nother\n";
        let l = parse_lines(c).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].kind.as_str(), l[0].label.as_str()), ("call", "x"));
        assert_eq!(l[0].summary.median, 2.0);
        assert_eq!((l[0].start_ns, l[0].end_ns), (10, 20));
        let e = parse_lines("TETD-BENCH {\"n\":1}").unwrap_err();
        assert!(e.contains("min_ns"), "{e}");
        assert!(parse_lines("TETD-BENCH {broken").is_err());
    }
}
