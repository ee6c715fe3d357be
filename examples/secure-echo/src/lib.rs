//! Encrypted echo: the handler is an ordinary echo; `encrypted` makes the
//! SDK run the session protocol around it (`docs/encryption.md`), so the
//! guest kernel that carries the bytes only ever sees ciphertext.
//!
//! * `secure-echo` (id 20, encrypted): returns its (decrypted) input; an
//!   empty request fails with `InvalidInput` — an error status that reaches
//!   the client encrypted and authenticated like any result.
//! * `whoami` (id 21, plain): returns the 48-byte SHA-384 measurement of its
//!   own image, the value encrypted sessions are bound to (readable by
//!   every agent; reading another agent's measurement needs `admin`).
#![no_std]

use tetd::{Call, Error, Result};

#[tetd::agent(id = 20, name = "secure-echo", encrypted)]
fn secure_echo(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    if input.is_empty() {
        return Err(Error::InvalidInput);
    }
    ctx.output(input)
}

#[tetd::agent(id = 21, name = "whoami")]
fn whoami(ctx: &mut Call) -> Result<()> {
    let m = ctx.measurement()?;
    ctx.output(&m)
}
