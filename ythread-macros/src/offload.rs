//! `offload!`, `try_offload!` and `yield_from!`: parsing one call and writing
//! the code that replaces it.
//!
//! `#[yieldable]` does not expand these calls itself: it keeps each call as
//! the user wrote it (so the user's `use ythread::offload` stays used) and
//! adds the handler's context in front of the arguments, as `@cx;`. A call
//! without that prefix is outside any handler. That protocol lives here, in
//! [`context_ident`], [`with_context`] and [`split_context`].

use proc_macro2::{Delimiter, Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Token};

/// The kinds of call the attribute rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    Offload,
    TryOffload,
    YieldFrom,
}

impl Point {
    pub(crate) fn from_name(name: &Ident) -> Option<Point> {
        if name == "offload" {
            Some(Point::Offload)
        } else if name == "try_offload" {
            Some(Point::TryOffload)
        } else if name == "yield_from" {
            Some(Point::YieldFrom)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Point::Offload => "offload",
            Point::TryOffload => "try_offload",
            Point::YieldFrom => "yield_from",
        }
    }
}

/// The name of the handler's context, `__ythread_cx`: the closure parameter
/// that `#[yieldable]` declares and every rewritten call names. Its span is
/// `mixed_site`, so the user's code can neither name it nor shadow it.
pub(crate) fn context_ident() -> Ident {
    Ident::new("__ythread_cx", Span::mixed_site())
}

