#[tetd::agent(id = 1)]
fn handler(_ctx: &mut tetd::Call) {}

fn main() {}
