//! Agents that misbehave on purpose. Each call fails in a different way; the
//! runtime must end the call with the right error and keep running:
//!
//! | id | name | does | the runtime reports |
//! |---|---|---|---|
//! | 20 | `panic` | `panic!` | `Panicked` (the panic handler aborts the call through the services table) |
//! | 21 | `write-code` | writes a byte of its own (read-execute) code | `Fault`, page fault at that address |
//! | 22 | `hang` | loops forever | `Timeout` (watchdog) |
//! | 23 | `stack-overflow` | recurses without bound | `StackOverflow` (guard page below the stack) |
//! | 24 | `ok` | answers `fine: <input>` | success |
#![no_std]

use tetd::{Call, Result};

#[tetd::agent(id = 20, name = "panic")]
fn panic(ctx: &mut Call) -> Result<()> {
    let n = ctx.input().len();
    panic!("deliberate panic after {n} input bytes");
}

#[tetd::agent(id = 21, name = "write-code")]
fn write_code(_ctx: &mut Call) -> Result<()> {
    let target = write_code as fn(&mut Call<'_>) -> Result<()> as *const () as *mut u8;
    // SAFETY: none — this is the point: the page is read-execute, so the
    // write faults and the runtime ends the call.
    unsafe { core::ptr::write_volatile(core::hint::black_box(target), 0xc3) };
    Ok(())
}

#[tetd::agent(id = 22, name = "hang")]
fn hang(_ctx: &mut Call) -> Result<()> {
    loop {
        core::hint::spin_loop();
    }
}

/// Recurse until the stack runs out (the depth check never triggers; it
/// only keeps the compiler from proving the recursion endless).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[7])
}

#[tetd::agent(id = 23, name = "stack-overflow")]
fn stack_overflow(ctx: &mut Call) -> Result<()> {
    let n = recurse(ctx.input().len() as u64);
    ctx.output(&n.to_le_bytes())
}

#[tetd::agent(id = 24, name = "ok")]
fn ok(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    let buf = ctx.output_buffer();
    let prefix = b"fine: ";
    let n = prefix.len() + input.len();
    if n > buf.len() {
        return Err(tetd::Error::OutputTooLarge);
    }
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..n].copy_from_slice(input);
    ctx.set_output_len(n)
}
