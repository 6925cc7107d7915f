//! Procedural macros of [`ythread`](https://docs.rs/ythread): `#[yieldable]`,
//! `offload!` and `yield_from!`. Use them through the `ythread` crate, which
//! re-exports them with their documentation.
#![warn(missing_docs, missing_debug_implementations)]

mod expand;
mod offload;
mod rewrite;

/// Expansion snapshots of `expand.rs` and `offload.rs`.
#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Turns a function into a yieldable handler. See `ythread::yieldable`.
#[proc_macro_attribute]
pub fn yieldable(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::yieldable(args.into(), item.into()).into()
}

/// Offloads work from a yieldable handler. See `ythread::offload`.
///
/// Inside a `#[yieldable]` function the attribute has given every call the
/// handler's context as a hidden first argument; without it, the call is
/// outside any handler and expands to a compile error.
#[proc_macro]
pub fn offload(input: TokenStream) -> TokenStream {
    offload::expand(offload::Point::Offload, input.into()).into()
}

/// Runs a nested handler inside the current one. See `ythread::yield_from`.
#[proc_macro]
pub fn yield_from(input: TokenStream) -> TokenStream {
    offload::expand(offload::Point::YieldFrom, input.into()).into()
}
