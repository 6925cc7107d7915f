//! `offload!`, `try_offload!` and `yield_from!`: parsing one call and writing
//! the code that replaces it.
//!
//! `#[yieldable]` does not expand these calls itself: it keeps each call as
//! the user wrote it (so the user's `use ythread::offload` stays used) and
//! adds the handler's context in front of the arguments, as `@cx;` (or
//! `@cx portable;` under `#[yieldable(portable)]`). A call without that
//! prefix is outside any handler. That protocol lives here, in
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
/// of the context of an outer handler if the call has one; with the word
/// `portable` after it when the handler is `#[yieldable(portable)]`.
///
/// ```text
/// // Input:
/// offload!(sumn, n)
/// // Output:
/// offload!(@__ythread_cx; sumn, n)
/// // Output, under `#[yieldable(portable)]`:
/// offload!(@__ythread_cx portable; sumn, n)
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
/// where adding a second prefix would make the call unparseable. Whether
/// the call must be portable is the innermost handler's say too.
pub(crate) fn with_context(cx: &Ident, portable: bool, args: TokenStream) -> TokenStream {
    let (_outer, args) = split_context(args);
    let mut tokens = TokenStream::new();
    tokens.extend([
        TokenTree::Punct(Punct::new('@', Spacing::Alone)),
        TokenTree::Ident(cx.clone()),
    ]);
    if portable {
        tokens.extend([TokenTree::Ident(Ident::new(PORTABLE, Span::mixed_site()))]);
    }
    tokens.extend([TokenTree::Punct(Punct::new(';', Spacing::Alone))]);
    tokens.extend(args);
    tokens
}

/// The word after the context that says the handler is
/// `#[yieldable(portable)]`.
const PORTABLE: &str = "portable";

/// The handler's context as a call's prefix gives it: its name, and
/// whether the call must be portable.
struct Prefix {
    cx: Ident,
    portable: bool,
}

/// Splits off the `@cx;` or `@cx portable;` prefix that [`with_context`]
/// added.
fn split_context(tokens: TokenStream) -> (Option<Prefix>, TokenStream) {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    let (cx, portable, rest) = match trees.as_slice() {
        [
            TokenTree::Punct(at),
            TokenTree::Ident(cx),
            TokenTree::Punct(semi),
            rest @ ..,
        ] if at.as_char() == '@' && semi.as_char() == ';' => (cx, false, rest),
        [
            TokenTree::Punct(at),
            TokenTree::Ident(cx),
            TokenTree::Ident(word),
            TokenTree::Punct(semi),
            rest @ ..,
        ] if at.as_char() == '@' && word == PORTABLE && semi.as_char() == ';' => (cx, true, rest),
        _ => return (None, tokens),
    };
    let prefix = Prefix {
        cx: cx.clone(),
        portable,
    };
    (Some(prefix), rest.iter().cloned().collect())
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
    let (prefix, tokens) = split_context(tokens);
    let Some(Prefix { cx, portable }) = prefix else {
        return outside_handler(point);
    };
    match point {
        Point::Offload => expand_offload(tokens, &cx, false, portable),
        Point::TryOffload => expand_offload(tokens, &cx, true, portable),
        // A nested handler's calls are its own: under `#[yieldable(portable)]`
        // they are checked if it is portable too.
        Point::YieldFrom => expand_yield_from(tokens, &cx),
    }
    .unwrap_or_else(|err| err.to_compile_error())
}

/// Expands `offload!`, or `try_offload!` when `fallible`; `portable` when
/// the handler is `#[yieldable(portable)]`.
fn expand_offload(
    tokens: TokenStream,
    cx: &Ident,
    fallible: bool,
    portable: bool,
) -> syn::Result<TokenStream> {
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
        OffloadInput::Closure(closure) => {
            let expansion = quote_spanned! {call_site=>
                ::ythread::__private::#closure_fn(#cx, #closure)
            };
            if portable {
                let error = not_portable(
                    &closure,
                    "a closure cannot be sent to another process; move its work into a \
                     free function marked `#[ythread::offloadable]` and offload that by \
                     its path, as `offload!(f, a, b)`",
                );
                beside(error, expansion)
            } else {
                expansion
            }
        }
        OffloadInput::Call { func, args } => {
            expand_call(&func, &args, cx, &call_fn, call_site, portable)
        }
    })
}

