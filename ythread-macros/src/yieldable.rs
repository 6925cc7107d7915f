//! `#[yieldable]`: turns a function into one that returns a handler.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{ItemFn, ReturnType, Signature};

use crate::fallback::{fallback, with_error};
use crate::offload::context_ident;
use crate::rewrite::Rewriter;
use crate::valid::{check_args, check_attributes, check_signature, not_a_function};

/// Expands `#[yieldable]` on `item` with attribute arguments `args`.
///
/// ```text
/// // Input:
/// #[yieldable]
/// pub fn handle(mut stream: TcpStream) -> io::Result<()> {
///     let n = read_request(&mut stream)?;
///     write_reply(&mut stream, offload!(sumn, n))
/// }
/// // Output:
/// pub fn handle(stream: TcpStream) -> impl ::ythread::Yieldable<Output = io::Result<()>> {
///     ::ythread::__private::handler(move |
///         __ythread_cx: &::ythread::__private::Context<'_>,
///     | -> io::Result<()> {
///         let mut stream = stream;
///         let __ythread_ret: io::Result<()> = {
///             let n = read_request(&mut stream)?;
///             write_reply(&mut stream, offload!(@ __ythread_cx; sumn, n))
///         };
///         #[allow(unreachable_code)] return __ythread_ret;
///     })
/// }
/// ```
///
/// The `offload!` call then expands on its own (see `offload::expand`).
/// Under `#[yieldable(portable)]` each call's prefix is `@ __ythread_cx
/// portable;` instead, and the call checks that its work can cross to
/// another process (see `offload::expand_call`).
/// `__ythread_cx` is hygienic: the user's code cannot name it. The snapshots
/// in `tests.rs` show more cases.
///
/// The item is checked first (`valid.rs`). On an error in the signature, the
/// function is emitted beside the error with its body still type-checked
/// (see [`fallback`]), so the rest of the crate keeps compiling and IDEs keep
/// working.
pub(crate) fn yieldable(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => return with_error(item.clone(), not_a_function(item)),
    };
    // A wrong argument is a mistake that does not stop the expansion:
    // expanding anyway keeps the callers' `.run()` and `spawn(..)` free of
    // errors. The handler is then checked as if it had no argument.
    let (portable, args_error) = match check_args(&args) {
        Ok(portable) => (portable, None),
        Err(error) => (false, Some(error)),
    };
    let error = [
        check_attributes(&function.attrs),
        check_signature(&function.sig),
    ]
    .into_iter()
    .filter_map(Result::err)
    .reduce(|mut first, next| {
        first.combine(next);
        first
    });
    if let Some(error) = error {
        return fallback(function, error);
    }

    let cx = context_ident();
    Rewriter { cx: &cx, portable }.visit_block_mut(&mut function.block);

    let output = match &function.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    // The `impl` type is located at the user's `->` but carries this
    // macro's context, whose edition is 2024: the returned handler then
    // captures every lifetime in scope (it holds the borrowed arguments)
    // even in a crate of an older edition, where an `impl Trait` written
    // by the user would capture none of the elided ones.
    let output_span = Span::call_site().located_at(function.sig.output.span());
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = function;
    let bindings = bind_arguments_in_body(&mut sig);
    sig.output = syn::parse_quote_spanned! {output_span=>
        -> impl ::ythread::Yieldable<Output = #output>
    };
    // The closure declares the user's return type, with the user's spans, so
    // that a mismatch in the body reads "expected `u64` because of return
    // type" and points at the signature. (`Yieldable` itself is
    // `#[must_use]`, so ignoring a call's value already warns.)
    //
    // The body's value is bound before the closure returns it so that the
    // temporaries of its tail expression drop before the parameters, as in
    // a plain function, in every edition (before 2024 they would otherwise
    // live until the closure's end; rustc wraps `async fn` bodies in
    // `DropTemps` for the same reason).
    let body_span = block.span();
    // A body that never returns (a serving `loop`) makes that return
    // unreachable; the `allow` covers the generated `return` alone.
    // It is located at the body's tail expression, so that an error about the
    // returned value ("borrowed data escapes") points there.
    let tail_span = match block.stmts.last() {
        Some(syn::Stmt::Expr(tail, None)) => tail.span(),
        _ => block.brace_token.span.close(),
    };
    let give_back_span = Span::mixed_site().located_at(tail_span);
    let ret = Ident::new("__ythread_ret", give_back_span);
    let give_back = quote_spanned! {give_back_span=>
        #[allow(unreachable_code)]
        return #ret;
    };
    let body = quote_spanned! {body_span=>
        ::ythread::__private::handler(
            move |#cx: &::ythread::__private::Context<'_>| -> #output {
                #(#bindings)*
                let #ret: #output = #block;
                #give_back
            }
        )
    };
    let errors = args_error.map(syn::Error::into_compile_error);
    quote! {
        #(#attrs)*
        #vis #sig {
            #body
        }
        #errors
    }
}

