//! `#[tetd::agent(...)]`: turn a handler function into a TETD agent.
//!
//! ```ignore
//! #[tetd::agent(id = 1, name = "echo", mode = exclusive, max_input = 4096)]
//! fn echo(ctx: &mut tetd::Call) -> tetd::Result<()> {
//!     let input = ctx.input();
//!     ctx.output(input)
//! }
//! ```
//!
//! Options (comma separated, each at most once):
//!
//! | option | meaning |
//! |---|---|
//! | `id = N` | required; agent id, `1..=u32::MAX` |
//! | `name = "..."` | at most 32 bytes of UTF-8, no NUL; default: the function name |
//! | `mode = exclusive \| collaborative` | default: `mode` of `[package.metadata.tetd]` |
//! | `admin` | the agent may use admin services |
//! | `encrypted` | arguments and results are encrypted |
//! | `max_input = N`, `max_output = N` | per-call limits in bytes (non-zero, at most `tetd::image::MAX_IO`); default: the package's |
//!
//! The attribute keeps the function as written and adds, inside an anonymous
//! `const _: () = { ... };` block:
//!
//! * a constant of type `fn(&mut tetd::Call<'_>) -> tetd::Result<()>`
//!   holding the handler (so a wrong parameter or return type is reported
//!   once, at the signature),
//! * the entry trampoline, an `unsafe extern "C" fn(*mut CallFrame) -> u32`
//!   exported as `__tetd_entry_<id>_<fn>`, which calls
//!   `tetd::__private::dispatch(frame, <fn>)` — or, for `encrypted` agents,
//!   `tetd::__private::dispatch_encrypted(frame, <fn>)`, which runs the
//!   session protocol of `docs/encryption.md` around the handler,
//! * the descriptor, a `tetd::abi::AgentDescriptor` static placed in the
//!   `.tetd.agents` link section (`#[used]`), exported as
//!   `__tetd_agent_<id>_<fn>`. `tetd-pack` finds agents through that symbol
//!   prefix (it forces the linker to keep them) and through the section.
//!
//! Every mistake is a compile error pointing at the token at fault.
use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Error, FnArg, Ident, Item, ItemFn, Lit, LitInt, LitStr, ReturnType, Token, Type};

/// Longest agent name in bytes: `tetd::abi::AGENT_NAME_LEN`. (A proc-macro
/// crate cannot depend on `tetd-sdk`; `tests/expand.rs` checks the two agree,
/// and the generated `tetd::abi::encode_name` call re-checks at compile time.)
const AGENT_NAME_LEN: usize = 32;

/// Prefix of the exported descriptor symbols (`tetd-pack` relies on it).
const DESCRIPTOR_SYMBOL_PREFIX: &str = "__tetd_agent_";
/// Prefix of the exported trampoline symbols.
const ENTRY_SYMBOL_PREFIX: &str = "__tetd_entry_";

/// Mark a handler `fn NAME(ctx: &mut tetd::Call) -> tetd::Result<()>` as a
/// TETD agent. See the crate documentation for the options.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let item = TokenStream2::from(item);
    match expand(attr, item.clone()) {
        Ok(ts) => ts.into(),
        Err(e) => {
            // Keep the item so that a mistake in the attribute does not also
            // produce "cannot find function" errors elsewhere.
            let mut out = e.to_compile_error();
            out.extend(item);
            out.into()
        }
    }
}

/// Parsed attribute options.
#[derive(Default)]
struct Options {
    id: Option<(u32, Span)>,
    name: Option<LitStr>,
    mode: Option<Mode>,
    admin: bool,
    encrypted: bool,
    max_input: Option<(u32, Span)>,
    max_output: Option<(u32, Span)>,
}

#[derive(Clone, Copy)]
enum Mode {
    Exclusive,
    Collaborative,
}

/// Options, in the order they are documented.
const OPTIONS: &str = "`id`, `name`, `mode`, `admin`, `encrypted`, `max_input`, `max_output`";

