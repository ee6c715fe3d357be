//! Entry points registered at run time.
//!
//! An agent registers an extra entry point with
//! `ctx.register_entry(id, name, tetd::entry!(handler))`; the runtime checks
//! the id against every registered id (static or dynamic, of any image),
//! that the entry lies in the image's executable code, and the per-image
//! limit, and then tells the host (AGENT_ACCESS in the guest module). The new
//! id shares the image's zone and inherits the registering agent's mode,
//! flags and limits; it goes away when the image is unloaded.
//!
//! * `registrar` (id 30). Input `<kind> <id>` registers entry `<kind>` under
//!   `<id>`, output `ok`; kinds: `upper` (ASCII upper-case of the input),
//!   `reverse` (the input reversed). Errors from the runtime pass through:
//!   `DuplicateAgentId`, `InvalidInput` (id 0), `TableFull`.
//! * `secure-registrar` (id 31, encrypted). Input `upper <id>` registers an
//!   encrypted `upper` (`tetd::entry!(upper, encrypted)`): flags are
//!   inherited, so the new id is encrypted too and needs a session of its
//!   own.
#![no_std]

use tetd::{Call, Error, Result};

fn upper(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    let out = ctx.output_buffer();
    if input.len() > out.len() {
        return Err(Error::OutputTooLarge);
    }
    for (o, i) in out.iter_mut().zip(input) {
        *o = i.to_ascii_uppercase();
    }
    ctx.set_output_len(input.len())
}

fn reverse(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    let out = ctx.output_buffer();
    if input.len() > out.len() {
        return Err(Error::OutputTooLarge);
    }
    for (o, i) in out.iter_mut().zip(input.iter().rev()) {
        *o = *i;
    }
    ctx.set_output_len(input.len())
}

/// `<kind> <id>`.
fn parse(input: &[u8]) -> Result<(&[u8], u32)> {
    let sp = input
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Error::InvalidInput)?;
    let id = core::str::from_utf8(&input[sp + 1..])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(Error::InvalidInput)?;
    Ok((&input[..sp], id))
}

#[tetd::agent(id = 30, name = "registrar")]
fn registrar(ctx: &mut Call) -> Result<()> {
    let (kind, id) = parse(ctx.input())?;
    match kind {
        b"upper" => ctx.register_entry(id, "upper", tetd::entry!(upper))?,
        b"reverse" => ctx.register_entry(id, "reverse", tetd::entry!(reverse))?,
        _ => return Err(Error::InvalidInput),
    }
    ctx.output(b"ok")
}

#[tetd::agent(id = 31, name = "secure-registrar", encrypted)]
fn secure_registrar(ctx: &mut Call) -> Result<()> {
    let (kind, id) = parse(ctx.input())?;
    if kind != b"upper" {
        return Err(Error::InvalidInput);
    }
    ctx.register_entry(id, "secure-upper", tetd::entry!(upper, encrypted))?;
    ctx.output(b"ok")
}
