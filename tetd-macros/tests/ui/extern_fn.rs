#[tetd::agent(id = 1)]
extern "C" fn handler(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
