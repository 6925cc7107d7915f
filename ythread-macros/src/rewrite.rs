//! Finds the `offload!`, `try_offload!` and `yield_from!` calls in a handler's
//! body and gives each the handler's context (see `offload.rs`).
//!
//! Calls are found in the syntax tree and, because other macros' arguments
//! are opaque tokens to syn, inside the tokens of every other macro call
//! (`format!("{}", offload!(f, x))`). Both walks follow the same two rules:
//! - a call is one of ythread's by its path alone ([`is_point`]);
//! - nested items (`fn`, `impl`, `mod`, ...) are left alone: they are not
//!   part of the running handler, so a call inside one stays an error, and a
//!   `#[yieldable]` function among them gives its calls its own context.
//!   In the tree, `visit_item_mut` skips them; in tokens, [`item_len`]
//!   recognises them with syn's own grammar for an item.
//!
//! An item that another macro builds from syntax of its own cannot be
//! recognised in tokens, and its calls get this handler's context. If it is
//! a `#[yieldable]` function, its attribute then replaces that context with
//! its own rather than adding a second (`offload::with_context`). Skipping
//! items is still needed: without it, a plain `fn` nested in `format!(..)`
//! would be given a context it cannot reach, and fail with a confusing
//! error instead of "`offload!` outside a `#[yieldable]` function".

use proc_macro2::{Group, Ident, Spacing, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::visit_mut::{self, VisitMut};
use syn::{Item, Macro};

use crate::offload::{self, Point};

/// Whether a macro path names one of ythread's calls: `name!`,
/// `ythread::name!` or `::ythread::name!`, where `name` is `offload`,
/// `try_offload` or `yield_from`. The one rule for the syntax tree and for
/// tokens.
///
/// Any other path (`crate::offload!`, `self::offload!`, `other::offload!`,
/// `::offload!`) reaches a macro of the user's that only shares the name, and
/// is left alone. The attribute sees names, not what they resolve to, so an
/// alias (`use ythread::offload as work`) is not recognised either.
fn is_point(leading_colon: bool, segments: &[&Ident]) -> bool {
    match segments {
        [name] => !leading_colon && Point::from_name(name).is_some(),
        [krate, name] => *krate == "ythread" && Point::from_name(name).is_some(),
        _ => false,
    }
}

/// The path that ends with the name at `trees[name_at]`, read backwards over
/// its `::`-separated segments: whether it starts with `::`, and the
/// segments in order.
fn path_ending_at(trees: &[TokenTree], name_at: usize) -> (bool, Vec<&Ident>) {
    let is_colon = |tree: &TokenTree, spacing: Option<Spacing>| {
        matches!(tree, TokenTree::Punct(p)
            if p.as_char() == ':' && spacing.is_none_or(|s| p.spacing() == s))
    };
    let mut segments = Vec::new();
    let mut start = name_at;
    let leading_colon = loop {
        let TokenTree::Ident(segment) = &trees[start] else {
            unreachable!("a path segment is an identifier");
        };
        segments.push(segment);
        // A `::` is a `:` joined to the next `:`; a lone `:` (`x: offload!(..)`
        // in a struct literal) ends the path.
        let separated = start >= 2
            && is_colon(&trees[start - 2], Some(Spacing::Joint))
            && is_colon(&trees[start - 1], None);
        if !separated {
            break false;
        }
        match start.checked_sub(3).map(|i| &trees[i]) {
            Some(TokenTree::Ident(_)) => start -= 3,
            _ => break true,
        }
    };
    segments.reverse();
    (leading_colon, segments)
}

/// The keywords that start an item once its attributes, visibility and
/// qualifiers (`pub`, `unsafe`, `async`, `extern "C"`) are passed; those
/// and the attributes (`#[yieldable]`) hold no calls and are walked as usual.
/// Where one of these keywords appears in an expression or a type
/// (`const { .. }`, `*const T`, `fn(u64)`, `'static`), it does not parse as
/// an item.
const ITEM_KEYWORDS: &[&str] = &[
    "const",
    "enum",
    "fn",
    "impl",
    "macro_rules",
    "mod",
    "static",
    "struct",
    "trait",
    "type",
];

/// How many of the leading `trees` form a nested item, if they start one.
///
/// The item is recognised by parsing one with syn, so that what counts as an
/// item in tokens is what counts as one in the syntax tree; a keyword that
/// does not start an item parses as none.
fn item_len(trees: &[TokenTree]) -> Option<usize> {
    let Some(TokenTree::Ident(keyword)) = trees.first() else {
        return None;
    };
    if !ITEM_KEYWORDS.iter().any(|k| keyword == k) {
        return None;
    }
    let rest = |input: ParseStream<'_>| {
        input.parse::<Item>()?;
        input.parse::<TokenStream>()
    };
    let rest = rest.parse2(trees.iter().cloned().collect()).ok()?;
    Some(trees.len() - rest.into_iter().count())
}

/// Rewrites calls in a handler body whose context parameter is `cx`.
pub(crate) struct Rewriter<'a> {
    pub(crate) cx: &'a Ident,
    /// Whether the handler is `#[yieldable(portable)]`: each call it
    /// rewrites, in the tree or in tokens, is then told to check that its
    /// work can run in another process.
    pub(crate) portable: bool,
}

impl Rewriter<'_> {
    /// Rewrites calls inside the opaque tokens of another macro's call:
    /// `name ! (args)` becomes `name ! (@cx; args)`; nested items are copied
    /// as they are.
    fn rewrite_tokens(&self, tokens: TokenStream) -> TokenStream {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut out: Vec<TokenTree> = Vec::with_capacity(trees.len());
        let mut at = 0;
        while at < trees.len() {
            if let Some(len) = item_len(&trees[at..]) {
                out.extend_from_slice(&trees[at..at + len]);
                at += len;
                continue;
            }
            if let [
                TokenTree::Ident(_),
                TokenTree::Punct(bang),
                TokenTree::Group(args),
                ..,
            ] = &trees[at..]
            {
                let (leading_colon, segments) = path_ending_at(&trees, at);
                if bang.as_char() == '!' && is_point(leading_colon, &segments) {
                    let mut group = Group::new(
                        args.delimiter(),
                        offload::with_context(
                            self.cx,
                            self.portable,
                            self.rewrite_tokens(args.stream()),
                        ),
                    );
                    group.set_span(args.span());
                    out.extend([trees[at].clone(), trees[at + 1].clone(), group.into()]);
                    at += 3;
                    continue;
                }
            }
            out.push(self.rewrite_tree(trees[at].clone()));
            at += 1;
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
        let segments: Vec<&Ident> = mac.path.segments.iter().map(|s| &s.ident).collect();
        mac.tokens = if is_point(mac.path.leading_colon.is_some(), &segments) {
            // Calls nested in the arguments (`offload!(f, offload!(g, x))`)
            // get the context too.
            offload::with_context(self.cx, self.portable, self.rewrite_tokens(tokens))
        } else {
            self.rewrite_tokens(tokens)
        };
        visit_mut::visit_macro_mut(self, mac);
    }
}
