//! A handler's parameters behave as the plain function's: every parameter
//! list a plain `fn` accepts compiles, binds the same way, and drops the same
//! values in the same order (the body's locals, then the parameters last to
//! first, each parameter's bindings before what its pattern left unbound).
//!
//! Each signature below is written once and expanded twice by `twins!`: as a
//! plain function, where `offload!(|| work)` just runs the work, and as a
//! `#[yieldable]` handler. Every test compares the drop logs of the two, for
//! a handler run to the end, one whose work panics, and one dropped while
//! suspended (against the plain function panicking at that point).

// The signatures are the point, `ref` parameters included; the plain twins'
// `offload!` calls its work where it is written, as a handler's `Inline` does.
#![allow(
    clippy::toplevel_ref_arg,
    clippy::redundant_closure_call,
    clippy::boxed_local
)]

mod common;

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use ythread::{Exclusive, GeneratorState, Inline, Pool, Yieldable, YieldableThread};

/// What happened, in order: drops (a value's name) and the body's marks.
type Log = Arc<Mutex<Vec<&'static str>>>;

/// A value that logs its drop.
#[derive(Debug)]
pub(crate) struct D(&'static str, Log);

impl Drop for D {
    fn drop(&mut self) {
        self.1.lock().unwrap().push(self.0);
    }
}

fn d(name: &'static str, log: &Log) -> D {
    D(name, Arc::clone(log))
}

fn mark(log: &Log, what: &'static str) {
    log.lock().unwrap().push(what);
}

thread_local! {
    /// Makes the plain functions' `offload!` panic, to compare with a handler
    /// dropped while suspended at its `offload!`.
    static PANIC_AT_OFFLOAD: Cell<bool> = const { Cell::new(false) };
}

/// The plain functions' `offload!`: runs the work right there (or panics,
/// standing in for a handler dropped at this point).
macro_rules! run_now {
    (|| $work:expr) => {{
        if $crate::PANIC_AT_OFFLOAD.get() {
            ::std::panic::resume_unwind(Box::new("dropped at offload"));
        }
        (|| $work)()
    }};
}
pub(crate) use run_now;

/// Expands one function as `$name::plain::f` and `$name::handler::f`.
macro_rules! twins {
    ($name:ident: fn $($function:tt)*) => {
        mod $name {
            pub(crate) mod plain {
                #[allow(unused_imports)]
                use crate::{D, Log, d, mark, run_now as offload};
                pub(crate) fn $($function)*
            }
            pub(crate) mod handler {
                #[allow(unused_imports)]
                use crate::{D, Log, d, mark};
                use ythread::offload;
                #[ythread::yieldable]
                pub(crate) fn $($function)*
            }
        }
    };
}

twins!(the_issues_case: fn f(a: D, (b, _): (D, D), _: D, c: D, log: Log) -> usize {
    let _local = d("local", &log);
    let work = offload!(|| a.0.len() + b.0.len() + c.0.len());
    mark(&log, "body end");
    work
});

twins!(ref_mut_binding: fn f(ref mut items: Vec<D>, extra: D, log: Log) -> usize {
    let pushed = offload!(|| items.len());
    items.push(d("pushed", &log));
    mark(&log, "body end");
    pushed + extra.0.len()
});

twins!(ref_and_mut_in_a_tuple: fn f((ref name, mut count): (D, u64), log: Log) -> u64 {
    count += offload!(|| name.0.len() as u64);
    mark(&log, "body end");
    count
});

/// Its fields are only ever dropped, by some patterns.
#[allow(dead_code)]
pub(crate) struct Pair(pub(crate) D, pub(crate) D);

#[allow(dead_code)]
pub(crate) struct Record {
    pub(crate) id: D,
    pub(crate) rest: D,
}

twins!(struct_patterns: fn f(crate::Record { id, .. }: crate::Record, crate::Pair(first, _): crate::Pair, log: Log) -> usize {
    let n = offload!(|| id.0.len() + first.0.len());
    mark(&log, "body end");
    n
});

twins!(arrays_and_mut: fn f(mut a: D, _b: D, [first, _, third]: [D; 3], log: Log) -> usize {
    let before = offload!(|| a.0.len());
    // The old `a` drops here, at the assignment, as in any function.
    a = d("new a", &log);
    mark(&log, "body end");
    before + a.0.len() + first.0.len() + third.0.len()
});

twins!(binding_with_subpattern: fn f(whole @ crate::Pair(..): crate::Pair, &(ref x, y): &(D, u32), log: Log) -> usize {
    let n = offload!(|| whole.0.0.len() + x.0.len() + y as usize);
    mark(&log, "body end");
    n
});

twins!(only_wildcards: fn f(_: D, _: D, log: Log) -> usize {
    let n = offload!(|| 1);
    mark(&log, "body end");
    n
});

twins!(unused_and_attributed: fn f(#[allow(unused_variables)] unused: D, _ignored: D, log: Log) -> usize {
    let n = offload!(|| 2);
    mark(&log, "body end");
    n
});

twins!(generic_and_impl_trait: fn f<T: AsRef<str> + Sync>(named: T, (a, _): (D, T), into: impl Into<String>, log: Log) -> usize {
    let into: String = into.into();
    let n = offload!(|| named.as_ref().len() + a.0.len() + into.len());
    mark(&log, "body end");
    n
});

twins!(tail_temporary: fn f(a: D, log: Log) -> usize {
    let _local = d("local", &log);
    let n = offload!(|| a.0.len());
    mark(&log, "body end");
    // A temporary of the tail expression: dropped before the parameters.
    d("tail temporary", &log).0.len() + n
});

/// Runs `call` with a fresh log and returns what it logged, including the
/// drops of the value it returned.
fn logged<T>(call: impl FnOnce(&Log) -> T) -> Vec<&'static str> {
    let log = Log::default();
    drop(call(&log));
    log.lock().unwrap().clone()
}

