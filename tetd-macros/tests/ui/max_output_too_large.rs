#[tetd::agent(id = 1, max_output = 16777217)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
