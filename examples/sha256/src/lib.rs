//! SHA-256 agent: answers every call with the 32-byte SHA-256 digest of its
//! input (agent id 2), computed inside the agent with the RustCrypto `sha2`
//! crate (portable backend, `no_std`).
//!
//! Settings (stack, mode, a 1 MiB input limit, a 32-byte output limit) are
//! in `[package.metadata.tetd]` of `Cargo.toml`.
#![no_std]

use sha2::{Digest, Sha256};

/// Hash the input. The output is always 32 bytes.
#[tetd::agent(id = 2, name = "sha256")]
fn sha256(ctx: &mut tetd::Call) -> tetd::Result<()> {
    let digest = Sha256::digest(ctx.input());
    ctx.output(&digest)
}