/// Like [`logged`], for a call that panics; also returns the payload's text.
fn logged_panic<T>(call: impl FnOnce(&Log) -> T) -> (Vec<&'static str>, String) {
    let log = Log::default();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| call(&log)))
        .map(drop)
        .expect_err("the call panics");
    let text = common::panic_text(&*payload).to_owned();
    (log.lock().unwrap().clone(), text)
}

/// Checks that the handler `handler` drops what the plain function `plain`
/// drops, in the same order: run to the end with every strategy and on a
/// `YieldableThread`, and dropped while suspended at its first `offload!`
/// against the plain function panicking there.
fn same_drops<T, H>(plain: impl Fn(&Log) -> T, handler: impl Fn(&Log) -> H)
where
    T: std::fmt::Debug + PartialEq + Send + 'static,
    H: Yieldable<Output = T> + Send + 'static,
{
    let mut plain_value = None;
    let expected = logged(|log| {
        let value = plain(log);
        plain_value = Some(format!("{value:?}"));
        value
    });
    assert!(
        expected.contains(&"body end"),
        "the body ran to its end: {expected:?}"
    );
    let runs: [(&str, &dyn Fn(H) -> T); 4] = [
        ("run", &|h: H| h.run()),
        ("exclusive", &|h: H| h.run_with(&Exclusive::new())),
        ("pool", &|h: H| h.run_with(&Pool::new(1))),
        ("thread", &|h: H| {
            YieldableThread::new()
                .apply(Inline)
                .spawn(h)
                .unwrap()
                .join()
                .unwrap()
        }),
    ];
    for (how, run) in runs {
        let mut value = None;
        let actual = logged(|log| {
            let created = handler(log);
            assert!(
                log.lock().unwrap().is_empty(),
                "{how}: nothing is dropped when the handler is created"
            );
            let v = run(created);
            value = Some(format!("{v:?}"));
            v
        });
        assert_eq!(actual, expected, "{how}: drop order");
        assert_eq!(value, plain_value, "{how}: value");
    }

    // Dropped while suspended at the first `offload!`, against the plain
    // function panicking at that point.
    PANIC_AT_OFFLOAD.set(true);
    let (unwound, text) = logged_panic(|log| plain(log));
    PANIC_AT_OFFLOAD.set(false);
    assert_eq!(text, "dropped at offload");
    let dropped = logged(|log| {
        let mut generator = handler(log).start();
        assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
        assert!(log.lock().unwrap().is_empty(), "nothing dropped yet");
        drop(generator);
    });
    assert_eq!(dropped, unwound, "dropped while suspended");

    // Created, never run, then dropped: every argument is dropped.
    let never_run = logged(|log| drop(handler(log)));
    for argument in expected.iter().filter(|name| is_argument(name)) {
        assert!(
            never_run.contains(argument),
            "{argument} not dropped with the handler: {never_run:?}"
        );
    }
}

