//! Property tests of TETD-H's core.
//!
//! 1. The contiguous allocator against a bitmap oracle: never overlapping
//!    ranges, exhaustion exactly when no free run fits, exact error data.
//! 2. The Secure-EPT model against an oracle that states the TLB-tracking
//!    rule differently (by counting successful TRACKs instead of epochs and
//!    refcounts): same result class, same page states, same tracking.
//! 3. Random sequences of hypercalls from random vCPUs of two TDs,
//!    interleaved with vCPU entries/exits, host TRACKs, kicks, violation
//!    reports and invalid raw SEAM operations: every leaf's result matches a
//!    shadow agent table, and after every step the invariants hold (a zone
//!    page is guest-accessible only while its own agent runs; idle zones are
//!    blocked *and* tracked; no page belongs to two zones; the zone pool and
//!    GPA allocators account for every page; TETD-H never issues a SEAM
//!    operation the TDX rules reject).

mod core_common;

use std::collections::{BTreeMap, BTreeSet};

use core_common::*;
use proptest::prelude::*;
use tetd::abi::regs::HypercallArgs;
use tetd::abi::{access, tdx, Error, HostAgentState, Leaf, Mode, PAGE_SIZE, ZONE_GPA_BASE};
use tetd_kvm::seam::{SeamError, SeamOps};
use tetd_kvm::seam_model::{SeptModel, SeptState};
use tetd_kvm::zone_alloc::{AllocError, ContigAllocator};
use tetd_kvm::{Host, TdConfig};

// ---------------------------------------------------------------------------
// 1. allocator
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum AOp {
    Alloc(u64),
    Free(usize),
}

fn aop() -> impl Strategy<Value = AOp> {
    prop_oneof![3 => (1u64..24).prop_map(AOp::Alloc), 2 => any::<usize>().prop_map(AOp::Free)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn allocator_matches_bitmap(total in 1u64..160, ops in prop::collection::vec(aop(), 1..120)) {
        let mut a = ContigAllocator::new(total);
        let mut used = vec![false; total as usize];
        let mut live: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                AOp::Alloc(n) => {
                    // Oracle: the longest free run.
                    let (mut best, mut run) = (0u64, 0u64);
                    for u in &used {
                        run = if *u { 0 } else { run + 1 };
                        best = best.max(run);
                    }
                    let free = used.iter().filter(|u| !**u).count() as u64;
                    match a.alloc(n) {
                        Ok(s) => {
                            prop_assert!(best >= n);
                            prop_assert!(s + n <= total, "range past the end");
                            for p in s..s + n {
                                prop_assert!(!used[p as usize], "page {} handed out twice", p);
                                used[p as usize] = true;
                            }
                            live.push((s, n));
                        }
                        Err(e) => {
                            prop_assert_eq!(e, AllocError::Exhausted { requested: n, free, largest: best });
                        }
                    }
                }
                AOp::Free(i) => {
                    if live.is_empty() {
                        prop_assert!(a.free(total + 1).is_err());
                        continue;
                    }
                    let (s, n) = live.swap_remove(i % live.len());
                    prop_assert_eq!(a.free(s), Ok(n));
                    prop_assert!(a.free(s).is_err(), "double free accepted");
                    for p in s..s + n {
                        used[p as usize] = false;
                    }
                }
            }
            prop_assert_eq!(a.check(), Ok(()));
            prop_assert_eq!(a.free_pages(), used.iter().filter(|u| !**u).count() as u64);
        }
        // Freeing everything coalesces back to one run.
        for (s, _) in live {
            a.free(s).unwrap();
        }
        prop_assert_eq!(a.free_runs(), usize::from(total > 0));
        prop_assert_eq!(a.largest_free(), total);
    }
}

// ---------------------------------------------------------------------------
// 2. Secure-EPT model vs. a differently stated oracle
// ---------------------------------------------------------------------------

const G: u64 = ZONE_GPA_BASE;
const NPAGES: u64 = 5;

