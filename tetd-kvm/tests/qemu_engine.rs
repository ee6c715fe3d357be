//! The QEMU/TCG engine with TETD-H attached: the Debian guest kernel
//! (build/guest, `scripts/setup.sh`) boots under QEMU with software
//! emulation, a busybox initramfs runs tetd-kvm/guest/uart_probe.c, which
//! sends TETD hypercalls as uart frames; TETD-H answers them.
//!
//! Checks: the answers the guest printed are exactly what TETD-H recorded
//! (registers, vCPU, order); a measurement and RTMR data passed by GPA are
//! read from guest RAM; the zone window is the zone pool (guest writes land
//! there, a freed zone reads zero in the guest) and not guest RAM; a
//! corrupted frame is skipped; a wrong vendor value is refused without
//! TETD-H; the exit status comes through isa-debug-exit, the console
//! sentinel, or a timeout. Zone blocking is enforced: guest root reading a
//! blocked zone through /dev/mem gets zeroes, its write while blocked does
//! not reach the agent's next window, and TETD-H counts each touched page
//! as a violation found afterwards.
//!
//! Skipped with a printed reason without qemu-system-x86_64, the setup's
//! guest kernel, busybox or a static C toolchain.

mod vmm_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tetd::abi::{Error as AbiError, HostAgentState, Leaf, PAGE_SIZE, ZONE_GPA_BASE};
use tetd_kvm::hv::{
    run_guest, select_engine, Engine, EngineChoice, QemuSeam, TetdHandler, TetdOptions,
};
use tetd_kvm::qemu::{qemu_binary, run_qemu, QemuVm};
use tetd_kvm::rtmr::extend_value;
use tetd_kvm::vmm::initramfs::{build_busybox_initramfs, InitramfsSpec};
use tetd_kvm::vmm::{GuestKernel, StatusSource, VmConfig, VmExit};
use tetd_kvm::AgentState;

/// Why these tests cannot run here, if so.
fn skip_reason() -> Option<String> {
    if let Err(e) = qemu_binary() {
        return Some(e);
    }
    if let Err(e) = GuestKernel::locate(&vmm_common::repo_root()) {
        return Some(format!("no guest kernel: {e}"));
    }
    if !std::path::Path::new(tetd_kvm::vmm::initramfs::DEFAULT_BUSYBOX).is_file() {
        return Some("no /bin/busybox (run scripts/setup.sh)".into());
    }
    None
}

fn build_uart_probe() -> Result<PathBuf, String> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest/uart_probe.c");
    let out = vmm_common::scratch().join("tetd-uart-probe");
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !st.status.success() {
        return Err(format!(
            "gcc failed: {}",
            String::from_utf8_lossy(&st.stderr)
        ));
    }
    Ok(out)
}

/// A config booting the guest kernel with `run_sh` (and the probe) as the
/// init's script; `None` (after a SKIP line) if this host cannot.
fn guest(test: &str, run_sh: &str, with_probe: bool) -> Option<VmConfig> {
    if let Some(r) = skip_reason() {
        vmm_common::skip(test, &r);
        return None;
    }
    let dir = vmm_common::scratch();
    let script = dir.join(format!("qemu-{test}.sh"));
    std::fs::write(&script, run_sh).unwrap();
    let mut extra = vec![(script, "/tetd/run.sh".to_string())];
    if with_probe {
        match build_uart_probe() {
            Ok(p) => extra.push((p, "/tetd/uart-probe".into())),
            Err(e) => {
                vmm_common::skip(test, &format!("cannot build the uart probe: {e}"));
                return None;
            }
        }
    }
    let spec = InitramfsSpec {
        extra,
        ..Default::default()
    };
    let initrd = dir.join(format!("qemu-{test}.cpio"));
    std::fs::write(&initrd, build_busybox_initramfs(&spec).unwrap()).unwrap();
    let kernel = GuestKernel::locate(&vmm_common::repo_root()).unwrap();
    let mut c = VmConfig::new(kernel.boot_image(), Some(initrd));
    c.timeout = Duration::from_secs(300);
    Some(c)
}

