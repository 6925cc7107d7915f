//! The handler side of the contract: values and types, borrowed work, panics
//! at `offload!` points, unwinding of dropped handlers, and the coroutine
//! staying on its thread.

mod common;

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use ythread::apply_fn;
use ythread::{Apply, Exclusive, GeneratorState, Inline, Pool, Yieldable, offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[yieldable]
fn typed(n: u64) -> (u64, String, Vec<u8>) {
    let sum: u64 = offload!(sumn, n);
    let text: String = offload!(|| format!("n={n}"));
    let bytes: Vec<u8> = offload!(|| vec![1, 2, 3]);
    (sum, text, bytes)
}

#[test]
fn offload_returns_the_typed_value_of_the_call_with_every_strategy() {
    for (name, apply) in common::strategies() {
        assert_eq!(
            typed(10).run_with(&*apply),
            (55, "n=10".to_owned(), vec![1, 2, 3]),
            "{name}"
        );
    }
}

#[yieldable]
fn borrows_locals(len: usize) -> (u64, Vec<u8>) {
    let mut buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    // Shared borrow of a local, passed as an argument.
    let before = offload!(checksum, &buf);
    // Mutable borrow of a local, captured by the closure form.
    offload!(|| buf.reverse());
    let slice = &buf[..3];
    let head = offload!(|| slice.to_vec());
    (before, head)
}

#[test]
fn work_may_borrow_the_handlers_locals() {
    let expected_sum: u64 = (0..10_000).map(|i| (i % 251) as u64).sum();
    let expected_head: Vec<u8> = (0..10_000usize)
        .rev()
        .take(3)
        .map(|i| (i % 251) as u8)
        .collect();
    for (name, apply) in common::strategies() {
        let (sum, head) = borrows_locals(10_000).run_with(&*apply);
        assert_eq!(sum, expected_sum, "{name}");
        assert_eq!(head, expected_head, "{name}");
    }
}

#[yieldable]
fn panics_in_work(message: String) -> u64 {
    offload!(|| -> u64 { panic!("{message}") })
}

#[test]
fn a_panic_in_work_reappears_in_the_handler_with_its_payload() {
    for (name, apply) in common::strategies() {
        let payload = panic::catch_unwind(AssertUnwindSafe(|| {
            panics_in_work(format!("boom from {name}")).run_with(&*apply)
        }))
        .expect_err(name);
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some(format!("boom from {name}").as_str())
        );
    }
}

#[derive(Debug, PartialEq)]
struct CustomPayload(u32);

#[yieldable]
fn catches_its_own_panic() -> (u32, u64) {
    // The panic surfaces at the `offload!` point, so the handler can catch it
    // there and carry on.
    let caught = panic::catch_unwind(|| offload!(|| panic::panic_any(CustomPayload(7))));
    let payload: Box<dyn Any + Send> = caught.expect_err("work panicked");
    let code = payload
        .downcast::<CustomPayload>()
        .expect("payload kept its type")
        .0;
    (code, offload!(sumn, 4))
}

#[test]
fn the_handler_can_catch_a_work_panic_at_its_offload_point_and_continue() {
    for (name, apply) in common::strategies() {
        assert_eq!(catches_its_own_panic().run_with(&*apply), (7, 10), "{name}");
    }
}

/// Counts drops, to observe unwinding.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[yieldable]
fn holds_locals(argument: DropCounter, drops: Arc<AtomicUsize>) -> u64 {
    let _local = DropCounter(Arc::clone(&drops));
    let _argument = argument;
    let first = offload!(sumn, 3);
    let _another = DropCounter(drops);
    first + offload!(sumn, 4)
}

#[test]
fn dropping_a_suspended_handler_runs_its_locals_destructors() {
    let drops = Arc::new(AtomicUsize::new(0));
    let mut generator = holds_locals(DropCounter(Arc::clone(&drops)), Arc::clone(&drops)).start();
    match generator.resume() {
        GeneratorState::Yielded(job) => job.run(),
        GeneratorState::Complete(_) => panic!("handler finished early"),
    }
    // Now suspended at the second offload, with three counters alive: the
    // argument and both locals.
    assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(generator);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

#[test]
fn dropping_a_handler_that_never_started_drops_its_arguments() {
    let drops = Arc::new(AtomicUsize::new(0));
    let generator = holds_locals(DropCounter(Arc::clone(&drops)), Arc::clone(&drops)).start();
    drop(generator);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // And without even starting it.
    drop(holds_locals(
        DropCounter(Arc::clone(&drops)),
        Arc::clone(&drops),
    ));
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn a_panicking_strategy_unwinds_the_suspended_handler_then_propagates() {
    let drops = Arc::new(AtomicUsize::new(0));
    let failing = apply_fn(|_job| panic!("strategy failed"));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        holds_locals(DropCounter(Arc::clone(&drops)), Arc::clone(&drops)).run_with(&failing)
    }));
    let payload = result.expect_err("the strategy's panic propagates");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"strategy failed"));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        2,
        "argument and first local dropped"
    );
}

