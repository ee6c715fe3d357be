#[tetd::agent(id = 1)]
fn handler() -> tetd::Result<()> {
    Ok(())
}

fn main() {}
