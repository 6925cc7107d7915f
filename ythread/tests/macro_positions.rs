//! `offload!` and `yield_from!` in every position the contract lists, in a
//! user's program: compiled, run, and checked for the value each position
//! produces and for the number of pieces of work the strategy received.
//!
//! The strategy used throughout ([`counted`]) counts the jobs and runs each
//! on a fresh scoped thread, so every piece of work really leaves the
//! handler's thread, as it does with a pool.

use std::cell::Cell;
use std::fmt::Write as _;
use std::num::ParseIntError;
use std::sync::Mutex;
use std::thread::{self, ThreadId};

use ythread::{Apply, Bounded, Exclusive, Inline, Pool, apply_fn};
use ythread::{Yieldable, offload, yield_from, yieldable};

/// Runs `handler` to completion, running each job on its own scoped thread;
/// returns the handler's value and how many jobs it offloaded.
fn counted<H: Yieldable>(handler: H) -> (H::Output, usize) {
    let jobs = Cell::new(0);
    let on_another_thread = apply_fn(|job| {
        jobs.set(jobs.get() + 1);
        thread::scope(|s| {
            s.spawn(move || job.run());
        });
    });
    let value = handler.run_with(&on_another_thread);
    (value, jobs.get())
}

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn is_even(x: u64) -> bool {
    x.is_multiple_of(2)
}

fn less(a: u64, b: u64) -> bool {
    a < b
}

fn checked_half(x: u64) -> Option<u64> {
    is_even(x).then_some(x / 2)
}

fn answer() -> u64 {
    42
}

fn worker_id() -> ThreadId {
    thread::current().id()
}

mod cpu {
    pub(crate) fn cube(x: u64) -> u64 {
        x * x * x
    }

    pub(crate) fn widen<T: Into<u64>>(x: T) -> u64 {
        x.into()
    }
}

#[test]
fn work_runs_off_the_handlers_thread() {
    #[yieldable]
    fn handler() -> (ThreadId, ThreadId) {
        (thread::current().id(), offload!(worker_id))
    }
    let ((handler_thread, work_thread), jobs) = counted(handler());
    assert_eq!(handler_thread, thread::current().id());
    assert_ne!(work_thread, handler_thread);
    assert_eq!(jobs, 1);
}

#[test]
fn nested_expressions() {
    #[yieldable]
    fn handler(x: u64, y: u64) -> (u64, u64, u64, String, [u64; 2]) {
        let sum = offload!(square, x) + offload!(add, y, 1);
        let nested = offload!(add, offload!(square, x), offload!(square, y));
        let negated = 100 - offload!(|| x * 10);
        let text = offload!(square, y).to_string();
        let array = [offload!(cpu::cube, x), (offload!(answer),).0];
        (sum, nested, negated, text, array)
    }
    let (value, jobs) = counted(handler(3, 4));
    assert_eq!(value, (9 + 5, 9 + 16, 70, "16".to_string(), [27, 42]));
    assert_eq!(jobs, 2 + 3 + 1 + 1 + 2);
}

#[test]
fn loops() {
    #[yieldable]
    fn handler(n: u64) -> (u64, u64, u64, u64) {
        let mut for_sum = 0;
        for i in 1..=n {
            for_sum += offload!(square, i);
        }
        let mut i = 0;
        while offload!(less, i, n) {
            i += 1;
        }
        let mut k = 0;
        let found = loop {
            k += 1;
            if offload!(is_even, k * n) {
                break offload!(add, k, 100);
            }
        };
        let labeled = 'outer: loop {
            for j in 0.. {
                if j == 2 {
                    break 'outer offload!(square, j);
                }
            }
        };
        (for_sum, i, found, labeled)
    }
    // n = 3: for: 3 jobs; while: 4 conditions; loop: k=1 (odd), k=2 (even)
    // then the break value; labeled: 1.
    let (value, jobs) = counted(handler(3));
    assert_eq!(value, (1 + 4 + 9, 3, 102, 4));
    assert_eq!(jobs, 3 + 4 + 3 + 1);
}

