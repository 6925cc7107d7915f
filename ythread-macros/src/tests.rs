//! Snapshots of what the macros generate, pretty-printed.
//!
//! The attribute and the function-like macros expand in two steps (see
//! `offload.rs`): `#[yieldable]` gives each `offload!`/`yield_from!` call the
//! context as `@__ythread_cx;`, and each call then expands on its own. The
//! tests show both steps. Update the snapshots with
//! `UPDATE_EXPECT=1 cargo test -p ythread-macros` and read the diff.

use expect_test::{Expect, expect};
use proc_macro2::TokenStream;
use quote::quote;

use crate::offload::{self, Point};

/// Pretty-prints generated items.
fn pretty(tokens: TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens.clone())
        .unwrap_or_else(|err| panic!("the expansion is not valid Rust ({err}):\n{tokens}"));
    prettyplease::unparse(&file)
}

fn check_yieldable(args: TokenStream, item: TokenStream, expected: Expect) {
    expected.assert_eq(&pretty(crate::yieldable::yieldable(args, item)));
}

/// Expands one `offload!`/`yield_from!` call, shown as the body of a
/// function since prettyplease prints whole files.
fn check_point(point: Point, input: TokenStream, expected: Expect) {
    let expansion = offload::expand(point, input);
    expected.assert_eq(&pretty(quote!(fn expansion() { #expansion })));
}

#[test]
fn free_function() {
    check_yieldable(
        quote!(),
        quote! {
            /// Answers one request.
            pub fn handle(mut stream: TcpStream) -> io::Result<()> {
                let n = read_request(&mut stream)?;
                write_reply(&mut stream, offload!(sumn, n))
            }
        },
        expect![[r#"
            /// Answers one request.
            pub fn handle(stream: TcpStream) -> impl ::ythread::Yieldable<Output = io::Result<()>> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> io::Result<()> {
                    let mut stream = stream;
                    let __ythread_ret: io::Result<()> = {
                        let n = read_request(&mut stream)?;
                        write_reply(&mut stream, offload!(@ __ythread_cx; sumn, n))
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn function_without_return_type() {
    check_yieldable(
        quote!(),
        quote! {
            fn log(n: u64) {
                println!("{}", offload!(sumn, n));
            }
        },
        expect![[r#"
            fn log(n: u64) -> impl ::ythread::Yieldable<Output = ()> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> () {
                    let n = n;
                    let __ythread_ret: () = {
                        println!("{}", offload!(@ __ythread_cx; sumn, n));
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn methods() {
    let receivers = [
        quote! {
            fn by_ref(&self, n: u64) -> u64 {
                offload!(sumn, self.base + n)
            }
        },
        quote! {
            pub(crate) fn by_mut(&mut self, n: u64) -> u64 {
                self.count += 1;
                offload!(|| self.base * n)
            }
        },
        quote! {
            fn by_value(self) -> Self {
                let base = offload!(Self::helper, self.base);
                Self { base }
            }
        },
    ];
    let expanded: Vec<String> = receivers
        .into_iter()
        .map(|method| pretty(crate::yieldable::yieldable(quote!(), method)))
        .collect();
    expect![[r#"
        fn by_ref(&self, n: u64) -> impl ::ythread::Yieldable<Output = u64> {
            ::ythread::__private::handler(move |
                __ythread_cx: &::ythread::__private::Context<'_>,
            | -> u64 {
                let _ = &self;
                let n = n;
                let __ythread_ret: u64 = { offload!(@ __ythread_cx; sumn, self.base + n) };
                #[allow(unreachable_code)] return __ythread_ret;
            })
        }

        pub(crate) fn by_mut(&mut self, n: u64) -> impl ::ythread::Yieldable<Output = u64> {
            ::ythread::__private::handler(move |
                __ythread_cx: &::ythread::__private::Context<'_>,
            | -> u64 {
                let _ = &self;
                let n = n;
                let __ythread_ret: u64 = {
                    self.count += 1;
                    offload!(@ __ythread_cx; || self.base * n)
                };
                #[allow(unreachable_code)] return __ythread_ret;
            })
        }

        fn by_value(self) -> impl ::ythread::Yieldable<Output = Self> {
            ::ythread::__private::handler(move |
                __ythread_cx: &::ythread::__private::Context<'_>,
            | -> Self {
                let _ = &self;
                let __ythread_ret: Self = {
                    let base = offload!(@ __ythread_cx; Self::helper, self.base);
                    Self { base }
                };
                #[allow(unreachable_code)] return __ythread_ret;
            })
        }
    "#]]
    .assert_eq(&expanded.join("\n"));
}

#[test]
fn generic_function_with_where_clause() {
    check_yieldable(
        quote!(),
        quote! {
            fn total<'a, T, const N: usize>(items: &'a [T; N]) -> u64
            where
                T: Copy + Into<u64> + Send + Sync,
            {
                offload!(|| items.iter().map(|&x| x.into()).sum::<u64>())
            }
        },
        expect![[r#"
            fn total<'a, T, const N: usize>(
                items: &'a [T; N],
            ) -> impl ::ythread::Yieldable<Output = u64>
            where
                T: Copy + Into<u64> + Send + Sync,
            {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    let items = items;
                    let __ythread_ret: u64 = {
                        offload!(
                            @ __ythread_cx; || items.iter().map(| & x | x.into()).sum:: < u64 > ()
                        )
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn result_and_question_mark() {
    check_yieldable(
        quote!(),
        quote! {
            fn parse_and_sum(text: &str) -> Result<u64, ParseIntError> {
                let n: u64 = text.trim().parse()?;
                if n == 0 {
                    return Ok(0);
                }
                let sum = offload!(sumn, text.parse::<u64>()?);
                Ok(sum + n)
            }
        },
        expect![[r#"
            fn parse_and_sum(
                text: &str,
            ) -> impl ::ythread::Yieldable<Output = Result<u64, ParseIntError>> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> Result<u64, ParseIntError> {
                    let text = text;
                    let __ythread_ret: Result<u64, ParseIntError> = {
                        let n: u64 = text.trim().parse()?;
                        if n == 0 {
                            return Ok(0);
                        }
                        let sum = offload!(@ __ythread_cx; sumn, text.parse:: < u64 > () ?);
                        Ok(sum + n)
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn calls_inside_other_macros_and_calls() {
    check_yieldable(
        quote!(),
        quote! {
            fn report(xs: Vec<u64>) -> String {
                assert_eq!(offload!(sumn, 3), 6, "{}", offload!(|| 1));
                let v = vec![offload!(add, offload!(sumn, 1), 2)];
                format!("{} {:?} {}", offload!(sumn, xs[0]), v, yield_from!(inner(1)))
            }
        },
        expect![[r#"
            fn report(xs: Vec<u64>) -> impl ::ythread::Yieldable<Output = String> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> String {
                    let xs = xs;
                    let __ythread_ret: String = {
                        assert_eq!(
                            offload!(@ __ythread_cx; sumn, 3), 6, "{}", offload!(@ __ythread_cx; ||
                            1)
                        );
                        let v = vec![
                            offload!(@ __ythread_cx; add, offload!(@ __ythread_cx; sumn, 1), 2)
                        ];
                        format!(
                            "{} {:?} {}", offload!(@ __ythread_cx; sumn, xs[0]), v, yield_from!(@
                            __ythread_cx; inner(1))
                        )
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn nested_items_are_left_alone() {
    // The nested `fn` keeps its plain `offload!` (an error when it expands);
    // the nested `#[yieldable]` function is expanded by its own attribute.
    check_yieldable(
        quote!(),
        quote! {
            fn outer(n: u64) -> u64 {
                fn helper(n: u64) -> u64 {
                    offload!(sumn, n)
                }
                #[yieldable]
                fn nested(n: u64) -> u64 {
                    offload!(sumn, n)
                }
                struct Local;
                impl Local {
                    fn method(&self) -> u64 {
                        offload!(sumn, 1)
                    }
                }
                macro_rules! m {
                    () => { offload!(sumn, 2) };
                }
                offload!(helper, n) + yield_from!(nested(n))
            }
        },
        expect![[r#"
            fn outer(n: u64) -> impl ::ythread::Yieldable<Output = u64> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    let n = n;
                    let __ythread_ret: u64 = {
                        fn helper(n: u64) -> u64 {
                            offload!(sumn, n)
                        }
                        #[yieldable]
                        fn nested(n: u64) -> u64 {
                            offload!(sumn, n)
                        }
                        struct Local;
                        impl Local {
                            fn method(&self) -> u64 {
                                offload!(sumn, 1)
                            }
                        }
                        macro_rules! m {
                            () => {
                                offload!(sumn, 2)
                            };
                        }
                        offload!(@ __ythread_cx; helper, n) + yield_from!(@ __ythread_cx; nested(n))
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn path_forms_of_the_macros() {
    // ythread's calls are `name!`, `ythread::name!` and `::ythread::name!`;
    // every other path reaches a macro of the user's that shares the name.
    check_yieldable(
        quote!(),
        quote! {
            fn paths(n: u64) -> u64 {
                offload!(sumn, n) + ythread::offload!(sumn, n) + ::ythread::offload!(|| n)
                    + ythread::try_offload!(|| n).unwrap() + ::ythread::yield_from!(inner(n))
                    + other::offload!(n) + crate::offload!(n) + self::offload!(n)
                    + ::offload!(n) + a::ythread::offload!(n) + ythread::other!(n)
            }
        },
        expect![[r#"
            fn paths(n: u64) -> impl ::ythread::Yieldable<Output = u64> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    let n = n;
                    let __ythread_ret: u64 = {
                        offload!(@ __ythread_cx; sumn, n)
                            + ythread::offload!(@ __ythread_cx; sumn, n)
                            + ::ythread::offload!(@ __ythread_cx; || n)
                            + ythread::try_offload!(@ __ythread_cx; || n).unwrap()
                            + ::ythread::yield_from!(@ __ythread_cx; inner(n)) + other::offload!(n)
                            + crate::offload!(n) + self::offload!(n) + ::offload!(n)
                            + a::ythread::offload!(n) + ythread::other!(n)
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn path_forms_inside_other_macros() {
    // The same forms and the same rule as in `path_forms_of_the_macros`, in
    // tokens; a `:` before the path (a field in a struct literal) is not
    // part of it.
    check_yieldable(
        quote!(),
        quote! {
            fn paths(n: u64) -> String {
                format!(
                    "{:?}",
                    (
                        offload!(sumn, n), ythread::offload!(sumn, n), ::ythread::offload!(|| n),
                        ythread::try_offload!(|| n), ::ythread::yield_from!(inner(n)),
                        other::offload!(n), crate::offload!(n), self::offload!(n),
                        ::offload!(n), a::ythread::offload!(n), ythread::other!(n),
                        S { x: offload!(sumn, n), y: ::ythread::offload!(sumn, n) },
                    )
                )
            }
        },
        expect![[r#"
            fn paths(n: u64) -> impl ::ythread::Yieldable<Output = String> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> String {
                    let n = n;
                    let __ythread_ret: String = {
                        format!(
                            "{:?}", (offload!(@ __ythread_cx; sumn, n), ythread::offload!(@
                            __ythread_cx; sumn, n), ::ythread::offload!(@ __ythread_cx; || n),
                            ythread::try_offload!(@ __ythread_cx; || n), ::ythread::yield_from!(@
                            __ythread_cx; inner(n)), other::offload!(n), crate ::offload!(n),
                            self::offload!(n), ::offload!(n), a::ythread::offload!(n),
                            ythread::other!(n), S { x : offload!(@ __ythread_cx; sumn, n), y :
                            ::ythread::offload!(@ __ythread_cx; sumn, n) },)
                        )
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn nested_items_inside_other_macros_are_left_alone() {
    // As in the tree (`nested_items_are_left_alone`): the items' calls keep
    // no context, or get their own handler's; the calls around them get this
    // one's. Keywords that start no item here (`const { .. }`, `fn(u64)`,
    // `*const u64`, `'static`) do not stop the rewriting.
    check_yieldable(
        quote!(),
        quote! {
            fn outer(n: u64) -> u64 {
                let in_work = offload!(|| {
                    #[yieldable]
                    fn nested(n: u64) -> u64 {
                        offload!(sumn, n)
                    }
                    fn helper(n: u64) -> u64 {
                        offload!(sumn, n)
                    }
                    nested(n).run() + helper(n)
                });
                let in_format = format!("{}", {
                    pub(crate) const fn konst() -> u64 { offload!(sumn, 1) }
                    const K: u64 = offload!(sumn, 2);
                    static S: u64 = offload!(sumn, 3);
                    struct Local([u8; offload!(sumn, 4)]);
                    impl Local {
                        fn method(&self) -> u64 {
                            offload!(sumn, 5)
                        }
                    }
                    mod m { fn f() -> u64 { offload!(sumn, 6) } }
                    trait T { fn t() -> u64 { offload!(sumn, 7) } }
                    macro_rules! m { () => { offload!(sumn, 8) } }
                    offload!(sumn, n) + yield_from!(nested(n))
                });
                let not_items = vec![
                    const { 1 },
                    offload!(sumn, 9),
                    (offload!(sumn, 10) as fn(u64) -> u64)(11),
                    *(&offload!(sumn, 12) as *const u64),
                    { let s: &'static str = "x"; offload!(sumn, s.len()) },
                ];
                in_work
            }
        },
        expect![[r#"
            fn outer(n: u64) -> impl ::ythread::Yieldable<Output = u64> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    let n = n;
                    let __ythread_ret: u64 = {
                        let in_work = offload!(
                            @ __ythread_cx; || { #[yieldable] fn nested(n : u64) -> u64 {
                            offload!(sumn, n) } fn helper(n : u64) -> u64 { offload!(sumn, n) }
                            nested(n).run() + helper(n) }
                        );
                        let in_format = format!(
                            "{}", { pub (crate) const fn konst() -> u64 { offload!(sumn, 1) } const K
                            : u64 = offload!(sumn, 2); static S : u64 = offload!(sumn, 3); struct
                            Local([u8; offload!(sumn, 4)]); impl Local { fn method(& self) -> u64 {
                            offload!(sumn, 5) } } mod m { fn f() -> u64 { offload!(sumn, 6) } } trait
                            T { fn t() -> u64 { offload!(sumn, 7) } } macro_rules! m { () => {
                            offload!(sumn, 8) } } offload!(@ __ythread_cx; sumn, n) + yield_from!(@
                            __ythread_cx; nested(n)) }
                        );
                        let not_items = vec![
                            const { 1 }, offload!(@ __ythread_cx; sumn, 9), (offload!(@ __ythread_cx;
                            sumn, 10) as fn (u64) -> u64) (11), * (& offload!(@ __ythread_cx; sumn,
                            12) as * const u64), { let s : & 'static str = "x"; offload!(@
                            __ythread_cx; sumn, s.len()) },
                        ];
                        in_work
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn the_tree_and_the_tokens_agree_on_what_is_a_call() {
    let forms = [
        quote!(offload!(f)),
        quote!(ythread::offload!(f)),
        quote!(::ythread::try_offload!(f)),
        quote!(ythread::yield_from!(h())),
        quote!(other::offload!(f)),
        quote!(crate::offload!(f)),
        quote!(self::offload!(f)),
        quote!(::offload!(f)),
        quote!(a::ythread::offload!(f)),
        quote!(ythread::other!(f)),
    ];
    let given_the_context = |body: TokenStream| {
        crate::yieldable::yieldable(quote!(), quote!(fn h() { #body }))
            .to_string()
            .contains("! (@ __ythread_cx ;")
    };
    let mut points = Vec::new();
    for form in forms {
        let in_tree = given_the_context(form.clone());
        let in_tokens = given_the_context(quote!(m!(#form)));
        assert_eq!(in_tree, in_tokens, "`{form}` in the tree and in tokens");
        if in_tree {
            points.push(form.to_string());
        }
    }
    assert_eq!(
        points,
        [
            "offload ! (f)",
            "ythread :: offload ! (f)",
            ":: ythread :: try_offload ! (f)",
            "ythread :: yield_from ! (h ())",
        ]
    );
}

#[test]
fn a_call_given_a_context_by_an_outer_handler_gets_this_ones() {
    // The body of a `#[yieldable]` function that another macro built inside
    // an outer handler's tokens, where the outer handler could not see that
    // it is an item: the call has the outer context, which this handler's
    // replaces.
    check_yieldable(
        quote!(),
        quote! {
            fn built(n: u64) -> u64 {
                offload!(@__ythread_cx; sumn, format!("{}", offload!(@__ythread_cx; sumn, n)).len())
            }
        },
        expect![[r#"
            fn built(n: u64) -> impl ::ythread::Yieldable<Output = u64> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    let n = n;
                    let __ythread_ret: u64 = {
                        offload!(
                            @ __ythread_cx; sumn, format!("{}", offload!(@ __ythread_cx; sumn, n))
                            .len()
                        )
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn arguments_are_an_error_beside_the_expansion() {
    check_yieldable(
        quote!(pool = 4),
        quote! {
            fn handle(n: u64) -> u64 {
                offload!(sumn, n)
            }
        },
        expect![[r#"
            fn handle(n: u64) -> impl ::ythread::Yieldable<Output = u64> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    let n = n;
                    let __ythread_ret: u64 = { offload!(@ __ythread_cx; sumn, n) };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
            ::core::compile_error! {
                "`#[yieldable]` takes no argument but `portable`, as in `#[yieldable(portable)]`, which makes every `offload!` that could not run in another process a compile error; the strategy is chosen by whoever runs the handler, e.g. `YieldableThread::new().apply(Pool::new(4)).spawn(handle(x))`"
            }
        "#]],
    );
}

#[test]
fn bad_signature_keeps_the_function_beside_the_error() {
    check_yieldable(
        quote!(),
        quote! {
            async fn handle(n: u64) -> u64 {
                offload!(sumn, n)
            }
        },
        expect![[r#"
            async fn handle(n: u64) -> u64 {
                let __ythread_cx = ::core::option::Option::<&::ythread::__private::Context<'_>>::None
                    .unwrap();
                { offload!(@ __ythread_cx; sumn, n) }
            }
            ::core::compile_error! {
                "`#[yieldable]` cannot be used on an `async fn`: a yieldable handler is a blocking function driven by an OS thread; remove `async`, do I/O with blocking calls and mark the CPU-heavy steps with `offload!`"
            }
        "#]],
    );
}

#[test]
fn not_a_function() {
    check_yieldable(
        quote!(),
        quote! {
            struct Handler;
        },
        expect![[r#"
            struct Handler;
            ::core::compile_error! {
                "`#[yieldable]` applies to a function with a body, such as `#[yieldable] fn handle(stream: TcpStream) -> io::Result<()> { ... }`, not to a struct"
            }
        "#]],
    );
}

#[test]
fn offload_call_form() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; sumn, n + 1),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params1 {
                    callee: (),
                    probe: {
                        #[allow(unused_imports)]
                        use ::ythread::__private::{ProbeAny as _, ProbeCall as _};
                        (&::ythread::__private::Callee(&sumn, ::core::marker::PhantomData::<(_,)>))
                            .__ythread_probe()
                    },
                    work: |_, (__arg0,)| sumn(__arg0),
                    a0: n + 1,
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, __ythread_probe) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            __ythread_probe.portability(),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn offload_call_form_with_paths_and_several_arguments() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; crate::cpu::mix::<u64>, a, &b[..], parse(x)?,),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params3 {
                    callee: (),
                    probe: {
                        #[allow(unused_imports)]
                        use ::ythread::__private::{ProbeAny as _, ProbeCall as _};
                        (&::ythread::__private::Callee(
                            &crate::cpu::mix::<u64>,
                            ::core::marker::PhantomData::<(_, _, _)>,
                        ))
                            .__ythread_probe()
                    },
                    work: |_, (__arg0, __arg1, __arg2)| crate::cpu::mix::<
                        u64,
                    >(__arg0, __arg1, __arg2),
                    a0: a,
                    a1: &b[..],
                    a2: parse(x)?,
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, __ythread_probe) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            __ythread_probe.portability(),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn offload_call_form_without_arguments() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; answer),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params0 {
                    callee: (),
                    probe: {
                        #[allow(unused_imports)]
                        use ::ythread::__private::{ProbeAny as _, ProbeCall as _};
                        (&::ythread::__private::Callee(&answer, ::core::marker::PhantomData::<()>))
                            .__ythread_probe()
                    },
                    work: |_, ()| answer(),
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, __ythread_probe) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            __ythread_probe.portability(),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn offload_closure_form() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; move || sumn(n) + 1),
        expect![[r#"
            fn expansion() {
                ::ythread::__private::offload(__ythread_cx, move || sumn(n) + 1)
            }
        "#]],
    );
}

#[test]
fn yield_from_form() {
    check_point(
        Point::YieldFrom,
        quote!(@__ythread_cx; helper(x)),
        expect![[r#"
            fn expansion() {
                ::ythread::__private::yield_from(__ythread_cx, helper(x))
            }
        "#]],
    );
}

#[test]
fn offload_outside_a_handler() {
    check_point(
        Point::Offload,
        quote!(sumn, n),
        expect![[r#"
            fn expansion() {
                ::core::compile_error! {
                    "`offload!` outside a `#[yieldable]` function; add `#[ythread::yieldable]` to the enclosing function. A nested `fn` is not part of the handler around it, and calls are found by name: an alias of `offload!` is not recognised"
                }
            }
        "#]],
    );
}

#[test]
fn malformed_offloads() {
    let inputs = [
        quote!(@__ythread_cx;),
        quote!(@__ythread_cx; sumn a),
        quote!(@__ythread_cx; |x| x),
        quote!(@__ythread_cx; || 1, 2),
        quote!(@__ythread_cx; sumn(n)),
        quote!(@__ythread_cx; self.compute(n)),
    ];
    let messages: Vec<String> = inputs
        .into_iter()
        .map(|input| {
            let input_text = input.to_string();
            let error: syn::Macro = syn::parse2(offload::expand(Point::Offload, input))
                .expect("an error is a `compile_error!` call");
            let message: syn::LitStr = error.parse_body().expect("a string message");
            format!("{input_text}\n  => {}", message.value())
        })
        .collect();
    expect![[r#"
        @ __ythread_cx ;
          => `offload!` needs the work to offload: write `offload!(function, arg, ...)` or `offload!(|| expression)`
        @ __ythread_cx ; sumn a
          => expected `,`: write `offload!(function, arg, ...)` or `offload!(|| expression)`
        @ __ythread_cx ; | x | x
          => the closure given to `offload!` takes no arguments: capture what it needs, as in `offload!(|| f(x))`
        @ __ythread_cx ; || 1 , 2
          => `offload!(|| ...)` takes the closure alone; write `offload!(|| f(a, b))` or `offload!(f, a, b)`
        @ __ythread_cx ; sumn (n)
          => `offload!` takes the function and its arguments apart, so that the call runs where the strategy decides: write `offload!(f, a, b)` for `f(a, b)`, or `offload!(|| f(a, b))`
        @ __ythread_cx ; self . compute (n)
          => `offload!` needs the work unevaluated, so that it runs where the strategy decides: write a method call as a closure, `offload!(|| value.method(a))`"#]]
    .assert_eq(&messages.join("\n"));
}

#[test]
fn parameter_patterns_are_matched_in_the_body() {
    check_yieldable(
        quote!(),
        quote! {
            fn handle(
                #[allow(unused_variables)] mut a: D,
                (b, _): (D, D),
                _: D,
                ref mut items: Vec<u64>,
                Marker: Marker,
            ) -> u64 {
                offload!(sumn, 1)
            }
        },
        expect![[r#"
            fn handle(
                #[allow(unused_variables)]
                a: D,
                __ythread_arg1: (D, D),
                __ythread_arg2: D,
                __ythread_arg3: Vec<u64>,
                __ythread_arg4: Marker,
            ) -> impl ::ythread::Yieldable<Output = u64> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> u64 {
                    #[allow(unused_variables)]
                    let mut a = a;
                    #[allow(unused_mut)]
                    let mut __ythread_arg1 = __ythread_arg1;
                    let (b, _) = __ythread_arg1;
                    #[allow(unused_mut)]
                    let mut __ythread_arg2 = __ythread_arg2;
                    #[allow(unused_mut)]
                    let mut __ythread_arg3 = __ythread_arg3;
                    let ref mut items = __ythread_arg3;
                    #[allow(unused_mut)]
                    let mut __ythread_arg4 = __ythread_arg4;
                    let Marker = __ythread_arg4;
                    let __ythread_ret: u64 = { offload!(@ __ythread_cx; sumn, 1) };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn offload_of_a_computed_callee_evaluates_it_first() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; pick(k), n),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params1 {
                    callee: pick(k),
                    probe: ::ythread::__private::Probe::none(),
                    work: |__ythread_f, (__arg0,)| __ythread_f(__arg0),
                    a0: n,
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, _) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            || ::ythread::__private::never_portable(
                                "pick (k)",
                                "only a function named by its path (`offload!(crate::f, x)`) can be sent to another process",
                            ),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn offload_of_a_field_calls_it_as_a_field() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; self.f, n),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params1 {
                    callee: (),
                    probe: ::ythread::__private::Probe::none(),
                    work: |_, (__arg0,)| (self.f)(__arg0),
                    a0: n,
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, _) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            || ::ythread::__private::never_portable(
                                "self . f",
                                "only a function named by its path (`offload!(crate::f, x)`) can be sent to another process",
                            ),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn offload_with_a_closure_argument_keeps_it_in_the_call() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx; Option::map, value, |s| s.len()),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params1 {
                    callee: (),
                    probe: ::ythread::__private::Probe::none(),
                    a0: value,
                    work: |_, (__arg0,)| Option::map(__arg0, |s| s.len()),
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, _) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            || ::ythread::__private::never_portable(
                                "Option :: map",
                                "a closure argument cannot be sent to another process: pass data, and name the function that uses it",
                            ),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn portable_handler_marks_every_call_it_rewrites() {
    // In the tree, in a closure, in another macro's tokens; a nested `fn`
    // is still left alone.
    check_yieldable(
        quote!(portable),
        quote! {
            fn handle(xs: Vec<u64>) -> String {
                let sums: Vec<u64> = xs.iter().map(|x| offload!(sumn, *x)).collect();
                fn nested() {}
                format!("{:?} {}", sums, try_offload!(sumn, 1).unwrap())
            }
        },
        expect![[r#"
            fn handle(xs: Vec<u64>) -> impl ::ythread::Yieldable<Output = String> {
                ::ythread::__private::handler(move |
                    __ythread_cx: &::ythread::__private::Context<'_>,
                | -> String {
                    let xs = xs;
                    let __ythread_ret: String = {
                        let sums: Vec<u64> = xs
                            .iter()
                            .map(|x| offload!(@ __ythread_cx portable; sumn, * x))
                            .collect();
                        fn nested() {}
                        format!(
                            "{:?} {}", sums, try_offload!(@ __ythread_cx portable; sumn, 1) .unwrap()
                        )
                    };
                    #[allow(unreachable_code)] return __ythread_ret;
                })
            }
        "#]],
    );
}

#[test]
fn unknown_arguments_still_say_what_is_accepted() {
    let expansion = crate::yieldable::yieldable(
        quote!(portable = true),
        quote!(
            fn handle() {}
        ),
    );
    let text = expansion.to_string();
    assert!(
        text.contains("takes no argument but `portable`, as in `#[yieldable(portable)]`"),
        "{text}"
    );
    // Checked as if it had no argument: the prefix has no `portable`.
    let expansion = crate::yieldable::yieldable(
        quote!(portable, pool),
        quote!(
            fn handle() -> u64 {
                offload!(sumn, 1)
            }
        ),
    );
    let text = expansion.to_string();
    assert!(text.contains("@ __ythread_cx ; sumn"), "{text}");
}

#[test]
fn portable_offload_names_the_functions_companion() {
    check_point(
        Point::Offload,
        quote!(@__ythread_cx portable; crate::work::sumn, n),
        expect![[r#"
            fn expansion() {
                match (::ythread::__private::Params1 {
                    callee: (),
                    probe: {
                        const _: () = {
                            mod __ythread_fallback {
                                pub(super) struct NotOffloadable;
                            }
                            #[allow(unused_imports)]
                            use __ythread_fallback::*;
                            #[allow(unused_imports)]
                            use crate::work::sumn as NotOffloadable;
                            ::ythread::__private::assert_offloadable::<NotOffloadable>();
                        };
                        #[allow(unused_imports)]
                        use ::ythread::__private::{ProbeAny as _, ProbeCall as _};
                        (&::ythread::__private::Callee(
                            &crate::work::sumn,
                            ::core::marker::PhantomData::<(_,)>,
                        ))
                            .__ythread_probe()
                    },
                    work: |_, (__arg0,)| crate::work::sumn(__arg0),
                    a0: n,
                })
                    .split()
                {
                    (__ythread_args, __ythread_work, __ythread_probe) => {
                        ::ythread::__private::offload_call(
                            __ythread_cx,
                            __ythread_args,
                            __ythread_work,
                            __ythread_probe.portability(),
                        )
                    }
                }
            }
        "#]],
    );
}

#[test]
fn portable_offloads_that_could_never_cross_are_errors() {
    let inputs = [
        quote!(@__ythread_cx portable; || 1),
        quote!(@__ythread_cx portable; make_fn(), x),
        quote!(@__ythread_cx portable; self.f, x),
        quote!(@__ythread_cx portable; sumn, xs, |x| x + 1),
        quote!(@__ythread_cx portable; sumn, a, b, c, d, e, f, g, h, i),
        quote!(@__ythread_cx portable; Vec::len, &v),
        quote!(@__ythread_cx portable; Vec::<u8>::len, &v),
        quote!(@__ythread_cx portable; Self::helper, x),
        quote!(@__ythread_cx portable; str::len, s),
        quote!(@__ythread_cx portable; <T as Trait>::f, x),
        quote!(@__ythread_cx portable; mix::<u64>, x),
    ];
    let messages: Vec<String> = inputs
        .into_iter()
        .map(|input| {
            let input_text = input.to_string();
            // `{ compile_error! { .. }; expansion }`
            let block: syn::Block = syn::parse2(offload::expand(Point::Offload, input))
                .expect("the expansion is a block");
            let Some(syn::Stmt::Macro(error)) = block.stmts.first() else {
                panic!("no error first in {input_text}");
            };
            let message: syn::LitStr = error.mac.parse_body().expect("a string message");
            let message = message.value();
            let reason = message
                .strip_prefix(
                    "this work cannot run in another process, as `#[yieldable(portable)]` \
                     requires: ",
                )
                .and_then(|m| {
                    m.strip_suffix(
                        " (or remove `(portable)`, if the handler never runs under \
                         `Processes` or `Remote`)",
                    )
                })
                .unwrap_or_else(|| panic!("unexpected message: {message}"));
            format!("{input_text}\n  => {reason}")
        })
        .collect();
    expect![[r#"
        @ __ythread_cx portable ; || 1
          => a closure cannot be sent to another process; move its work into a free function marked `#[ythread::offloadable]` and offload that by its path, as `offload!(f, a, b)`
        @ __ythread_cx portable ; make_fn () , x
          => only a function named by its path can be sent to another process, not a value computed in the handler; mark the function `#[ythread::offloadable]` and write its path here, as `offload!(crate::f, a, b)`
        @ __ythread_cx portable ; self . f , x
          => only a function named by its path can be sent to another process, not a value computed in the handler; mark the function `#[ythread::offloadable]` and write its path here, as `offload!(crate::f, a, b)`
        @ __ythread_cx portable ; sumn , xs , | x | x + 1
          => a closure argument cannot be sent to another process; pass data, and do the closure's work in the `#[offloadable]` function
        @ __ythread_cx portable ; sumn , a , b , c , d , e , f , g , h , i
          => only calls of up to 8 arguments can be sent to another process; pass some of them together, as a tuple or a struct
        @ __ythread_cx portable ; Vec :: len , & v
          => a method or an associated function cannot be registered to run in another process; call it from a free function marked `#[ythread::offloadable]`, and offload that, as `offload!(f, a, b)`
        @ __ythread_cx portable ; Vec :: < u8 > :: len , & v
          => a method or an associated function cannot be registered to run in another process; call it from a free function marked `#[ythread::offloadable]`, and offload that, as `offload!(f, a, b)`
        @ __ythread_cx portable ; Self :: helper , x
          => a method or an associated function cannot be registered to run in another process; call it from a free function marked `#[ythread::offloadable]`, and offload that, as `offload!(f, a, b)`
        @ __ythread_cx portable ; str :: len , s
          => a method or an associated function cannot be registered to run in another process; call it from a free function marked `#[ythread::offloadable]`, and offload that, as `offload!(f, a, b)`
        @ __ythread_cx portable ; < T as Trait > :: f , x
          => a method or an associated function cannot be registered to run in another process; call it from a free function marked `#[ythread::offloadable]`, and offload that, as `offload!(f, a, b)`
        @ __ythread_cx portable ; mix :: < u64 > , x
          => a generic function cannot be registered to run in another process (it has one instance per type); register a non-generic wrapper for the type you offload, as `#[offloadable] fn f_u64(x: u64) -> u64 { f::<u64>(x) }`, and offload that"#]].assert_eq(&messages.join("\n"));
}

#[test]
fn paths_that_may_name_a_registered_function_are_checked_by_name() {
    // Modules, `crate::`, `self::`, `super::`, another crate, a raw name, a
    // path through a macro's `$f:path` (a group): each names the companion
    // and raises no error of its own.
    let group = proc_macro2::Group::new(proc_macro2::Delimiter::None, quote!(self::work::sumn));
    let inputs = [
        quote!(@__ythread_cx portable; sumn, x),
        quote!(@__ythread_cx portable; work::sumn, x),
        quote!(@__ythread_cx portable; self::sumn, x),
        quote!(@__ythread_cx portable; super::super::sumn, x),
        quote!(@__ythread_cx portable; ::other_crate::cpu::sumn, x),
        quote!(@__ythread_cx portable; r#match, x),
        quote!(@__ythread_cx portable; #group, x),
    ];
    let checks: Vec<String> = inputs
        .into_iter()
        .map(|input| {
            let expansion = offload::expand(Point::Offload, input).to_string();
            assert!(!expansion.contains("compile_error"), "{expansion}");
            // The import of the user's path, under the checked name.
            let end = expansion.find("as NotOffloadable ;").expect("the import") + 18;
            let start = expansion[..end].rfind("use ").expect("an import");
            expansion[start..=end].to_string()
        })
        .collect();
    expect![[r#"
        use sumn as NotOffloadable ;
        use work :: sumn as NotOffloadable ;
        use self :: sumn as NotOffloadable ;
        use super :: super :: sumn as NotOffloadable ;
        use :: other_crate :: cpu :: sumn as NotOffloadable ;
        use r#match as NotOffloadable ;
        use self :: work :: sumn as NotOffloadable ;"#]]
    .assert_eq(&checks.join("\n"));
}

#[test]
fn offloadable_defines_the_companion_with_the_functions_visibility() {
    let companions: Vec<String> = [
        quote!(
            fn sumn(n: u64) -> u64 {
                n
            }
        ),
        quote!(
            pub(crate) fn r#match(n: u64) -> u64 {
                n
            }
        ),
        // An error keeps the function and its companion, so that a portable
        // handler offloading it gets no error of its own.
        quote!(
            pub fn generic<T>(n: T) -> T {
                n
            }
        ),
    ]
    .into_iter()
    .map(|item| {
        let file: syn::File = syn::parse2(crate::offloadable::offloadable(quote!(), item))
            .expect("the expansion is items");
        let items = file
            .items
            .into_iter()
            .filter(|item| matches!(item, syn::Item::Struct(_) | syn::Item::Impl(_)))
            .collect();
        prettyplease::unparse(&syn::File {
            shebang: None,
            attrs: vec![],
            items,
        })
    })
    .collect();
    expect![[r#"
        #[doc(hidden)]
        #[allow(dead_code, non_camel_case_types, unreachable_pub)]
        struct sumn {}
        impl ::ythread::__private::Offloadable for sumn {}
        #[doc(hidden)]
        #[allow(dead_code, non_camel_case_types, unreachable_pub)]
        pub(crate) struct r#match {}
        impl ::ythread::__private::Offloadable for r#match {}
        #[doc(hidden)]
        #[allow(dead_code, non_camel_case_types, unreachable_pub)]
        pub struct generic {}
        impl ::ythread::__private::Offloadable for generic {}
    "#]]
    .assert_eq(&companions.join(""));
}
