#[tetd::agent(id = 1)]
fn handler(_input: &mut [u8]) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