#[test]
fn match_and_if() {
    #[yieldable]
    fn classify(x: u64) -> String {
        let kind = match offload!(checked_half, x) {
            Some(0) => "zero".to_string(),
            Some(half) if offload!(is_even, half) => format!("quarter {}", half / 2),
            Some(half) => format!("half {}", offload!(square, half)),
            None => "odd".to_string(),
        };
        let size = if offload!(less, x, 10) {
            "small"
        } else if offload!(less, x, 100) {
            "medium"
        } else {
            "large"
        };
        let Some(double) = offload!(|| x.checked_mul(2)) else {
            return "overflow".to_string();
        };
        if let Some(third) = offload!(|| x.is_multiple_of(3).then_some(x / 3)) {
            format!("{kind}, {size}, {double}, third {third}")
        } else {
            format!("{kind}, {size}, {double}")
        }
    }
    assert_eq!(counted(classify(0)), ("zero, small, 0, third 0".into(), 4));
    // 8: half 4, the guard's offload says even: "quarter 2".
    assert_eq!(counted(classify(8)), ("quarter 2, small, 16".into(), 5));
    // 6: half 3, the guard says odd: the arm's offload squares it.
    assert_eq!(
        counted(classify(6)),
        ("half 9, small, 12, third 2".into(), 6)
    );
    assert_eq!(counted(classify(55)), ("odd, medium, 110".into(), 5));
    // The early `return` in the `let ... else` skips the rest.
    assert_eq!(counted(classify(u64::MAX)), ("overflow".into(), 4));
}

#[test]
fn arguments_of_other_macros() {
    #[yieldable]
    fn handler(x: u64) -> (String, Vec<u64>, String, bool) {
        let formatted = format!("{} and {:>3}", offload!(square, x), offload!(add, x, 1));
        let list = vec![offload!(square, x), offload!(cpu::cube, x), 0];
        let repeated = vec![offload!(answer); 2];
        assert_eq!(offload!(square, x), x * x, "{}", offload!(add, x, x));
        assert!(offload!(less, x, 10));
        let mut out = String::new();
        write!(out, "[{}]", offload!(square, x)).unwrap();
        writeln!(out, "{}", [format!("{}", offload!(add, x, 2))].join(",")).unwrap();
        let matched = matches!(offload!(checked_half, x), Some(1));
        let all = list.into_iter().chain(repeated).collect();
        (formatted, all, out, matched)
    }
    let (value, jobs) = counted(handler(2));
    assert_eq!(
        value,
        (
            "4 and   3".to_string(),
            vec![4, 8, 0, 42, 42],
            "[4]4\n".to_string(),
            true
        )
    );
    // `vec![x; n]` evaluates `x` once, and `assert_eq!` formats its message
    // (with its offload) only when it fails.
    assert_eq!(jobs, 2 + 2 + 1 + 1 + 1 + 1 + 1 + 1);
}

#[test]
fn closures_called_while_the_handler_runs() {
    #[yieldable]
    fn handler(xs: Vec<u64>, maybe: Option<u64>) -> (Vec<u64>, Option<u64>, u64, u64) {
        let squares: Vec<u64> = xs.iter().map(|x| offload!(square, *x)).collect();
        let mapped = maybe.map(|m| offload!(add, m, 1));
        let twice = |v: u64| offload!(add, v, v);
        let stored = twice(1) + twice(10);
        let folded = xs.into_iter().fold(0, move |acc, x| offload!(add, acc, x));
        (squares, mapped, stored, folded)
    }
    let (value, jobs) = counted(handler(vec![1, 2, 3], Some(5)));
    assert_eq!(value, (vec![1, 4, 9], Some(6), 22, 6));
    assert_eq!(jobs, 3 + 1 + 2 + 3);
    let (value, jobs) = counted(handler(vec![], None));
    assert_eq!(value, (vec![], None, 22, 0));
    assert_eq!(jobs, 2);
}

struct Calculator {
    base: u64,
    calls: u64,
}

impl Calculator {
    fn helper(x: u64) -> u64 {
        x + 1000
    }

    fn compute(&self, x: u64) -> u64 {
        self.base * x
    }

