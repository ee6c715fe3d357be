#[tetd::agent(id = 1)]
fn handler(_ctx: tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
