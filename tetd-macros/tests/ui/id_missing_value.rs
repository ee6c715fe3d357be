#[tetd::agent(id)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
