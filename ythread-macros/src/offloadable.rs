//! `#[offloadable]`: registers a function for worker processes.
//!
//! The function is left as written. Beside it goes one `Registration` in
//! ythread's table of offloadable functions (a linker section): the
//! function's path (its name on the wire), its signature and fingerprint, the
//! worker's side (decode the arguments, call, encode the result) and the
//! parent's (decode the result), and whether it may run again when its
//! worker dies (`#[offloadable(idempotent)]`).
//!
//! Beside the function goes also its companion, which says to the compiler
//! that it is registered (see [`companion_item`]).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

pub(crate) fn offloadable(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args, item.clone()) {
        Ok(tokens) => tokens,
        // Keep the function, and its companion if it has a name, so that its
        // callers do not get errors of their own on top of this one.
        Err(err) => {
            let err = err.to_compile_error();
            // (Not for a method: a type cannot be declared in an `impl`.)
            let companion = syn::parse2::<ItemFn>(item.clone())
                .ok()
                .filter(|function| function.sig.receiver().is_none())
                .map(|function| companion_item(&function));
            quote!(#err #item #companion)
        }
    }
}

/// The companion of `function`: a type of the same name, hidden, that says
/// to the compiler that the function is registered. A function's name is a
/// value and a type may share it, so that `use work::sumn` imports both, and
/// every path that reaches the function (imported, renamed, from another
/// crate) reaches its companion: it has the function's visibility and the
/// span of its name.
///
/// In a `#[yieldable(portable)]` handler, `offload!(path::to::f, ..)` checks
/// that the type the path names implements `Offloadable` (see
/// `offload::portable_check`); for a function that has no companion that is
/// a fallback type that does not, and the error is `Offloadable`'s own
/// (`#[diagnostic::on_unimplemented]`), at the user's `f`.
fn companion_item(function: &ItemFn) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    quote! {
        #[doc(hidden)]
        #[allow(dead_code, non_camel_case_types, unreachable_pub)]
        #vis struct #name {}

        impl ::ythread::__private::Offloadable for #name {}
    }
}

fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let idempotent = idempotent(args)?;
    let function: ItemFn = syn::parse2(item).map_err(|err| {
        syn::Error::new(
            err.span(),
            "`#[offloadable]` goes on a free function, as in `#[offloadable] fn sumn(n: u64) -> u64`",
        )
    })?;
    check(&function)?;
    let name = &function.sig.ident;
    let name_text = name.to_string();
    let mut types = Vec::new();
    for input in &function.sig.inputs {
        match input {
            FnArg::Typed(typed) => types.push(&*typed.ty),
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    "an `#[offloadable]` function cannot take `self`: a worker process has \
                     no `self` to call it on; make it a free function taking the data",
                ));
            }
        }
    }
    let output: Type = match &function.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let signature = format!(
        "({}) -> {}",
        types
            .iter()
            .map(|ty| quote!(#ty).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        quote!(#output)
    );
    let args: Vec<_> = (0..types.len())
        .map(|i| syn::Ident::new(&format!("__arg{i}"), Span::mixed_site()))
        .collect();
    // Each type keeps the user's span, so that a parameter or result that
    // serde cannot carry is an error at that type.
    // The arguments are decoded one by one (postcard encodes a tuple as its
    // elements in a row), each call located at its parameter's type, so
    // that a parameter serde cannot decode is an error at that type.
    let decode_each = types.iter().zip(&args).map(|(ty, arg)| {
        quote_spanned! {ty.span()=>
            let (#arg, bytes): (#ty, &[u8]) = ::ythread::__private::take_arg(bytes, max_depth)?;
        }
    });
    // The parent encodes the arguments with this: each parameter must be
    // `Serialize`, checked here, at its type, rather than at run time at the
    // call. It is a function of the parameter types as written, so their
    // elided lifetimes are its own and `Serialize` must hold for every
    // lifetime (see `ythread::__private::EncodeArgs`).
    let fields: Vec<_> = (0..types.len())
        .map(|i| syn::Ident::new(&format!("__field{i}"), Span::mixed_site()))
        .collect();
    let encode_each = types.iter().zip(&fields).map(|(ty, field)| {
        quote_spanned! {ty.span()=> ::ythread::__private::encode_value::<#ty>(#field, out, max_depth)?;}
    });
    let encode_args = quote! {
        // It appends to the frame's buffer: a `Vec`, not a slice.
        #[allow(clippy::ptr_arg)]
        fn __ythread_encode_args(
            (#(#fields,)*): &(#(#types,)*),
            out: &mut ::std::vec::Vec<u8>,
            max_depth: usize,
        ) -> ::ythread::__private::EncodeOutcome {
            #(#encode_each)*
            ::core::result::Result::Ok(())
        }
    };
    let output_span = output.span();
    let encode_result =
        quote_spanned!(output_span=> ::ythread::__private::encode_result(&result, out, max_depth));
    let decode_result =
        quote_spanned!(output_span=> ::ythread::__private::decode_result::<#output>);
    // The result must be owned, with no lifetime but `'static`: the parent
    // hands a decoded result to the call as the function's exact result
    // type, which a lifetime tied to an argument (`-> Slot<'_>`, `-> &str`)
    // would make a lie. In a struct's where clause an elided lifetime is an
    // error, where a static item's type would quietly take `'static`.
    let owned_result = quote_spanned! {output_span=>
        #[allow(dead_code)]
        struct __YthreadResultMustBeOwned where #output: 'static;
    };
    let companion = companion_item(&function);
    Ok(quote! {
        #function

        #companion

        const _: () = {
            #owned_result

            #encode_args

            #[::ythread::__private::linkme::distributed_slice(::ythread::__private::OFFLOADABLE)]
            #[linkme(crate = ::ythread::__private::linkme)]
            static REGISTRATION: ::ythread::__private::Registration = ::ythread::__private::Registration {
                name: ::core::concat!(::core::module_path!(), "::", #name_text),
                signature: #signature,
                fingerprint: ::ythread::__private::fingerprint(#signature),
                key: || ::ythread::__private::type_id_of_val(&#name),
                idempotent: #idempotent,
                invoke: |bytes, out, max_depth| {
                    #(#decode_each)*
                    ::ythread::__private::end_of_args(bytes)?;
                    let result = #name(#(#args),*);
                    #encode_result
                },
                encode_args: ::ythread::__private::EncodeArgs::new(__ythread_encode_args),
                decode_result: #decode_result,
            };
        };
    })
}

/// `#[offloadable]` or `#[offloadable(idempotent)]`: whether the function
/// may be run again when the worker running it dies.
fn idempotent(args: TokenStream) -> syn::Result<bool> {
    if args.is_empty() {
        return Ok(false);
    }
    match syn::parse2::<syn::Ident>(args.clone()) {
        Ok(word) if word == "idempotent" => Ok(true),
        _ => Err(syn::Error::new_spanned(
            args,
            "`#[offloadable]` takes no argument but `idempotent`, as in \
             `#[offloadable(idempotent)]`: a call whose worker dies may then be run again",
        )),
    }
}

/// What a function registered for other processes cannot be.
fn check(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    let refuse = |tokens: &dyn quote::ToTokens, why: &str| {
        Err(syn::Error::new_spanned(
            tokens,
            format!("an `#[offloadable]` function cannot be {why}"),
        ))
    };
    if let Some(asyncness) = &sig.asyncness {
        return refuse(
            asyncness,
            "`async`: a worker process calls it to completion",
        );
    }
    if let Some(constness) = &sig.constness {
        return refuse(
            constness,
            "`const` (remove `const`, or wrap it in a plain fn)",
        );
    }
    if !sig.generics.params.is_empty() {
        return refuse(
            &sig.generics,
            "generic: a worker process finds it by name, and a generic function has one \
             instance per type; register a non-generic wrapper for each type you offload",
        );
    }
    if let Some(variadic) = &sig.variadic {
        return refuse(variadic, "variadic");
    }
    if let Some(unsafety) = &sig.unsafety {
        return refuse(
            unsafety,
            "`unsafe`: a worker process calls it with whatever arguments arrive, and no caller \
             there can uphold its contract; offload a safe function that checks them and calls it",
        );
    }
    for input in &sig.inputs {
        let FnArg::Typed(typed) = input else { continue };
        match &*typed.ty {
            Type::ImplTrait(_) => {
                return refuse(
                    &typed.ty,
                    "generic (`impl Trait` parameter): its arguments must have one serde type",
                );
            }
            Type::Reference(reference) if reference.mutability.is_some() => {
                return Err(syn::Error::new_spanned(
                    &typed.ty,
                    "an `#[offloadable]` function cannot take `&mut`: it runs on a copy in \
                     another process, and its changes would not come back; take the value and \
                     return the changed one",
                ));
            }
            _ => {}
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output
        && let Some(borrow) = first_borrow(ty)
    {
        return Err(syn::Error::new(
            borrow,
            "the result of an `#[offloadable]` function must be owned (no reference, and no \
             lifetime but `'static`): it is decoded in another process than the one that called \
             it; return `String` for `&str`, `Vec<T>` for `&[T]`",
        ));
    }
    if let ReturnType::Type(_, ty) = &sig.output
        && let Type::ImplTrait(_) = &**ty
    {
        return refuse(
            ty,
            "`-> impl Trait`: its result must be a serde type the parent can name",
        );
    }
    Ok(())
}

/// Where a type borrows: a reference, or a lifetime other than `'static`.
fn first_borrow(ty: &Type) -> Option<Span> {
    struct Finder(Option<Span>);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
            // `&'static str` too: a reference cannot be decoded into (serde
            // would need the bytes to live for ever).
            self.0.get_or_insert(reference.and_token.span);
        }
        fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
            if lifetime.ident != "static" {
                self.0.get_or_insert(lifetime.span());
            }
        }
    }
    let mut finder = Finder(None);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}
