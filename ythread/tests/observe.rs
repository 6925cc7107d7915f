//! The `tracing` and `metrics` features on the strategies of this process:
//! each offload is a span, the child of the handler's, entered on the thread
//! that runs the work; its counts and times reach the installed recorder.
//! (Worker processes and `Remote`: `processes_observe.rs`,
//! `remote_observe.rs`.)

mod common;
/// What a `DebuggingRecorder` was given, added up.
#[path = "common/metric_totals.rs"]
#[allow(dead_code, unreachable_pub)] // Not every helper is used here.
mod metric_totals;
/// A `tracing` subscriber that keeps the span tree.
#[path = "common/spans.rs"]
#[allow(dead_code, unreachable_pub)] // Not every helper is used here.
mod spans;

use std::sync::atomic::{AtomicU64, Ordering};

use metrics_util::debugging::DebuggingRecorder;
use tracing::info_span;
use ythread::{
    Apply, Bounded, Exclusive, Inline, OffloadErrorKind, Pool, Yieldable, YieldableThread,
    apply_fn, offload, try_offload, yieldable,
};

use metric_totals::Totals;
use spans::Records;

/// A request id of its own for each test, to find its records among the
/// other tests'.
fn request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn digest(n: u64) -> u64 {
    tracing::info!(n, "digesting");
    (1..=n).sum()
}

#[yieldable]
fn handle(id: u64, n: u64) -> u64 {
    let span = info_span!("request", id);
    let _entered = span.enter();
    offload!(digest, n)
}

/// The `digesting` event of request `id`, and the names of the spans it
/// happened in.
fn digesting_in(records: &Records, id: u64) -> (&spans::EventRecord, Vec<&str>) {
    let event = records
        .events_saying("digesting")
        .into_iter()
        .find(|event| {
            records
                .scope(event)
                .iter()
                .any(|span| span.name == "request" && span.fields["id"] == id.to_string())
        })
        .unwrap_or_else(|| panic!("no `digesting` event inside request {id}: {records:#?}"));
    let names = records.scope_names(event);
    (event, names)
}

#[test]
fn the_work_runs_inside_the_offload_span_a_child_of_the_handlers_on_any_thread() {
    let recorder = spans::recorder();
    let strategies: Vec<(&str, Box<dyn Apply + Send + Sync>)> = vec![
        ("Inline", Box::new(Inline)),
        ("Exclusive", Box::new(Exclusive::new())),
        ("Bounded", Box::new(Bounded::new(2))),
        ("Pool", Box::new(Pool::new(2))),
        (
            "rayon",
            Box::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap(),
            ),
        ),
    ];
    for (name, strategy) in strategies {
        let id = request_id();
        let thread = YieldableThread::new()
            .apply(strategy)
            .spawn(handle(id, 10))
            .unwrap();
        assert_eq!(thread.join().unwrap(), 55);
        let records = recorder.records();
        let (event, scope) = digesting_in(&records, id);
        assert_eq!(scope, ["offload", "request"], "{name}: {event:#?}");
        let offload = records.scope(event)[0];
        assert_eq!(offload.target, "ythread");
        assert_eq!(offload.fields["strategy"], name);
        assert!(
            offload.fields["function"].ends_with("digest"),
            "{name}: {offload:#?}"
        );
        assert_eq!(offload.fields["outcome"], "ok", "{name}");
        for time in ["queue_wait_us", "run_us"] {
            let micros: u64 = offload.fields[time].parse().unwrap();
            assert!(micros < 60_000_000, "{name}: {time} = {micros}");
        }
        assert_eq!(event.fields["n"], "10");
    }
}