const PROBE_SH: &str = r#"P=/tetd/uart-probe
echo "probe: nproc=$(nproc)"
echo "probe: window-ram-lines=$(grep -c '^100000000-' /proc/iomem)"
taskset -c 0 $P hc 8 9
out=$(taskset -c 0 $P hc 1 9 4 0 @meas); echo "$out"
gpa=$(echo "$out" | sed -n 's/.*R11=\(0x[0-9a-f]*\).*/\1/p')
taskset -c 0 $P peek $gpa
taskset -c 0 $P hc 2 9 0
taskset -c 0 $P poke $gpa 0x1234
taskset -c 0 $P hc 3 9 0 0
taskset -c 0 $P peek $gpa
taskset -c 0 $P poke $gpa 0x6666
taskset -c 0 $P hc 2 9 0
taskset -c 0 $P peek $gpa
taskset -c 0 $P hc 3 9 0 0
taskset -c 1 $P hc 6 3 @meas
taskset -c 1 $P garbage 8 9
taskset -c 0 $P hc 4 9
taskset -c 0 $P peek $gpa
out=$(taskset -c 0 $P hc 1 10 1 0 0); echo "$out"
gpa10=$(echo "$out" | sed -n 's/.*R11=\(0x[0-9a-f]*\).*/\1/p')
taskset -c 0 $P hc 2 10 0
taskset -c 0 $P poke $gpa10 0xfeedface
taskset -c 0 $P hc 3 10 0 0
taskset -c 0 $P hc 8 9 0 0 0 0x1234
$P exit 7
echo "probe: not reached"
"#;

/// `(vcpu, [R10, R11, R12, R13])` of every `hc` line the probe printed.
fn printed_answers(console: &str) -> Vec<(u32, [u64; 4])> {
    console
        .lines()
        .filter(|l| l.contains("tetd-uart-probe: hc "))
        .map(|l| {
            let field = |name: &str| {
                let v = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_else(|| panic!("{name} missing in {l:?}"));
                match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).unwrap(),
                    None => v.parse().unwrap(),
                }
            };
            (
                field("vcpu=") as u32,
                [field("R10="), field("R11="), field("R12="), field("R13=")],
            )
        })
        .collect()
}

fn peeks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter(|l| l.contains("tetd-uart-probe: peek "))
        .map(|l| {
            // "tetd-uart-probe: peek 0x100000000 = 0x1234" (printf %#x: "0" for zero)
            let v = l.rsplit(" = ").next().unwrap().trim();
            u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        })
        .collect()
}

fn pattern() -> [u8; 48] {
    std::array::from_fn(|i| (i * 7 + 1) as u8)
}

/// Seconds from the kernel's start to `Run /init` (console timestamp).
fn boot_to_init(console: &str) -> Option<f64> {
    let l = console.lines().find(|l| l.contains("Run /init"))?;
    let ts = l.split(']').next()?.trim_start_matches('[').trim();
    ts.parse().ok()
}

