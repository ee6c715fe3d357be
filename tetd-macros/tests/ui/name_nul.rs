#[tetd::agent(id = 1, name = "a\0b")]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
