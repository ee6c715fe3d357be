//! `#[tetd::agent(id = N, ...)]` — see the `tetd` crate. (Minimal first cut;
//! full option parsing and diagnostics follow.)
use proc_macro::TokenStream;

/// Mark a handler as a TETD agent.
#[proc_macro_attribute]
pub fn agent(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}
