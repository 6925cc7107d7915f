//! What `#[yieldable]` emits when it cannot expand: the user's item beside
//! the error, so that the error is the only one reported and the rest of the
//! crate (and the IDE) keeps working, as thiserror's and tokio-macros' do.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;
use syn::visit_mut::VisitMut;

use crate::offload::context_ident;
use crate::rewrite::Rewriter;
use crate::valid::refused;

/// The function emitted beside an error in its signature: the user's own
/// function, minus `const` and the attributes `#[yieldable]` refuses, whose `offload!` calls get a context that is
/// never created. The body keeps type-checking (its other mistakes are still
/// reported) and the calls do not add one "outside a handler" error each.
/// The context is `None.unwrap()` rather than `unreachable!()`: a diverging
/// expression would make the body unreachable and its parameters "unused".
/// The crate does not compile anyway, so the code never runs.
///
/// ```text
/// // Input:
/// #[yieldable]
/// async fn handle(n: u64) -> u64 {
///     offload!(sumn, n)
/// }
/// // Output:
/// async fn handle(n: u64) -> u64 {
///     let __ythread_cx = ::core::option::Option::<&::ythread::__private::Context<'_>>::None
///         .unwrap();
///     { offload!(@ __ythread_cx; sumn, n) }
/// }
/// ::core::compile_error! {
///     "`#[yieldable]` cannot be used on an `async fn`: ..."
/// }
/// ```
pub(crate) fn fallback(mut function: ItemFn, error: syn::Error) -> TokenStream {
    function.sig.constness = None;
    function.attrs.retain(|attr| refused(attr).is_none());
    let cx = context_ident();
    // Not checked for portability: the body is here only to keep reporting
    // its other mistakes, and the error beside it is the one to fix first.
    Rewriter {
        cx: &cx,
        portable: false,
    }
    .visit_block_mut(&mut function.block);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let error = error.into_compile_error();
    quote! {
        #(#attrs)*
        #vis #sig {
            let #cx = ::core::option::Option::<&::ythread::__private::Context<'_>>::None.unwrap();
            #block
        }
        #error
    }
}

/// The item as it was, beside the error: for an item the attribute cannot
/// parse as a function.
pub(crate) fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}