#[test]
fn uart_hypercalls_reach_tetd_h() {
    let test = "uart_hypercalls_reach_tetd_h";
    let Some(mut config) = guest(test, PROBE_SH, true) else {
        return;
    };
    config.vcpus = 2;
    let opts = TetdOptions::default();
    let handler = TetdHandler::<QemuSeam>::qemu(&opts).unwrap();
    assert!(handler.enforces_blocking());
    let (out, h) = run_qemu(config, handler).unwrap();
    let console = out.console.replace('\r', "");
    eprintln!(
        "qemu engine: guest kernel to /init {:?} s, whole run {:.2} s wall",
        boot_to_init(&console),
        out.elapsed.as_secs_f64()
    );
    assert_eq!(
        out.exit,
        VmExit::Status {
            code: 7,
            via: StatusSource::Port
        },
        "console:\n{console}"
    );
    assert!(!console.contains("probe: not reached"));
    assert!(console.contains("probe: nproc=2"), "{console}");
    // The zone window is not guest RAM.
    assert!(console.contains("probe: window-ram-lines=0"), "{console}");

    // What the guest printed is what TETD-H recorded, call by call.
    let printed = printed_answers(&console);
    let recorded: Vec<_> = h.calls().copied().collect();
    assert_eq!(printed.len(), 13, "{console}");
    assert_eq!(
        recorded.len(),
        12,
        "the wrong-vendor call never reaches TETD-H"
    );
    for (i, (p, r)) in printed.iter().zip(&recorded).enumerate() {
        assert_eq!(p.0, r.vcpu, "call {i}: vCPU");
        assert_eq!(
            p.1,
            [
                r.ret.status,
                r.ret.results[0],
                r.ret.results[1],
                r.ret.results[2]
            ],
            "call {i}: registers"
        );
    }
    let leaves: Vec<u64> = recorded.iter().map(|c| c.call.leaf).collect();
    let l = |x: Leaf| x as u64;
    assert_eq!(
        leaves,
        [
            l(Leaf::AgentQuery),
            l(Leaf::AgentAccess),
            l(Leaf::VmmEnter),
            l(Leaf::VmmResume),
            l(Leaf::VmmEnter),
            l(Leaf::VmmResume),
            l(Leaf::RtmrExtend),
            l(Leaf::AgentQuery),
            l(Leaf::AgentDisable),
            l(Leaf::AgentAccess),
            l(Leaf::VmmEnter),
            l(Leaf::VmmResume),
        ]
    );
    assert_eq!(printed[0].1[0], AbiError::UnknownAgent.code() as u64);
    let gpa = printed[1].1[1];
    assert_eq!(printed[1].1, [0, gpa, 4, 0]);
    assert!(gpa >= ZONE_GPA_BASE && gpa % PAGE_SIZE == 0);
    let meas_gpa = recorded[1].call.args[3];
    assert!(meas_gpa > 0 && meas_gpa < 256 << 20, "{meas_gpa:#x}");
    // The call after the corrupted frame (pinned to CPU 1) was answered.
    assert_eq!(recorded[7].vcpu, 1);
    // [state, calls, violations]: both blocked-time touches already counted.
    assert_eq!(printed[7].1, [0, HostAgentState::Idle as u64, 2, 2]);
    // Wrong vendor: refused by the transport.
    assert_eq!(printed[12].1[0], AbiError::InvalidArgument.code() as u64);
    assert_eq!(out.stats.hypercalls, 13);

    // Guest memory passed by GPA was read from guest RAM.
    let a = h.td().agent(9).unwrap();
    assert_eq!(a.measurement, Some(pattern()));
    assert_eq!(a.state, AgentState::Disabled);
    assert_eq!(a.calls, 2);
    assert_eq!(
        h.td().rtmrs().get(3),
        Some(&extend_value(&[0; 48], &pattern()))
    );

    // Zone memory, read by guest root through /dev/mem: the fresh (blocked)
    // zone reads 0; the write inside the first window is gone from the
    // guest's view after VMM_RESUME (the page is taken away); the write
    // while blocked (0x6666) did not reach the second window, which sees
    // the agent's own 0x1234 again; the freed zone was scrubbed.
    assert_eq!(peeks(&console), [0, 0, 0x1234, 0], "{console}");
    // Each blocked-time touch of the zone's first page (the peek before the
    // first window; the peek and poke before the second) was found and
    // counted against agent 9 when the next window opened.
    let v: Vec<_> = h.violations().copied().collect();
    assert_eq!(v.len(), 2, "{v:?}");
    for r in &v {
        assert!(r.found_after, "{r:?}");
        assert_eq!(r.agent, Some(9));
        assert_eq!(r.access.gpa, gpa);
    }
    assert!(h.report().enforces_blocking);
    // The guest's write into agent 10's zone is TETD-H's: saved in its
    // private memory, and no longer in the pool file QEMU maps.
    let (_, z10) = h.td().zones().find(|(id, _)| *id == 10).unwrap();
    assert_eq!(z10.gpa, printed[9].1[1]);
    let saved = h
        .td()
        .seam()
        .saved_page(z10.gpa)
        .expect("agent 10's page is taken away");
    assert_eq!(
        u64::from_le_bytes(saved[..8].try_into().unwrap()),
        0xfeedface
    );
    let pool = h.td().pool().lock().unwrap();
    let mut word = [0u8; 8];
    pool.read(z10.host_addr(), &mut word).unwrap();
    assert_eq!(
        u64::from_le_bytes(word),
        0,
        "the pool file holds nothing of it"
    );
    assert_eq!(pool.allocator().free_pages(), pool.pages() - 1);
    assert_eq!(h.td().seam_trouble().errors, 0);
    h.td().seam().model().check_consistency().unwrap();
}

