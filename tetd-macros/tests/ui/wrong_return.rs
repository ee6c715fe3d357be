#[tetd::agent(id = 1)]
fn handler(_ctx: &mut tetd::Call) -> u32 {
    0
}

fn main() {}
