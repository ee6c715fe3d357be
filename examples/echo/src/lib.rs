//! Echo agent: answers every call with its input, byte for byte (agent id 1).
//!
//! The smallest useful agent: one handler, no state, no services.
#![no_std]

/// Copy the input to the output. Input larger than the output buffer (the
/// image's `max_output`) fails with `OutputTooLarge`.
#[tetd::agent(id = 1, name = "echo")]
fn echo(ctx: &mut tetd::Call) -> tetd::Result<()> {
    let input = ctx.input();
    ctx.output(input)
}