#[derive(Debug, Clone)]
enum MOp {
    Aug(u64, u64),
    Block(u64),
    Unblock(u64),
    Remove(u64),
    Accept(u64),
    Track,
    Enter(u32),
    Exit(u32),
    Kick,
}

fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0..NPAGES).prop_map(|i| G + i * PAGE_SIZE),
        1 => Just(G + 0x10),        // unaligned
        1 => Just(0x1000u64),       // no Secure-EPT path
        1 => Just(1u64 << 47),      // shared bit
    ]
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        3 => (gpa(), 1u64..5).prop_map(|(g, h)| MOp::Aug(g, h * PAGE_SIZE)),
        3 => gpa().prop_map(MOp::Block),
        2 => gpa().prop_map(MOp::Unblock),
        2 => gpa().prop_map(MOp::Remove),
        2 => gpa().prop_map(MOp::Accept),
        3 => Just(MOp::Track),
        2 => (0u32..3).prop_map(MOp::Enter),
        2 => (0u32..3).prop_map(MOp::Exit),
        1 => Just(MOp::Kick),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OPage {
    state: SeptState,
    hpa: u64,
    /// Successful TRACKs before the BLOCK.
    blocked_at: u64,
}

#[derive(Default)]
struct Oracle {
    pages: BTreeMap<u64, OPage>,
    /// Successful TRACKs so far.
    tracks: u64,
    /// Running vCPU → successful TRACKs before it entered.
    running: BTreeMap<u32, u64>,
}

impl Oracle {
    /// Tracked: some TRACK happened after the BLOCK, and no vCPU that
    /// entered before that TRACK is still running.
    fn tracked(&self, p: &OPage) -> bool {
        self.tracks > p.blocked_at && self.running.values().all(|t| *t > p.blocked_at)
    }

    fn state(&self, g: u64) -> SeptState {
        self.pages.get(&g).map_or(SeptState::Free, |p| p.state)
    }

    /// Address checks common to the SEAMCALLs: Err(class) if invalid.
    fn addr(&self, g: u64) -> Result<(), u64> {
        if g % PAGE_SIZE != 0 || g >= 1 << 47 {
            Err(tdx::TDX_OPERAND_INVALID)
        } else if !(G..G + tetd::abi::ZONE_GPA_SIZE).contains(&g) {
            Err(tdx::TDX_EPT_WALK_FAILED)
        } else {
            Ok(())
        }
    }
}

/// Outcome class: Ok, a TDX status class, or an EPT violation.
#[derive(Debug, PartialEq)]
enum Out {
    Ok,
    Status(u64),
    Violation,
}

fn out<T>(r: Result<T, SeamError>) -> Out {
    match r {
        Ok(_) => Out::Ok,
        Err(SeamError::EptViolation { .. }) => Out::Violation,
        Err(e) => Out::Status(
            e.status()
                .expect("the model only returns TDX statuses")
                .class(),
        ),
    }
}