    #[yieldable]
    fn paths(&self, x: u64) -> [u64; 6] {
        [
            offload!(crate::cpu::cube, x),
            offload!(Self::helper, x),
            offload!(cpu::widen::<u32>, 7),
            offload!(u64::pow, x, 3),
            offload!(<u64>::max, x, 9),
            offload!(|| self.compute(x)),
        ]
    }

    #[yieldable]
    fn by_ref(&self, x: u64) -> u64 {
        let base = self.base;
        offload!(add, base, x)
    }

    #[yieldable]
    fn by_mut(&mut self, x: u64) -> u64 {
        self.calls += 1;
        self.base = offload!(add, self.base, x);
        self.base
    }

    #[yieldable]
    fn by_value(self, x: u64) -> Self {
        Calculator {
            base: offload!(|| self.compute(x)),
            calls: self.calls + 1,
        }
    }
}

#[test]
fn function_paths_and_methods() {
    let calc = Calculator { base: 5, calls: 0 };
    assert_eq!(counted(calc.paths(2)), ([8, 1002, 7, 8, 9, 10], 6));
    assert_eq!(counted(calc.by_ref(3)), (8, 1));

    let mut calc = calc;
    assert_eq!(counted(calc.by_mut(10)), (15, 1));
    assert_eq!(counted(calc.by_mut(1)), (16, 1));
    assert_eq!((calc.base, calc.calls), (16, 2));

    let (moved, jobs) = counted(calc.by_value(2));
    assert_eq!((moved.base, moved.calls, jobs), (32, 3, 1));
}

#[yieldable]
fn generic<T: Send + Copy + Into<u64>>(x: T) -> u64 {
    offload!(cpu::widen::<T>, x) + offload!(move || x.into())
}

#[yieldable]
fn generic_where<T, U>(items: Vec<T>, extra: U) -> (usize, U)
where
    T: Send + Sync + Clone,
    U: Send,
{
    let count = offload!(<[T]>::len, &items);
    (count, offload!(|| extra))
}

#[test]
fn generic_handlers() {
    assert_eq!(counted(generic(3u8)), (6, 2));
    assert_eq!(counted(generic(7u64)), (14, 2));
    assert_eq!(
        counted(generic_where(vec!['a'; 4], "extra")),
        ((4, "extra"), 2)
    );
}

fn parse(text: &str) -> Result<u64, ParseIntError> {
    text.trim().parse()
}

#[yieldable]
fn question_marks(a: &str, b: &str) -> Result<u64, ParseIntError> {
    // `?` in an argument is evaluated in the handler: an error returns
    // before anything is offloaded.
    let first = offload!(square, parse(a)?);
    // `?` on an offloaded result.
    let second = offload!(parse, b)?;
    if second == 0 {
        return Ok(first);
    }
    Ok(offload!(add, first, second))
}

#[test]
fn question_mark_and_early_return() {
    assert_eq!(counted(question_marks("3", "4")), (Ok(13), 3));
    assert_eq!(counted(question_marks("3", "0")), (Ok(9), 2));
    let (value, jobs) = counted(question_marks("x", "4"));
    assert!(value.is_err());
    assert_eq!(jobs, 0);
    let (value, jobs) = counted(question_marks("3", "y"));
    assert!(value.is_err());
    assert_eq!(jobs, 2);
}

#[yieldable]
fn early_return_in_loop(xs: Vec<u64>) -> Option<u64> {
    for x in xs {
        if offload!(is_even, x) {
            return Some(offload!(square, x));
        }
    }
    None
}

#[test]
fn early_return() {
    assert_eq!(
        counted(early_return_in_loop(vec![1, 3, 4, 6])),
        (Some(16), 4)
    );
    assert_eq!(counted(early_return_in_loop(vec![1, 3])), (None, 2));
}

