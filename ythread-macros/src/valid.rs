//! Checks on what `#[yieldable]` is given: its arguments, the item, the
//! function's signature. Each error points at the user's tokens and says what
//! to write instead; `yieldable.rs` emits it beside the function (see
//! `fallback.rs`).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{Attribute, Meta, ReturnType, Signature, Type};

/// The error for an item that is not a function with a body, pointing at the
/// item rather than at the attribute.
pub(crate) fn not_a_function(item: TokenStream) -> syn::Error {
    const EXAMPLE: &str =
        "such as `#[yieldable] fn handle(stream: TcpStream) -> io::Result<()> { ... }`";
    if let Ok(method) = syn::parse2::<syn::TraitItemFn>(item.clone())
        && method.default.is_none()
    {
        return syn::Error::new_spanned(
            pair(&method.sig, &method.semi_token),
            "`#[yieldable]` needs the function's body: in a trait, declare the method as \
                 returning the handler, as in `fn handle(&self, n: u64) -> impl \
                 ythread::Yieldable<Output = u64>;`, and put `#[yieldable]` on each \
                 implementation, which returns the plain type (`-> u64`)",
        );
    }
    let (tokens, what) = match syn::parse2::<syn::Item>(item) {
        Ok(syn::Item::Struct(s)) => (pair(&s.struct_token, &s.ident), "a struct"),
        Ok(syn::Item::Enum(e)) => (pair(&e.enum_token, &e.ident), "an enum"),
        Ok(syn::Item::Union(u)) => (pair(&u.union_token, &u.ident), "a union"),
        Ok(syn::Item::Trait(t)) => (
            pair(&t.trait_token, &t.ident),
            "a trait; put it on the methods that have a body",
        ),
        Ok(syn::Item::Impl(i)) => (
            pair(&i.impl_token, &i.self_ty),
            "an `impl` block; put it on the methods inside",
        ),
        Ok(syn::Item::Mod(m)) => (pair(&m.mod_token, &m.ident), "a module"),
        Ok(syn::Item::Const(c)) => (pair(&c.const_token, &c.ident), "a constant"),
        Ok(syn::Item::Static(s)) => (pair(&s.static_token, &s.ident), "a static"),
        Ok(syn::Item::Type(t)) => (pair(&t.type_token, &t.ident), "a type alias"),
        Ok(syn::Item::ForeignMod(f)) => (f.abi.to_token_stream(), "an `extern` block"),
        _ => {
            return syn::Error::new(
                Span::call_site(),
                format!("`#[yieldable]` applies to a function with a body, {EXAMPLE}"),
            );
        }
    };
    syn::Error::new_spanned(
        tokens,
        format!("`#[yieldable]` applies to a function with a body, {EXAMPLE}, not to {what}"),
    )
}

/// Two parts of an item, as tokens an error can span from one to the other.
fn pair(first: &impl ToTokens, second: &impl ToTokens) -> TokenStream {
    quote!(#first #second)
}

/// Checks the attribute's arguments: none, or `portable`, which asks that
/// every `offload!` of the handler be able to run in another process (see
/// `offload::Portable`). Whether it was given.
pub(crate) fn check_args(args: &TokenStream) -> syn::Result<bool> {
    if args.is_empty() {
        return Ok(false);
    }
    match syn::parse2::<syn::Ident>(args.clone()) {
        Ok(word) if word == "portable" => Ok(true),
        _ => Err(syn::Error::new_spanned(
            args,
            "`#[yieldable]` takes no argument but `portable`, as in `#[yieldable(portable)]`, \
             which makes every `offload!` that could not run in another process a compile \
             error; the strategy is chosen by whoever runs the handler, e.g. \
             `YieldableThread::new().apply(Pool::new(4)).spawn(handle(x))`",
        )),
    }
}

/// Attributes whose meaning a handler cannot keep: they describe the code
/// of the function's body or its symbol, and a handler's body runs later, in
/// a closure on a coroutine, while the function itself only builds the
/// handler. Each with what to write instead.
///
/// Hints about the function's own calls (`inline`, `cold`) keep their
/// meaning (they apply to the function that builds the handler), and the
/// attributes that describe the item (`doc`, `must_use`, `deprecated`, lint
/// levels, `cfg`) are kept as written.
const REFUSED_ATTRIBUTES: &[(&str, &str)] = &[
    (
        "track_caller",
        "a panic in a handler's body is reported where the body runs, not at its caller; \
         put `#[track_caller]` on a helper the handler calls",
    ),
    (
        "target_feature",
        "the handler's body runs later, on a coroutine, not as this function; put \
         `#[target_feature]` on the function you offload, or on a helper the handler calls",
    ),
    (
        "instruction_set",
        "the handler's body runs later, on a coroutine, not as this function; put \
         `#[instruction_set]` on a helper the handler calls",
    ),
    (
        "naked",
        "a naked function is its assembly alone, and a handler is Rust code that suspends",
    ),
    (
        "no_mangle",
        "the exported symbol would return a handler, not what the function declares; \
         export a plain function that runs the handler",
    ),
    (
        "export_name",
        "the exported symbol would return a handler, not what the function declares; \
         export a plain function that runs the handler",
    ),
    (
        "link_section",
        "the section would hold the code that builds the handler, not the handler's body",
    ),
];

/// The name of an attribute, and the reason `#[yieldable]` refuses it, for
/// the attributes of [`REFUSED_ATTRIBUTES`] (also in their `#[unsafe(..)]`
/// form).
pub(crate) fn refused(attr: &Attribute) -> Option<(&'static str, &'static str)> {
    let path = attr.path();
    let name = if path.is_ident("unsafe") {
        // `#[unsafe(no_mangle)]`: the attribute is the first token inside.
        let Meta::List(list) = &attr.meta else {
            return None;
        };
        match list.tokens.clone().into_iter().next() {
            Some(proc_macro2::TokenTree::Ident(ident)) => ident.to_string(),
            _ => return None,
        }
    } else {
        path.get_ident()?.to_string()
    };
    REFUSED_ATTRIBUTES
        .iter()
        .find(|(refused, _)| *refused == name)
        .copied()
}

/// Checks the function's attributes: none that a handler would keep with
/// another meaning (see [`REFUSED_ATTRIBUTES`]).
pub(crate) fn check_attributes(attrs: &[Attribute]) -> syn::Result<()> {
    let mut errors = attrs.iter().filter_map(|attr| {
        let (name, why) = refused(attr)?;
        Some(syn::Error::new_spanned(
            attr,
            format!("`#[yieldable]` cannot keep `#[{name}]`: {why}"),
        ))
    });
    let Some(mut first) = errors.next() else {
        return Ok(());
    };
    errors.for_each(|error| first.combine(error));
    Err(first)
}

/// Checks that the function can become a handler: not `async`, not
/// `const`, of the Rust ABI, not variadic, and returning a type the handler
/// can name.
pub(crate) fn check_signature(sig: &Signature) -> syn::Result<()> {
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
    if let Some(abi) = &sig.abi
        && abi.name.as_ref().is_none_or(|name| name.value() != "Rust")
    {
        return Err(syn::Error::new_spanned(
            abi,
            "`#[yieldable]` cannot be used on a function of a foreign ABI: a handler is \
             called from Rust and returns a handler, not what the function declares; \
             export a plain `extern` function that runs the handler",
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
        if let Type::Never(never) = &**ty {
            return Err(syn::Error::new_spanned(
                never,
                "a `#[yieldable]` function cannot return `!`: a handler's output is a \
                 value; let a serving loop return `()`, or its error as `io::Result<()>`",
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
