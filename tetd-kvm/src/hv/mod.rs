//! TETD-H attached to a running guest: the hypercall handler both engines
//! use, and the SEAM backends that give the TDX-module model real effects.
//!
//! * [`TetdHandler`] owns one TD's [`TdState`] and answers the guest's
//!   TETD hypercalls with it, whatever delivered them: the KVM VMM
//!   ([`crate::vmm`], port transport, through [`HypercallHandler`]) or the
//!   QEMU/TCG engine ([`crate::qemu`], uart transport). It records every
//!   call (bounded log), reports blocked-zone accesses the VMM saw as
//!   violations ([`TdState::report_violation`]) and tells the epoch model
//!   when a vCPU leaves and re-enters the guest.
//! * [`KvmSeam`]: the KVM backend. The software model ([`SeptModel`])
//!   decides; the effect is real: a zone whose pages are all MAPPED has a
//!   KVM memory slot over its pool memory, any other zone has none, so a
//!   guest access to a blocked zone exits to the VMM and is reported.
//! * [`QemuSeam`]: the QEMU/TCG backend. The model decides; QEMU maps the
//!   zone window from TETD-H's pool file, and a page the guest may not
//!   reach is taken out of that file (saved by TETD-H, hole punched) and
//!   written back at UNBLOCK. A guest access to such a page cannot be
//!   trapped; it leaves the page present in the file again, which TETD-H
//!   finds and reports before the zone's next window, at its removal and at
//!   the end of the run.
//! * [`engine`]: choosing an engine (`kvm`, `qemu`, `auto`) and running a
//!   guest with TETD-H attached through either.
//!
//! ```no_run
//! use tetd_kvm::hv::{run_guest, select_engine, EngineChoice, TetdOptions};
//! use tetd_kvm::vmm::{GuestKernel, VmConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sel = select_engine(EngineChoice::Auto)?;
//! eprintln!("engine {} ({})", sel.engine, sel.reason);
//! let kernel = GuestKernel::locate(std::path::Path::new("."))?;
//! let config = VmConfig::new(kernel.boot_image(), Some("initrd.cpio".into()));
//! let run = run_guest(sel.engine, config, TetdOptions::default())?;
//! println!("{} (blocking enforced: {})", run.outcome.exit, run.report.enforces_blocking);
//! for a in &run.report.agents { println!("agent {} {:?} calls {}", a.id, a.state, a.calls); }
//! # Ok(()) }
//! ```

pub mod engine;
mod kvm_seam;
mod qemu_seam;

pub use engine::{run_guest, select_engine, Engine, EngineChoice, GuestRun, Selection};
pub use kvm_seam::KvmSeam;
pub use qemu_seam::QemuSeam;

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::{PAGE_SIZE, ZONE_GPA_SIZE};

use crate::host::{AgentEntry, AgentId, SeamTrouble, TdConfig, TdId, TdState};
use crate::notify::Notifier;
use crate::rtmr::Rtmrs;
use crate::seam::SeamOps;
use crate::seam_model::SeptModel;
use crate::vmm::{HypercallHandler, Violation, VmMemoryControl};
use crate::zone_alloc::HostPool;

/// Calls kept in [`TetdHandler::calls`] (older ones are dropped and counted).
pub const CALL_LOG_LIMIT: usize = 65536;
/// Violations kept in [`TetdHandler::violations`].
pub const VIOLATION_LOG_LIMIT: usize = 4096;

/// What an engine's SEAM backend can promise.
pub trait EngineSeam: SeamOps + Send {
    /// True if a blocked zone is really inaccessible to the guest (its
    /// accesses trap to the host and are reported); false if BLOCK and
    /// UNBLOCK are only checked by the model.
    fn enforces_blocking(&self) -> bool;

    /// One line for logs and the console: what BLOCK does on this backend.
    fn blocking_note(&self) -> &'static str;
}

impl EngineSeam for SeptModel {
    fn enforces_blocking(&self) -> bool {
        false
    }
    fn blocking_note(&self) -> &'static str {
        "software model only: zone pages are never mapped anywhere"
    }
}

/// One hypercall as TETD-H answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord {
    /// Calling vCPU (as the transport reported it).
    pub vcpu: u32,
    /// R11..R15.
    pub call: HypercallArgs,
    /// R10..R13 as returned.
    pub ret: HypercallRet,
}

/// A guest access to a blocked zone that TETD-H saw, and whose agent it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViolationRecord {
    /// What the VMM saw. For an access found afterwards
    /// ([`ViolationRecord::found_after`]) only `gpa` (the page) is known;
    /// `vcpu` is [`crate::host::HOST_VCPU`], `len` the page size.
    pub access: Violation,
    /// True if the access was found after it happened (a page taken out of
    /// the QEMU engine's zone file was present again), false if the VMM
    /// trapped it as it happened (KVM engine).
    pub found_after: bool,
    /// The agent whose zone contains the address (`None`: no live zone there,
    /// e.g. after AGENT_DISABLE).
    pub agent: Option<AgentId>,
}

