#[tetd::agent(id = 1)]
async fn handler(_ctx: &mut tetd::Call<'_>) -> tetd::Result<()> {
    Ok(())
}

fn main() {}
