//! Cost of TETD-H's core paths on the software TDX model (no KVM):
//! an agent call (VMM_ENTER + VMM_RESUME) by zone size, a zone's whole life
//! (AGENT_ACCESS + AGENT_DISABLE), the zone allocator under fragmentation,
//! and one notification through the eventfd path.
//!
//! Run: `cargo bench -p tetd-kvm --bench core_leaves`. Prints ns per
//! operation (median of 7 rounds); this is a measurement, not a test.

use std::hint::black_box;
use std::time::Instant;

use tetd::abi::regs::HypercallArgs;
use tetd::abi::{access, Leaf, Mode};
use tetd_kvm::notify::{Event, EventKind, Notifier};
use tetd_kvm::seam_model::SeptModel;
use tetd_kvm::zone_alloc::ContigAllocator;
use tetd_kvm::{Host, TdConfig};

fn median_ns(rounds: usize, iters: u64, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn args(leaf: Leaf, a: [u64; 4]) -> HypercallArgs {
    HypercallArgs {
        leaf: leaf as u64,
        args: a,
    }
}

fn main() {
    println!("{:<44} {:>12}", "operation", "ns/op");
    for pages in [1u64, 16, 256] {
        let mut h: Host = Host::with_config(
            4096,
            TdConfig {
                max_zone_pages: 4096,
                max_agents: 8,
            },
        )
        .unwrap();
        let td = h.create_td(1, SeptModel::new()).unwrap();
        let enc = access::encode(Mode::Collaborative, 0);
        td.handle(0, args(Leaf::AgentAccess, [1, pages, enc, 0]))
            .into_result()
            .unwrap();
        let iters = (20_000 / pages).max(20);
        let ns = median_ns(7, iters, || {
            black_box(td.handle(0, args(Leaf::VmmEnter, [1, 0, 0, 0])));
            black_box(td.handle(0, args(Leaf::VmmResume, [1, 0, 0, 0])));
        });
        println!(
            "{:<44} {:>12.0}",
            format!("agent call (ENTER+RESUME), {pages} pages"),
            ns
        );
        let ns = median_ns(7, iters / 2 + 1, || {
            black_box(td.handle(0, args(Leaf::AgentAccess, [2, pages, enc, 0])));
            black_box(td.handle(0, args(Leaf::AgentDisable, [2, 0, 0, 0])));
        });
        println!(
            "{:<44} {:>12.0}",
            format!("zone life (ACCESS+DISABLE), {pages} pages"),
            ns
        );
    }

    // Allocator: a fragmented pool (every other 4-page run taken).
    let mut a = ContigAllocator::new(1 << 16);
    let runs: Vec<u64> = (0..(1 << 14)).map(|_| a.alloc(4).unwrap()).collect();
    for s in runs.iter().step_by(2) {
        a.free(*s).unwrap();
    }
    let ns = median_ns(7, 10_000, || {
        let s = a.alloc(3).unwrap();
        a.free(black_box(s)).unwrap();
    });
    println!("{:<44} {:>12.0}", "alloc+free 3 pages, 8192 free runs", ns);

    let n = Notifier::new();
    let sub = n.subscribe(1 << 16).unwrap();
    let ev = Event {
        seq: 0,
        td: 1,
        kind: EventKind::Enter,
        agent: 1,
        vcpu: 0,
        arg0: 0,
        arg1: 0,
    };
    let ns = median_ns(7, 10_000, || {
        n.publish(ev);
        black_box(sub.recv().unwrap());
    });
    println!(
        "{:<44} {:>12.0}",
        "notify: publish + eventfd read + dequeue", ns
    );
}