/// Where the handler's TETD-H state came from and how it is set up.
#[derive(Clone)]
pub struct TetdOptions {
    /// TD id (appears in events).
    pub td: TdId,
    /// Per-TD limits.
    pub td_config: TdConfig,
    /// Zone pool size in pages for the KVM engine (the QEMU engine's pool is
    /// always the whole zone window, see [`QemuSeam`]).
    pub pool_pages: u64,
    /// Where agent events go (subscribe before the run).
    pub notifier: Arc<Notifier>,
}

impl Default for TetdOptions {
    fn default() -> Self {
        TetdOptions {
            td: 1,
            td_config: TdConfig::default(),
            pool_pages: ZONE_GPA_SIZE / PAGE_SIZE,
            notifier: Arc::new(Notifier::new()),
        }
    }
}

impl std::fmt::Debug for TetdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TetdOptions")
            .field("td", &self.td)
            .field("td_config", &self.td_config)
            .field("pool_pages", &self.pool_pages)
            .finish()
    }
}

/// A snapshot of TETD-H's view after a run.
#[derive(Debug, Clone)]
pub struct TetdReport {
    /// Whether blocked zones were really inaccessible to the guest.
    pub enforces_blocking: bool,
    /// What BLOCK did ([`EngineSeam::blocking_note`]).
    pub blocking_note: &'static str,
    /// The TD's agent table.
    pub agents: Vec<AgentEntry>,
    /// Calls answered (all, including those dropped from `calls`).
    pub total_calls: u64,
    /// The last [`CALL_LOG_LIMIT`] calls.
    pub calls: Vec<CallRecord>,
    /// The last [`VIOLATION_LOG_LIMIT`] trapped accesses.
    pub violations: Vec<ViolationRecord>,
    /// The TD's RTMRs.
    pub rtmrs: Rtmrs,
    /// SEAM failure counters.
    pub seam_trouble: SeamTrouble,
}

/// TETD-H for one guest: answers its hypercalls with a [`TdState`].
pub struct TetdHandler<S: EngineSeam> {
    td: TdState<S>,
    calls: VecDeque<CallRecord>,
    total_calls: u64,
    violations: VecDeque<ViolationRecord>,
}

impl<S: EngineSeam> std::fmt::Debug for TetdHandler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TetdHandler")
            .field("td", &self.td)
            .field("total_calls", &self.total_calls)
            .finish()
    }
}

impl<S: EngineSeam> TetdHandler<S> {
    /// A handler around an existing TD state.
    pub fn new(td: TdState<S>) -> Self {
        TetdHandler {
            td,
            calls: VecDeque::new(),
            total_calls: 0,
            violations: VecDeque::new(),
        }
    }

    /// Tells the epoch model that vCPUs `0..n` are in guest mode (the VM
    /// started). Engines call this once before the first hypercall.
    pub fn vcpus_started(&mut self, n: u32) {
        for v in 0..n {
            self.td.seam_mut().vcpu_enter(v);
        }
    }

    /// Tells the epoch model that vCPUs `0..n` left guest mode for good.
    pub fn vcpus_stopped(&mut self, n: u32) {
        for v in 0..n {
            self.td.seam_mut().vcpu_exit(v);
        }
    }

    /// Answers one TETD hypercall (R10 was the TETD vendor value) from
    /// `vcpu`: the vCPU leaves the guest's epoch for the call and re-enters
    /// after it, as it does around a real TD exit.
    pub fn handle(&mut self, vcpu: u32, call: HypercallArgs) -> HypercallRet {
        self.td.seam_mut().vcpu_exit(vcpu);
        let ret = self.td.handle(vcpu, call);
        self.td.seam_mut().vcpu_enter(vcpu);
        self.total_calls += 1;
        if self.calls.len() == CALL_LOG_LIMIT {
            self.calls.pop_front();
        }
        self.calls.push_back(CallRecord { vcpu, call, ret });
        self.log_found_violations();
        ret
    }

    /// The VMM trapped a guest access to the zone window: counted against
    /// the agent whose zone it hit (event `violation`).
    pub fn report_violation(&mut self, access: Violation) -> Option<AgentId> {
        self.td.seam_mut().vcpu_exit(access.vcpu);
        let agent = self
            .td
            .report_violation(access.vcpu, access.gpa, access.write);
        self.td.seam_mut().vcpu_enter(access.vcpu);
        self.push_violation(ViolationRecord {
            access,
            agent,
            found_after: false,
        });
        agent
    }

    fn push_violation(&mut self, v: ViolationRecord) {
        if self.violations.len() == VIOLATION_LOG_LIMIT {
            self.violations.pop_front();
        }
        self.violations.push_back(v);
    }