fn oracle_step(o: &mut Oracle, op: &MOp) -> Out {
    use SeptState::*;
    match *op {
        MOp::Aug(g, h) => {
            if let Err(c) = o.addr(g) {
                return Out::Status(c);
            }
            if o.state(g) != Free {
                return Out::Status(tdx::TDX_EPT_ENTRY_STATE_INCORRECT);
            }
            if o.pages.values().any(|p| p.hpa == h) {
                return Out::Status(tdx::TDX_PAGE_METADATA_INCORRECT);
            }
            o.pages.insert(
                g,
                OPage {
                    state: Pending,
                    hpa: h,
                    blocked_at: 0,
                },
            );
            Out::Ok
        }
        MOp::Block(g) => {
            if let Err(c) = o.addr(g) {
                return Out::Status(c);
            }
            let tracks = o.tracks;
            match o.pages.get_mut(&g) {
                None => Out::Status(tdx::TDX_EPT_ENTRY_STATE_INCORRECT),
                Some(p) => match p.state {
                    Blocked | PendingBlocked => Out::Status(tdx::TDX_GPA_RANGE_ALREADY_BLOCKED),
                    s => {
                        p.state = if s == Mapped { Blocked } else { PendingBlocked };
                        p.blocked_at = tracks;
                        Out::Ok
                    }
                },
            }
        }
        MOp::Unblock(g) => {
            if let Err(c) = o.addr(g) {
                return Out::Status(c);
            }
            let Some(p) = o.pages.get(&g).copied() else {
                return Out::Status(tdx::TDX_EPT_ENTRY_STATE_INCORRECT);
            };
            if !p.state.is_blocked() {
                return Out::Status(tdx::TDX_EPT_ENTRY_STATE_INCORRECT);
            }
            if !o.tracked(&p) {
                return Out::Status(tdx::TDX_TLB_TRACKING_NOT_DONE);
            }
            o.pages.get_mut(&g).unwrap().state = if p.state == Blocked { Mapped } else { Pending };
            Out::Ok
        }
        MOp::Remove(g) => {
            if let Err(c) = o.addr(g) {
                return Out::Status(c);
            }
            let Some(p) = o.pages.get(&g).copied() else {
                return Out::Status(tdx::TDX_EPT_ENTRY_STATE_INCORRECT);
            };
            if !p.state.is_blocked() {
                return Out::Status(tdx::TDX_GPA_RANGE_NOT_BLOCKED);
            }
            if !o.tracked(&p) {
                return Out::Status(tdx::TDX_TLB_TRACKING_NOT_DONE);
            }
            o.pages.remove(&g);
            Out::Ok
        }
        MOp::Accept(g) => {
            if g % PAGE_SIZE != 0 || g >= 1 << 47 {
                return Out::Status(tdx::TDX_OPERAND_INVALID);
            }
            match o.state(g) {
                Pending => {
                    o.pages.get_mut(&g).unwrap().state = Mapped;
                    Out::Ok
                }
                Mapped => Out::Status(tdx::TDX_PAGE_ALREADY_ACCEPTED),
                _ => Out::Violation,
            }
        }
        MOp::Track => {
            if o.running.values().any(|t| *t < o.tracks) {
                Out::Status(tdx::TDX_PREVIOUS_TLB_EPOCH_BUSY)
            } else {
                o.tracks += 1;
                Out::Ok
            }
        }
        MOp::Enter(v) => {
            let t = o.tracks;
            o.running.entry(v).or_insert(t);
            Out::Ok
        }
        MOp::Exit(v) => {
            o.running.remove(&v);
            Out::Ok
        }
        MOp::Kick => {
            let t = o.tracks;
            for e in o.running.values_mut() {
                *e = t;
            }
            Out::Ok
        }
    }
}

