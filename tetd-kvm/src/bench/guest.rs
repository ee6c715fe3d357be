//! Section `guest` (placeholder while being written).
use super::{BenchConfig, Images, Report, SectionError, SectionResult};
/// The section.
pub fn run(_cfg: &BenchConfig, _i: &Images, _rep: &mut Report) -> SectionResult<()> {
    Err(SectionError::Skip("not written yet".into()))
}
