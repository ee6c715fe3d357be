#[tetd::agent(id = 1, stack_size = 4096)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