fn model_step(m: &mut SeptModel, op: &MOp) -> Out {
    match *op {
        MOp::Aug(g, h) => out(m.page_aug(g, h)),
        MOp::Block(g) => out(m.range_block(g)),
        MOp::Unblock(g) => out(m.range_unblock(g)),
        MOp::Remove(g) => out(m.page_remove(g)),
        MOp::Accept(g) => out(m.page_accept(g)),
        MOp::Track => out(m.track()),
        MOp::Enter(v) => {
            m.vcpu_enter(v);
            Out::Ok
        }
        MOp::Exit(v) => {
            m.vcpu_exit(v);
            Out::Ok
        }
        MOp::Kick => out(m.kick_vcpus()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn model_matches_oracle(ops in prop::collection::vec(mop(), 1..150)) {
        let mut m = SeptModel::new();
        let mut o = Oracle::default();
        let mut removed_ok = 0u64;
        for (i, op) in ops.iter().enumerate() {
            // Snapshot for the REMOVE/UNBLOCK safety checks below.
            let before = match op {
                MOp::Remove(g) | MOp::Unblock(g) => Some((m.state(*g), m.is_tracked(*g))),
                _ => None,
            };
            let got = model_step(&mut m, op);
            let want = oracle_step(&mut o, op);
            prop_assert_eq!(&got, &want, "step {}: {:?}", i, op);
            if got == Out::Ok {
                if let Some((state, tracked)) = before {
                    // Never REMOVE/UNBLOCK an unblocked or untracked page.
                    prop_assert!(state.is_blocked() && tracked, "step {}: {:?} on {:?}", i, op, state);
                    if matches!(op, MOp::Remove(_)) {
                        removed_ok += 1;
                    }
                }
            }
            prop_assert_eq!(m.check_consistency(), Ok(()));
            for k in 0..NPAGES {
                let g = G + k * PAGE_SIZE;
                prop_assert_eq!(m.state(g), o.state(g), "page {} after step {}", k, i);
                if let Some(p) = o.pages.get(&g) {
                    prop_assert_eq!(m.hpa(g), Some(p.hpa));
                    if p.state.is_blocked() {
                        prop_assert_eq!(m.is_tracked(g), o.tracked(p), "tracking of page {} after step {}", k, i);
                    }
                }
            }
            // One host page never backs two GPAs.
            let hpas: BTreeSet<u64> = m.pages().map(|(_, _, h)| h).collect();
            prop_assert_eq!(hpas.len(), m.page_count());
        }
        prop_assert_eq!(m.stats().remove, removed_ok);
    }
}

// ---------------------------------------------------------------------------
// 3. the whole core: random leaf sequences on two TDs
// ---------------------------------------------------------------------------

const POOL: u64 = 48;
const MAX_ZONE: u64 = 8;

#[derive(Debug, Clone)]
enum COp {
    Access {
        td: u32,
        vcpu: u32,
        id: u32,
        pages: u64,
        exclusive: bool,
    },
    Enter {
        td: u32,
        vcpu: u32,
        id: u32,
        wrong_vcpu_arg: bool,
    },
    Resume {
        td: u32,
        vcpu: u32,
        id: u32,
        status: u64,
    },
    Disable {
        td: u32,
        vcpu: u32,
        id: u32,
    },
    Enable {
        td: u32,
        vcpu: u32,
        id: u32,
    },
    Fault {
        td: u32,
        vcpu: u32,
        id: u32,
        vector: u64,
    },
    Query {
        td: u32,
        vcpu: u32,
        id: u32,
    },
    Alias {
        td: u32,
        vcpu: u32,
        id: u32,
        owner: u32,
    },
    VcpuEnter {
        td: u32,
        vcpu: u32,
    },
    VcpuExit {
        td: u32,
        vcpu: u32,
    },
    HostTrack {
        td: u32,
    },
    Kick {
        td: u32,
    },
    Violation {
        td: u32,
        vcpu: u32,
        page: u64,
    },
    RawSeam {
        td: u32,
        which: u8,
        page: u64,
    },
}

fn cop() -> impl Strategy<Value = COp> {
    let td = 1u32..3;
    let vcpu = 0u32..3;
    let id = 0u32..5;
    prop_oneof![
        3 => (td.clone(), vcpu.clone(), id.clone(), 0u64..10, any::<bool>())
            .prop_map(|(td, vcpu, id, pages, exclusive)| COp::Access { td, vcpu, id, pages, exclusive }),
        5 => (td.clone(), vcpu.clone(), id.clone(), prop::bool::weighted(0.1))
            .prop_map(|(td, vcpu, id, wrong_vcpu_arg)| COp::Enter { td, vcpu, id, wrong_vcpu_arg }),
        5 => (td.clone(), vcpu.clone(), id.clone(), prop_oneof![Just(0u64), 1u64..20])
            .prop_map(|(td, vcpu, id, status)| COp::Resume { td, vcpu, id, status }),
        2 => (td.clone(), vcpu.clone(), id.clone()).prop_map(|(td, vcpu, id)| COp::Disable { td, vcpu, id }),
        2 => (td.clone(), vcpu.clone(), id.clone()).prop_map(|(td, vcpu, id)| COp::Enable { td, vcpu, id }),
        1 => (td.clone(), vcpu.clone(), id.clone(), 0u64..40)
            .prop_map(|(td, vcpu, id, vector)| COp::Fault { td, vcpu, id, vector }),
        1 => (td.clone(), vcpu.clone(), id.clone()).prop_map(|(td, vcpu, id)| COp::Query { td, vcpu, id }),
        3 => (td.clone(), vcpu.clone(), id.clone(), id.clone())
            .prop_map(|(td, vcpu, id, owner)| COp::Alias { td, vcpu, id, owner }),
        2 => (td.clone(), vcpu.clone()).prop_map(|(td, vcpu)| COp::VcpuEnter { td, vcpu }),
        2 => (td.clone(), vcpu.clone()).prop_map(|(td, vcpu)| COp::VcpuExit { td, vcpu }),
        1 => td.clone().prop_map(|td| COp::HostTrack { td }),
        1 => td.clone().prop_map(|td| COp::Kick { td }),
        1 => (td.clone(), vcpu.clone(), 0u64..64).prop_map(|(td, vcpu, page)| COp::Violation { td, vcpu, page }),
        1 => (td, 0u8..4, 0u64..64).prop_map(|(td, which, page)| COp::RawSeam { td, which, page }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sh {
    Idle,
    Running(u32),
    Disabled,
}

#[derive(Debug, Clone)]
struct ShAgent {
    st: Sh,
    /// `Some(owner)`: an alias.
    alias_of: Option<u32>,
    pages: u64,
    calls: u64,
    failures: u64,
    faults: u64,
    violations: u64,
}

#[derive(Default)]
struct Shadow {
    agents: BTreeMap<u32, ShAgent>,
}

impl Shadow {
    fn running_on(&self, vcpu: u32) -> bool {
        self.agents.values().any(|a| a.st == Sh::Running(vcpu))
    }
    /// AlreadyRegistered unless unused or a released zone owner.
    fn collides(&self, id: u32) -> bool {
        self.agents
            .get(&id)
            .is_some_and(|a| a.alias_of.is_some() || a.st != Sh::Disabled)
    }
    fn is_alias(&self, id: u32) -> bool {
        self.agents.get(&id).is_some_and(|a| a.alias_of.is_some())
    }
    /// Remove the aliases of `owner`; how many were not disabled (events).
    fn drop_aliases(&mut self, owner: u32) -> u64 {
        let live = self
            .agents
            .values()
            .filter(|a| a.alias_of == Some(owner) && a.st != Sh::Disabled)
            .count() as u64;
        self.agents.retain(|_, a| a.alias_of != Some(owner));
        live
    }
}

/// Run one hypercall the way a VMM does: the vCPU leaves guest mode, the
/// leaf is handled, the vCPU goes back in.
fn hypercall(
    h: &mut Host,
    td: u32,
    vcpu: u32,
    leaf: Leaf,
    args: [u64; 4],
) -> Result<[u64; 3], Error> {
    let t = h.td_mut(td).unwrap();
    let was_in = t.seam().running_vcpus().any(|(v, _)| v == vcpu);
    t.seam_mut().vcpu_exit(vcpu);
    let r = t
        .handle(
            vcpu,
            HypercallArgs {
                leaf: leaf as u64,
                args,
            },
        )
        .into_result();
    if was_in {
        t.seam_mut().vcpu_enter(vcpu);
    }
    r
}

fn can_fit(h: &Host, td: u32, pages: u64) -> bool {
    h.pool().lock().unwrap().allocator().largest_free() >= pages
        && h.td(td).unwrap().gpa_allocator().largest_free() >= pages
}

fn check_host(h: &Host) -> Result<(), String> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for t in h.tds() {
        check_td(t).map_err(|e| format!("td {}: {e}", t.id()))?;
        if t.seam_trouble().errors != 0 {
            return Err(format!(
                "td {}: TETD-H issued a failing SEAM op: {:?}",
                t.id(),
                t.last_seam_error()
            ));
        }
        if !t.leaked_zones().is_empty() {
            return Err(format!("td {}: leaked zones", t.id()));
        }
        ranges.extend(t.zones().map(|(_, z)| (z.host_addr(), z.len())));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(format!("host pages {:#x} shared by two zones", w[1].0));
        }
    }
    let used: u64 = ranges.iter().map(|(_, l)| l / PAGE_SIZE).sum();
    let pool = h.pool().lock().unwrap();
    pool.allocator().check()?;
    if pool.allocator().free_pages() + used != POOL {
        return Err(format!(
            "pool: {} free + {used} in zones != {POOL}",
            pool.allocator().free_pages()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn core_invariants_hold(ops in prop::collection::vec(cop(), 1..80)) {
        let mut h: Host = Host::with_config(POOL, TdConfig { max_zone_pages: MAX_ZONE, max_agents: 16 }).unwrap();
        h.create_td(1, SeptModel::new()).unwrap();
        h.create_td(2, SeptModel::new()).unwrap();
        let mut shadow: BTreeMap<u32, Shadow> = [(1, Shadow::default()), (2, Shadow::default())].into();
        let mut events = 0u64;

        for (step, op) in ops.iter().enumerate() {
            match *op {
                COp::Access { td, vcpu, id, pages, exclusive } => {
                    let mode = if exclusive { Mode::Exclusive } else { Mode::Collaborative };
                    let fits = can_fit(&h, td, pages);
                    let r = hypercall(&mut h, td, vcpu, Leaf::AgentAccess, [id as u64, pages, access::encode(mode, 0), 0]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let min = if exclusive { 0 } else { 1 };
                    let want = if id == 0 {
                        Err(Error::InvalidArgument)
                    } else if pages < min || pages > MAX_ZONE {
                        Err(Error::OutOfRange)
                    } else if sh.collides(id) {
                        Err(Error::AlreadyRegistered)
                    } else if pages > 0 && !fits {
                        Err(Error::ZoneExhausted)
                    } else {
                        Ok(())
                    };
                    prop_assert_eq!(r.map(|_| ()), want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        prop_assert_eq!(r.unwrap()[1], pages);
                        sh.agents.insert(id, ShAgent { st: Sh::Idle, alias_of: None, pages, calls: 0, failures: 0, faults: 0, violations: 0 });
                        events += 1;
                    }
                }
                COp::Enter { td, vcpu, id, wrong_vcpu_arg } => {
                    let arg = if wrong_vcpu_arg { vcpu as u64 + 1 } else { vcpu as u64 };
                    let r = hypercall(&mut h, td, vcpu, Leaf::VmmEnter, [id as u64, arg, 0, 0]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let busy = sh.running_on(vcpu);
                    let want = if wrong_vcpu_arg {
                        Err(Error::InvalidArgument)
                    } else {
                        match sh.agents.get(&id).map(|a| a.st) {
                            None => Err(Error::UnknownAgent),
                            Some(_) if sh.is_alias(id) => Err(Error::AliasEntry),
                            Some(Sh::Disabled) => Err(Error::Disabled),
                            Some(Sh::Running(_)) => Err(Error::AlreadyRunning),
                            Some(Sh::Idle) if busy => Err(Error::BadState),
                            Some(Sh::Idle) => Ok([sh.agents[&id].calls + 1, 0, 0]),
                        }
                    };
                    prop_assert_eq!(r, want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        let a = sh.agents.get_mut(&id).unwrap();
                        a.st = Sh::Running(vcpu);
                        a.calls += 1;
                        events += 1;
                    }
                }
                COp::Resume { td, vcpu, id, status } => {
                    let r = hypercall(&mut h, td, vcpu, Leaf::VmmResume, [id as u64, vcpu as u64, status, 0]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let want = match sh.agents.get(&id) {
                        None => Err(Error::UnknownAgent),
                        Some(a) if a.alias_of.is_some() => Err(Error::AliasEntry),
                        Some(a) => match a.st {
                            Sh::Running(v) if v == vcpu => {
                                Ok([a.calls, a.failures + u64::from(status != 0), 0])
                            }
                            Sh::Running(_) => Err(Error::NotOwner),
                            _ => Err(Error::NotRunning),
                        },
                    };
                    prop_assert_eq!(r, want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        let a = sh.agents.get_mut(&id).unwrap();
                        a.st = Sh::Idle;
                        a.failures += u64::from(status != 0);
                        events += 1;
                    }
                }
                COp::Disable { td, vcpu, id } => {
                    let r = hypercall(&mut h, td, vcpu, Leaf::AgentDisable, [id as u64, 0, 0, 0]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let want = match sh.agents.get(&id).map(|a| a.st) {
                        None => Err(Error::UnknownAgent),
                        Some(Sh::Running(_)) => Err(Error::AlreadyRunning),
                        Some(Sh::Disabled) => Err(Error::BadState),
                        Some(Sh::Idle) => Ok([0, 0, 0]),
                    };
                    prop_assert_eq!(r, want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        sh.agents.get_mut(&id).unwrap().st = Sh::Disabled;
                        events += 1;
                        if !sh.is_alias(id) {
                            events += sh.drop_aliases(id);
                        }
                    }
                }
                COp::Enable { td, vcpu, id } => {
                    let pages = shadow[&td].agents.get(&id).map_or(0, |a| a.pages);
                    let fits = can_fit(&h, td, pages);
                    let r = hypercall(&mut h, td, vcpu, Leaf::AgentEnable, [id as u64, 0, 0, 0]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let want = match sh.agents.get(&id).map(|a| a.st) {
                        None => Err(Error::UnknownAgent),
                        Some(Sh::Disabled) if pages > 0 && !fits => Err(Error::ZoneExhausted),
                        Some(Sh::Disabled) => Ok(()),
                        Some(_) => Err(Error::BadState),
                    };
                    prop_assert_eq!(r.map(|_| ()), want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        sh.agents.get_mut(&id).unwrap().st = Sh::Idle;
                        events += 1;
                    }
                }
                COp::Fault { td, vcpu, id, vector } => {
                    let r = hypercall(&mut h, td, vcpu, Leaf::AgentFault, [id as u64, vector, 0x1000, 0]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let want = if vector >= 32 {
                        Err(Error::InvalidArgument)
                    } else {
                        match sh.agents.get(&id) {
                            None => Err(Error::UnknownAgent),
                            Some(a) if a.alias_of.is_some() => Err(Error::AliasEntry),
                            Some(a) => match a.st {
                                Sh::Running(v) if v == vcpu => Ok([a.faults + 1, 0, 0]),
                                Sh::Running(_) => Err(Error::NotOwner),
                                _ => Err(Error::NotRunning),
                            },
                        }
                    };
                    prop_assert_eq!(r, want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        sh.agents.get_mut(&id).unwrap().faults += 1;
                        events += 1;
                    }
                }
                COp::Query { td, vcpu, id } => {
                    let r = hypercall(&mut h, td, vcpu, Leaf::AgentQuery, [id as u64, 0, 0, 0]);
                    let sh = &shadow[&td];
                    let want = match sh.agents.get(&id) {
                        None => Err(Error::UnknownAgent),
                        Some(a) => {
                            let st = match a.st {
                                Sh::Idle => HostAgentState::Idle,
                                Sh::Running(_) => HostAgentState::Running,
                                Sh::Disabled => HostAgentState::Disabled,
                            };
                            // An alias reports its owner's (zone) counters.
                            let z = a.alias_of.map_or(a, |o| &sh.agents[&o]);
                            Ok([st as u64, z.calls, z.violations])
                        }
                    };
                    prop_assert_eq!(r, want, "step {}: {:?}", step, op);
                }
                COp::Alias { td, vcpu, id, owner } => {
                    let r = hypercall(&mut h, td, vcpu, Leaf::AgentAccess, [id as u64, 0, access::encode_alias(Mode::Exclusive, 0), owner as u64]);
                    let sh = shadow.get_mut(&td).unwrap();
                    let want = if id == 0 || owner == 0 {
                        Err(Error::InvalidArgument)
                    } else {
                        match sh.agents.get(&owner) {
                            None => Err(Error::UnknownAgent),
                            Some(o) if o.alias_of.is_some() => Err(Error::AliasEntry),
                            Some(o) if o.st == Sh::Disabled => Err(Error::Disabled),
                            Some(_) if sh.collides(id) => Err(Error::AlreadyRegistered),
                            Some(_) => Ok([0, 0, 0]),
                        }
                    };
                    prop_assert_eq!(r, want, "step {}: {:?}", step, op);
                    if r.is_ok() {
                        sh.agents.insert(id, ShAgent { st: Sh::Idle, alias_of: Some(owner), pages: 0, calls: 0, failures: 0, faults: 0, violations: 0 });
                        events += 1;
                        let t = h.td(td).unwrap();
                        prop_assert_eq!(t.agent(id).unwrap().alias_of, Some(owner));
                        prop_assert_eq!(t.zone_owner(id).map(|a| a.id), Some(owner));
                    }
                }
                COp::VcpuEnter { td, vcpu } => h.td_mut(td).unwrap().seam_mut().vcpu_enter(vcpu),
                COp::VcpuExit { td, vcpu } => h.td_mut(td).unwrap().seam_mut().vcpu_exit(vcpu),
                COp::HostTrack { td } => {
                    // May fail (a vCPU in the previous epoch); either way harmless.
                    let _ = h.td_mut(td).unwrap().seam_mut().track();
                }
                COp::Kick { td } => h.td_mut(td).unwrap().seam_mut().kick_vcpus().unwrap(),
                COp::Violation { td, vcpu, page } => {
                    let gpa = ZONE_GPA_BASE + page * PAGE_SIZE + 16;
                    let t = h.td_mut(td).unwrap();
                    let owner = t.zone_at(gpa).map(|(id, _)| id);
                    let got = t.report_violation(vcpu, gpa, page % 2 == 0);
                    prop_assert_eq!(got, owner);
                    if let Some(id) = got {
                        shadow.get_mut(&td).unwrap().agents.get_mut(&id).unwrap().violations += 1;
                        events += 1;
                    }
                }
                COp::RawSeam { td, which, page } => {
                    // A host bug or attack on a page outside every zone: the
                    // model must refuse and nothing may change.
                    let gpa = ZONE_GPA_BASE + page * PAGE_SIZE;
                    let t = h.td_mut(td).unwrap();
                    if t.zone_at(gpa).is_none() {
                        let before: Vec<_> = t.seam().pages().collect();
                        let m = t.seam_mut();
                        let r = match which {
                            0 => m.range_block(gpa),
                            1 => m.range_unblock(gpa),
                            2 => m.page_remove(gpa).map(|_| ()),
                            _ => m.page_accept(gpa),
                        };
                        prop_assert!(r.is_err(), "step {}: raw op on a free page succeeded", step);
                        prop_assert_eq!(before, t.seam().pages().collect::<Vec<_>>());
                    }
                }
            }
            if let Err(e) = check_host(&h) {
                prop_assert!(false, "step {}: {:?}: {}", step, op, e);
            }
            prop_assert_eq!(h.notifier().published(), events, "step {}: {:?}", step, op);
        }

        // Tear everything down: all pages come back.
        for td in [1, 2] {
            h.destroy_td(td).unwrap();
        }
        prop_assert_eq!(h.pool().lock().unwrap().allocator().free_pages(), POOL);
    }
}