/// Moves every argument into the handler and binds the user's patterns
/// there, so that parameters behave as in the plain function: bound with the
/// same modes, alive until the handler ends, dropped after the body's locals
/// and in the plain function's order. This is rustc's desugaring of
/// `async fn` parameters.
///
/// The function itself takes each argument whole, under its own name when the
/// pattern is a plain `name` or `mut name`, else under a hidden one. The
/// handler's body then declares, for each parameter in order, a local holding
/// the argument and the user's pattern matched against it. Locals drop in
/// reverse order of declaration, so the last parameter's bindings drop first,
/// then what its pattern left in the holder (the `_` parts), then the previous
/// parameter's, exactly as the Reference specifies for a plain function.
/// Matching in the body rather than in the signature also lets `ref` and
/// `ref mut` bindings borrow the holder, which lives as long as the handler.
///
/// `self` stays a capture of the closure; captures drop after the body's
/// locals, so it drops last, as the first parameter of a plain function does.
/// It is mentioned whole so that the closure captures all of it, not just the
/// fields the body uses.
///
/// ```text
/// // Input:
/// fn handle(&self, mut stream: TcpStream, (a, _): (D, D), ref mut v: Vec<u8>)
/// // Output:
/// fn handle(&self, stream: TcpStream, __ythread_arg2: (D, D), __ythread_arg3: Vec<u8>) {
///     ... move |cx| {
///         let _ = &self;
///         let mut stream = stream;
///         #[allow(unused_mut)]
///         let mut __ythread_arg2 = __ythread_arg2;
///         let (a, _) = __ythread_arg2;
///         #[allow(unused_mut)]
///         let mut __ythread_arg3 = __ythread_arg3;
///         let ref mut v = __ythread_arg3;
///         ...
///     }
/// }
/// ```
fn bind_arguments_in_body(sig: &mut Signature) -> Vec<syn::Stmt> {
    let mut stmts: Vec<syn::Stmt> = Vec::new();
    for (i, input) in sig.inputs.iter_mut().enumerate() {
        match input {
            syn::FnArg::Receiver(receiver) => {
                let self_token = receiver.self_token;
                stmts.push(syn::parse_quote! { let _ = &#self_token; });
            }
            syn::FnArg::Typed(typed) => {
                // Lint and `cfg` attributes of the parameter apply to the
                // statements that stand for it.
                let attrs = &typed.attrs;
                let pat = &*typed.pat;
                if let Some((ident, mutability)) = plain_binding(pat) {
                    let ident = ident.clone();
                    stmts.push(syn::parse_quote! { #(#attrs)* let #mutability #ident = #ident; });
                    *typed.pat = syn::parse_quote!(#ident);
                    continue;
                }
                let holder = Ident::new(
                    &format!("__ythread_arg{i}"),
                    Span::mixed_site().located_at(pat.span()),
                );
                // `mut`, in case the pattern binds by `ref mut`.
                stmts.push(syn::parse_quote! {
                    #(#attrs)*
                    #[allow(unused_mut)]
                    let mut #holder = #holder;
                });
                if !matches!(pat, syn::Pat::Wild(_)) {
                    stmts.push(syn::parse_quote! { #(#attrs)* let #pat = #holder; });
                }
                *typed.pat = syn::parse_quote!(#holder);
            }
        }
    }
    stmts
}

/// A pattern that is a plain binding, `name` or `mut name`, and what is
/// bound. A capitalised name is taken for what it usually is, a unit struct
/// or a constant to match, not a binding.
fn plain_binding(pat: &syn::Pat) -> Option<(&Ident, Option<syn::Token![mut]>)> {
    let syn::Pat::Ident(binding) = pat else {
        return None;
    };
    let plain = binding.by_ref.is_none()
        && binding.subpat.is_none()
        && !binding.ident.to_string().starts_with(char::is_uppercase);
    plain.then_some((&binding.ident, binding.mutability))
}
