#[tetd::agent(id = 1, admin, admin)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
