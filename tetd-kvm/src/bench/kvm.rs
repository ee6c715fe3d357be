//! Section `kvm`: the KVM engine on this machine's `/dev/kvm`, with the
//! bench micro guest (`tetd-kvm/guest/micro/bench.S`): the bare VM-exit
//! round trip (the physical floor of any hypercall), TETD-H's cheapest
//! leaf, and an agent call's round trip (VMM_ENTER + VMM_RESUME) with the
//! real effect of blocking — the zone's KVM memory slot deleted and
//! re-created — by zone size, with 1 and 2 vCPUs.
//!
//! Timing: the guest runs its hypercalls back to back; the host stamps the
//! arrival of each timed hypercall, so one sample = one full round trip
//! (guest instructions, VM exit, VMM dispatch, handler, VM entry).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tetd::abi::{Leaf, PAGE_SIZE};

use super::report::Unit;
use super::stats::{sample_ns, Summary};
use super::{run_cmd, BenchConfig, Report, SectionError, SectionResult};
use crate::hv::{KvmSeam, TetdHandler, TetdOptions};
use crate::vmm::{
    kvm_regs, run_vm, HypercallArgs, HypercallHandler, HypercallRet, StatusSource, Violation,
    VmConfig, VmExit, VmMemoryControl,
};
use crate::TdConfig;

const SECTION: &str = "kvm";
/// Bench-only leaves of the micro guest.
const LEAF_PARAMS: u64 = 0x4250;
const LEAF_NOP: u64 = 0x424e;
const FLAG_USER: u64 = 1 << 8;
/// The address the MMIO scenario reads (bench.S `MMIO_GPA`): in the zone
/// window, never a zone in these runs.
const MMIO_GPA: u64 = 0x1_0fff_0000;
/// `timed_leaf` value standing for the MMIO exits.
const TIMED_MMIO: u64 = u64::MAX;
const FLAG_TOUCH: u64 = 1 << 9;

/// What the micro guest loops on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A hypercall the bench handler answers at once.
    Nop = 1,
    /// AGENT_QUERY of an unknown agent through TETD-H.
    Query = 2,
    /// VMM_ENTER + VMM_RESUME of one agent.
    Call = 3,
    /// Reads of an unbacked zone-window page (MMIO exits, no hypercall).
    Mmio = 4,
}

/// One micro guest run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Loop.
    pub scenario: Scenario,
    /// Iterations.
    pub iterations: u64,
    /// Zone pages (Call).
    pub pages: u64,
    /// Loop in ring 3 (natively executed on PVM hosts).
    pub user: bool,
    /// Write one word into every zone page inside each call window.
    pub touch: bool,
    /// vCPUs (the second one idles; every TRACK has to kick it).
    pub vcpus: u8,
}

/// TETD-H plus the bench leaves and arrival stamps.
struct BenchHandler {
    inner: TetdHandler<KvmSeam>,
    params: [u64; 3],
    timed_leaf: u64,
    stamps: Vec<Instant>,
    /// Time spent inside TETD-H per leaf (ns), for the breakdown.
    handler_ns: std::collections::HashMap<u64, Vec<f64>>,
}

impl HypercallHandler for BenchHandler {
    fn start(&mut self, mem: &mut VmMemoryControl) -> crate::vmm::Result<()> {
        self.inner.start(mem)
    }

    fn hypercall(
        &mut self,
        mem: &mut VmMemoryControl,
        vcpu: u32,
        call: HypercallArgs,
    ) -> HypercallRet {
        let now = Instant::now();
        if call.leaf == self.timed_leaf && self.stamps.len() < self.stamps.capacity() {
            self.stamps.push(now);
        }
        match call.leaf {
            LEAF_PARAMS => HypercallRet::ok(self.params),
            LEAF_NOP => HypercallRet::ok([0; 3]),
            leaf => {
                let r = self.inner.hypercall(mem, vcpu, call);
                let v = self.handler_ns.entry(leaf).or_default();
                if v.len() < self.stamps.capacity() {
                    v.push(now.elapsed().as_nanos() as f64);
                }
                r
            }
        }
    }

    fn violation(&mut self, mem: &mut VmMemoryControl, v: Violation) {
        if self.timed_leaf == TIMED_MMIO && v.gpa == MMIO_GPA {
            if self.stamps.len() < self.stamps.capacity() {
                self.stamps.push(Instant::now());
            }
            return;
        }
        self.inner.violation(mem, v);
    }

    fn kicked(&mut self, mem: &mut VmMemoryControl, vcpu: u32, regs: &mut kvm_regs) {
        self.inner.kicked(mem, vcpu, regs);
    }
}