#[test]
fn arguments_are_evaluated_in_order_before_the_work() {
    fn log<T>(events: &Mutex<Vec<&'static str>>, event: &'static str, value: T) -> T {
        events.lock().unwrap().push(event);
        value
    }

    fn work(events: &Mutex<Vec<&'static str>>, a: u64, b: u64) -> u64 {
        events.lock().unwrap().push("work");
        a * 10 + b
    }

    #[yieldable]
    fn handler(events: &Mutex<Vec<&'static str>>) -> u64 {
        offload!(work, events, log(events, "a", 1), log(events, "b", 2))
    }

    let events = Mutex::new(Vec::new());
    assert_eq!(counted(handler(&events)), (12, 1));
    assert_eq!(*events.lock().unwrap(), ["a", "b", "work"]);
}

#[test]
fn work_borrows_the_handlers_locals() {
    fn sum(xs: &[u64]) -> u64 {
        xs.iter().sum()
    }

    fn push(xs: &mut Vec<u64>, x: u64) {
        xs.push(x);
    }

    fn first_word(text: &str) -> &str {
        text.split(' ').next().unwrap_or("")
    }

    #[yieldable]
    fn handler() -> (u64, usize, Vec<u64>, bool) {
        let mut xs = vec![1, 2, 3];
        let total = offload!(sum, &xs);
        offload!(push, &mut xs, 4);
        let len = offload!(|| xs.len());
        // A temporary in an argument lives until the end of the statement.
        let same = offload!(first_word, &String::from("two words")) == "two";
        (total, len, xs, same)
    }
    assert_eq!(counted(handler()), ((6, 4, vec![1, 2, 3, 4], true), 4));
}

#[yieldable]
fn inner(x: u64) -> u64 {
    offload!(square, x) + offload!(answer)
}

#[yieldable]
fn outer(x: u64) -> String {
    #[yieldable]
    fn nested_in_body(x: u64) -> u64 {
        offload!(add, x, 1) + yield_from!(inner(x))
    }

    let direct = yield_from!(inner(x));
    let from_nested = yield_from!(nested_in_body(x));
    let in_macro = format!("{}", yield_from!(inner(offload!(add, x, 1))));
    let plain = yield_from!(|| x * 1000);
    format!("{direct} {from_nested} {in_macro} {plain}")
}

#[test]
fn yield_from_and_nested_handlers() {
    // inner(2) = 4 + 42 = 46 (2 jobs); nested_in_body(2) = 3 + 46 (3 jobs);
    // inner(3) = 51 (1 + 2 jobs); the plain closure offloads nothing.
    assert_eq!(counted(outer(2)), ("46 49 51 2000".to_string(), 2 + 3 + 3));
    // A nested handler also runs on its own.
    assert_eq!(counted(inner(5)), (67, 2));
}

/// A macro of the user's that shares `offload!`'s name.
mod own {
    macro_rules! offload {
        ($x:expr) => {
            $x * 2
        };
    }
    pub(crate) use offload;
}

#[yieldable]
fn users_own_offload(x: u64) -> (u64, String, u64) {
    (
        own::offload!(x),
        format!("{}", own::offload!(x)),
        offload!(square, own::offload!(x)),
    )
}

#[test]
fn a_users_macro_named_offload_is_left_alone() {
    // Reached by another path than ythread's, in the syntax tree and in
    // another macro's arguments alike.
    assert_eq!(counted(users_own_offload(3)), ((6, "6".to_string(), 36), 1));
}

/// Declares a `#[yieldable]` function from syntax of its own, so that a
/// handler around the call cannot see that it declares an item.
macro_rules! handler_fn {
    ($name:ident($x:ident) => $body:expr) => {
        #[yieldable]
        fn $name($x: u64) -> u64 {
            $body
        }
    };
}

#[yieldable]
fn declares_handlers_in_tokens(x: u64) -> (u64, String, u64) {
    // In the work of an `offload!`: the nested handler is run there, on its
    // own (inline), with its own context.
    let in_work = offload!(|| {
        #[yieldable]
        fn nested(x: u64) -> u64 {
            offload!(square, x) + 1
        }
        nested(x).run()
    });
    // In another macro's arguments, run from this handler.
    let in_format = format!("{}", {
        #[yieldable]
        fn nested(x: u64) -> u64 {
            offload!(add, x, format!("{}", offload!(answer)).len() as u64)
        }
        yield_from!(nested(x))
    });
    // Declared by another macro from its own syntax: this handler cannot see
    // the item and gives the call its context, which the nested handler's
    // own replaces.
    let built = {
        handler_fn!(built(x) => offload!(cpu::cube, x));
        yield_from!(built(x))
    };
    (in_work, in_format, built)
}