#[test]
fn a_strategy_that_drops_the_job_makes_the_handler_panic_at_the_offload_point() {
    let drops = Arc::new(AtomicUsize::new(0));
    let dropping = apply_fn(|job| {
        let _unrun = job;
    });
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        holds_locals(DropCounter(Arc::clone(&drops)), Arc::clone(&drops)).run_with(&dropping)
    }));
    let payload = result.expect_err("unrun work is an error");
    let message = common::panic_text(&*payload);
    assert!(
        message.contains("without running the offloaded work"),
        "{message}"
    );
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn a_generator_steps_like_the_seeds_generator() {
    let mut generator = typed(3).start();
    let mut jobs = 0;
    let value = loop {
        match generator.resume() {
            GeneratorState::Yielded(job) => {
                jobs += 1;
                // Run it somewhere else, as a strategy would.
                thread::scope(|s| {
                    s.spawn(move || job.run());
                });
            }
            GeneratorState::Complete(value) => break value,
        }
    };
    assert_eq!(jobs, 3);
    assert_eq!(value.0, 6);
    assert!(generator.is_complete());
}

thread_local! {
    static MARK: Cell<u32> = const { Cell::new(0) };
}

#[yieldable]
fn stays_on_its_thread(rounds: u32) -> bool {
    let home = thread::current().id();
    for round in 1..=rounds {
        MARK.with(|m| m.set(round));
        let worker = offload!(|| thread::current().id());
        let _ = worker;
        if thread::current().id() != home || MARK.with(Cell::get) != round {
            return false;
        }
    }
    true
}

#[test]
fn the_handler_never_leaves_its_thread_and_keeps_its_thread_locals() {
    let pool = Pool::new(2);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            ythread::YieldableThread::new()
                .apply(pool.clone())
                .spawn(stays_on_its_thread(50))
                .unwrap()
        })
        .collect();
    for handle in handles {
        assert!(handle.join().unwrap());
    }
}

#[yieldable]
fn where_work_runs() -> (thread::ThreadId, thread::ThreadId) {
    (thread::current().id(), offload!(|| thread::current().id()))
}

#[test]
fn inline_runs_work_on_the_driving_thread_and_pool_on_a_worker() {
    let (handler, work) = where_work_runs().run_with(&Inline);
    assert_eq!(handler, work);
    let (handler, work) = where_work_runs().run_with(&Pool::new(1));
    assert_ne!(handler, work);
}

#[yieldable]
fn panics_itself() -> u64 {
    let x = offload!(sumn, 2);
    if x == 3 {
        panic!("handler panicked after offload");
    }
    x
}

#[test]
fn a_panic_in_the_handler_itself_propagates_to_the_driver() {
    let payload = panic::catch_unwind(|| panics_itself().run_with(&Pool::new(1))).unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"handler panicked after offload")
    );
}

#[test]
fn plain_closures_are_yieldable_and_just_run() {
    assert_eq!((|| 40 + 2).run(), 42);
    assert_eq!((|| "plain").run_with(&Pool::new(1)), "plain");
}

#[test]
fn the_apply_trait_is_object_safe() {
    let strategies: Vec<Box<dyn Apply + Send + Sync>> = vec![
        Box::new(Inline),
        Box::new(Exclusive::new()),
        Box::new(Pool::new(1)),
    ];
    for apply in &strategies {
        assert_eq!(typed(4).run_with(apply.as_ref()).0, 10);
    }
}

#[yieldable]
fn ignores_its_arguments(_guard: DropCounter, _: DropCounter, (_a, _b): (DropCounter, u8)) -> u64 {
    offload!(sumn, 3)
}

#[test]
fn arguments_the_body_never_uses_live_until_the_handler_ends() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = || DropCounter(Arc::clone(&drops));
    let mut generator = ignores_its_arguments(counter(), counter(), (counter(), 1)).start();
    assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
    // Suspended at the offload: as in a plain function, the arguments are alive.
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(generator);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

struct Fields {
    used: u64,
    _only_dropped: DropCounter,
}

#[yieldable]
fn uses_one_field(fields: Fields) -> u64 {
    offload!(sumn, fields.used)
}

#[test]
fn an_argument_is_kept_whole_even_if_the_body_uses_one_field() {
    let drops = Arc::new(AtomicUsize::new(0));
    let fields = Fields {
        used: 4,
        _only_dropped: DropCounter(Arc::clone(&drops)),
    };
    let mut generator = uses_one_field(fields).start();
    assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(generator);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}
