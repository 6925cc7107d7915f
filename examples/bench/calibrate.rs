//! The start-up calibration: how fast `sumn` runs on this machine, alone and
//! with every core busy, and the `n` that makes one request cost the
//! requested CPU time.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use ythread_demo::{SEED_N, cores, sumn};

use crate::model::Calibration;

/// Iterations of `sumn` per timed chunk: a fraction of a millisecond.
const CHUNK: u64 = 200_000;

/// Finds `n` such that `sumn(n)` takes `target` of CPU time, and how long
/// it takes alone and with every core busy.
///
/// `sumn` costs the same per iteration whatever `n`, so its speed is
/// measured on short chunks (a fraction of a millisecond): the best chunk of
/// a short window is one nobody preempted. The speed of a virtual CPU also
/// drifts with what the host runs beside it, so windows are spread over
/// about half a second and the median window is the typical speed.
pub(crate) fn calibrate(target: Duration) -> Calibration {
    let alone = windows();
    let busy: Vec<f64> = thread::scope(|s| {
        let threads: Vec<_> = (0..cores()).map(|_| s.spawn(windows)).collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a calibration thread panicked"))
            .collect()
    });
    let range = alone
        .iter()
        .chain(&busy)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let (alone, busy) = (median(alone), median(busy));
    let n = (target.as_secs_f64() / alone).clamp(1e3, 1e12) as u64;
    let cost = |n: u64, per: f64| Duration::from_secs_f64(n as f64 * per);
    Calibration {
        n,
        single: cost(n, alone),
        parallel: cost(n, busy),
        seed: cost(SEED_N, alone),
        ns_per_iteration: (range.0 * 1e9, range.1 * 1e9),
    }
}

/// The speed of 15 windows about 25 ms apart, seconds per iteration.
fn windows() -> Vec<f64> {
    (0..15)
        .map(|_| {
            let w = window();
            thread::sleep(Duration::from_millis(25));
            w
        })
        .collect()
}

/// The best speed of 20 chunks in a row, seconds per iteration.
fn window() -> f64 {
    (0..20)
        .map(|_| {
            let start = Instant::now();
            black_box(sumn(black_box(CHUNK)));
            start.elapsed().as_secs_f64() / CHUNK as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
