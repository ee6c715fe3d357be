#[tetd::agent(id = 1)]
struct Handler;

fn main() {}
