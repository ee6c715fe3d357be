//! Section `host`: TETD-H's core on the software TDX model (no KVM): the
//! cost of an agent call's SEAM work (VMM_ENTER = UNBLOCK every zone page,
//! VMM_RESUME = BLOCK every page + one TRACK) and of a zone's life, by zone
//! size; and the QEMU engine's SEAM backend, which takes a blocked zone's
//! pages out of the zone file QEMU maps, against the same backend without
//! the file (model only), by zone size.

use tetd::abi::regs::HypercallArgs;
use tetd::abi::{access, Leaf, Mode};

use super::report::Unit;
use super::stats::{batched_ns, Summary};
use super::{BenchConfig, Report, SectionError, SectionResult};
use crate::host::{lock_pool, TdState};
use crate::hv::{QemuSeam, TetdHandler, TetdOptions};
use crate::seam_model::SeptModel;
use crate::zone_alloc::HostPool;
use crate::{Host, TdConfig};

const SECTION: &str = "host";
/// Zone sizes measured (pages).
pub const SIZES: [u64; 4] = [1, 16, 256, 4096];

fn args(leaf: Leaf, a: [u64; 4]) -> HypercallArgs {
    HypercallArgs {
        leaf: leaf as u64,
        args: a,
    }
}

fn summary(v: &[f64]) -> SectionResult<Summary> {
    Summary::of(v).ok_or_else(|| SectionError::Fail("no samples".into()))
}

/// Per zone size: (pages, ns samples of ENTER + RESUME, of ACCESS + DISABLE).
pub type ModelCosts = Vec<(u64, Vec<f64>, Vec<f64>)>;

/// Median ns of ENTER + RESUME and of ACCESS + DISABLE for each of `sizes`.
pub fn model_costs(sizes: &[u64], rounds: usize, work: u64) -> SectionResult<ModelCosts> {
    let max = sizes.iter().copied().max().unwrap_or(1);
    let mut out = Vec::new();
    for &pages in sizes {
        let mut h: Host = Host::with_config(
            2 * max + 16,
            TdConfig {
                max_zone_pages: max,
                max_agents: 8,
            },
        )
        .map_err(SectionError::fail)?;
        let td = h
            .create_td(1, SeptModel::new())
            .map_err(SectionError::fail)?;
        let enc = access::encode(Mode::Exclusive, 0);
        td.handle(0, args(Leaf::AgentAccess, [1, pages, enc, 0]))
            .into_result()
            .map_err(|e| SectionError::Fail(format!("AGENT_ACCESS {pages} pages: {e}")))?;
        let batch = (work / pages).max(2) as usize;
        let mut bad = None;
        let call = batched_ns(rounds, batch, || {
            let a = td.handle(0, args(Leaf::VmmEnter, [1, 0, 0, 0]));
            let b = td.handle(0, args(Leaf::VmmResume, [1, 0, 0, 0]));
            if a.into_result().is_err() || b.into_result().is_err() {
                bad = Some(pages);
            }
        });
        let life = batched_ns(rounds, batch / 2 + 1, || {
            let a = td.handle(0, args(Leaf::AgentAccess, [2, pages, enc, 0]));
            let b = td.handle(0, args(Leaf::AgentDisable, [2, 0, 0, 0]));
            if a.into_result().is_err() || b.into_result().is_err() {
                bad = Some(pages);
            }
        });
        if let Some(p) = bad {
            return Err(SectionError::Fail(format!(
                "a leaf failed on the model ({p} pages)"
            )));
        }
        out.push((pages, call, life));
    }
    Ok(out)
}

