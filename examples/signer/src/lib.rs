//! Signer agent (id 3): an Ed25519 key that exists only inside the agent.
//!
//! The key is generated from the runtime's random service on the first call
//! and kept in the agent's heap region, which lives in its zone for as long
//! as the image is loaded. No operation outputs it.
//!
//! Input is an operation name, optionally followed by one space and the
//! operation's data:
//!
//! | input | output |
//! |---|---|
//! | `pubkey` | the 32-byte Ed25519 public key |
//! | `sign <message>` | the 64-byte Ed25519 signature (RFC 8032) of `<message>` (the bytes after the space; may be empty or binary) |
//!
//! Anything else fails with `InvalidInput`.
#![no_std]

use ed25519_compact::{KeyPair, Seed};
use tetd::{Call, Error, Result};

/// Heap layout: `[0]` = 1 once a key exists, `[1..33]` = the seed.
const STATE: usize = 0;
const SEED: core::ops::Range<usize> = 1..33;

/// The agent's key pair, generated on first use.
fn keypair(ctx: &mut Call<'_>) -> Result<KeyPair> {
    if ctx.heap().len() < SEED.end {
        return Err(Error::NoMemory);
    }
    let mut seed = [0u8; 32];
    if ctx.heap()[STATE] == 1 {
        seed.copy_from_slice(&ctx.heap()[SEED]);
    } else {
        ctx.random(&mut seed)?;
        let heap = ctx.heap();
        heap[SEED].copy_from_slice(&seed);
        heap[STATE] = 1;
        ctx.log("signer: generated a new Ed25519 key inside the agent");
    }
    let kp = KeyPair::from_seed(Seed::new(seed));
    seed.fill(0);
    Ok(kp)
}

/// Split `op[ data]` at the first space.
fn split(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|&b| b == b' ') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[]),
    }
}

#[tetd::agent(id = 3, name = "signer")]
fn signer(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    match split(input) {
        (b"pubkey", b"") => {
            let kp = keypair(ctx)?;
            ctx.output(&kp.pk[..])
        }
        (b"sign", msg) => {
            let kp = keypair(ctx)?;
            let sig = kp.sk.sign(msg, None);
            ctx.output(&sig[..])
        }
        _ => Err(Error::InvalidInput),
    }
}
