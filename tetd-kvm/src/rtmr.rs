//! Runtime measurement registers, as the TDX module keeps them per TD.
//!
//! TDG.MR.RTMR.EXTEND (tdx-module `src/td_dispatcher/vm_exits/tdg_mr_rtmr_extend.c`):
//! `RTMR[index] = SHA-384(RTMR[index] || data)` with 48 bytes of extension
//! data; `index >= 4` is TDX_OPERAND_INVALID. All registers start as zero
//! (TDH.MNG.INIT). TETD-H keeps this model for the simulated host, where the
//! guest's RTMR_EXTEND leaf stands in for the TDCALL.

use tetd::abi::tdx::{NUM_RTMRS, RTMR_SIZE};

/// One measurement value.
pub type Measurement = [u8; RTMR_SIZE];

/// The four RTMRs of a TD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtmrs {
    regs: [Measurement; NUM_RTMRS],
    extends: [u64; NUM_RTMRS],
}

impl Default for Rtmrs {
    fn default() -> Self {
        Rtmrs {
            regs: [[0; RTMR_SIZE]; NUM_RTMRS],
            extends: [0; NUM_RTMRS],
        }
    }
}

/// `index` is not 0..=3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRtmrIndex(pub u64);

impl std::fmt::Display for BadRtmrIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RTMR index {} out of range 0..{}", self.0, NUM_RTMRS)
    }
}

impl std::error::Error for BadRtmrIndex {}

impl Rtmrs {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// `RTMR[index] = SHA-384(RTMR[index] || digest)`; returns the new value.
    pub fn extend(
        &mut self,
        index: u64,
        digest: &Measurement,
    ) -> Result<Measurement, BadRtmrIndex> {
        let i = usize::try_from(index)
            .ok()
            .filter(|i| *i < NUM_RTMRS)
            .ok_or(BadRtmrIndex(index))?;
        self.regs[i] = extend_value(&self.regs[i], digest);
        self.extends[i] += 1;
        Ok(self.regs[i])
    }

    /// Current value of `RTMR[index]`.
    pub fn get(&self, index: usize) -> Option<&Measurement> {
        self.regs.get(index)
    }

    /// How many times `RTMR[index]` was extended.
    pub fn extend_count(&self, index: usize) -> Option<u64> {
        self.extends.get(index).copied()
    }
}

/// One extension step: `SHA-384(old || digest)` (the one definition is
/// [`tetd::measure::extend`], shared with the guest side and `tetd-pack
/// measure`).
pub fn extend_value(old: &Measurement, digest: &Measurement) -> Measurement {
    tetd::measure::extend(old, digest)
}

/// The value a register reaches from zero after extending `digests` in
/// order (what a verifier recomputes from an event log;
/// [`tetd::measure::replay`]).
pub fn replay<'a>(digests: impl IntoIterator<Item = &'a Measurement>) -> Measurement {
    tetd::measure::replay(digests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha384};

    #[test]
    fn extend_matches_definition() {
        let mut r = Rtmrs::new();
        let d = [0xabu8; 48];
        let v = r.extend(2, &d).unwrap();
        let mut cat = vec![0u8; 48];
        cat.extend_from_slice(&d);
        let expect: [u8; 48] = Sha384::digest(&cat).into();
        assert_eq!(v, expect);
        assert_eq!(r.get(2), Some(&expect));
        assert_eq!(r.get(0), Some(&[0u8; 48]));
        assert_eq!(r.extend_count(2), Some(1));
    }

    #[test]
    fn known_vector() {
        // SHA-384 of 96 zero bytes (one extension of a zero register with a
        // zero digest), computed independently (e.g. `head -c 96 /dev/zero |
        // sha384sum`).
        let v = extend_value(&[0; 48], &[0; 48]);
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "f57bb7ed82c6ae4a29e6c9879338c592c7d42a39135583e8ccbe3940f2344b0e\
             b6eb8503db0ffd6a39ddd00cd07d8317"
        );
    }

    #[test]
    fn order_matters_and_replay_agrees() {
        let a = [1u8; 48];
        let b = [2u8; 48];
        let mut r = Rtmrs::new();
        r.extend(3, &a).unwrap();
        r.extend(3, &b).unwrap();
        assert_eq!(r.get(3), Some(&replay([&a, &b])));
        assert_ne!(replay([&a, &b]), replay([&b, &a]));
    }

    #[test]
    fn bad_index() {
        let mut r = Rtmrs::new();
        assert_eq!(r.extend(4, &[0; 48]), Err(BadRtmrIndex(4)));
        assert_eq!(r.extend(u64::MAX, &[0; 48]), Err(BadRtmrIndex(u64::MAX)));
        assert_eq!(r, Rtmrs::new(), "a failed extend changes nothing");
    }
}