/// ENTER + RESUME samples (ns) for a `pages`-page zone whose every byte the
/// agent wrote, on the QEMU engine's backend: `enforcing` takes the pages
/// out of the pool file at every RESUME and writes them back at every ENTER;
/// otherwise the same backend without the file (model only).
pub fn qemu_call_costs(
    pages: u64,
    enforcing: bool,
    rounds: usize,
    work: u64,
) -> SectionResult<Vec<f64>> {
    let opts = TetdOptions {
        td_config: TdConfig {
            max_zone_pages: pages.max(16),
            max_agents: 8,
        },
        ..TetdOptions::default()
    };
    let mut h = if enforcing {
        TetdHandler::qemu(&opts).map_err(SectionError::fail)?
    } else {
        let pool = HostPool::new_shared(tetd::abi::ZONE_GPA_SIZE / tetd::abi::PAGE_SIZE)
            .map_err(SectionError::fail)?;
        let seam = QemuSeam::new(pool.base_addr());
        TetdHandler::new(TdState::new(
            opts.td,
            seam,
            std::sync::Arc::new(std::sync::Mutex::new(pool)),
            opts.notifier.clone(),
            opts.td_config,
        ))
    };
    h.vcpus_started(1);
    let enc = access::encode(Mode::Exclusive, 0);
    let fail = |what: &str, e| SectionError::Fail(format!("{what}, {pages}-page zone: {e}"));
    let gpa = h
        .handle(0, args(Leaf::AgentAccess, [1, pages, enc, 0]))
        .into_result()
        .map_err(|e| fail("AGENT_ACCESS", e))?[0];
    let host = h.td().zone_at(gpa).map(|(_, z)| z.host_addr()).unwrap_or(0);
    h.handle(0, args(Leaf::VmmEnter, [1, 0, 0, 0]))
        .into_result()
        .map_err(|e| fail("VMM_ENTER", e))?;
    lock_pool(h.td().pool())
        .write(host, &vec![0xa5; (pages * tetd::abi::PAGE_SIZE) as usize])
        .map_err(SectionError::fail)?;
    h.handle(0, args(Leaf::VmmResume, [1, 0, 0, 0]))
        .into_result()
        .map_err(|e| fail("VMM_RESUME", e))?;
    let batch = (work / pages).max(2) as usize;
    let mut bad = false;
    let v = batched_ns(rounds, batch, || {
        let a = h.handle(0, args(Leaf::VmmEnter, [1, 0, 0, 0]));
        let b = h.handle(0, args(Leaf::VmmResume, [1, 0, 0, 0]));
        bad |= a.into_result().is_err() || b.into_result().is_err();
    });
    if bad {
        return Err(SectionError::Fail(format!(
            "a leaf failed on the QEMU backend ({pages} pages)"
        )));
    }
    Ok(v)
}

/// The section.
pub fn run(cfg: &BenchConfig, rep: &mut Report) -> SectionResult<()> {
    let rounds = cfg.iters(15, 3);
    let work = if cfg.quick { 2_000 } else { 200_000 };
    let costs = model_costs(&SIZES, rounds, work)?;
    let (_, call1, life1) = &costs[0];
    let call1 = summary(call1)?;
    let life1 = summary(life1)?;
    for (pages, call, life) in &costs {
        let c = summary(call)?;
        let l = summary(life)?;
        let base = (*pages > 1).then_some(("the same, 1-page zone", call1));
        rep.add(
            &format!("host.call.{pages}p"),
            SECTION,
            &format!("VMM_ENTER + VMM_RESUME, {pages}-page zone"),
            Unit::Ns,
            c,
            base,
            "TETD-H core + TDX model (UNBLOCK n, BLOCK n, TRACK 1)",
        );
        if *pages > 1 {
            let per = |s: &Summary, one: &Summary| {
                Summary::single((s.median - one.median) / (*pages as f64 - 1.0))
            };
            rep.add(
                &format!("host.call.per_page.{pages}p"),
                SECTION,
                &format!("block + unblock per zone page, {pages}-page zone"),
                Unit::NsPerPage,
                per(&c, &call1),
                Some(("a whole 1-page call", call1)),
                "(median(n) − median(1)) / (n − 1)",
            );
            rep.add(
                &format!("host.life.{pages}p"),
                SECTION,
                &format!("AGENT_ACCESS + AGENT_DISABLE, {pages}-page zone"),
                Unit::Ns,
                l,
                Some(("the same, 1-page zone", life1)),
                "AUG, ACCEPT, BLOCK, TRACK, REMOVE, scrub, free",
            );
        }
    }
    // The QEMU engine's blocking: the window copies the zone into the file
    // and out again, against the same backend that only models it.
    let qwork = if cfg.quick { 256 } else { 16_384 };
    for pages in SIZES {
        let off = summary(&qemu_call_costs(pages, false, rounds, qwork)?)?;
        let on = summary(&qemu_call_costs(pages, true, rounds, qwork)?)?;
        rep.add(
            &format!("host.qemu_call.{pages}p"),
            SECTION,
            &format!("VMM_ENTER + VMM_RESUME, {pages}-page zone, QEMU engine: zone taken out of the file"),
            Unit::Ns,
            on,
            Some(("the same backend, model only (zone left in the file)", off)),
            "save + punch at RESUME, SEEK_DATA + write back at ENTER, every byte non-zero",
        );
    }
    Ok(())
}
