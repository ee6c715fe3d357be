//! The attack suite inside a real guest: the Debian guest kernel with
//! tetdg.ko (test_ioctl=1) runs tetd-kernel/module/tests/attack-guest.sh
//! under the project's VMM with TETD-H attached, on the engine
//! `select_engine(auto)` picks (QEMU/TCG on this machine: uart transport;
//! the KVM engine where /dev/kvm runs guest kernels). Both enforce zone
//! blocking. The guest checks what the guest sees (CHECK lines); this test
//! checks what the host saw and what it is left with:
//!
//! * the kernel's zone accesses outside a window: on the QEMU engine the
//!   zone's pages are out of the file QEMU maps, so the kernel reads zeroes
//!   (not the agent's last input), reads back only its own write, and the
//!   touched page is counted as a violation when the next window opens; on
//!   the KVM engine reads are all-ones, writes are dropped and both are
//!   reported as violations as they happen;
//! * the race, the fuzzers and the raw leaves reached TETD-H and left its
//!   Secure-EPT model consistent;
//! * the VM ends with an agent call open (killed mid-call): TETD-H's
//!   teardown removes every zone, returns every pool page, quarantines
//!   nothing and publishes a `disable` per live agent.
//!
//! Needs the artefacts of `tetd-kernel/module/tests/attack.sh --prepare`
//! (build/module/tetdg.ko, build/module/tetdctl, build/attack/*.tetd; run by
//! scripts/test.sh before `cargo test`), QEMU or KVM, the guest kernel and
//! busybox; prints a SKIP line naming what is missing otherwise.

mod vmm_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tetd::abi::{Leaf, PAGE_SIZE};
use tetd_kvm::host::{DISABLE_BY_TEARDOWN, HOST_VCPU};
use tetd_kvm::hv::{select_engine, Engine, EngineChoice, EngineSeam, TetdHandler, TetdOptions};
use tetd_kvm::notify::{EventKind, Notifier};
use tetd_kvm::vmm::initramfs::{build_busybox_initramfs, InitramfsSpec};
use tetd_kvm::vmm::{GuestKernel, StatusSource, VmConfig, VmExit};
use tetd_kvm::AgentState;
use tetd_kvm::SeptModel;

const HOSTILE: u32 = 40;
/// CHECK lines attack-guest.sh prints: its own checks plus one per case of
/// `tetdctl attack ioctls` (update both when adding checks).
const EXPECTED_CHECKS: usize = 118;

fn artefacts(root: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let files = [
        ("build/module/tetdg.ko", "/tetd/tetdg.ko"),
        ("build/module/tetdctl", "/tetd/tetdctl"),
        ("build/attack/echo.tetd", "/tetd/echo.tetd"),
        ("build/attack/hostile.tetd", "/tetd/hostile.tetd"),
        ("tetd-kernel/module/tests/attack-guest.sh", "/tetd/run.sh"),
    ];
    files
        .iter()
        .map(|(h, g)| {
            let p = root.join(h);
            if p.is_file() {
                Ok((p, g.to_string()))
            } else {
                Err(format!(
                    "{h} missing (run tetd-kernel/module/tests/attack.sh --prepare)"
                ))
            }
        })
        .collect()
}

fn skip_reason(root: &Path) -> Option<String> {
    if let Err(e) = select_engine(EngineChoice::Auto) {
        return Some(format!("no engine: {e}"));
    }
    if let Err(e) = GuestKernel::locate(root) {
        return Some(format!("no guest kernel: {e}"));
    }
    if !Path::new(tetd_kvm::vmm::initramfs::DEFAULT_BUSYBOX).is_file() {
        return Some("no /bin/busybox (run scripts/setup.sh)".into());
    }
    artefacts(root).err()
}

/// `OBSERVED <name> zone read|wrote 0x<value> gpa 0x<gpa>` → (value, gpa).
fn observed_zone(console: &str, name: &str) -> (u64, u64) {
    let l = console
        .lines()
        .find(|l| l.starts_with(&format!("OBSERVED {name} ")))
        .unwrap_or_else(|| panic!("no OBSERVED {name} line"));
    let hexes: Vec<u64> = l
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(hexes.len(), 2, "{l}");
    (hexes[0], hexes[1])
}

