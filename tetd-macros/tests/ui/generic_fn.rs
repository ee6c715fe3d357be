#[tetd::agent(id = 1)]
fn handler<T: Default>(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    let _ = T::default();
    Ok(())
}

fn main() {}
