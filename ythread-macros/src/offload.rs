//! `offload!` and `yield_from!`: parsing one call and writing the code that
//! replaces it.
//!
//! `#[yieldable]` does not expand these calls itself: it keeps each call as
//! the user wrote it (so the user's `use ythread::offload` stays used) and
//! adds the handler's context in front of the arguments, as `@cx;`. A call
//! without that prefix is outside any handler.

use proc_macro2::{Ident, Punct, Spacing, Span, TokenStream, TokenTree};
use quote::{format_ident, quote_spanned};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Token};

/// The two kinds of call the attribute rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    Offload,
    YieldFrom,
}

impl Point {
    pub(crate) fn from_name(name: &Ident) -> Option<Point> {
        if name == "offload" {
            Some(Point::Offload)
        } else if name == "yield_from" {
            Some(Point::YieldFrom)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Point::Offload => "offload",
            Point::YieldFrom => "yield_from",
        }
    }
}

/// Puts the handler's context `cx` in front of a call's arguments.
///
/// ```text
/// // Input:
/// offload!(sumn, n)
/// // Output:
/// offload!(@__ythread_cx; sumn, n)
/// ```
pub(crate) fn with_context(cx: &Ident, args: TokenStream) -> TokenStream {
    let mut tokens = TokenStream::new();
    tokens.extend([
        TokenTree::Punct(Punct::new('@', Spacing::Alone)),
        TokenTree::Ident(cx.clone()),
        TokenTree::Punct(Punct::new(';', Spacing::Alone)),
    ]);
    tokens.extend(args);
    tokens
}

/// Splits off the `@cx;` prefix that [`with_context`] added.
fn split_context(tokens: TokenStream) -> (Option<Ident>, TokenStream) {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    if let [TokenTree::Punct(at), TokenTree::Ident(cx), TokenTree::Punct(semi), rest @ ..] =
        trees.as_slice()
    {
        if at.as_char() == '@' && semi.as_char() == ';' {
            return (Some(cx.clone()), rest.iter().cloned().collect());
        }
    }
    (None, tokens)
}

/// What `offload!(...)` may contain.
enum OffloadInput {
    /// `offload!(f, a, b, ...)`
    Call { func: Expr, args: Vec<Expr> },
    /// `offload!(|| expr)` or `offload!(move || expr)`
    Closure(Expr),
}

const OFFLOAD_FORMS: &str = "expected `offload!(function, arg, ...)` or `offload!(|| expression)`";

impl Parse for OffloadInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let exprs = Punctuated::<Expr, Token![,]>::parse_terminated(input)
            .map_err(|err| syn::Error::new(err.span(), format!("{err}; {OFFLOAD_FORMS}")))?;
        let mut exprs = exprs.into_iter();
        let Some(first) = exprs.next() else {
            return Err(input.error(format!("{OFFLOAD_FORMS}; there is no work to offload")));
        };
        let args: Vec<Expr> = exprs.collect();
        if let Expr::Closure(closure) = &first {
            if !args.is_empty() {
                return Err(syn::Error::new_spanned(
                    &args[0],
                    "`offload!(|| ...)` takes the closure alone; \
                     write `offload!(|| f(a, b))` or `offload!(f, a, b)`",
                ));
            }
            if !closure.inputs.is_empty() {
                return Err(syn::Error::new_spanned(
                    &closure.inputs,
                    "the closure given to `offload!` takes no arguments: \
                     capture what it needs, as in `offload!(|| f(x))`",
                ));
            }
            return Ok(OffloadInput::Closure(first));
        }
        Ok(OffloadInput::Call { func: first, args })
    }
}

/// Expands one `offload!`/`yield_from!` call.
///
/// ```text
/// // Input:
/// offload!(@__ythread_cx; sumn, n + 1)
/// // Output:
/// ::ythread::__private::offload_call(__ythread_cx, (n + 1,), |(__arg0,)| sumn(__arg0))
///
/// // Input:
/// offload!(@__ythread_cx; || sumn(n) + 1)
/// // Output:
/// ::ythread::__private::offload(__ythread_cx, || sumn(n) + 1)
///
/// // Input:
/// yield_from!(@__ythread_cx; helper(x))
/// // Output:
/// ::ythread::__private::yield_from(__ythread_cx, helper(x))
/// ```
pub(crate) fn expand(point: Point, tokens: TokenStream) -> TokenStream {
    let (cx, tokens) = split_context(tokens);
    let Some(cx) = cx else {
        return outside_handler(point);
    };
    match point {
        Point::Offload => expand_offload(tokens, &cx),
        Point::YieldFrom => expand_yield_from(tokens, &cx),
    }
    .unwrap_or_else(|err| err.to_compile_error())
}

fn expand_offload(tokens: TokenStream, cx: &Ident) -> syn::Result<TokenStream> {
    Ok(match OffloadInput::parse.parse2(tokens)? {
        OffloadInput::Closure(closure) => {
            let span = closure.span();
            quote_spanned! {span=>
                ::ythread::__private::offload(#cx, #closure)
            }
        }
        OffloadInput::Call { func, args } => {
            // The arguments are evaluated here, in the handler, in order, so
            // that `?`, `return` and borrows in them mean what they mean in a
            // call; only the call itself is the work.
            let names: Vec<Ident> = (0..args.len())
                .map(|i| format_ident!("__arg{}", i, span = Span::mixed_site()))
                .collect();
            let span = func.span();
            quote_spanned! {span=>
                ::ythread::__private::offload_call(
                    #cx,
                    (#(#args,)*),
                    |(#(#names,)*)| #func(#(#names),*),
                )
            }
        }
    })
}

fn expand_yield_from(tokens: TokenStream, cx: &Ident) -> syn::Result<TokenStream> {
    if tokens.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "expected `yield_from!(handler(args))`: a call of a `#[yieldable]` function",
        ));
    }
    let nested: Expr = syn::parse2(tokens)?;
    let span = nested.span();
    Ok(quote_spanned! {span=>
        ::ythread::__private::yield_from(#cx, #nested)
    })
}

/// A call that no handler rewrote.
fn outside_handler(point: Point) -> TokenStream {
    let name = point.name();
    syn::Error::new(
        Span::call_site(),
        format!(
            "`{name}!` can only be used inside a function marked `#[yieldable]`; \
             add `#[ythread::yieldable]` to the enclosing function \
             (a nested `fn` item is not part of the handler around it)"
        ),
    )
    .to_compile_error()
}