#[test]
fn handlers_declared_inside_macro_calls() {
    // 3² + 1 = 10 (1 job: the nested handler's own work runs inline);
    // 3 + "42".len() = 5 (2 jobs); 3³ = 27 (1 job).
    assert_eq!(
        counted(declares_handlers_in_tokens(3)),
        ((10, "5".to_string(), 27), 1 + 2 + 1)
    );
}

#[yieldable]
fn returns_unit(out: &Mutex<u64>) {
    fn store(out: &Mutex<u64>, x: u64) {
        *out.lock().unwrap() = x;
    }
    offload!(store, out, 7);
    offload!(|| ());
}

#[test]
fn unit_results() {
    let out = Mutex::new(0);
    assert_eq!(counted(returns_unit(&out)), ((), 2));
    assert_eq!(*out.lock().unwrap(), 7);
}

/// The expansion uses absolute paths and hygienic names only: none of the
/// names below, in scope at the call sites, changes what it means.
mod hygiene {
    #![allow(dead_code, non_camel_case_types)]

    use super::counted;

    mod core {}
    mod std {}
    mod ythread {}
    mod __private {}

    struct Send;
    struct Option;
    struct Context;
    fn identity() {}
    fn handler() {}
    fn offload_call() {}

    fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    #[::ythread::yieldable]
    fn shadowing(__arg0: u64, cx: u64) -> (u64, u64, u64) {
        let __arg1 = 100;
        let __ythread_cx = 1000;
        let first = ::ythread::offload!(add, __arg0, __arg1);
        let second = ::ythread::offload!(add, cx, __ythread_cx);
        let closure = ::ythread::offload!(|| __arg0 + cx + __arg1 + __ythread_cx);
        (first, second, closure)
    }

    #[test]
    fn user_names_do_not_capture_or_break_the_expansion() {
        assert_eq!(counted(shadowing(1, 2)), ((101, 1002, 1103), 3));
    }
}

// --- `offload!(f, args..)` type-checks as `f(args..)` does ----------------
//
// Each call below beside its plain twin: generic functions whose type
// parameters the arguments or the expected result infer, trait methods
// through a type, turbofish or not, tuple-struct constructors, and callees
// that are values (closures called by reference, by `&mut` or once, function
// pointers, boxed and shared `dyn Fn`).

fn total<T: Copy + Into<u64>>(xs: &[T]) -> u64 {
    xs.iter().map(|&x| x.into()).sum()
}

trait Scale {
    fn scale(x: u64) -> u64;
}

struct Triple;

impl Scale for Triple {
    fn scale(x: u64) -> u64 {
        3 * x
    }
}

#[derive(Debug, PartialEq)]
struct Wrapped<T>(T);

