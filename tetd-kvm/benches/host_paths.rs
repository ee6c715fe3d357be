//! Criterion benches of the host-only hot paths (no KVM, no guest):
//! TETD-H's agent call (VMM_ENTER + VMM_RESUME) on the TDX model by zone
//! size, the model's zone batches alone, an agent call on the host
//! simulator, and image parse + verify against SHA-384 of the same bytes.
//!
//! Run: `cargo bench -p tetd-kvm --bench host_paths`. The same-run ratio
//! table of the whole product is `scripts/bench.sh` (docs/performance.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::{Digest, Sha384};
use tetd::abi::regs::HypercallArgs;
use tetd::abi::{access, Leaf, Mode, ZONE_GPA_BASE};
use tetd::image::Image;
use tetd::verify::{verify_image, Policy};
use tetd_kvm::seam_model::SeptModel;
use tetd_kvm::{Host, SeamOps, TdConfig, ZoneRange};

const SIZES: [u64; 4] = [1, 16, 256, 4096];

fn args(leaf: Leaf, a: [u64; 4]) -> HypercallArgs {
    HypercallArgs {
        leaf: leaf as u64,
        args: a,
    }
}

fn agent_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("tetd_h_enter_resume");
    for pages in SIZES {
        let mut h: Host = Host::with_config(
            2 * pages + 16,
            TdConfig {
                max_zone_pages: pages,
                max_agents: 8,
            },
        )
        .unwrap();
        let td = h.create_td(1, SeptModel::new()).unwrap();
        let enc = access::encode(Mode::Exclusive, 0);
        td.handle(0, args(Leaf::AgentAccess, [1, pages, enc, 0]))
            .into_result()
            .unwrap();
        g.throughput(Throughput::Elements(pages));
        g.bench_with_input(BenchmarkId::from_parameter(pages), &pages, |b, _| {
            b.iter(|| {
                black_box(td.handle(0, args(Leaf::VmmEnter, [1, 0, 0, 0])));
                black_box(td.handle(0, args(Leaf::VmmResume, [1, 0, 0, 0])));
            })
        });
    }
    g.finish();
}

fn model_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("model_block_unblock_zone");
    for pages in SIZES {
        let mut m = SeptModel::new();
        let z = ZoneRange {
            gpa: ZONE_GPA_BASE,
            hpa: 0x7f00_0000_0000,
            pages,
        };
        m.aug_zone(&z).unwrap();
        m.accept_zone(&z).unwrap();
        g.throughput(Throughput::Elements(pages));
        g.bench_with_input(BenchmarkId::from_parameter(pages), &pages, |b, _| {
            b.iter(|| {
                m.block_zone(&z).unwrap();
                m.flush().unwrap();
                m.unblock_zone(&z).unwrap();
            })
        });
        // the per-page leaves the batches replace, for comparison
        g.bench_with_input(BenchmarkId::new("per_page", pages), &pages, |b, _| {
            b.iter(|| {
                for (gpa, _) in z.iter() {
                    m.range_block(gpa).unwrap();
                }
                m.flush().unwrap();
                for (gpa, _) in z.iter() {
                    m.range_unblock(gpa).unwrap();
                }
            })
        });
    }
    g.finish();
}

/// An image to verify: echo.tetd from `scripts/bench.sh`'s last run, or a
/// table-only image built here.
fn verify_input() -> Vec<u8> {
    let echo =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/images/echo.tetd");
    match std::fs::read(&echo) {
        Ok(bytes) => {
            let big = tetd_kvm::bench::sim::big_image(&bytes, 4).unwrap();
            tetd_kvm::bench::sim::sign_fresh(&big).unwrap()
        }
        Err(_) => Vec::new(),
    }
}

fn parse_verify(c: &mut Criterion) {
    let img = verify_input();
    if img.is_empty() {
        eprintln!(
            "host_paths: no target/bench/images/echo.tetd (run scripts/bench.sh once); parse+verify skipped"
        );
        return;
    }
    let mut g = c.benchmark_group("image_4MiB");
    g.throughput(Throughput::Bytes(img.len() as u64));
    g.sample_size(20);
    g.bench_function("parse_verify", |b| {
        b.iter(|| {
            let i = Image::parse(black_box(&img)).unwrap();
            verify_image(&i, &Policy::self_consistent()).unwrap();
        })
    });
    g.bench_function("sha384_baseline", |b| {
        b.iter(|| black_box(Sha384::digest(black_box(&img[..]))))
    });
    g.finish();
}

criterion_group!(benches, agent_call, model_batches, parse_verify);
criterion_main!(benches);