/// Puts the handler's context `cx` in front of a call's arguments, in place
/// of the context of an outer handler if the call has one.
///
/// ```text
/// // Input:
/// offload!(sumn, n)
/// // Output:
/// offload!(@__ythread_cx; sumn, n)
/// ```
///
/// A call can reach a handler already rewritten by an outer one. Handlers
/// are rewritten from the outside in (an attribute in another's output
/// expands after it), and the rewriter leaves nested items alone in the tree
/// and in tokens; but an item it cannot see, because another macro builds it
/// from its own syntax (`handlers! { h(x) => offload!(f, x) }` expanding to
/// a `#[yieldable] fn h`), has its calls rewritten by the outer handler too.
/// The last handler to rewrite a call is then the innermost one around it,
/// whose context is the one in scope: its context replaces the outer one,
/// where adding a second prefix would make the call unparseable.
pub(crate) fn with_context(cx: &Ident, args: TokenStream) -> TokenStream {
    let (_outer, args) = split_context(args);
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
    if let [
        TokenTree::Punct(at),
        TokenTree::Ident(cx),
        TokenTree::Punct(semi),
        rest @ ..,
    ] = trees.as_slice()
        && at.as_char() == '@'
        && semi.as_char() == ';'
    {
        return (Some(cx.clone()), rest.iter().cloned().collect());
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

impl OffloadInput {
    /// Parses the input of `offload!`, or of `try_offload!` when `macro_name`
    /// says so: the forms are the same, the messages name the macro used.
    fn parse_for(input: ParseStream<'_>, macro_name: &str) -> syn::Result<Self> {
        // Written with `offload!`, shown with the macro's own name.
        let say = |text: &str| text.replace("offload!", &format!("{macro_name}!"));
        let forms = say("write `offload!(function, arg, ...)` or `offload!(|| expression)`");
        let exprs = Punctuated::<Expr, Token![,]>::parse_terminated(input)
            .map_err(|err| syn::Error::new(err.span(), format!("{err}: {forms}")))?;
        let mut exprs = exprs.into_iter();
        let Some(first) = exprs.next() else {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("{}: {forms}", say("`offload!` needs the work to offload")),
            ));
        };
        let args: Vec<Expr> = exprs.collect();
        if let Expr::Closure(closure) = &first {
            if !args.is_empty() {
                return Err(syn::Error::new_spanned(
                    &args[0],
                    say("`offload!(|| ...)` takes the closure alone; \
                         write `offload!(|| f(a, b))` or `offload!(f, a, b)`"),
                ));
            }
            if !closure.inputs.is_empty() {
                return Err(syn::Error::new_spanned(
                    &closure.inputs,
                    say("the closure given to `offload!` takes no arguments: \
                         capture what it needs, as in `offload!(|| f(x))`"),
                ));
            }
            return Ok(OffloadInput::Closure(first));
        }
        if args.is_empty() {
            // `offload!(sumn(n))` would run `sumn(n)` in the handler and then
            // call its result: the work must be given unevaluated.
            let message = match &first {
                Expr::Call(_) => Some(
                    "`offload!` takes the function and its arguments apart, so that \
                     the call runs where the strategy decides: write `offload!(f, a, b)` \
                     for `f(a, b)`, or `offload!(|| f(a, b))`",
                ),
                Expr::MethodCall(_) => Some(
                    "`offload!` needs the work unevaluated, so that it runs where the \
                     strategy decides: write a method call as a closure, \
                     `offload!(|| value.method(a))`",
                ),
                _ => None,
            };
            if let Some(message) = message {
                return Err(syn::Error::new_spanned(&first, say(message)));
            }
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
/// match (::ythread::__private::Params1 {
///     callee: (),
///     probe: (&Callee(&sumn, PhantomData::<(_,)>)).__ythread_probe(),
///     work: |_, (__arg0,)| sumn(__arg0),
///     a0: n + 1,
/// }).split() {
///     (__ythread_args, __ythread_work, __ythread_probe) => ::ythread::__private::offload_call(
///         __ythread_cx,
///         __ythread_args,
///         __ythread_work,
///         __ythread_probe.portability(),
///     ),
/// }
///
/// // Input (a callee that is not a path):
/// offload!(@__ythread_cx; table[i], n + 1)
/// // Output:
/// ::ythread::__private::offload_call(
///     __ythread_cx,
///     ::core::convert::identity((n + 1,)),
///     |(__arg0,)| table[i](__arg0),
///     || ::ythread::__private::never_portable("table[i]", "only a function named ..."),
/// )
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
        Point::Offload => expand_offload(tokens, &cx, false),
        Point::TryOffload => expand_offload(tokens, &cx, true),
        Point::YieldFrom => expand_yield_from(tokens, &cx),
    }
    .unwrap_or_else(|err| err.to_compile_error())
}

/// Expands `offload!`, or `try_offload!` when `fallible`.
fn expand_offload(tokens: TokenStream, cx: &Ident, fallible: bool) -> syn::Result<TokenStream> {
    let (closure_fn, call_fn) = if fallible {
        (quote!(try_offload), quote!(try_offload_call))
    } else {
        (quote!(offload), quote!(offload_call))
    };
    // The call to the runtime takes the span of the whole `offload!(...)`,
    // so that an error about the value (`expected String, found u64`) points
    // at the macro call and suggests fixes after it, not inside it.
    let call_site = Span::call_site();
    let macro_name = if fallible { "try_offload" } else { "offload" };
    let input =
        (|input: ParseStream<'_>| OffloadInput::parse_for(input, macro_name)).parse2(tokens)?;
    Ok(match input {
        // The closure keeps its own spans: a capture that is not `Send`
        // points at it.
        OffloadInput::Closure(closure) => quote_spanned! {call_site=>
            ::ythread::__private::#closure_fn(#cx, #closure)
        },
        OffloadInput::Call { func, args } => expand_call(&func, &args, cx, &call_fn, call_site),
    })
}

/// What an `offload!(f, ..)` callee is, for where and how it is evaluated.
enum Callee {
    /// A path (`sumn`, `u64::from`, a local `f`): named again by the probe,
    /// which makes the call portable.
    Path,
    /// A place (`self.f`, `table[i]`, `*f`): called in the work, as a
    /// place, so that the call borrows it as a plain call would.
    Place,
    /// A value computed by an expression (`make(x)`, `if b { f } else { g }`,
    /// `&f`, `f as fn(u64) -> u64`): evaluated first, in the handler, as a
    /// plain call evaluates its callee before its arguments, so that its
    /// side effects, `?` and `return` happen there.
    Value,
}

impl Callee {
    fn of(func: &Expr) -> Callee {
        match func {
            Expr::Path(_) => Callee::Path,
            // A macro's `$f:expr` or `$f:path` fragment: what it holds.
            Expr::Group(group) => Callee::of(&group.expr),
            Expr::Paren(inner) => match Callee::of(&inner.expr) {
                Callee::Path => Callee::Place,
                other => other,
            },
            Expr::Field(_) | Expr::Index(_) => Callee::Place,
            Expr::Unary(unary) if matches!(unary.op, syn::UnOp::Deref(_)) => Callee::Place,
            _ => Callee::Value,
        }
    }
}

/// Expands `offload!(f, args..)` (or `try_offload!`, whose runtime function
/// is `call_fn`).
///
/// ```text
/// // Input:
/// offload!(@__ythread_cx; sumn, n + 1)
/// // Output:
/// match (::ythread::__private::Params1 {
///     callee: (),
///     probe: (&Callee(&sumn, PhantomData::<(_,)>)).__ythread_probe(),
///     work: |_, (__arg0,)| sumn(__arg0),
///     a0: n + 1,
/// }).split() {
///     (__ythread_args, __ythread_work, __ythread_probe) => ::ythread::__private::offload_call(
///         __ythread_cx,
///         __ythread_args,
///         __ythread_work,
///         __ythread_probe.portability(),
///     ),
/// }
///
/// // Input (a callee that is a value, and a closure argument):
/// offload!(@__ythread_cx; pick(k), xs, |x| x + 1)
/// // Output:
/// match (::ythread::__private::Params1 {
///     callee: pick(k),
///     probe: ::ythread::__private::Probe::none(),
///     a0: xs,
///     work: |__ythread_f, (__arg0,)| __ythread_f(__arg0, |x| x + 1),
/// }).split() {
///     (__ythread_args, __ythread_work, _) => ::ythread::__private::offload_call(
///         __ythread_cx,
///         __ythread_args,
///         __ythread_work,
///         || ::ythread::__private::never_portable("pick(k)", "only a function ..."),
///     ),
/// }
/// ```
///
/// A closure written as an argument stays in the work's call, so that it is
/// typed as a plain call types it (its parameters from the callee's `Fn`
/// bound); creating a closure has no effect to evaluate early.
fn expand_call(
    func: &Expr,
    args: &[Expr],
    cx: &Ident,
    call_fn: &TokenStream,
    call_site: Span,
) -> TokenStream {
    let callee = Callee::of(func);
    // The arguments are evaluated here, in the handler, in order, so that
    // `?`, `return` and borrows in them mean what they mean in a call; only
    // the call itself is the work. Each one is passed on through a hygienic
    // name located at the user's argument, so a type error in it points at
    // that argument.
    let mut evaluated: Vec<&Expr> = Vec::new();
    let mut names: Vec<Ident> = Vec::new();
    let mut call_args: Vec<TokenStream> = Vec::new();
    for arg in args {
        if is_closure(arg) {
            call_args.push(arg.to_token_stream());
            continue;
        }
        let name = format_ident!(
            "__arg{}",
            names.len(),
            span = Span::mixed_site().located_at(arg.span())
        );
        call_args.push(name.to_token_stream());
        names.push(name);
        evaluated.push(arg);
    }
    let func_span = func.span();
    let value = Ident::new("__ythread_f", Span::mixed_site().located_at(func_span));
    // What the work calls; and the callee's value, which a computed callee
    // passes to the work as its first parameter (`()` for the others).
    let (called, callee_value, callee_param) = match callee {
        Callee::Path => (func.to_token_stream(), quote!(()), quote!(_)),
        Callee::Place => (quote_spanned!(func_span=> (#func)), quote!(()), quote!(_)),
        Callee::Value => (
            value.to_token_stream(),
            func.to_token_stream(),
            value.to_token_stream(),
        ),
    };
    let call = quote_spanned!(func_span=> #called(#(#call_args),*));
    let work = quote_spanned! {func_span=>
        |#callee_param, (#(#names,)*)| #call
    };
    let not_portable = if !matches!(callee, Callee::Path) {
        Some(
            "only a function named by its path (`offload!(crate::f, x)`) can be sent to \
             another process",
        )
    } else if evaluated.len() < args.len() {
        Some(
            "a closure argument cannot be sent to another process: pass data, and name \
             the function that uses it",
        )
    } else if evaluated.len() > MAX_PORTABLE_ARITY {
        Some("only calls of up to 8 arguments can be sent to another process")
    } else {
        None
    };
    // For a path, the probe names the function's type, tied to the work's
    // call so that a generic function's type parameters are those the call
    // infers (see `ythread::__private::Callee`): it is how a strategy that
    // sends calls elsewhere finds the function.
    let probe_name = Ident::new("__ythread_probe", Span::mixed_site());
    let (probe, probe_pattern, wire) = match not_portable {
        None => {
            let arity = evaluated.iter().map(|_| quote!(_));
            (
                quote! {{
                    #[allow(unused_imports)]
                    use ::ythread::__private::{ProbeAny as _, ProbeCall as _};
                    (&::ythread::__private::Callee(
                        &#func,
                        ::core::marker::PhantomData::<(#(#arity,)*)>,
                    ))
                    .__ythread_probe()
                }},
                probe_name.to_token_stream(),
                quote!(#probe_name.portability()),
            )
        }
        Some(reason) => {
            let function = func.to_token_stream().to_string();
            (
                quote!(::ythread::__private::Probe::none()),
                quote!(_),
                quote!(|| ::ythread::__private::never_portable(#function, #reason)),
            )
        }
    };
    if evaluated.len() <= MAX_PORTABLE_ARITY {
        // The callee (if computed), the probe, the work and the arguments
        // become the fields of `ParamsN { callee, probe, work, a0, .. }`: one
        // expression, so that every temporary lives to the end of the
        // statement, as in a plain call (the `match` keeps them to the end
        // of the call). It coerces each argument to the function's parameter
        // type as a struct field is (so that another process can decode them
        // as such, and a `&mut` is reborrowed, not moved).
        let params = format_ident!("Params{}", evaluated.len());
        let fields: Vec<Ident> = (0..evaluated.len())
            .map(|i| format_ident!("a{}", i, span = evaluated[i].span()))
            .collect();
        // Located at the arguments, so that an error about all of them (one
        // is not `Send`) points there.
        let args_name = Ident::new(
            "__ythread_args",
            Span::mixed_site().located_at(spanning_span(&evaluated)),
        );
        let work_name = Ident::new("__ythread_work", Span::mixed_site());
        // The work is typed first, so that it gives the arguments' fields
        // their types; but a closure argument in it is typed by its callee's
        // parameter types, which the arguments before it decide: then the
        // arguments come first, as in a plain call.
        let fields = quote!(#(#fields: #evaluated,)*);
        let (before, after) = if evaluated.len() == args.len() {
            (quote!(work: #work,), fields)
        } else {
            (fields, quote!(work: #work,))
        };
        quote_spanned! {call_site=>
            match (::ythread::__private::#params {
                callee: #callee_value,
                probe: #probe,
                #before
                #after
            }).split() {
                (#args_name, #work_name, #probe_pattern) => ::ythread::__private::#call_fn(
                    #cx,
                    #args_name,
                    #work_name,
                    #wire,
                ),
            }
        }
    } else {
        // More arguments than a `ParamsN` holds (so never portable: `wire`
        // says why): the callee and their tuple, spanning them all (see
        // `spanning_arguments`).
        let tuple = spanning_arguments(&evaluated);
        quote_spanned! {call_site=>
            ::ythread::__private::#call_fn(
                #cx,
                (#callee_value, #tuple),
                |(#callee_param, (#(#names,)*))| #call,
                #wire,
            )
        }
    }
}

/// Whether an argument is a closure written in place (perhaps passed
/// through a macro's `$arg:expr`).
fn is_closure(arg: &Expr) -> bool {
    match arg {
        Expr::Closure(_) => true,
        Expr::Group(group) => is_closure(&group.expr),
        _ => false,
    }
}

/// The largest number of arguments of an `offload!` call that can be sent
/// to another process (`ythread::__private::params0` to `params8`).
const MAX_PORTABLE_ARITY: usize = 8;

/// The span of the first argument, where an error about all of them points.
fn spanning_span(args: &[&Expr]) -> Span {
    args.first().map_or_else(Span::call_site, |arg| arg.span())
}

/// The tuple of the arguments, as an expression whose span runs from the
/// first argument to the last, so that an error about the whole tuple (one
/// argument is not `Send`) underlines the arguments and nothing else.
///
/// A tuple's span is that of its parentheses, a single token here; a call's
/// span runs from its path to its closing parenthesis, so the tuple is
/// wrapped in `identity(..)` with the path spanned at the first argument's
/// first token and the parentheses at the last argument's last token (the
/// technique of `syn::Error::new_spanned`; stable proc macros cannot join
/// spans).
fn spanning_arguments(args: &[&Expr]) -> TokenStream {
    let tuple = quote!((#(#args,)*));
    let (Some(first), Some(last)) = (args.first(), args.last()) else {
        return tuple;
    };
    let start = first
        .to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span());
    let end = last
        .to_token_stream()
        .into_iter()
        .last()
        .map_or_else(Span::call_site, |t| t.span());
    let mut parens = Group::new(Delimiter::Parenthesis, tuple);
    parens.set_span(end);
    quote_spanned!(start=> ::core::convert::identity #parens)
}

fn expand_yield_from(tokens: TokenStream, cx: &Ident) -> syn::Result<TokenStream> {
    const FORM: &str = "write `yield_from!(handler(args))`, where `handler` is a \
                        `#[yieldable]` function";
    if tokens.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            format!("`yield_from!` needs the handler to run: {FORM}"),
        ));
    }
    let nested: Expr =
        syn::parse2(tokens).map_err(|err| syn::Error::new(err.span(), format!("{err}: {FORM}")))?;
    // As for `offload!`: an error about the value points at the macro call,
    // an error about the handler at the user's expression.
    Ok(quote_spanned! {Span::call_site()=>
        ::ythread::__private::yield_from(#cx, #nested)
    })
}

/// A call that no handler rewrote: the short cause and the fix, then the
/// two ways a call inside a handler's source can still be outside it.
fn outside_handler(point: Point) -> TokenStream {
    let name = point.name();
    syn::Error::new(
        Span::call_site(),
        format!(
            "`{name}!` outside a `#[yieldable]` function; add `#[ythread::yieldable]` to \
             the enclosing function. A nested `fn` is not part of the handler around it, \
             and calls are found by name: an alias of `{name}!` is not recognised"
        ),
    )
    .to_compile_error()
}
