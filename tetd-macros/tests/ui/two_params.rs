#[tetd::agent(id = 1)]
fn handler(_ctx: &mut tetd::Call, _extra: u32) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