/// Assemble the bench micro guest into `dir`.
pub fn build_guest(dir: &Path) -> SectionResult<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/micro/bench.S");
    if !src.is_file() {
        return Err(SectionError::Skip(format!(
            "{} missing (run from a TETD-rs checkout)",
            src.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(SectionError::fail)?;
    let obj = dir.join("micro-bench.o");
    let elf = dir.join("micro-bench.elf");
    let tool = |r: SectionResult<String>, what: &str| {
        r.map_err(|e| match e {
            SectionError::Fail(m) if m.contains("cannot run") => {
                SectionError::Skip(format!("{what} not available: {m}"))
            }
            e => e,
        })
    };
    tool(
        run_cmd(Command::new("gcc").arg("-c").arg(&src).arg("-o").arg(&obj)),
        "gcc",
    )?;
    tool(
        run_cmd(
            Command::new("ld")
                .args(["-Ttext=0x200000", "-e", "_start", "--build-id=none", "-o"])
                .arg(&elf)
                .arg(&obj),
        ),
        "ld",
    )?;
    Ok(elf)
}

/// What one micro guest run measured.
#[derive(Debug, Clone, Default)]
pub struct MicroResult {
    /// ns between consecutive timed hypercalls (round trips).
    pub round_trips: Vec<f64>,
    /// ns inside TETD-H per leaf number.
    pub handler_ns: std::collections::HashMap<u64, Vec<f64>>,
}

/// Boot the micro guest once; the ns between consecutive timed hypercalls.
pub fn run_micro(elf: &Path, r: Run) -> SectionResult<Vec<f64>> {
    run_micro_detail(elf, r).map(|m| m.round_trips)
}

/// [`run_micro`] with the time spent in TETD-H.
pub fn run_micro_detail(elf: &Path, r: Run) -> SectionResult<MicroResult> {
    let mut flags = r.scenario as u64;
    if r.user {
        flags |= FLAG_USER;
    }
    if r.touch {
        flags |= FLAG_TOUCH;
    }
    let opts = TetdOptions {
        pool_pages: r.pages.max(1) + 16,
        td_config: TdConfig {
            max_zone_pages: r.pages.max(1),
            ..TdConfig::default()
        },
        ..TetdOptions::default()
    };
    let inner = TetdHandler::kvm(&opts).map_err(SectionError::fail)?;
    let timed_leaf = match r.scenario {
        Scenario::Nop => LEAF_NOP,
        Scenario::Query => Leaf::AgentQuery as u64,
        Scenario::Call => Leaf::VmmEnter as u64,
        Scenario::Mmio => TIMED_MMIO,
    };
    let h = BenchHandler {
        inner,
        params: [flags, r.iterations, r.pages],
        timed_leaf,
        stamps: Vec::with_capacity(r.iterations as usize),
        handler_ns: Default::default(),
    };
    let mut config = VmConfig::new(elf, None);
    config.vcpus = r.vcpus;
    config.mem_mib = crate::vmm::MIN_MEM_MIB;
    config.timeout = Duration::from_secs(120);
    let (out, h) = run_vm(config, h).map_err(SectionError::fail)?;
    match out.exit {
        VmExit::Status {
            code: 0,
            via: StatusSource::Port,
        } => {}
        // Ring 3 cannot write the exit port on PVM hosts: the final port
        // write ends the VM with a shutdown instead.
        VmExit::Shutdown if r.user && h.stamps.len() as u64 == r.iterations => {}
        VmExit::Shutdown if r.user => {
            return Err(SectionError::Skip(format!(
            "the micro guest could not run its loop in ring 3 here (shutdown after {} of {} exits)",
            h.stamps.len(),
            r.iterations
        )))
        }
        e => {
            return Err(SectionError::Fail(format!(
                "micro guest {r:?} ended with {e} (status 2..5: a TETD leaf failed, see bench.S)"
            )))
        }
    }
    Ok(MicroResult {
        round_trips: h
            .stamps
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_nanos() as f64)
            .collect(),
        handler_ns: h.handler_ns,
    })
}

fn summary(v: &[f64]) -> SectionResult<Summary> {
    Summary::of(v).ok_or_else(|| SectionError::Fail("no samples".into()))
}

/// The section.
pub fn run(cfg: &BenchConfig, rep: &mut Report) -> SectionResult<()> {
    if let Err(e) = crate::vmm::kvm_available() {
        return Err(SectionError::Skip(e));
    }
    let pvm = crate::vmm::kvm_emulates_guest_kernel();
    let elf = build_guest(&cfg.out_dir.join("micro"))?;
    let n = cfg.iters(20_000, 200) as u64;
    let base = Run {
        scenario: Scenario::Nop,
        iterations: n,
        pages: 1,
        user: false,
        touch: false,
        vcpus: 1,
    };
    let syscall = summary(&sample_ns(n as usize, || {
        // SAFETY: a syscall without arguments or side effects.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }))?;
    // The floor: an exit from guest code that runs natively (ring 3; on PVM
    // ring-0 code is emulated). PVM ignores IOPL, so this exit is an MMIO
    // read of an unbacked page, not a port write.
    let mmio = Run {
        scenario: Scenario::Mmio,
        user: true,
        ..base
    };
    match run_micro(&elf, mmio) {
        Ok(v) => rep.add(
            "kvm.exit",
            SECTION,
            "bare VM exit round trip from native guest code (ring-3 MMIO read, answered by the VMM)",
            Unit::Ns,
            summary(&v)?,
            Some(("one bare host syscall (getppid)", syscall)),
            if pvm { "PVM /dev/kvm" } else { "/dev/kvm" },
        ),
        Err(SectionError::Skip(why)) => rep.notes.push(format!("kvm: {why}")),
        Err(e) => return Err(e),
    }
    let ring0 = if pvm {
        "PVM: the ring-0 guest loop is emulated (~µs per instruction)"
    } else {
        "guest loop in ring 0"
    };
    let exit = summary(&run_micro(&elf, base)?)?;
    rep.add(
        "kvm.exit.port",
        SECTION,
        "bare hypercall round trip (port I/O exit answered by the VMM at once)",
        Unit::Ns,
        exit,
        Some(("one bare host syscall (getppid)", syscall)),
        ring0,
    );
    let query = summary(&run_micro(
        &elf,
        Run {
            scenario: Scenario::Query,
            ..base
        },
    )?)?;
    rep.add(
        "kvm.query",
        SECTION,
        "TETD hypercall, AGENT_QUERY of an unknown agent",
        Unit::Ns,
        query,
        Some(("bare hypercall", exit)),
        ring0,
    );
    let two_exits = Summary::single(2.0 * exit.median);
    let sizes: &[u64] = if cfg.quick {
        &[1, 16]
    } else {
        &[1, 16, 256, 4096]
    };
    let mut one_page = None;
    for &pages in sizes {
        let iters = if cfg.quick {
            20
        } else {
            (40_000 / pages).clamp(100, 5000)
        };
        let r = Run {
            scenario: Scenario::Call,
            iterations: iters,
            pages,
            ..base
        };
        let m = run_micro_detail(&elf, r)?;
        let s = summary(&m.round_trips)?;
        let inside = |leaf: Leaf| {
            m.handler_ns
                .get(&(leaf as u64))
                .cloned()
                .unwrap_or_default()
        };
        let (enter, resume) = (inside(Leaf::VmmEnter), inside(Leaf::VmmResume));
        let both: Vec<f64> = enter.iter().zip(&resume).map(|(a, b)| a + b).collect();
        rep.add(
            &format!("kvm.call.host.{pages}p"),
            SECTION,
            &format!(
                "of which inside TETD-H (ENTER + RESUME handlers, slot changes), {pages}-page zone"
            ),
            Unit::Ns,
            summary(&both)?,
            Some(("the whole call window", s)),
            "host side only",
        );
        rep.add(
            &format!("kvm.call.{pages}p"),
            SECTION,
            &format!("agent call window (VMM_ENTER + VMM_RESUME), {pages}-page zone, 1 vCPU"),
            Unit::Ns,
            s,
            Some(("2 bare hypercalls", two_exits)),
            "zone KVM slot re-created at ENTER, deleted at RESUME; guest touches no page",
        );
        if pages == 1 {
            one_page = Some(s);
        } else if let Some(one) = one_page {
            rep.add(
                &format!("kvm.call.per_page.{pages}p"),
                SECTION,
                &format!("block + unblock per zone page, {pages}-page zone"),
                Unit::NsPerPage,
                Summary::single((s.min - one.min) / (pages as f64 - 1.0)),
                Some(("a whole 1-page call window", one)),
                "(min(n) − min(1)) / (n − 1): minimums, the medians are noisy on a shared host",
            );
        }
        if pages > 1 && pages <= 256 {
            let t = summary(&run_micro(&elf, Run { touch: true, ..r })?)?;
            rep.add(
                &format!("kvm.call.touch.{pages}p"),
                SECTION,
                &format!(
                    "agent call window, {pages}-page zone, the guest writes every page ({} KiB)",
                    pages * PAGE_SIZE / 1024
                ),
                Unit::Ns,
                t,
                Some(("the same window without touching", s)),
                "each call faults every page back in (the slot was deleted at RESUME)",
            );
        }
    }
    // 1 vs 2 vCPUs: the second vCPU idles in KVM_RUN, so every TRACK finds
    // it in the old epoch and kicks it.
    let one = one_page.ok_or_else(|| SectionError::Fail("no 1-page figure".into()))?;
    let r2 = Run {
        scenario: Scenario::Call,
        iterations: if cfg.quick { 20 } else { 5000 },
        pages: 1,
        vcpus: 2,
        ..base
    };
    let two = summary(&run_micro(&elf, r2)?)?;
    let rate = |s: &Summary| Summary::single(1e9 / s.median);
    rep.add(
        "kvm.calls_per_sec.1vcpu",
        SECTION,
        "agent calls per second, 1 vCPU (1-page zone)",
        Unit::PerSec,
        rate(&one),
        Some((
            "bare hypercalls per second / 2",
            Summary::single(1e9 / (2.0 * exit.median)),
        )),
        "one caller",
    );
    rep.add(
        "kvm.calls_per_sec.2vcpu",
        SECTION,
        "agent calls per second, 2 vCPUs (1-page zone)",
        Unit::PerSec,
        rate(&two),
        Some(("the same with 1 vCPU", rate(&one))),
        "one caller; the idle vCPU is kicked at every TRACK",
    );
    Ok(())
}
