#[tetd::agent(id = 1, name = echo)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
