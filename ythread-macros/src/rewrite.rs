//! Finds the `offload!` and `yield_from!` calls in a handler's body and gives
//! each the handler's context (see `offload.rs`).
//!
//! Calls are found in the syntax tree and, because other macros' arguments
//! are opaque tokens to syn, inside the tokens of every other macro call
//! (`format!("{}", offload!(f, x))`). Nested items (`fn`, `impl`, ...) are
//! left alone: they are not part of the running handler, so a call inside
//! one stays an error.

use proc_macro2::{Group, Ident, TokenStream, TokenTree};
use syn::visit_mut::{self, VisitMut};
use syn::{Item, Macro};

use crate::offload::{self, Point};

/// Rewrites calls in a handler body whose context parameter is `cx`.
pub(crate) struct Rewriter<'a> {
    pub(crate) cx: &'a Ident,
}

impl Rewriter<'_> {
    /// Whether a macro call is `offload!`/`yield_from!`, spelled `name!`,
    /// `ythread::name!` or `::ythread::name!`.
    fn is_point(mac: &Macro) -> bool {
        let segments: Vec<&Ident> = mac.path.segments.iter().map(|s| &s.ident).collect();
        match segments.as_slice() {
            [name] => Point::from_name(name).is_some(),
            [krate, name] => *krate == "ythread" && Point::from_name(name).is_some(),
            _ => false,
        }
    }

    /// Rewrites calls inside the opaque tokens of another macro's call:
    /// `name ! (args)` becomes `name ! (@cx; args)`.
    fn rewrite_tokens(&self, tokens: TokenStream) -> TokenStream {
        let mut out: Vec<TokenTree> = Vec::new();
        let mut iter = tokens.into_iter().peekable();
        while let Some(tree) = iter.next() {
            let is_point_name =
                matches!(&tree, TokenTree::Ident(ident) if Point::from_name(ident).is_some());
            let followed_by_bang =
                matches!(iter.peek(), Some(TokenTree::Punct(p)) if p.as_char() == '!');
            out.push(self.rewrite_tree(tree));
            if !(is_point_name && followed_by_bang) {
                continue;
            }
            out.push(iter.next().expect("peeked `!`"));
            match iter.next() {
                Some(TokenTree::Group(args)) => {
                    let mut group = Group::new(
                        args.delimiter(),
                        offload::with_context(self.cx, self.rewrite_tokens(args.stream())),
                    );
                    group.set_span(args.span());
                    out.push(TokenTree::Group(group));
                }
                Some(other) => out.push(self.rewrite_tree(other)),
                None => {}
            }
        }
        out.into_iter().collect()
    }

    fn rewrite_tree(&self, tree: TokenTree) -> TokenTree {
        match tree {
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), self.rewrite_tokens(group.stream()));
                new.set_span(group.span());
                TokenTree::Group(new)
            }
            other => other,
        }
    }
}

impl VisitMut for Rewriter<'_> {
    fn visit_item_mut(&mut self, _item: &mut Item) {
        // A nested item is not part of the handler: leave it untouched.
    }

    fn visit_macro_mut(&mut self, mac: &mut Macro) {
        let tokens = std::mem::take(&mut mac.tokens);
        mac.tokens = if Self::is_point(mac) {
            // Calls nested in the arguments (`offload!(f, offload!(g, x))`)
            // get the context too.
            offload::with_context(self.cx, self.rewrite_tokens(tokens))
        } else {
            self.rewrite_tokens(tokens)
        };
        visit_mut::visit_macro_mut(self, mac);
    }
}
