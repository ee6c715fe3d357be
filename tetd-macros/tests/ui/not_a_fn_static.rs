#[tetd::agent(id = 1)]
static HANDLER: u32 = 0;

fn main() {}
