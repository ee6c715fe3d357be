//! The hypercall decoder's fuzz oracle, shared by the coverage-guided
//! target (tetd-kernel/fuzz/fuzz_targets/hypercalls.rs, cargo-fuzz on
//! nightly) and the fixed-budget stable run (tests/fuzz_stable.rs).
//!
//! A sequence of hypercalls (any leaf, any arguments, from one of four
//! vCPUs, which leave and re-enter the TD around each call as on a real TD
//! exit) goes to one TD's `TetdHandler` over the TDX model. After every
//! call: the status is 0 or a known error code and the results are zero on
//! failure; a failed leaf changed nothing in the agent table; TETD-H's
//! invariants hold (`core_common::check_td`); the pool holds exactly the
//! live zones' pages. At the end teardown returns every page.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tetd::abi::regs::HypercallArgs;
use tetd::abi::Error;
use tetd_kvm::hv::TetdHandler;
use tetd_kvm::notify::Notifier;
use tetd_kvm::zone_alloc::HostPool;
use tetd_kvm::{AgentState, SeptModel, TdConfig, TdState};

use crate::core_common::{check_td, FakeRam};

/// One hypercall of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Calling vCPU (0..4).
    pub vcpu: u32,
    /// R11.
    pub leaf: u64,
    /// R12..R15.
    pub args: [u64; 4],
}

/// Pool pages of the fuzzed TD (small, so exhaustion is reached).
pub const POOL_PAGES: u64 = 48;
/// vCPUs of the fuzzed TD.
pub const VCPUS: u32 = 4;
/// GPA of a 48-byte pattern in the TD's RAM (measurement / RTMR data).
pub const DATA_GPA: u64 = 0x1000;

/// Steps from raw fuzzer bytes, 10 bytes per step. The decoding is
/// leaf-aware so random bytes reach the success paths: mostly a real leaf
/// with the arguments it expects (small ids, the calling vCPU, small page
/// counts, the data GPA), 1 in 8 a raw 64-bit leaf, 1 in 8 one argument
/// replaced by a raw word.
pub fn steps_from_bytes(data: &[u8]) -> Vec<Step> {
    data.chunks(10)
        .filter(|c| c.len() == 10)
        .map(|c| {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                for (k, b) in w.iter_mut().enumerate() {
                    *b = c[(i + k) % 10];
                }
                u64::from_le_bytes(w)
            };
            let vcpu = (c[1] as u32) % VCPUS;
            let leaf = if c[0] & 7 == 0 {
                word(2)
            } else {
                1 + (c[0] >> 3) as u64 % 8
            };
            let id = 1 + (c[2] % 4) as u64;
            let mut args = match leaf {
                1 => [
                    id,
                    (c[3] % 5) as u64,
                    ((c[4] & 1) as u64) << 32,
                    if c[5] & 1 == 1 { DATA_GPA } else { 0 },
                ],
                2 | 3 => [
                    id,
                    if c[3] & 7 == 0 {
                        (c[3] >> 3) as u64 % 5
                    } else {
                        vcpu as u64
                    },
                    if leaf == 3 { (c[4] % 3) as u64 } else { 0 },
                    0,
                ],
                6 => [(c[3] % 5) as u64, DATA_GPA, 0, 0],
                7 => [id, (c[3] % 40) as u64, word(4), 0],
                _ => [id, 0, 0, 0],
            };
            if c[9] & 7 == 0 {
                args[((c[9] >> 3) & 3) as usize] = word(5);
            }
            Step { vcpu, leaf, args }
        })
        .collect()
}

/// Successful calls per leaf (index = leaf, 1..=9) and failed calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub ok: [u32; 10],
    pub failed: u32,
}

/// Runs `steps` against a fresh TD and checks everything listed above.
pub fn run(steps: &[Step]) -> Outcome {
    let mut out = Outcome::default();
    let ram = FakeRam::new(1 << 16);
    ram.write(DATA_GPA, &[0x5a; 48]);
    let pool = Arc::new(Mutex::new(HostPool::new(POOL_PAGES).unwrap()));
    let mut td = TdState::new(
        7,
        SeptModel::new(),
        pool.clone(),
        Arc::new(Notifier::new()),
        TdConfig {
            max_zone_pages: 16,
            max_agents: 8,
        },
    );
    td.set_guest_reader(ram.reader());
    let mut h = TetdHandler::new(td);
    h.vcpus_started(VCPUS);
    for (i, s) in steps.iter().enumerate() {
        let before: Vec<_> = h.td().agents().cloned().collect();
        let ret = h.handle(
            s.vcpu,
            HypercallArgs {
                leaf: s.leaf,
                args: s.args,
            },
        );
        if ret.status == 0 {
            if let Some(n) = out.ok.get_mut(s.leaf as usize) {
                *n += 1;
            }
        } else {
            out.failed += 1;
            assert!(
                Error::try_from_code(ret.status).is_some(),
                "step {i} {s:x?}: unknown status {:#x}",
                ret.status
            );
            assert_eq!(ret.results, [0; 3], "step {i} {s:x?}: results on failure");
            let after: Vec<_> = h.td().agents().cloned().collect();
            assert_eq!(
                before, after,
                "step {i} {s:x?}: a failed leaf changed the table"
            );
        }
        check_td(h.td()).unwrap_or_else(|e| panic!("step {i} {s:x?}: {e}"));
        let zone_pages: u64 = h.td().zones().map(|(_, z)| z.pages()).sum::<u64>()
            + h.td().leaked_zones().iter().map(|z| z.pages()).sum::<u64>();
        let free = pool.lock().unwrap().allocator().free_pages();
        assert_eq!(free + zone_pages, POOL_PAGES, "step {i}: pool accounting");
    }
    h.vcpus_stopped(VCPUS);
    h.td_mut().teardown().unwrap();
    assert!(h
        .td()
        .agents()
        .all(|a| a.state == AgentState::Disabled && a.zone.is_none()));
    check_td(h.td()).unwrap();
    assert_eq!(h.td().seam().page_count(), 0);
    assert_eq!(pool.lock().unwrap().allocator().free_pages(), POOL_PAGES);
    out
}