#[test]
fn the_work_runs_on_the_pools_thread_inside_the_handlers_span() {
    let recorder = spans::recorder();
    let id = request_id();
    let pool = Pool::new(1);
    let handler_thread = std::thread::current().id();
    #[yieldable]
    fn where_it_runs(id: u64) -> std::thread::ThreadId {
        let span = info_span!("request", id);
        let _entered = span.enter();
        offload!(|| {
            tracing::info!("running where?");
            std::thread::current().id()
        })
    }
    let ran_on = where_it_runs(id).run_with(&pool);
    assert_ne!(ran_on, handler_thread, "the pool's thread ran it");
    let records = recorder.records();
    let event = records
        .events_saying("running where?")
        .into_iter()
        .find(|event| {
            records
                .scope(event)
                .iter()
                .any(|span| span.fields.get("id") == Some(&id.to_string()))
        })
        .unwrap_or_else(|| {
            panic!("the event on the pool's thread is inside the request: {records:#?}")
        });
    assert_eq!(records.scope_names(event), ["offload", "request"]);
    // A closure is named by its type.
    assert!(records.scope(event)[0].fields["function"].contains("{{closure}}"));
}

#[test]
fn with_ythreads_spans_filtered_out_the_work_keeps_the_handlers_span() {
    let recorder = spans::recorder();
    let id = request_id();
    let pool = Pool::new(1);
    spans::hide_ythread_spans(|| assert_eq!(handle(id, 4).run_with(&pool), 10));
    let records = recorder.records();
    let (_, scope) = digesting_in(&records, id);
    assert_eq!(scope, ["request"]);

    // The handler's span is the program's: fields of the same names as the
    // offload's are left alone.
    #[yieldable]
    fn own_fields(id: u64) -> u64 {
        let span = info_span!(
            "mine",
            id,
            outcome = tracing::field::Empty,
            run_us = tracing::field::Empty
        );
        let _entered = span.enter();
        offload!(digest, 3)
    }
    let id = request_id();
    spans::hide_ythread_spans(|| assert_eq!(own_fields(id).run_with(&pool), 6));
    let records = recorder.records();
    let mine = records.spans_with("mine", "id", &id.to_string());
    assert_eq!(mine.len(), 1);
    assert_eq!(
        mine[0].fields.keys().collect::<Vec<_>>(),
        ["id"],
        "{mine:#?}"
    );
}

#[test]
fn outcomes_name_what_happened() {
    let recorder = spans::recorder();
    #[yieldable]
    fn failing(id: u64) -> Vec<Result<u64, OffloadErrorKind>> {
        let span = info_span!("outcomes", id);
        let _entered = span.enter();
        vec![
            try_offload!(|| 1).map_err(|e| e.kind()),
            common::quietly(|| try_offload!(|| -> u64 { panic!("on purpose") }))
                .map_err(|e| e.kind()),
        ]
    }
    let id = request_id();
    let results = failing(id).run_with(&Inline);
    assert_eq!(results, [Ok(1), Err(OffloadErrorKind::Panicked)]);
    // A strategy that drops its job: the work did not run.
    let dropping = apply_fn(|_job| {});
    let id_dropped = request_id();
    #[yieldable]
    fn one(id: u64) -> Result<u64, OffloadErrorKind> {
        let span = info_span!("outcomes", id);
        let _entered = span.enter();
        try_offload!(|| 1).map_err(|e| e.kind())
    }
    assert_eq!(
        one(id_dropped).run_with(&dropping),
        Err(OffloadErrorKind::NotRun)
    );

    let records = recorder.records();
    let outcomes = |id: u64| -> Vec<(String, String)> {
        records
            .spans
            .iter()
            .enumerate()
            .filter(|(i, span)| {
                span.name == "offload"
                    && records
                        .ancestry(*i)
                        .iter()
                        .any(|s| s.name == "outcomes" && s.fields["id"] == id.to_string())
            })
            .map(|(_, span)| {
                (
                    span.fields["strategy"].clone(),
                    span.fields["outcome"].clone(),
                )
            })
            .collect()
    };
    let inline = |o: &str| ("Inline".to_owned(), o.to_owned());
    assert_eq!(outcomes(id), [inline("ok"), inline("panicked")]);
    assert_eq!(
        outcomes(id_dropped),
        [("apply_fn".to_owned(), "not_run".to_owned())]
    );
    // Work that never started has no times.
    let dropped = records
        .spans
        .iter()
        .find(|span| {
            span.name == "offload" && span.fields.get("strategy").is_some_and(|s| s == "apply_fn")
        })
        .unwrap();
    assert!(!dropped.fields.contains_key("run_us"), "{dropped:#?}");
}