impl Parse for Options {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut o = Options::default();
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            let key = input.call(Ident::parse_any)?;
            let key_s = key.unraw().to_string();
            if seen.contains(&key_s) {
                return Err(Error::new(
                    key.span(),
                    format!("duplicate option `{key_s}`: each option may be given once"),
                ));
            }
            match key_s.as_str() {
                "id" => {
                    let (v, span) = parse_u32(input, &key)?;
                    if v == 0 {
                        return Err(Error::new(
                            span,
                            "agent id 0 is reserved: use an id between 1 and 4294967295",
                        ));
                    }
                    o.id = Some((v, span));
                }
                "name" => {
                    expect_eq(input, &key)?;
                    let lit: Lit = input.parse().map_err(|e| {
                        Error::new(e.span(), "expected a string literal: `name = \"my-agent\"`")
                    })?;
                    let Lit::Str(s) = lit else {
                        return Err(Error::new(
                            lit.span(),
                            "expected a string literal: `name = \"my-agent\"`",
                        ));
                    };
                    check_name(&s.value(), s.span())?;
                    o.name = Some(s);
                }
                "mode" => {
                    expect_eq(input, &key)?;
                    let (m, span) = if input.peek(LitStr) {
                        let s: LitStr = input.parse()?;
                        (s.value(), s.span())
                    } else {
                        let i = input.call(Ident::parse_any).map_err(|e| {
                            Error::new(e.span(), "expected `exclusive` or `collaborative`")
                        })?;
                        (i.unraw().to_string(), i.span())
                    };
                    o.mode = Some(match m.as_str() {
                        "exclusive" => Mode::Exclusive,
                        "collaborative" => Mode::Collaborative,
                        other => {
                            return Err(Error::new(
                                span,
                                format!(
                                "unknown mode `{other}`: expected `exclusive` or `collaborative`"
                            ),
                            ))
                        }
                    });
                }
                "admin" | "encrypted" => {
                    if input.peek(Token![=]) {
                        return Err(Error::new(
                            input.span(),
                            format!("`{key_s}` is a flag and takes no value: write `{key_s}`"),
                        ));
                    }
                    if key_s == "admin" {
                        o.admin = true;
                    } else {
                        o.encrypted = true;
                    }
                }
                "max_input" | "max_output" => {
                    let (v, span) = parse_u32(input, &key)?;
                    if v == 0 {
                        return Err(Error::new(
                            span,
                            format!(
                                "`{key_s}` must be non-zero (leave it out to use the package default)"
                            ),
                        ));
                    }
                    if key_s == "max_input" {
                        o.max_input = Some((v, span));
                    } else {
                        o.max_output = Some((v, span));
                    }
                }
                _ => {
                    return Err(Error::new(
                        key.span(),
                        format!("unknown option `{key_s}`: expected one of {OPTIONS}"),
                    ))
                }
            }
            seen.push(key_s);
            if input.is_empty() {
                break;
            }
            input
                .parse::<Token![,]>()
                .map_err(|e| Error::new(e.span(), "expected `,` between options"))?;
        }
        Ok(o)
    }
}

fn expect_eq(input: ParseStream, key: &Ident) -> syn::Result<()> {
    if !input.peek(Token![=]) {
        return Err(Error::new(
            key.span(),
            format!("option `{}` needs a value: `{} = ...`", key, key),
        ));
    }
    input.parse::<Token![=]>()?;
    Ok(())
}

fn parse_u32(input: ParseStream, key: &Ident) -> syn::Result<(u32, Span)> {
    expect_eq(input, key)?;
    let what = format!("`{key}` expects an integer literal, e.g. `{key} = 1`");
    if input.peek(Token![-]) {
        let minus: Token![-] = input.parse()?;
        return Err(Error::new(
            minus.span,
            format!("`{key}` must not be negative: it is a u32"),
        ));
    }
    let lit: Lit = input.parse().map_err(|e| Error::new(e.span(), &what))?;
    let Lit::Int(i) = lit else {
        return Err(Error::new(lit.span(), what));
    };
    int_u32(&i, key)
}

fn int_u32(i: &LitInt, key: &Ident) -> syn::Result<(u32, Span)> {
    if !matches!(i.suffix(), "" | "u32") {
        return Err(Error::new(
            i.span(),
            format!("`{key}` is a u32: drop the `{}` suffix", i.suffix()),
        ));
    }
    let v = i.base10_parse::<u32>().map_err(|_| {
        Error::new(
            i.span(),
            format!(
                "`{key}` = {} is out of range: it must fit in a u32 (at most 4294967295)",
                i.base10_digits()
            ),
        )
    })?;
    Ok((v, i.span()))
}

