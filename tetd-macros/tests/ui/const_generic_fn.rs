#[tetd::agent(id = 1)]
fn handler<const N: usize>(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