/// The values tests pass as arguments (their names start with `arg`).
fn is_argument(name: &str) -> bool {
    name.starts_with("arg")
}

#[test]
fn tuple_wildcard_and_plain_parameters() {
    same_drops(
        |l| {
            the_issues_case::plain::f(
                d("arg a", l),
                (d("arg b", l), d("arg b's _", l)),
                d("arg _", l),
                d("arg c", l),
                Arc::clone(l),
            )
        },
        |l| {
            the_issues_case::handler::f(
                d("arg a", l),
                (d("arg b", l), d("arg b's _", l)),
                d("arg _", l),
                d("arg c", l),
                Arc::clone(l),
            )
        },
    );
    // The order the issue reports, spelled out: locals, then the parameters
    // last to first, each one's bindings before its unbound parts.
    let log = Log::default();
    the_issues_case::handler::f(
        d("a", &log),
        (d("b", &log), d("b's _", &log)),
        d("_", &log),
        d("c", &log),
        Arc::clone(&log),
    )
    .run();
    assert_eq!(
        *log.lock().unwrap(),
        ["body end", "local", "c", "_", "b", "b's _", "a"]
    );
}

#[test]
fn ref_mut_binding_of_a_whole_parameter() {
    let args = |l: &Log| (vec![d("arg item", l)], d("arg extra", l));
    same_drops(
        |l| {
            let (items, extra) = args(l);
            ref_mut_binding::plain::f(items, extra, Arc::clone(l))
        },
        |l| {
            let (items, extra) = args(l);
            ref_mut_binding::handler::f(items, extra, Arc::clone(l))
        },
    );
}

#[test]
fn ref_and_mut_bindings_inside_a_tuple() {
    same_drops(
        |l| ref_and_mut_in_a_tuple::plain::f((d("arg name", l), 1), Arc::clone(l)),
        |l| ref_and_mut_in_a_tuple::handler::f((d("arg name", l), 1), Arc::clone(l)),
    );
}

#[test]
fn struct_and_tuple_struct_patterns_with_ignored_fields() {
    let args = |l: &Log| {
        (
            Record {
                id: d("arg id", l),
                rest: d("arg rest", l),
            },
            Pair(d("arg first", l), d("arg second", l)),
        )
    };
    same_drops(
        |l| {
            let (record, pair) = args(l);
            struct_patterns::plain::f(record, pair, Arc::clone(l))
        },
        |l| {
            let (record, pair) = args(l);
            struct_patterns::handler::f(record, pair, Arc::clone(l))
        },
    );
}

#[test]
fn arrays_mut_and_underscore_prefixed_parameters() {
    let args = |l: &Log| {
        (
            d("arg a", l),
            d("arg _b", l),
            [d("arg 0", l), d("arg 1", l), d("arg 2", l)],
        )
    };
    same_drops(
        |l| {
            let (a, b, array) = args(l);
            arrays_and_mut::plain::f(a, b, array, Arc::clone(l))
        },
        |l| {
            let (a, b, array) = args(l);
            arrays_and_mut::handler::f(a, b, array, Arc::clone(l))
        },
    );
}

#[test]
fn bindings_with_subpatterns_and_reference_patterns() {
    // The borrowed tuple outlives both calls.
    let outer = Log::default();
    let borrowed = (d("borrowed", &outer), 3);
    same_drops(
        |l| {
            binding_with_subpattern::plain::f(
                Pair(d("arg 0", l), d("arg 1", l)),
                &borrowed,
                Arc::clone(l),
            )
        },
        |l| {
            // `'static` is needed to `start` the handler by hand; leak one
            // borrowed tuple per call.
            let borrowed: &'static (D, u32) = Box::leak(Box::new((d("borrowed", &outer), 3)));
            binding_with_subpattern::handler::f(
                Pair(d("arg 0", l), d("arg 1", l)),
                borrowed,
                Arc::clone(l),
            )
        },
    );
}