    /// Moves the violations TETD-H found after the access
    /// ([`TdState::take_found_violations`]) into the violation log.
    fn log_found_violations(&mut self) {
        for (gpa, agent) in self.td.take_found_violations() {
            self.push_violation(ViolationRecord {
                access: Violation {
                    vcpu: crate::host::HOST_VCPU,
                    gpa,
                    len: PAGE_SIZE as u32,
                    write: false,
                    value: 0,
                    rip: 0,
                },
                agent: Some(agent),
                found_after: true,
            });
        }
    }

    /// The guest has stopped: report every page of a live zone it touched
    /// while the zone was taken away ([`TdState::sweep_touched`]). Engines
    /// call this at the end of a run.
    pub fn guest_stopped(&mut self) {
        self.td.sweep_touched();
        self.log_found_violations();
    }

    /// Whether blocked zones are really inaccessible to the guest.
    pub fn enforces_blocking(&self) -> bool {
        self.td.seam().enforces_blocking()
    }

    /// The TD state.
    pub fn td(&self) -> &TdState<S> {
        &self.td
    }

    /// The TD state, mutable (e.g. to set a guest reader).
    pub fn td_mut(&mut self) -> &mut TdState<S> {
        &mut self.td
    }

    /// The TD state, consuming the handler.
    pub fn into_td(self) -> TdState<S> {
        self.td
    }

    /// The recorded calls, oldest first (at most [`CALL_LOG_LIMIT`]).
    pub fn calls(&self) -> impl Iterator<Item = &CallRecord> {
        self.calls.iter()
    }

    /// Calls answered in total.
    pub fn total_calls(&self) -> u64 {
        self.total_calls
    }

    /// The trapped accesses, oldest first (at most [`VIOLATION_LOG_LIMIT`]).
    pub fn violations(&self) -> impl Iterator<Item = &ViolationRecord> {
        self.violations.iter()
    }

    /// A snapshot of the state.
    pub fn report(&self) -> TetdReport {
        TetdReport {
            enforces_blocking: self.enforces_blocking(),
            blocking_note: self.td.seam().blocking_note(),
            agents: self.td.agents().cloned().collect(),
            total_calls: self.total_calls,
            calls: self.calls.iter().copied().collect(),
            violations: self.violations.iter().copied().collect(),
            rtmrs: self.td.rtmrs().clone(),
            seam_trouble: self.td.seam_trouble(),
        }
    }
}

impl TetdHandler<KvmSeam> {
    /// TETD-H for the KVM engine: a zone pool of `opts.pool_pages` pages
    /// (anonymous memory; zones become KVM memory slots over it).
    pub fn kvm(opts: &TetdOptions) -> io::Result<Self> {
        let pool = Arc::new(Mutex::new(HostPool::new(opts.pool_pages)?));
        Ok(Self::new(TdState::new(
            opts.td,
            KvmSeam::new(),
            pool,
            opts.notifier.clone(),
            opts.td_config,
        )))
    }
}

impl TetdHandler<QemuSeam> {
    /// TETD-H for the QEMU engine: a zone pool in a shared memory file
    /// exactly as large as the zone window, which QEMU maps at
    /// [`tetd::abi::ZONE_GPA_BASE`] (`opts.pool_pages` is ignored); blocked
    /// zone pages are taken out of that file ([`QemuSeam::enforcing`]).
    pub fn qemu(opts: &TetdOptions) -> io::Result<Self> {
        let pool = Arc::new(Mutex::new(HostPool::new_shared(ZONE_GPA_SIZE / PAGE_SIZE)?));
        let seam = QemuSeam::enforcing(pool.clone());
        Ok(Self::new(TdState::new(
            opts.td,
            seam,
            pool,
            opts.notifier.clone(),
            opts.td_config,
        )))
    }
}

impl HypercallHandler for TetdHandler<KvmSeam> {
    fn start(&mut self, mem: &mut VmMemoryControl) -> crate::vmm::Result<()> {
        let pool = self.td.pool().clone();
        self.td.seam_mut().attach(mem.clone(), pool).map_err(|e| {
            crate::vmm::VmmError::Zone(format!("attaching TETD-H zones to the VM: {e}"))
        })?;
        let reader = mem.clone();
        self.td
            .set_guest_reader(Box::new(move |gpa: u64, buf: &mut [u8]| {
                reader.read_guest(gpa, buf).map_err(io::Error::other)
            }));
        self.vcpus_started(mem.vcpus());
        log::info!(
            "td {}: TETD-H attached to the KVM VM ({} vCPUs); {}",
            self.td.id(),
            mem.vcpus(),
            self.td.seam().blocking_note()
        );
        Ok(())
    }

    fn hypercall(
        &mut self,
        _mem: &mut VmMemoryControl,
        vcpu: u32,
        call: HypercallArgs,
    ) -> HypercallRet {
        self.handle(vcpu, call)
    }

    fn violation(&mut self, _mem: &mut VmMemoryControl, v: Violation) {
        self.report_violation(v);
    }
}

#[cfg(test)]
mod tests;
