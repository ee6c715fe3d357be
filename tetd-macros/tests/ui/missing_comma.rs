#[tetd::agent(id = 1 admin)]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
