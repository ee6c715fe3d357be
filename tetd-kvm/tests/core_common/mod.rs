//! Helpers shared by the `core_*` tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use tetd::abi::regs::HypercallArgs;
use tetd::abi::{access, Error, Leaf, Mode, PAGE_SIZE};
use tetd_kvm::seam::{Gpa, Hpa, SeamError, SeamOp, SeamOps, SeamResult};
use tetd_kvm::seam_model::{SeptModel, SeptState};
use tetd_kvm::{AgentState, TdState};

/// Issue one leaf from `vcpu`.
pub fn call<S: SeamOps>(
    td: &mut TdState<S>,
    vcpu: u32,
    leaf: Leaf,
    args: [u64; 4],
) -> Result<[u64; 3], Error> {
    td.handle(
        vcpu,
        HypercallArgs {
            leaf: leaf as u64,
            args,
        },
    )
    .into_result()
}

/// AGENT_ACCESS of a collaborative agent without measurement.
pub fn access<S: SeamOps>(
    td: &mut TdState<S>,
    vcpu: u32,
    id: u32,
    pages: u64,
) -> Result<[u64; 3], Error> {
    call(
        td,
        vcpu,
        Leaf::AgentAccess,
        [id as u64, pages, access::encode(Mode::Collaborative, 0), 0],
    )
}

pub fn enter<S: SeamOps>(td: &mut TdState<S>, vcpu: u32, id: u32) -> Result<[u64; 3], Error> {
    call(td, vcpu, Leaf::VmmEnter, [id as u64, vcpu as u64, 0, 0])
}

pub fn resume<S: SeamOps>(
    td: &mut TdState<S>,
    vcpu: u32,
    id: u32,
    status: u64,
) -> Result<[u64; 3], Error> {
    call(
        td,
        vcpu,
        Leaf::VmmResume,
        [id as u64, vcpu as u64, status, 0],
    )
}

pub fn disable<S: SeamOps>(td: &mut TdState<S>, vcpu: u32, id: u32) -> Result<[u64; 3], Error> {
    call(td, vcpu, Leaf::AgentDisable, [id as u64, 0, 0, 0])
}

/// A guest memory of `size` bytes at GPA 0, shared with the test.
#[derive(Clone)]
pub struct FakeRam(pub Arc<Mutex<Vec<u8>>>);

impl FakeRam {
    pub fn new(size: usize) -> Self {
        FakeRam(Arc::new(Mutex::new(vec![0; size])))
    }
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let mut m = self.0.lock().unwrap();
        m[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
    }
    pub fn reader(&self) -> Box<dyn tetd_kvm::GuestReader> {
        let mem = self.0.clone();
        Box::new(move |gpa: u64, buf: &mut [u8]| -> io::Result<()> {
            let m = mem.lock().unwrap();
            let end = gpa
                .checked_add(buf.len() as u64)
                .filter(|e| *e <= m.len() as u64);
            match end {
                Some(e) => {
                    buf.copy_from_slice(&m[gpa as usize..e as usize]);
                    Ok(())
                }
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "outside guest RAM",
                )),
            }
        })
    }
}