/// One row per call: what `offload!` returned, what the plain call returned.
type Rows = Vec<(&'static str, String, String)>;

macro_rules! row {
    ($rows:ident, $name:literal, $offloaded:expr, $plain:expr) => {
        $rows.push(($name, format!("{:?}", $offloaded), format!("{:?}", $plain)))
    };
}

#[yieldable]
fn generic_calls<T: Copy + Into<u64> + Sync>(xs: Vec<T>) -> Rows {
    let mut rows = Rows::new();
    row!(
        rows,
        "inferred from a generic handler's argument",
        offload!(total, &xs),
        total(&xs)
    );
    row!(
        rows,
        "turbofish",
        offload!(total::<u8>, &[1u8, 2]),
        total::<u8>(&[1u8, 2])
    );
    row!(
        rows,
        "std generic fn",
        offload!(std::cmp::max, 3u64, 9),
        std::cmp::max(3u64, 9)
    );
    row!(
        rows,
        "trait method through a type",
        offload!(u64::from, 7u32),
        u64::from(7u32)
    );
    row!(
        rows,
        "qualified trait method",
        offload!(<u64 as From<u8>>::from, 5u8),
        <u64 as From<u8>>::from(5u8)
    );
    let into: u64 = offload!(Into::into, 7u32);
    let plain_into: u64 = Into::into(7u32);
    row!(rows, "inferred from the expected result", into, plain_into);
    let default: u64 = offload!(Default::default);
    let plain_default: u64 = Default::default();
    row!(
        rows,
        "no arguments, inferred from the result",
        default,
        plain_default
    );
    let sum: u64 = offload!(Iterator::sum, vec![1u64, 2, 3].into_iter());
    let plain_sum: u64 = Iterator::sum(vec![1u64, 2, 3].into_iter());
    row!(rows, "trait method generic over its result", sum, plain_sum);
    row!(
        rows,
        "method of a generic type",
        offload!(Vec::len, &xs),
        Vec::len(&xs)
    );
    row!(
        rows,
        "inherent method, literal inferred",
        offload!(u64::pow, 2, 10),
        u64::pow(2, 10)
    );
    row!(
        rows,
        "borrowing method",
        offload!(str::trim, "  x "),
        str::trim("  x ")
    );
    row!(
        rows,
        "generic method with two parameters",
        offload!(Option::unwrap_or, None, 4u64),
        Option::unwrap_or(None, 4u64)
    );
    row!(
        rows,
        "trait method through its type",
        offload!(Triple::scale, 4),
        Triple::scale(4)
    );
    row!(
        rows,
        "trait method through `as`",
        offload!(<Triple as Scale>::scale, 4),
        <Triple as Scale>::scale(4)
    );
    row!(rows, "tuple variant", offload!(Some, 3u64), Some(3u64));
    row!(
        rows,
        "generic tuple struct",
        offload!(Wrapped, 5u8),
        Wrapped(5u8)
    );
    row!(
        rows,
        "String::from",
        offload!(String::from, "abc"),
        String::from("abc")
    );

    // Callees that are values.
    let pointer: fn(u64) -> u64 = square;
    row!(rows, "function pointer", offload!(pointer, 3), pointer(3));
    let owned = String::from("four");
    let by_ref = move |n: u64| n + owned.len() as u64;
    row!(
        rows,
        "closure called by reference",
        offload!(by_ref, 1),
        by_ref(1)
    );
    let mut count = 0;
    let mut by_mut = |n: u64| {
        count += n;
        count
    };
    let first = offload!(by_mut, 2);
    row!(
        rows,
        "closure called by `&mut`",
        (first, offload!(by_mut, 3)),
        (2, by_mut(0))
    );
    let suffix = String::from("once");
    let once = move |s: &str| suffix + s;
    let plain_once = {
        let suffix = String::from("once");
        move |s: &str| suffix + s
    };
    row!(
        rows,
        "closure called once",
        offload!(once, "!"),
        plain_once("!")
    );
    let boxed: Box<dyn Fn(u64) -> u64 + Send + Sync> = Box::new(|n| n + 100);
    row!(rows, "boxed `dyn Fn`", offload!(boxed, 2), boxed(2));
    let shared: std::sync::Arc<dyn Fn(u64) -> u64 + Send + Sync> = std::sync::Arc::new(|n| n + 200);
    row!(
        rows,
        "`Arc<dyn Fn>`, called through `Deref`",
        offload!(shared, 2),
        shared(2)
    );
    rows
}

fn apply_ref<F: for<'a> Fn(&'a str) -> &'a str>(f: F, s: &str) -> String {
    f(s).to_string()
}

struct Table {
    f: fn(u64) -> u64,
}

impl Table {
    /// A method named as the field: `offload!(self.f, x)` calls the field,
    /// as `(self.f)(x)` does.
    fn f(&self, x: u64) -> u64 {
        1000 + x
    }

    #[yieldable]
    fn field_callee(&self, x: u64) -> (u64, u64) {
        (offload!(self.f, x), self.f(x))
    }
}

