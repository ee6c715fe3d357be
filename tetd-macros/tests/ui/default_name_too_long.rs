#[tetd::agent(id = 1)]
fn a_handler_whose_name_is_longer_than_32_bytes(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