/// Check TETD-H's invariants for one TD backed by the software model.
/// Returns a description of the first violation.
pub fn check_td(td: &TdState<SeptModel>) -> Result<(), String> {
    let m = td.seam();
    m.check_consistency()?;
    // Zones of this TD do not overlap, and the GPA allocator knows exactly
    // the live + leaked zones.
    let mut zones: Vec<(u32, tetd_kvm::Zone)> = td.zones().collect();
    zones.sort_by_key(|(_, z)| z.gpa);
    for w in zones.windows(2) {
        if w[0].1.gpa + w[0].1.len() > w[1].1.gpa {
            return Err(format!("zones of agents {} and {} overlap", w[0].0, w[1].0));
        }
    }
    let mut expect_gpa: BTreeMap<u64, u64> = BTreeMap::new();
    for z in zones
        .iter()
        .map(|(_, z)| *z)
        .chain(td.leaked_zones().iter().copied())
    {
        expect_gpa.insert((z.gpa - tetd::abi::ZONE_GPA_BASE) / PAGE_SIZE, z.pages());
    }
    let got_gpa: BTreeMap<u64, u64> = td.gpa_allocator().allocations().collect();
    if expect_gpa != got_gpa {
        return Err(format!("GPA allocator {got_gpa:?} != zones {expect_gpa:?}"));
    }
    td.gpa_allocator().check()?;
    // Every page in the Secure EPT belongs to a zone, at the right HPA.
    for (gpa, state, hpa) in m.pages() {
        let Some((id, z)) = td.zone_at(gpa) else {
            if td.leaked_zones().iter().any(|z| z.contains(gpa)) {
                continue;
            }
            return Err(format!("page {gpa:#x} ({}) is in no zone", state.name()));
        };
        if hpa != z.host_addr() + (gpa - z.gpa) {
            return Err(format!("page {gpa:#x} of agent {id} backed by {hpa:#x}"));
        }
        // A zone page is guest-accessible only while its own agent runs.
        if m.guest_may_access(gpa) {
            let a = td.agent(id).unwrap();
            if !matches!(a.state, AgentState::Running { .. }) {
                return Err(format!(
                    "page {gpa:#x} of agent {id} ({:?}) is guest-accessible ({}, tracked {})",
                    a.state,
                    state.name(),
                    m.is_tracked(gpa)
                ));
            }
        }
    }
    // Aliases: no zone, never running, their owner is a live zone owner.
    for a in td.agents().filter(|a| a.alias_of.is_some()) {
        let owner = td
            .zone_owner(a.id)
            .ok_or(format!("alias {} has no owner", a.id))?;
        if owner.alias_of.is_some() || owner.state == AgentState::Disabled {
            return Err(format!("alias {} of {:?}", a.id, owner));
        }
        if a.zone.is_some() || a.zone_pages != 0 || matches!(a.state, AgentState::Running { .. }) {
            return Err(format!("alias {} has a zone or runs: {a:?}", a.id));
        }
    }
    // Per-agent zone state.
    for a in td.agents() {
        match (a.state, a.zone) {
            (AgentState::Disabled, Some(_)) => {
                return Err(format!("disabled agent {} has a zone", a.id))
            }
            (AgentState::Disabled, None) => {}
            (_, None) if a.zone_pages != 0 => {
                return Err(format!("agent {} lost its zone", a.id));
            }
            (_, None) => {}
            (st, Some(z)) => {
                for i in 0..z.pages() {
                    let g = z.gpa + i * PAGE_SIZE;
                    let s = m.state(g);
                    let ok = match st {
                        AgentState::Running { .. } => s == SeptState::Mapped,
                        _ => s == SeptState::Blocked && m.is_tracked(g),
                    };
                    if !ok {
                        return Err(format!(
                            "agent {} {st:?}: page {g:#x} is {} (tracked {})",
                            a.id,
                            s.name(),
                            m.is_tracked(g)
                        ));
                    }
                }
            }
        }
        if let AgentState::Running { vcpu } = a.state {
            if td.running_on(vcpu) != Some(a.id) {
                return Err(format!(
                    "agent {} runs on vCPU {vcpu} but the vCPU map disagrees",
                    a.id
                ));
            }
        }
    }
    Ok(())
}

/// A backend that wraps the model and fails a chosen operation after it
/// succeeded `after` times (once, or every time when `sticky`).
pub struct Faulty {
    pub model: SeptModel,
    pub fail_op: Option<SeamOp>,
    pub after: u32,
    pub sticky: bool,
    pub seen: u32,
    pub injected: u32,
}

impl Faulty {
    pub fn new() -> Self {
        Faulty {
            model: SeptModel::new(),
            fail_op: None,
            after: 0,
            sticky: false,
            seen: 0,
            injected: 0,
        }
    }
    pub fn arm(&mut self, op: SeamOp, after: u32, sticky: bool) {
        self.fail_op = Some(op);
        self.after = after;
        self.sticky = sticky;
        self.seen = 0;
    }
    fn gate(&mut self, op: SeamOp, gpa: Option<Gpa>) -> SeamResult<()> {
        if self.fail_op == Some(op) {
            if self.seen >= self.after {
                if !self.sticky {
                    self.fail_op = None;
                }
                self.injected += 1;
                return Err(SeamError::Backend {
                    op,
                    gpa,
                    msg: "injected failure".into(),
                });
            }
            self.seen += 1;
        }
        Ok(())
    }
}

impl SeamOps for Faulty {
    fn page_aug(&mut self, gpa: Gpa, hpa: Hpa) -> SeamResult<()> {
        self.gate(SeamOp::PageAug, Some(gpa))?;
        self.model.page_aug(gpa, hpa)
    }
    fn range_block(&mut self, gpa: Gpa) -> SeamResult<()> {
        self.gate(SeamOp::RangeBlock, Some(gpa))?;
        self.model.range_block(gpa)
    }
    fn range_unblock(&mut self, gpa: Gpa) -> SeamResult<()> {
        self.gate(SeamOp::RangeUnblock, Some(gpa))?;
        self.model.range_unblock(gpa)
    }
    fn track(&mut self) -> SeamResult<()> {
        self.gate(SeamOp::Track, None)?;
        self.model.track()
    }
    fn page_remove(&mut self, gpa: Gpa) -> SeamResult<Hpa> {
        self.gate(SeamOp::PageRemove, Some(gpa))?;
        self.model.page_remove(gpa)
    }
    fn page_accept(&mut self, gpa: Gpa) -> SeamResult<()> {
        self.gate(SeamOp::PageAccept, Some(gpa))?;
        self.model.page_accept(gpa)
    }
    fn kick_vcpus(&mut self) -> SeamResult<()> {
        self.model.kick_vcpus()
    }
    fn vcpu_enter(&mut self, vcpu: u32) {
        self.model.vcpu_enter(vcpu)
    }
    fn vcpu_exit(&mut self, vcpu: u32) {
        self.model.vcpu_exit(vcpu)
    }
}