fn make_adder(calls: &std::sync::atomic::AtomicU64) -> fn(u64) -> u64 {
    calls.fetch_add(10, std::sync::atomic::Ordering::SeqCst);
    |x| x + 1
}

fn pick(found: bool) -> Option<fn(u64) -> u64> {
    found.then_some(square as fn(u64) -> u64)
}

#[yieldable]
fn callee_forms(early: bool) -> Rows {
    let mut rows = Rows::new();
    // Closure arguments, typed by the callee's `Fn` bound.
    row!(
        rows,
        "closure argument of a generic method",
        offload!(Option::map, Some("ab"), |s| s.len()),
        Option::map(Some("ab"), |s| s.len())
    );
    let mut sorted = vec![3u64, 1, 2];
    offload!(<[u64]>::sort_by_key, &mut sorted, |x| std::cmp::Reverse(*x));
    offload!(Vec::retain, &mut sorted, |x| *x > 1);
    row!(
        rows,
        "closure arguments beside `&mut`",
        sorted,
        vec![3u64, 2]
    );
    row!(
        rows,
        "higher-ranked closure argument",
        offload!(apply_ref, |s: &str| s.trim(), " a "),
        apply_ref(|s: &str| s.trim(), " a ")
    );
    // Callees that are not paths.
    let table = Table { f: square };
    row!(
        rows,
        "a field, not the method of the same name",
        offload!(table.f, 3),
        (table.f)(3)
    );
    let f: &fn(u64) -> u64 = &table.f;
    row!(rows, "a dereference", offload!(*f, 4), (*f)(4));
    #[allow(clippy::needless_borrow)]
    let plain = (&square)(5);
    row!(rows, "a reference", offload!(&square, 5), plain);
    row!(
        rows,
        "a cast",
        offload!(square as fn(u64) -> u64, 6),
        (square as fn(u64) -> u64)(6)
    );
    // A callee computed by an expression runs first, in the handler.
    let calls = std::sync::atomic::AtomicU64::new(0);
    let order = |calls: &std::sync::atomic::AtomicU64| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    };
    let offloaded = offload!(make_adder(&calls), order(&calls));
    let after_offload = calls.swap(0, std::sync::atomic::Ordering::SeqCst);
    let plain = make_adder(&calls)(order(&calls));
    let after_plain = calls.load(std::sync::atomic::Ordering::SeqCst);
    row!(
        rows,
        "a computed callee, evaluated before the arguments",
        (offloaded, after_offload),
        (plain, after_plain)
    );
    let square_or_return = offload!(if early { return rows } else { square }, 7);
    row!(rows, "`return` in a computed callee", square_or_return, 49);
    rows
}

fn trimmer() -> fn(&str) -> &str {
    str::trim
}

#[allow(clippy::too_many_arguments)]
fn nine(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64) -> u64 {
    a + b + c + d + e + f + g + h + i
}

/// Handlers built by macros, whose fragments reach `offload!` wrapped in
/// invisible groups.
macro_rules! call_twice_handler {
    ($name:ident, $param:ident: $ty:ty, $callee:expr, $arg:expr) => {
        #[yieldable]
        fn $name($param: $ty) -> (u64, u64) {
            (offload!($callee, $arg), $callee(1))
        }
    };
}

macro_rules! map_handler {
    ($name:ident, $closure:expr) => {
        #[yieldable]
        fn $name(x: Option<&'static str>) -> Option<usize> {
            offload!(Option::map, x, $closure)
        }
    };
}

// The callee is borrowed, as a plain call borrows it, and used again.
call_twice_handler!(through_fragment, f: Box<dyn Fn(u64) -> u64 + Send + Sync>, f, 2);
// The closure is typed by `Option::map`'s bound, as in the plain call.
map_handler!(map_through_fragment, |s| s.len());

#[yieldable]
fn computed_callees_keep_plain_call_scopes() -> Rows {
    let mut rows = Rows::new();
    // The argument's temporary lives to the end of the statement, as in the
    // plain call, though the callee is computed.
    let trimmed = offload!(trimmer(), &String::from(" x ")).len();
    row!(
        rows,
        "temporaries of a computed callee's arguments",
        trimmed,
        trimmer()(&String::from(" x ")).len()
    );
    row!(
        rows,
        "nine arguments, computed callee",
        offload!(
            if trimmed > 0 { nine } else { unreachable!() },
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9
        ),
        nine(1, 2, 3, 4, 5, 6, 7, 8, 9)
    );
    rows
}