#[test]
fn offloads_are_counted_and_timed_per_strategy_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A local recorder: what the handler's thread records goes to it, and
    // the driver records on the handler's thread (this one: `run_with`).
    metrics::with_local_recorder(&recorder, || {
        ythread::describe_metrics();
        let pool = Pool::new(2);
        for n in 0..5 {
            assert_eq!(handle(0, n).run_with(&pool), (1..=n).sum::<u64>());
        }
        #[yieldable]
        fn sleepy() -> Result<(), OffloadErrorKind> {
            offload!(|| std::thread::sleep(std::time::Duration::from_millis(20)));
            common::quietly(|| try_offload!(|| panic!("on purpose"))).map_err(|e| e.kind())
        }
        assert_eq!(
            sleepy().run_with(&Bounded::new(1)),
            Err(OffloadErrorKind::Panicked)
        );
    });
    let totals = Totals::new(snapshotter);
    let offloads = |labels: &[(&str, &str)]| totals.value("ythread_offloads_total", labels);
    assert_eq!(offloads(&[("strategy", "Pool"), ("outcome", "ok")]), 5.0);
    assert_eq!(offloads(&[("strategy", "Bounded"), ("outcome", "ok")]), 1.0);
    assert_eq!(
        offloads(&[("strategy", "Bounded"), ("outcome", "panicked")]),
        1.0
    );
    assert_eq!(
        offloads(&[("strategy", "Pool"), ("outcome", "panicked")]),
        0.0
    );

    let bounded = [("strategy", "Bounded")];
    let run = totals.histogram("ythread_offload_run_seconds", &bounded);
    assert_eq!(run.len(), 2, "{run:?}");
    assert!(
        run.iter().any(|&s| s >= 0.020),
        "the 20 ms sleep is timed: {run:?}"
    );
    let waits = totals.histogram(
        "ythread_offload_queue_wait_seconds",
        &[("strategy", "Pool")],
    );
    assert_eq!(waits.len(), 5);
    assert!(waits.iter().all(|&s| (0.0..60.0).contains(&s)), "{waits:?}");

    assert_offload_series_described(&totals);
}

/// Each offload series has a description, for its `# HELP` line.
fn assert_offload_series_described(totals: &Totals) {
    for name in [
        "ythread_offloads_total",
        "ythread_offload_queue_wait_seconds",
        "ythread_offload_run_seconds",
    ] {
        assert!(
            totals.description(name).is_some(),
            "{name} is not described"
        );
    }
}

/// A recorder that comes after the first offloads is told what the series
/// are, with no call of `describe_metrics`.
#[test]
fn a_recorder_installed_later_gets_the_descriptions() {
    let (first, later) = (DebuggingRecorder::new(), DebuggingRecorder::new());
    let snapshotter = later.snapshotter();
    metrics::with_local_recorder(&first, || handle(0, 1).run_with(&Inline));
    metrics::with_local_recorder(&later, || handle(0, 2).run_with(&Inline));
    let totals = Totals::new(snapshotter);
    assert_eq!(
        totals.value(
            "ythread_offloads_total",
            &[("strategy", "Inline"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_offload_series_described(&totals);
}

#[test]
fn prometheus_reads_the_series_in_its_text_format() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let rendering = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        ythread::describe_metrics();
        let pool = Pool::new(1);
        for n in 0..3 {
            handle(0, n).run_with(&pool);
        }
    });
    let text = rendering.render();
    for line in [
        "# TYPE ythread_offloads_total counter",
        r#"ythread_offloads_total{strategy="Pool",outcome="ok"} 3"#,
        r#"ythread_offload_run_seconds_count{strategy="Pool"} 3"#,
        r#"ythread_offload_queue_wait_seconds_count{strategy="Pool"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(
        text.contains("# HELP ythread_offload_run_seconds "),
        "{text}"
    );
}
