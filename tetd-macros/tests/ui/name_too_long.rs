#[tetd::agent(id = 1, name = "abcdefghijklmnopqrstuvwxyz0123456")]
fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
