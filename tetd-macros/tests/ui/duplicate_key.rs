#[tetd::agent(id = 1, name = "a", id = 2)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