fn check_name(name: &str, span: Span) -> syn::Result<()> {
    if name.is_empty() {
        return Err(Error::new(span, "agent name must not be empty"));
    }
    if name.contains('\0') {
        return Err(Error::new(span, "agent name must not contain NUL bytes"));
    }
    if name.len() > AGENT_NAME_LEN {
        return Err(Error::new(
            span,
            format!(
                "agent name is {} bytes long; at most {AGENT_NAME_LEN} bytes fit in the descriptor",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Check the handler's shape; the exact types are checked by the compiler
/// through a coercion to the handler fn-pointer type (spanned at the
/// signature).
fn check_signature(f: &ItemFn) -> syn::Result<()> {
    let sig = &f.sig;
    if let Some(a) = &sig.asyncness {
        return Err(Error::new(
            a.span(),
            "agent handlers cannot be `async`: agents run to completion on one call; remove `async`",
        ));
    }
    if let Some(u) = &sig.unsafety {
        return Err(Error::new(
            u.span(),
            "agent handlers cannot be `unsafe fn`: use `unsafe` blocks inside a safe handler",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(Error::new(
            abi.span(),
            "agent handlers are plain Rust functions: remove the `extern` ABI (the attribute generates the `extern \"C\"` entry)",
        ));
    }
    if let Some(p) = sig.generics.type_params().next() {
        return Err(Error::new(
            p.span(),
            "agent handlers cannot be generic: the entry point needs one concrete function",
        ));
    }
    if let Some(p) = sig.generics.const_params().next() {
        return Err(Error::new(
            p.span(),
            "agent handlers cannot be generic: the entry point needs one concrete function",
        ));
    }
    if let Some(w) = &sig.generics.where_clause {
        return Err(Error::new(
            w.span(),
            "agent handlers cannot have a `where` clause",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(Error::new(v.span(), "agent handlers cannot be variadic"));
    }
    const WANT: &str = "expected exactly one parameter `ctx: &mut tetd::Call`";
    let mut params = sig.inputs.iter();
    let first = params.next().ok_or_else(|| {
        Error::new(
            sig.paren_token.span.join(),
            format!("agent handler takes no parameters: {WANT}"),
        )
    })?;
    if let Some(extra) = params.next() {
        return Err(Error::new(
            extra.span(),
            format!("agent handler has more than one parameter: {WANT}"),
        ));
    }
    let ty = match first {
        FnArg::Receiver(r) => {
            return Err(Error::new(
                r.span(),
                format!("agent handlers cannot take `self`: {WANT}"),
            ))
        }
        FnArg::Typed(t) => &*t.ty,
    };
    match ty {
        Type::Reference(r) if r.mutability.is_some() => {}
        Type::Reference(r) => {
            return Err(Error::new(
                r.span(),
                "the parameter must be a mutable reference: `ctx: &mut tetd::Call`",
            ))
        }
        other => {
            return Err(Error::new(
                other.span(),
                format!("the parameter must be `&mut tetd::Call`: {WANT}"),
            ))
        }
    }
    if let ReturnType::Default = sig.output {
        return Err(Error::new(
            sig.ident.span(),
            "agent handler must return `tetd::Result<()>`: add `-> tetd::Result<()>`",
        ));
    }
    Ok(())
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let opts: Options = syn::parse2(attr)?;
    let parsed: Item = syn::parse2(item.clone()).map_err(|e| {
        Error::new(
            e.span(),
            "#[tetd::agent] can only be applied to a function `fn NAME(ctx: &mut tetd::Call) -> tetd::Result<()>`",
        )
    })?;
    let f = match parsed {
        Item::Fn(f) => f,
        other => {
            return Err(Error::new(
                item_span(&other),
                "#[tetd::agent] can only be applied to a function `fn NAME(ctx: &mut tetd::Call) -> tetd::Result<()>`",
            ))
        }
    };
    let (id, _) = opts.id.ok_or_else(|| {
        Error::new(
            Span::call_site(),
            "missing agent id: write `#[tetd::agent(id = N)]` with N between 1 and 4294967295",
        )
    })?;
    check_signature(&f)?;

    let fn_ident = &f.sig.ident;
    let fn_name = fn_ident.unraw().to_string();
    let name = match &opts.name {
        Some(s) => s.value(),
        None => {
            check_name(&fn_name, fn_ident.span()).map_err(|e| {
                Error::new(
                    fn_ident.span(),
                    format!("{e} (the name defaults to the function name; set `name = \"...\"`)"),
                )
            })?;
            fn_name.clone()
        }
    };
    let name_lit = LitStr::new(
        &name,
        opts.name.as_ref().map_or(fn_ident.span(), |n| n.span()),
    );

    let mode = match opts.mode {
        None => quote!(::tetd::abi::MODE_FROM_MANIFEST),
        Some(Mode::Exclusive) => quote!(::tetd::abi::Mode::Exclusive as u32),
        Some(Mode::Collaborative) => quote!(::tetd::abi::Mode::Collaborative as u32),
    };
    let mut flags = vec![quote!(0u32)];
    if opts.admin {
        flags.push(quote!(::tetd::abi::AGENT_FLAG_ADMIN));
    }
    if opts.encrypted {
        flags.push(quote!(::tetd::abi::AGENT_FLAG_ENCRYPTED));
    }
    let limit = |o: Option<(u32, Span)>, what: &str| match o {
        None => quote!(0u32),
        Some((v, span)) => {
            let msg = format!("`{what}` is larger than tetd::image::MAX_IO (16 MiB)");
            quote_spanned! {span=>
                {
                    const _: () = ::core::assert!(#v <= ::tetd::image::MAX_IO, #msg);
                    #v
                }
            }
        }
    };
    let max_input = limit(opts.max_input, "max_input");
    let max_output = limit(opts.max_output, "max_output");

    let desc_sym = format!("{DESCRIPTOR_SYMBOL_PREFIX}{id}_{fn_name}");
    let entry_sym = format!("{ENTRY_SYMBOL_PREFIX}{id}_{fn_name}");
    let entry_ident = format_ident!("__tetd_entry");
    let desc_ident = format_ident!("__TETD_AGENT");

    // The coercion that checks the handler type; spanned at the signature so
    // a wrong parameter or return type is reported there.
    let sig_span = f.sig.span();
    let handler_ident = format_ident!("__TETD_HANDLER");
    let ty_check = quote_spanned! {sig_span=>
        const #handler_ident: fn(&mut ::tetd::Call<'_>) -> ::tetd::Result<()> = #fn_ident;
    };

    // Encrypted agents: the session wrapper is compiled into the trampoline
    // (the runtime cannot switch it off).
    let (dispatch, require) = if opts.encrypted {
        (
            quote!(::tetd::__private::dispatch_encrypted),
            quote!(::tetd::__private::require_session!();),
        )
    } else {
        (quote!(::tetd::__private::dispatch), quote!())
    };

    let out = quote! {
        #f

        #[doc(hidden)]
        const _: () = {
            #require
            #ty_check

            #[unsafe(export_name = #entry_sym)]
            unsafe extern "C" fn #entry_ident(frame: *mut ::tetd::abi::CallFrame) -> u32 {
                // SAFETY: the runtime calls agent entries with a frame that
                // satisfies the `CallFrame` contract (or null, which
                // `dispatch` rejects).
                unsafe { #dispatch(frame, #handler_ident) }
            }

            #[used]
            #[unsafe(link_section = ".tetd.agents")]
            #[unsafe(export_name = #desc_sym)]
            static #desc_ident: ::tetd::abi::AgentDescriptor = ::tetd::abi::AgentDescriptor {
                magic: ::tetd::abi::DESCRIPTOR_MAGIC,
                abi_version: ::tetd::abi::ABI_VERSION,
                id: #id,
                mode: #mode,
                flags: #(#flags)|*,
                max_input: #max_input,
                max_output: #max_output,
                reserved: 0,
                name: ::tetd::abi::encode_name(#name_lit),
                entry: #entry_ident,
            };
        };
    };
    Ok(out)
}

fn item_span(item: &Item) -> Span {
    // Point at the keyword / head of the item rather than the whole body.
    let ts = match item {
        Item::Struct(s) => s.struct_token.to_token_stream(),
        Item::Enum(e) => e.enum_token.to_token_stream(),
        Item::Static(s) => s.static_token.to_token_stream(),
        Item::Const(c) => c.const_token.to_token_stream(),
        Item::Mod(m) => m.mod_token.to_token_stream(),
        Item::Impl(i) => i.impl_token.to_token_stream(),
        Item::Trait(t) => t.trait_token.to_token_stream(),
        Item::Type(t) => t.type_token.to_token_stream(),
        Item::Union(u) => u.union_token.to_token_stream(),
        Item::Use(u) => u.use_token.to_token_stream(),
        other => other.to_token_stream(),
    };
    ts.span()
}