/// What this test checks on the host, whatever the engine.
fn judge<S: EngineSeam>(
    engine: Engine,
    out: &tetd_kvm::vmm::VmOutcome,
    mut h: TetdHandler<S>,
    notifier: &Notifier,
    model: impl Fn(&S) -> &SeptModel,
) {
    let console = out.console.replace('\r', "");
    let fails: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("CHECK-FAIL"))
        .collect();
    let passes = console
        .lines()
        .filter(|l| l.starts_with("CHECK-PASS"))
        .count();
    eprintln!(
        "attack-guest on {engine}: {passes} checks passed, {} failed, {:.1} s",
        fails.len(),
        out.elapsed.as_secs_f64()
    );
    for l in console
        .lines()
        .filter(|l| l.starts_with("race:") || l.contains("-fuzz:") || l.starts_with("ioctls:"))
    {
        eprintln!("  {l}");
    }
    assert!(
        fails.is_empty(),
        "{}\nconsole:\n{console}",
        fails.join("\n")
    );
    assert!(
        console.contains("ATTACK-GUEST-DONE"),
        "the script did not finish; console:\n{console}"
    );
    assert_eq!(
        passes, EXPECTED_CHECKS,
        "checks that ran; console:\n{console}"
    );
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 3,
            via: StatusSource::Port
        },
        "console:\n{console}"
    );

    // A. The kernel's zone accesses outside any window.
    let (read, _) = observed_zone(&console, "zone-read");
    let (wrote, wgpa) = observed_zone(&console, "zone-write");
    let (reread, rgpa) = observed_zone(&console, "zone-reread");
    assert_eq!(wrote, 0x4141_4141_4141_4141);
    assert_eq!(wgpa, rgpa);
    let page = |g: u64| g & !(PAGE_SIZE - 1);
    assert!(h.enforces_blocking(), "{}", h.td().seam().blocking_note());
    assert!(h.report().enforces_blocking);
    match engine {
        Engine::Kvm => {
            // No memory slot while blocked: the VMM answers all-ones, drops
            // the write and reports each access as it happens.
            let trapped = |g: u64| {
                h.violations()
                    .filter(|v| v.access.gpa == g && !v.found_after)
                    .count()
            };
            assert_eq!(read, u64::MAX, "blocked: the host answered all-ones");
            assert_eq!(reread, u64::MAX, "the write was dropped");
            assert!(trapped(wgpa) >= 2, "reported as violations");
        }
        Engine::Qemu => {
            // The zone's pages are out of the file QEMU maps: the kernel
            // reads zeroes, not the agent's last input ("SECRET-0..."); it
            // reads back only its own write, which landed in a page TETD-H
            // found and discarded when the next window opened (the echo
            // call after it answered from the agent's saved pages).
            assert_eq!(read, 0, "blocked: nothing of the zone is readable");
            assert_ne!(read, u64::from_le_bytes(*b"SECRET-0"));
            assert_eq!(reread, wrote, "only the attacker's own write");
            let found = h
                .violations()
                .filter(|v| v.found_after && page(v.access.gpa) == page(wgpa))
                .count();
            assert!(found >= 1, "the touched page was counted");
            let echo_zone = h.td().agent(1).and_then(|a| a.alias_of).unwrap();
            assert!(
                h.td().agent(echo_zone).unwrap().violations >= 1,
                "counted against echo's zone"
            );
        }
    }

    // A2. Guest root mapped all of echo's zone through /dev/mem after a
    // call with a secret input, in each mode: not one byte of the zone, and
    // the secret nowhere.
    for m in ["exclusive", "collaborative"] {
        let l = console
            .lines()
            .find(|l| l.starts_with(&format!("OBSERVED devmem-{m} ")))
            .unwrap_or_else(|| panic!("no devmem-{m} line"));
        assert!(l.contains("needle found 0 time(s)"), "{l}");
        match engine {
            Engine::Qemu => assert!(l.contains(": 0 non-zero byte(s)"), "{l}"),
            // KVM answers all-ones for every byte of a removed slot.
            Engine::Kvm => assert!(!l.contains(": 0 non-zero byte(s)"), "{l}"),
        }
    }
    if engine == Engine::Qemu {
        // Every page of the zone was touched by the two scans (and counted
        // once per blocked period: once before the echo call between them
        // and once at the end of the run at the latest).
        let echo_zone = h.td().agent(1).and_then(|a| a.alias_of).unwrap();
        let z = h.td().agent(echo_zone).unwrap().zone.unwrap();
        let pages: std::collections::BTreeSet<u64> = h
            .violations()
            .filter(|v| v.found_after && z.contains(v.access.gpa))
            .map(|v| page(v.access.gpa))
            .collect();
        assert_eq!(
            pages.len() as u64,
            z.pages(),
            "every page of echo's zone counted"
        );
    }

    // B. The raw leaves and the race reached TETD-H.
    // Calls enter through the zone's host id; agent 40 is an alias of it.
    let hostile_zone = h
        .td()
        .agent(HOSTILE)
        .and_then(|a| a.alias_of)
        .expect("agent 40 is an alias of its image's zone");
    let calls: Vec<_> = h.calls().copied().collect();
    let race_enters: Vec<_> = calls
        .iter()
        .filter(|c| c.call.leaf == Leaf::VmmEnter as u64 && c.call.args[0] == hostile_zone as u64)
        .collect();
    let busy = race_enters
        .iter()
        .filter(|c| c.ret.status == tetd::abi::Error::AlreadyRunning.code() as u64)
        .count();
    assert!(busy >= 10, "{busy} ENTERs refused as AlreadyRunning");
    assert!(race_enters.iter().any(|c| c.vcpu == 1) && race_enters.iter().any(|c| c.vcpu == 0));
    // The fuzzers' ids (100..=107) reached it too.
    let fuzzed = calls
        .iter()
        .filter(|c| (100..108).contains(&c.call.args[0]))
        .count();
    assert!(fuzzed >= 200, "{fuzzed} fuzz calls reached TETD-H");
    assert_eq!(h.td().seam_trouble().errors, 0);

    // F. The VM ended inside agent 40's call.
    let td = h.td();
    assert_eq!(
        td.agent(hostile_zone).unwrap().state,
        AgentState::Running { vcpu: 0 },
        "killed mid-call"
    );
    let live: Vec<u32> = td
        .agents()
        .filter(|a| a.state != AgentState::Disabled)
        .map(|a| a.id)
        .collect();
    assert!(
        live.contains(&1) && live.contains(&HOSTILE) && live.contains(&hostile_zone),
        "{live:?}"
    );
    model(td.seam()).check_consistency().unwrap();
    let sub = notifier.subscribe(1024).unwrap();
    h.vcpus_stopped(2);
    h.td_mut().teardown().unwrap();
    let td = h.td();
    assert!(td
        .agents()
        .all(|a| a.state == AgentState::Disabled && a.zone.is_none()));
    assert!(td.leaked_zones().is_empty());
    assert_eq!(model(td.seam()).page_count(), 0);
    assert_eq!(td.gpa_allocator().free_pages(), td.gpa_allocator().total());
    let pool = td.pool().lock().unwrap();
    assert_eq!(
        pool.allocator().free_pages(),
        pool.pages(),
        "every pool page back"
    );
    pool.allocator().check().unwrap();
    drop(pool);
    let ev = sub.recv_timeout(Duration::from_secs(1)).unwrap();
    let mut ended: Vec<u32> = ev
        .iter()
        .filter(|e| {
            e.kind == EventKind::Disable && e.vcpu == HOST_VCPU && e.arg0 == DISABLE_BY_TEARDOWN
        })
        .map(|e| e.agent)
        .collect();
    ended.sort_unstable();
    let mut live = live;
    live.sort_unstable();
    assert_eq!(ended, live, "a disable event per live agent");
}