#[test]
fn console_sentinel_and_run_guest() {
    let test = "console_sentinel_and_run_guest";
    let Some(config) = guest(test, "echo sentinel-run\nexit 5\n", false) else {
        return;
    };
    let run = run_guest(Engine::Qemu, config, TetdOptions::default()).unwrap();
    assert_eq!(
        run.outcome.exit,
        VmExit::Status {
            code: 5,
            via: StatusSource::Sentinel
        },
        "{}",
        run.outcome.console
    );
    assert!(run.outcome.console.contains("sentinel-run"));
    assert!(run.report.enforces_blocking);
    assert!(run.report.agents.is_empty());
}

#[test]
fn timeout_kills_qemu() {
    let test = "timeout_kills_qemu";
    let Some(mut config) = guest(test, "sleep 3600\n", false) else {
        return;
    };
    config.timeout = Duration::from_secs(2);
    let run = run_guest(Engine::Qemu, config, TetdOptions::default()).unwrap();
    assert_eq!(run.outcome.exit, VmExit::Timeout);
    assert!(
        run.outcome.elapsed < Duration::from_secs(20),
        "{:?}",
        run.outcome.elapsed
    );
}

#[test]
fn stop_kills_qemu() {
    let test = "stop_kills_qemu";
    let Some(config) = guest(test, "sleep 3600\n", false) else {
        return;
    };
    let vm = QemuVm::new(config).unwrap();
    let handle = vm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        handle.stop();
    });
    let h = TetdHandler::qemu(&TetdOptions::default()).unwrap();
    let (out, _) = vm.run(h).unwrap();
    stopper.join().unwrap();
    assert_eq!(out.exit, VmExit::Stopped);
    assert!(out.elapsed < Duration::from_secs(20), "{:?}", out.elapsed);
}

#[test]
fn bad_configuration_is_refused() {
    if qemu_binary().is_err() {
        vmm_common::skip("bad_configuration_is_refused", "no qemu-system-x86_64");
        return;
    }
    let dir = vmm_common::scratch();
    let k = dir.join("qemu-bad-kernel");
    std::fs::write(&k, b"not a kernel").unwrap();
    let mut c = VmConfig::new(&k, None);
    c.mem_mib = 3072;
    let e = QemuVm::new(c.clone()).err().expect("too much RAM accepted");
    assert!(e.to_string().contains("at most 2048"), "{e}");
    // QEMU refuses the kernel: a VMM error with QEMU's message, not a status.
    c.mem_mib = 128;
    c.timeout = Duration::from_secs(60);
    let h = TetdHandler::qemu(&TetdOptions::default()).unwrap();
    let (out, _) = run_qemu(c, h).unwrap();
    match out.exit {
        VmExit::Error(m) => assert!(m.contains("QEMU exited with status 1"), "{m}"),
        other => panic!("junk kernel: {other}"),
    }
    // The KVM engine's pool is not a shared file: refused clearly.
    let mut c = VmConfig::new(&k, None);
    c.mem_mib = 128;
    let h = TetdHandler::<QemuSeam>::new(tetd_kvm::TdState::new(
        1,
        QemuSeam::new(0),
        std::sync::Arc::new(std::sync::Mutex::new(
            tetd_kvm::zone_alloc::HostPool::new(16).unwrap(),
        )),
        std::sync::Arc::new(tetd_kvm::notify::Notifier::new()),
        Default::default(),
    ));
    let e = run_qemu(c, h).expect_err("small pool accepted");
    assert!(e.to_string().contains("zone window"), "{e}");
}

#[test]
fn auto_selection_explains_itself() {
    let auto = select_engine(EngineChoice::Auto);
    let kvm = tetd_kvm::vmm::kvm_available();
    let emulated = kvm.is_ok() && tetd_kvm::vmm::kvm_emulates_guest_kernel();
    match (&kvm, emulated, qemu_binary()) {
        (Ok(()), false, _) => assert_eq!(auto.unwrap().engine, Engine::Kvm),
        (_, _, Ok(_)) => {
            let s = auto.unwrap();
            assert_eq!(s.engine, Engine::Qemu);
            assert!(
                s.reason.contains(if emulated { "PVM" } else { "/dev/kvm" }),
                "{}",
                s.reason
            );
        }
        (_, _, Err(_)) => {
            let e = auto.unwrap_err().to_string();
            assert!(e.contains("qemu-system-x86_64"), "{e}");
        }
    }
    assert!(select_engine(EngineChoice::Qemu).is_ok() == qemu_binary().is_ok());
    assert!("tcg".parse::<EngineChoice>().is_err());
}