#[test]
fn parameters_that_are_only_wildcards() {
    same_drops(
        |l| only_wildcards::plain::f(d("arg 0", l), d("arg 1", l), Arc::clone(l)),
        |l| only_wildcards::handler::f(d("arg 0", l), d("arg 1", l), Arc::clone(l)),
    );
}

#[test]
fn unused_and_attributed_parameters_live_until_the_end() {
    same_drops(
        |l| {
            unused_and_attributed::plain::f(d("arg unused", l), d("arg _ignored", l), Arc::clone(l))
        },
        |l| {
            unused_and_attributed::handler::f(
                d("arg unused", l),
                d("arg _ignored", l),
                Arc::clone(l),
            )
        },
    );
}

#[test]
fn generic_and_impl_trait_parameters() {
    same_drops(
        |l| generic_and_impl_trait::plain::f("x", (d("arg a", l), "yz"), "abc", Arc::clone(l)),
        |l| generic_and_impl_trait::handler::f("x", (d("arg a", l), "yz"), "abc", Arc::clone(l)),
    );
}

#[test]
fn temporaries_of_the_tail_expression_drop_before_the_parameters() {
    same_drops(
        |l| tail_temporary::plain::f(d("arg a", l), Arc::clone(l)),
        |l| tail_temporary::handler::f(d("arg a", l), Arc::clone(l)),
    );
}

/// Receivers: `self` is the first parameter, so it drops last.
mod methods {
    use super::{D, Log, d, mark};
    use ythread::{offload, yieldable};

    pub(crate) struct Plain(pub(crate) D);
    pub(crate) struct Handler(pub(crate) D);

    impl Plain {
        pub(crate) fn by_value(self, (a, _): (D, D), log: Log) -> usize {
            let _local = d("local", &log);
            let n = crate::run_now!(|| a.0.len());
            mark(&log, "body end");
            n
        }
        pub(crate) fn by_mut(&mut self, _: D, log: Log) -> usize {
            self.0 = d("replaced", &log);
            mark(&log, "body end");
            1
        }
        pub(crate) fn boxed(self: Box<Self>, (a, _): (D, D), log: Log) -> usize {
            let n = crate::run_now!(|| a.0.len());
            mark(&log, "body end");
            n
        }
    }

    impl Handler {
        #[yieldable]
        pub(crate) fn by_value(self, (a, _): (D, D), log: Log) -> usize {
            let _local = d("local", &log);
            let n = offload!(|| a.0.len());
            mark(&log, "body end");
            n
        }
        #[yieldable]
        pub(crate) fn by_mut(&mut self, _: D, log: Log) -> usize {
            self.0 = offload!(|| d("replaced", &log));
            mark(&log, "body end");
            1
        }
        #[yieldable]
        pub(crate) fn boxed(self: Box<Self>, (a, _): (D, D), log: Log) -> usize {
            let n = offload!(|| a.0.len());
            mark(&log, "body end");
            n
        }
    }
}

#[test]
fn self_by_value_drops_last() {
    same_drops(
        |l| {
            methods::Plain(d("arg self", l))
                .by_value((d("arg a", l), d("arg a's _", l)), Arc::clone(l))
        },
        |l| {
            methods::Handler(d("arg self", l))
                .by_value((d("arg a", l), d("arg a's _", l)), Arc::clone(l))
        },
    );
}

#[test]
fn self_by_mutable_reference() {
    let log = Log::default();
    let mut plain = methods::Plain(d("self", &log));
    let mut handler = methods::Handler(d("self", &log));
    plain.by_mut(d("_", &log), Arc::clone(&log));
    let expected = std::mem::take(&mut *log.lock().unwrap());
    handler.by_mut(d("_", &log), Arc::clone(&log)).run();
    assert_eq!(*log.lock().unwrap(), expected);
    assert_eq!(expected, ["self", "body end", "_"]);
}

#[test]
fn a_boxed_self_drops_last() {
    same_drops(
        |l| {
            Box::new(methods::Plain(d("arg self", l)))
                .boxed((d("arg a", l), d("arg a's _", l)), Arc::clone(l))
        },
        |l| {
            Box::new(methods::Handler(d("arg self", l)))
                .boxed((d("arg a", l), d("arg a's _", l)), Arc::clone(l))
        },
    );
}