#[test]
fn guest_kernel_attacks_the_host_and_the_module() {
    let test = "guest_kernel_attacks_the_host_and_the_module";
    let root = vmm_common::repo_root();
    if let Some(r) = skip_reason(&root) {
        vmm_common::skip(test, &r);
        return;
    }
    let engine = select_engine(EngineChoice::Auto).unwrap().engine;
    let spec = InitramfsSpec {
        extra: artefacts(&root).unwrap(),
        ..Default::default()
    };
    let initrd = vmm_common::scratch().join("attack-guest.cpio");
    std::fs::write(&initrd, build_busybox_initramfs(&spec).unwrap()).unwrap();
    let kernel = GuestKernel::locate(&root).unwrap();
    let mut config = VmConfig::new(kernel.boot_image(), Some(initrd));
    config.vcpus = 2;
    config.mem_mib = 512;
    config.timeout = Duration::from_secs(400);
    let opts = TetdOptions::default();
    match engine {
        Engine::Qemu => {
            let h = TetdHandler::qemu(&opts).unwrap();
            let (out, h) = tetd_kvm::qemu::run_qemu(config, h).unwrap();
            judge(engine, &out, h, &opts.notifier, |s| s.model());
        }
        Engine::Kvm => {
            let h = TetdHandler::kvm(&opts).unwrap();
            let (out, h) = tetd_kvm::vmm::run_vm(config, h).unwrap();
            judge(engine, &out, h, &opts.notifier, |s| s.model());
        }
    }
}
