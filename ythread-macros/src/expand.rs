//! `#[yieldable]`: turns a function into one that returns a handler.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{ItemFn, ReturnType, Type};

use crate::rewrite::Rewriter;

/// Expands `#[yieldable]` on `item` with attribute arguments `args`.
///
/// ```text
/// // Input:
/// #[yieldable]
/// pub fn handle(mut stream: TcpStream) -> io::Result<()> {
///     let n = read_n(&mut stream)?;
///     write_sum(&mut stream, offload!(sumn, n))
/// }
/// // Output:
/// #[must_use = "..."]
/// pub fn handle(mut stream: TcpStream) -> impl ::ythread::Yieldable<Output = io::Result<()>> {
///     ::ythread::__private::handler::<io::Result<()>, _>(
///         move |__ythread_cx: &::ythread::__private::Context<'_>| {
///             let n = read_n(&mut stream)?;
///             write_sum(&mut stream, {
///                 let __arg0 = n;
///                 ::ythread::__private::offload(__ythread_cx, || sumn(__arg0))
///             })
///         },
///     )
/// }
/// ```
///
/// On an error, the function is emitted unchanged beside the error, so the
/// rest of the crate still type-checks and IDEs keep working.
pub(crate) fn yieldable(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[yieldable]` applies to a function with a body, such as \
                 `#[yieldable] fn handle(stream: TcpStream) -> io::Result<()> { ... }`",
            );
            return with_error(item, error);
        }
    };
    if let Err(error) = check(&args, &function) {
        return with_error(function.into_token_stream(), error);
    }

    let cx = Ident::new("__ythread_cx", Span::mixed_site());
    Rewriter { cx: &cx }.visit_block_mut(&mut function.block);

    let output = match &function.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    let output_span = function.sig.output.span();
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let mut sig = sig;
    sig.output = syn::parse_quote_spanned! {output_span=>
        -> impl ::ythread::Yieldable<Output = #output>
    };
    let body_span = block.span();
    let body = quote_spanned! {body_span=>
        ::ythread::__private::handler::<#output, _>(
            move |#cx: &::ythread::__private::Context<'_>| #block
        )
    };
    quote! {
        #(#attrs)*
        #[must_use = "a yieldable handler does nothing until it is run or spawned"]
        #vis #sig {
            #body
        }
    }
}

fn check(args: &TokenStream, function: &ItemFn) -> syn::Result<()> {
    if !args.is_empty() {
        return Err(syn::Error::new_spanned(
            args,
            "`#[yieldable]` takes no arguments; the strategy is chosen by whoever runs \
             the handler, e.g. `YieldableThread::new().apply(Pool::new(4)).spawn(handle(x))`",
        ));
    }
    let sig = &function.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "`#[yieldable]` cannot be used on an `async fn`: a yieldable handler is a \
             blocking function driven by an OS thread; remove `async`, do I/O with \
             blocking calls and mark the CPU-heavy steps with `offload!`",
        ));
    }
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new_spanned(
            constness,
            "`#[yieldable]` cannot be used on a `const fn`: a handler suspends at run time",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "`#[yieldable]` cannot be used on a variadic function",
        ));
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(span) = find_impl_trait(ty) {
            return Err(syn::Error::new(
                span,
                "a `#[yieldable]` function cannot return `impl Trait`; name the type, \
                 or return a `Box<dyn Trait>`",
            ));
        }
    }
    Ok(())
}

/// Finds an `impl Trait` anywhere inside a return type.
fn find_impl_trait(ty: &Type) -> Option<Span> {
    struct Finder(Option<Span>);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, ty: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert(ty.impl_token.span);
        }
    }
    let mut finder = Finder(None);
    syn::visit::visit_type(&mut finder, ty);
    finder.0
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}

#[cfg(test)]
mod tests;