/// The compile error of an `offload!` that a `#[yieldable(portable)]`
/// handler cannot send to another process, at the user's `tokens`: `why`
/// it cannot, and what to write instead.
fn not_portable(tokens: &dyn ToTokens, why: &str) -> syn::Error {
    syn::Error::new_spanned(
        tokens,
        format!(
            "this work cannot run in another process, as `#[yieldable(portable)]` requires: \
             {why} (or remove `(portable)`, if the handler never runs under `Processes` or \
             `Remote`)"
        ),
    )
}

/// The call's expansion, preceded by `error`: the rest of the handler is
/// typed as usual, so that this error is the only one.
fn beside(error: syn::Error, expansion: TokenStream) -> TokenStream {
    let error = error.into_compile_error();
    quote!({ #error; #expansion })
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
///
/// Under `#[yieldable(portable)]` (`portable`), a call that could never be
/// sent to another process is a compile error at the user's tokens, and the
/// probe of one that names a function checks that it is `#[offloadable]`
/// (see [`portable_check`]):
///
/// ```text
/// // Input:
/// offload!(@__ythread_cx portable; work::sumn, n + 1)
/// // Output, as above but for the probe:
///     probe: {
///         const _: () = {
///             mod __ythread_fallback {
///                 pub(super) struct NotOffloadable;
///             }
///             use __ythread_fallback::*;
///             use work::sumn as NotOffloadable;
///             ::ythread::__private::assert_offloadable::<NotOffloadable>();
///         };
///         (&Callee(&work::sumn, PhantomData::<(_,)>)).__ythread_probe()
///     },
/// ```
fn expand_call(
    func: &Expr,
    args: &[Expr],
    cx: &Ident,
    call_fn: &TokenStream,
    call_site: Span,
    portable: bool,
) -> TokenStream {
    let (companion_check, portable_error) = match portable.then(|| portable_check(func, args)) {
        None => (None, None),
        Some(Ok(check)) => (Some(check), None),
        Some(Err(error)) => (None, Some(error)),
    };
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
                    #companion_check
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
    let expansion = if evaluated.len() <= MAX_PORTABLE_ARITY {
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
    };
    match portable_error {
        Some(error) => beside(error, expansion),
        None => expansion,
    }
}

/// Under `#[yieldable(portable)]`, what makes an `offload!(f, args..)` call
/// one that can be sent to another process, where it would otherwise fail
/// at run time (`NotPortable`): a compile error at the user's tokens for
/// what is never registered, else the check that `f` is.
///
/// A strategy that sends calls elsewhere finds the function by its item's
/// type in the table of `#[offloadable]` functions; only a path names one
/// function item, and only a free, non-generic function can be registered.
/// Those are refused here by their syntax, with the reason.
///
/// Whether a path names a registered function, the compiler answers:
/// `#[offloadable] fn sumn` defines a type `sumn` beside it, which
/// implements `Offloadable` (see `offloadable::companion_item`). The check
/// imports the user's path under a name of its own, in a block where a glob
/// import gives that name to a fallback type first: an explicit import
/// shadows a glob, one namespace at a time, so the name is the companion
/// type if the path has one and the fallback if it names only a function.
/// The fallback does not implement `Offloadable`, whose
/// `#[diagnostic::on_unimplemented]` message is then the error, at the
/// user's last segment. It is all in a constant: nothing runs.
///
/// Importing the path (rather than naming `path::to::Companion`) is what
/// lets a function the user imported (`use work::sumn;`, `as`, from another
/// crate) be checked by the name written at the call.
fn portable_check(func: &Expr, args: &[Expr]) -> syn::Result<TokenStream> {
    let Some(path) = callee_path(func) else {
        return Err(not_portable(
            func,
            "only a function named by its path can be sent to another process, not a value \
             computed in the handler; mark the function `#[ythread::offloadable]` and write \
             its path here, as `offload!(crate::f, a, b)`",
        ));
    };
    if let Some(closure) = args.iter().find(|arg| is_closure(arg)) {
        return Err(not_portable(
            closure,
            "a closure argument cannot be sent to another process; pass data, and do the \
             closure's work in the `#[offloadable]` function",
        ));
    }
    if let Some(extra) = args.get(MAX_PORTABLE_ARITY) {
        return Err(not_portable(
            extra,
            "only calls of up to 8 arguments can be sent to another process; pass some of \
             them together, as a tuple or a struct",
        ));
    }
    let segments = &path.path.segments;
    let leading_colon = path.path.leading_colon.is_some();
    let owner_is_a_type = segments
        .iter()
        .rev()
        .skip(1)
        .enumerate()
        .any(|(from_end, segment)| {
            let first = from_end + 2 == segments.len();
            names_a_type(segment, first && !leading_colon)
        });
    if path.qself.is_some() || owner_is_a_type {
        return Err(not_portable(
            func,
            "a method or an associated function cannot be registered to run in another \
             process; call it from a free function marked `#[ythread::offloadable]`, and \
             offload that, as `offload!(f, a, b)`",
        ));
    }
    let last = segments.last().expect("a path has a segment");
    if !last.arguments.is_none() {
        return Err(not_portable(
            func,
            "a generic function cannot be registered to run in another process (it has one \
             instance per type); register a non-generic wrapper for the type you offload, as \
             `#[offloadable] fn f_u64(x: u64) -> u64 { f::<u64>(x) }`, and offload that",
        ));
    }
    let fallback = Ident::new("__ythread_fallback", Span::mixed_site());
    // Located at the user's function name, where the unmet bound is reported.
    // It is the fallback's name, which an error shows ("not implemented for
    // `__ythread_fallback::NotOffloadable`").
    let checked = Ident::new(
        "NotOffloadable",
        Span::mixed_site().located_at(last.ident.span()),
    );
    let path = &path.path;
    Ok(quote! {
        const _: () = {
            mod #fallback {
                pub(super) struct #checked;
            }
            #[allow(unused_imports)]
            use #fallback::*;
            #[allow(unused_imports)]
            use #path as #checked;
            ::ythread::__private::assert_offloadable::<#checked>();
        };
    })
}

/// The path of a callee that is one (perhaps passed through a macro's
/// `$f:path` or `$f:expr`), as [`Callee::Path`] takes it.
fn callee_path(func: &Expr) -> Option<&syn::ExprPath> {
    match func {
        Expr::Path(path) => Some(path),
        Expr::Group(group) => callee_path(&group.expr),
        _ => None,
    }
}

/// Whether a path segment before the last names a type rather than a
/// module, so that the path names an associated function (`Vec::<u8>::len`,
/// `Self::helper`, `Point::new`, `str::len`): it has generic arguments, is
/// capitalised as types are (a module named so is already warned about),
/// or is the name of a primitive type at the start of the path (`first`).
fn names_a_type(segment: &syn::PathSegment, first: bool) -> bool {
    const PRIMITIVES: &[&str] = &[
        "bool", "char", "str", "f32", "f64", "i8", "i16", "i32", "i64", "i128", "isize", "u8",
        "u16", "u32", "u64", "u128", "usize",
    ];
    let name = segment.ident.to_string();
    !segment.arguments.is_none()
        || name.starts_with(char::is_uppercase)
        || (first && PRIMITIVES.contains(&name.as_str()))
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
