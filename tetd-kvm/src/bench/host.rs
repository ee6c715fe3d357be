//! Section `host`: TETD-H's core on the software TDX model (no KVM): the
//! cost of an agent call's SEAM work (VMM_ENTER = UNBLOCK every zone page,
//! VMM_RESUME = BLOCK every page + one TRACK) and of a zone's life, by zone
//! size.

use tetd::abi::regs::HypercallArgs;
use tetd::abi::{access, Leaf, Mode};

use super::report::Unit;
use super::stats::{batched_ns, Summary};
use super::{BenchConfig, Report, SectionError, SectionResult};
use crate::seam_model::SeptModel;
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
    Ok(())
}
