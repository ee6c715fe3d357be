//! Section `kvm` (placeholder while being written).
use super::{BenchConfig, Report, SectionError, SectionResult};
/// The section.
pub fn run(_cfg: &BenchConfig, _rep: &mut Report) -> SectionResult<()> {
    Err(SectionError::Skip("not written yet".into()))
}
