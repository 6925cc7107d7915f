//! Procedural macros of [`ythread`](https://docs.rs/ythread): `#[yieldable]`,
//! `offload!`, `try_offload!` and `yield_from!`. Use them through the
//! `ythread` crate, which re-exports them with their documentation.
//!
//! The files, in the order an expansion goes through them:
//! - `yieldable.rs` expands `#[yieldable]`, after `valid.rs` has checked its
//!   input; `fallback.rs` is what it emits beside an error.
//! - `rewrite.rs` finds the `offload!`, `try_offload!` and `yield_from!`
//!   calls in the handler's body and gives each the handler's context.
//! - `offload.rs` expands each of those calls on its own.
#![warn(missing_docs, missing_debug_implementations)]

mod fallback;
mod offload;
mod offloadable;
mod rewrite;
mod valid;
mod yieldable;

/// Expansion snapshots of `yieldable.rs` and `offload.rs`.
#[cfg(test)]
mod tests;

/// Handlers in crates of older editions, as doctests since only they can
/// choose their edition. Before 2024, an `impl Trait` return type captures
/// no elided lifetime, so the handler of a function that borrows an
/// argument would not compile unless the macro's own (2024) rules apply:
///
/// ```edition2021
/// use ythread::{Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn length(text: &str) -> usize {
///     offload!(str::len, text)
/// }
///
/// struct Numbers(Vec<u64>);
///
/// impl Numbers {
///     #[yieldable]
///     fn sum_plus(&self, extra: &u64) -> u64 {
///         offload!(|| self.0.iter().sum::<u64>() + *extra)
///     }
/// }
///
/// #[yieldable]
/// fn first<'a, T: Sync>(items: &'a [T], skip: &usize) -> Option<&'a T> {
///     let at = offload!(|| *skip);
///     items.get(at)
/// }
///
/// assert_eq!(length("abc").run(), 3);
/// assert_eq!(Numbers(vec![1, 2]).sum_plus(&3).run(), 6);
/// assert_eq!(first(&[1, 2, 3], &1).run(), Some(&2));
/// ```
///
/// Before 2024, the temporaries of a function's tail expression drop after
/// its locals but before its parameters; a handler's do the same:
///
/// ```edition2021
/// use std::cell::RefCell;
/// use ythread::{Yieldable, offload, yieldable};
///
/// thread_local!(static LOG: RefCell<Vec<&'static str>> = RefCell::new(Vec::new()));
/// struct D(&'static str);
/// impl Drop for D {
///     fn drop(&mut self) { LOG.with(|log| log.borrow_mut().push(self.0)) }
/// }
/// impl D { fn len(&self) -> usize { self.0.len() } }
///
/// fn plain(_parameter: D) -> usize {
///     let _local = D("local");
///     D("temporary").len()
/// }
///
/// #[yieldable]
/// fn handler(_parameter: D) -> usize {
///     let _local = D("local");
///     offload!(|| 0) + D("temporary").len()
/// }
///
/// plain(D("parameter"));
/// let expected = LOG.with(|log| log.take());
/// handler(D("parameter")).run();
/// assert_eq!(LOG.with(|log| log.take()), expected);
/// assert_eq!(expected, ["local", "temporary", "parameter"]);
/// ```
///
/// ```edition2018
/// use ythread::{Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn length(text: &str) -> usize {
///     offload!(str::len, text)
/// }
///
/// assert_eq!(length("abc").run(), 3);
/// ```
mod older_editions {}

use proc_macro::TokenStream;

/// Turns a function into a yieldable handler. See `ythread::yieldable`.
#[proc_macro_attribute]
pub fn yieldable(args: TokenStream, item: TokenStream) -> TokenStream {
    yieldable::yieldable(args.into(), item.into()).into()
}

/// Registers a function for worker processes. See `ythread::offloadable`.
#[proc_macro_attribute]
pub fn offloadable(args: TokenStream, item: TokenStream) -> TokenStream {
    offloadable::offloadable(args.into(), item.into()).into()
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

/// Offloads work and returns its failure as a value. See
/// `ythread::try_offload`.
#[proc_macro]
pub fn try_offload(input: TokenStream) -> TokenStream {
    offload::expand(offload::Point::TryOffload, input.into()).into()
}

/// Runs a nested handler inside the current one. See `ythread::yield_from`.
#[proc_macro]
pub fn yield_from(input: TokenStream) -> TokenStream {
    offload::expand(offload::Point::YieldFrom, input.into()).into()
}