#[yieldable]
fn callee_with_question_mark(found: bool) -> Option<u64> {
    Some(offload!(pick(found)?, 8) + 1)
}

#[test]
fn offload_of_closure_arguments_and_computed_callees_is_the_plain_call() {
    let (rows, _) = counted(callee_forms(false));
    for (name, offloaded, plain) in &rows {
        assert_eq!(offloaded, plain, "{name}");
    }
    let values: Vec<&str> = rows.iter().map(|(_, value, _)| value.as_str()).collect();
    assert_eq!(
        values,
        [
            "Some(2)", "[3, 2]", "\"a\"", "9", "16", "25", "36", "(11, 11)", "49"
        ]
    );
    // `return` in the callee returns from the handler, before any work.
    let (rows, jobs) = counted(callee_forms(true));
    assert_eq!((rows.len(), jobs), (8, 9));
    // `?` in the callee too.
    assert_eq!(counted(callee_with_question_mark(true)), (Some(65), 1));
    assert_eq!(counted(callee_with_question_mark(false)), (None, 0));
    // A field is called as a field even where a method has its name.
    let table = Table { f: square };
    assert_eq!(counted(table.field_callee(3)), ((9, 1003), 1));
    let (rows, jobs) = counted(computed_callees_keep_plain_call_scopes());
    for (name, offloaded, plain) in &rows {
        assert_eq!(offloaded, plain, "{name}");
    }
    assert_eq!((rows.len(), jobs), (2, 2));
    assert_eq!(counted(through_fragment(Box::new(|n| n * 3))), ((6, 3), 1));
    assert_eq!(counted(map_through_fragment(Some("four"))), (Some(4), 1));
}

#[yieldable]
fn generic_callee<F: Fn(u64) -> u64 + Sync>(f: F) -> u64 {
    offload!(f, 20) + f(1)
}

#[test]
fn offload_type_checks_as_the_plain_call() {
    let (rows, jobs) = counted(generic_calls(vec![1u32, 2, 3]));
    for (name, offloaded, plain) in &rows {
        assert_eq!(offloaded, plain, "{name}");
    }
    let values: Vec<&str> = rows.iter().map(|(_, value, _)| value.as_str()).collect();
    assert_eq!(
        values,
        [
            "6",
            "3",
            "9",
            "7",
            "5",
            "7",
            "0",
            "6",
            "3",
            "1024",
            "\"x\"",
            "4",
            "12",
            "12",
            "Some(3)",
            "Wrapped(5)",
            "\"abc\"",
            "9",
            "5",
            "(2, 5)",
            "\"once!\"",
            "102",
            "202"
        ]
    );
    assert_eq!(jobs, 24);
    // The closure called by reference is still usable after its `offload!`
    // (it was borrowed, as a plain call borrows it), which `generic_calls`
    // shows by calling it again for the plain twin.
    assert_eq!(counted(generic_callee(|n| n * 2)), (42, 1));

    // The same under every in-process strategy.
    let (exclusive, bounded, pool) = (Exclusive::new(), Bounded::new(2), Pool::new(2));
    #[cfg_attr(not(feature = "rayon"), allow(unused_mut))]
    let mut strategies: Vec<(&str, &dyn Apply)> = vec![
        ("Inline", &Inline),
        ("Exclusive", &exclusive),
        ("Bounded", &bounded),
        ("Pool", &pool),
    ];
    #[cfg(feature = "rayon")]
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    #[cfg(feature = "rayon")]
    strategies.push(("rayon", &rayon));
    for (name, strategy) in strategies {
        let run = generic_calls(vec![1u32, 2, 3]).run_with(strategy);
        assert_eq!(run, rows, "{name}");
        assert_eq!(generic_callee(|n| n * 2).run_with(strategy), 42, "{name}");
    }
}
