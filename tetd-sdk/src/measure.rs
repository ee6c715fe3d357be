//! The RTMR extend rule, the one definition shared by the host's RTMR model
//! (`tetd-kvm`), the guest side and `tetd-pack measure`.
//!
//! TDG.MR.RTMR.EXTEND (tdx-module `src/td_dispatcher/vm_exits/tdg_mr_rtmr_extend.c`):
//! `RTMR[i] = SHA-384(RTMR[i] || data)` with 48 bytes of extension data;
//! every RTMR starts as 48 zero bytes. The guest module extends
//! [`AGENT_RTMR_INDEX`](crate::abi::AGENT_RTMR_INDEX) with the measurement
//! of each image it loads, in load order, so a verifier recomputes the
//! register from the image files with [`replay`].

use sha2::{Digest, Sha384};

use crate::abi::tdx::RTMR_SIZE;

/// One RTMR value or extension (SHA-384 digest).
pub type RtmrValue = [u8; RTMR_SIZE];

/// One extension step: `SHA-384(old || digest)`.
pub fn extend(old: &RtmrValue, digest: &RtmrValue) -> RtmrValue {
    let mut h = Sha384::new();
    h.update(old);
    h.update(digest);
    h.finalize().into()
}

/// The value a register reaches from `initial` after extending `digests` in
/// order.
pub fn replay_from<'a>(
    initial: &RtmrValue,
    digests: impl IntoIterator<Item = &'a RtmrValue>,
) -> RtmrValue {
    digests.into_iter().fold(*initial, |acc, d| extend(&acc, d))
}

/// The value a register reaches from zero after extending `digests` in
/// order (what a verifier recomputes from an event log or the image files).
pub fn replay<'a>(digests: impl IntoIterator<Item = &'a RtmrValue>) -> RtmrValue {
    replay_from(&[0; RTMR_SIZE], digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // SHA-384 of 96 zero bytes (`head -c 96 /dev/zero | sha384sum`).
        let v = extend(&[0; 48], &[0; 48]);
        let expect = [
            0xf5, 0x7b, 0xb7, 0xed, 0x82, 0xc6, 0xae, 0x4a, 0x29, 0xe6, 0xc9, 0x87, 0x93, 0x38,
            0xc5, 0x92, 0xc7, 0xd4, 0x2a, 0x39, 0x13, 0x55, 0x83, 0xe8, 0xcc, 0xbe, 0x39, 0x40,
            0xf2, 0x34, 0x4b, 0x0e, 0xb6, 0xeb, 0x85, 0x03, 0xdb, 0x0f, 0xfd, 0x6a, 0x39, 0xdd,
            0xd0, 0x0c, 0xd0, 0x7d, 0x83, 0x17,
        ];
        assert_eq!(v, expect);
    }

    #[test]
    fn replay_is_ordered_extension() {
        let (a, b) = ([1u8; 48], [2u8; 48]);
        assert_eq!(replay([&a, &b]), extend(&extend(&[0; 48], &a), &b));
        assert_ne!(replay([&a, &b]), replay([&b, &a]));
        assert_eq!(replay([]), [0; 48]);
        let mid = replay([&a]);
        assert_eq!(replay_from(&mid, [&b]), replay([&a, &b]));
    }
}
