//! The targets ythread is held to, each checked against this run: met,
//! missed, or not judged when the machine was too busy with other work
//! while a cell it needs ran.

use crate::model::{Load, Results};
use crate::table::Table;
use crate::variants::{
    BOUNDED, EXCLUSIVE, Family, INLINE_NEW_THREADS, PLAIN, POOL, PROCESSES, TOKIO,
};

/// A cell measured while other processes (and the hypervisor) took more
/// than this share of the machine is not judged: its figure says as much
/// about them as about the server.
const NOISY: f64 = 0.25;

/// What a check found.
pub(crate) enum Outcome {
    Met,
    Missed,
    /// Not judged, and why.
    NotJudged(String),
}

/// One target, checked.
pub(crate) struct Verdict {
    /// Which figure of which rows, under which load.
    pub(crate) what: String,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) outcome: Outcome,
}

impl Outcome {
    fn label(&self) -> String {
        match self {
            Outcome::Met => "met".into(),
            Outcome::Missed => "MISSED".into(),
            Outcome::NotJudged(why) => format!("not judged: {why}"),
        }
    }
}

/// The verdicts as one table.
pub(crate) fn table(verdicts: &[Verdict]) -> String {
    let mut t = Table::new(["target", "goal", "measured", "verdict"]);
    for v in verdicts {
        t.row(vec![
            v.what.clone(),
            v.target.clone(),
            v.measured.clone(),
            v.outcome.label(),
        ]);
    }
    let mut out = String::new();
    t.write_to(&mut out);
    out
}

/// Every target this run has the cells for.
///
/// 1. n = 25000 (the connection dominates), closed loop, C = 1, 2, 4, 8:
///    every ythread row at most tokio + `spawn_blocking`'s wall time
///    (thread-per-connection at the price of a task).
/// 2. Work-dominated, closed loop, C >= 4: `Pool` and `Bounded` within 1.1x
///    the measured floor.
/// 3. Work-dominated, C = 64: `Bounded` keeps at least 97% of the cores
///    busy, `Exclusive` the one core it may use; `Bounded`'s mean latency
///    within 1.05x `Pool`'s; `Pool`'s and `Bounded`'s p99 at most 0.7x plain
///    threads'.
/// 4. Work-dominated, open loop at 70% and 90%: `Pool`'s and `Bounded`'s p99
///    at most 0.5x plain threads'.
/// 5. n = 25000: `Inline`, a thread per connection like plain threads,
///    costs nothing beside them (throughput ratio at most 1.05 over the
///    seed's columns).
/// 6. Work-dominated, C = 64: `Processes` within 1.1x `Pool`'s throughput
///    and 1.2x its p99.
pub(crate) fn check(r: &Results) -> Vec<Verdict> {
    let mut out = Vec::new();
    let seed = r.workloads.iter().position(|w| w.key == "seed");
    let work = r.workloads.iter().position(|w| w.key == "work");
    if let Some(seed) = seed {
        against_tokio(r, seed, &mut out);
    }
    if let Some(work) = work {
        near_the_floor(r, work, &mut out);
        busy_cores(r, work, &mut out);
        tails(r, work, &mut out);
    }
    if let Some(seed) = seed {
        inline_is_free(r, seed, &mut out);
    }
    if let Some(work) = work {
        processes_cost_little(r, work, &mut out);
    }
    out
}

/// A row's name without the crate's.
fn short(name: &str) -> &str {
    name.strip_prefix("ythread ").unwrap_or(name)
}

/// The noisiest of `cells` (workload, load, variant), if any was too noisy
/// to judge.
fn too_noisy(r: &Results, cells: &[(usize, Load, usize)]) -> Option<String> {
    cells
        .iter()
        .filter_map(|&(w, load, v)| {
            let share = r.cell(w, load, v)?.cpu?.others_share;
            (share > NOISY).then_some((share, load, v))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(share, load, v)| {
            format!(
                "others took {:.0}% of the machine ({}, {})",
                share * 100.0,
                short(r.variants[v].0),
                load.label()
            )
        })
}

/// An open-loop cell of `cells` whose client sent more than 5% off the
/// rate asked for, if any: its load is not the one it is labelled with.
fn off_rate(r: &Results, cells: &[(usize, Load, usize)]) -> Option<String> {
    cells.iter().find_map(|&(w, load, v)| {
        let open = r.cell(w, load, v)?.open.as_ref()?;
        let sent = open.sent_per_sec?;
        let off = sent / open.offered_per_sec - 1.0;
        (off.abs() > 0.05).then(|| {
            format!(
                "the client sent {sent:.0}/s of {:.0}/s asked ({}, {})",
                open.offered_per_sec,
                short(r.variants[v].0),
                load.label()
            )
        })
    })
}

fn outcome(r: &Results, cells: &[(usize, Load, usize)], ok: bool) -> Outcome {
    if let Some(why) = off_rate(r, cells) {
        return Outcome::NotJudged(why);
    }
    match too_noisy(r, cells) {
        Some(why) => Outcome::NotJudged(why),
        None if ok => Outcome::Met,
        None => Outcome::Missed,
    }
}

fn wall(r: &Results, w: usize, load: Load, v: usize) -> Option<f64> {
    r.cell(w, load, v).map(|c| c.report.wall.as_secs_f64())
}

fn p99_ms(r: &Results, w: usize, load: Load, v: usize) -> Option<f64> {
    r.cell(w, load, v)
        .map(|c| c.report.p99_us() as f64 / 1000.0)
}

/// Goal 1: every ythread row against tokio + `spawn_blocking`, the worst
/// of the seed's four columns.
fn against_tokio(r: &Results, seed: usize, out: &mut Vec<Verdict>) {
    let Some(tokio) = r.variant(TOKIO) else {
        return;
    };
    let ythread_rows = r.variants.iter().enumerate().filter(|(_, (name, family))| {
        *family != Family::Peer && name.starts_with("ythread") && *name != INLINE_NEW_THREADS
    });
    for (v, &(name, _)) in ythread_rows {
        let mut ratios = Vec::new();
        let mut cells = Vec::new();
        for c in [1, 2, 4, 8] {
            let load = Load::Closed(c);
            if let (Some(ours), Some(theirs)) = (wall(r, seed, load, v), wall(r, seed, load, tokio))
            {
                ratios.push((c, ours / theirs));
                cells.extend([(seed, load, v), (seed, load, tokio)]);
            }
        }
        out.extend(each_within(
            r,
            format!("n = 25000, C=1/2/4/8: {} / {TOKIO}, wall", short(name)),
            1.0,
            &ratios,
            &cells,
        ));
    }
}

/// Goal 2: `Pool` and `Bounded` near the floor at C >= 4, the worst column.
fn near_the_floor(r: &Results, work: usize, out: &mut Vec<Verdict>) {
    for name in [POOL, BOUNDED] {
        let Some(v) = r.variant(name) else { continue };
        let mut ratios = Vec::new();
        let mut cells = Vec::new();
        for &c in r.closed_clients.iter().filter(|&&c| c >= 4) {
            let load = Load::Closed(c);
            let (Some(ours), Some(floor)) = (wall(r, work, load, v), r.floor(work, c)) else {
                continue;
            };
            ratios.push((c, ours / floor.as_secs_f64()));
            cells.push((work, load, v));
        }
        out.extend(each_within(
            r,
            format!("work, C>=4: {} / the measured floor, wall", short(name)),
            1.1,
            &ratios,
            &cells,
        ));
    }
}

/// The verdict on ratios by closed-loop column (`(clients, ratio)`), each
/// of which must be at most `limit`; `None` if there are none.
fn each_within(
    r: &Results,
    what: String,
    limit: f64,
    ratios: &[(usize, f64)],
    cells: &[(usize, Load, usize)],
) -> Option<Verdict> {
    let worst = ratios.iter().map(|&(_, x)| x).max_by(f64::total_cmp)?;
    Some(Verdict {
        what,
        target: format!("<= {limit}x each"),
        measured: ratios
            .iter()
            .map(|(c, x)| format!("C={c}: {x:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        outcome: outcome(r, cells, worst <= limit),
    })
}

/// Goal 3: under contention (C = 64), `Bounded` keeps the cores busy and
/// `Exclusive` the one core it may use, and `Bounded`'s latency is `Pool`'s.
///
/// Busy is the process's CPU time (server and client threads, worker
/// processes) over the cell's wall time, per core it may use: what the
/// report's "cores busy" column shows. (Counting the work instead, from
/// `sumn`'s calibrated speed, fails on this machine, whose speed drifts by
/// up to 2x between the calibration and the cell.)
fn busy_cores(r: &Results, work: usize, out: &mut Vec<Verdict>) {
    let load = Load::Closed(64);
    let cores = r.machine.cores as f64;
    for (name, usable) in [(BOUNDED, cores), (EXCLUSIVE, 1.0)] {
        let Some(v) = r.variant(name) else { continue };
        let Some(cell) = r.cell(work, load, v) else {
            continue;
        };
        let Some(cpu) = cell.cpu else { continue };
        let busy = cpu.process_secs / (cell.report.wall.as_secs_f64() * usable);
        out.push(Verdict {
            what: format!(
                "work, C=64: {}, CPU over its {} core(s)",
                short(name),
                usable as usize
            ),
            target: ">= 97%".into(),
            measured: format!("{:.0}%", busy * 100.0),
            outcome: outcome(r, &[(work, load, v)], busy >= 0.97),
        });
    }
    if let (Some(pool), Some(bounded)) = (r.variant(POOL), r.variant(BOUNDED))
        && let (Some(p), Some(b)) = (r.cell(work, load, pool), r.cell(work, load, bounded))
    {
        let ratio = b.report.mean_us() / p.report.mean_us();
        out.push(Verdict {
            what: format!(
                "work, C=64: {} / {}, mean latency",
                short(BOUNDED),
                short(POOL)
            ),
            target: "<= 1.05x".into(),
            measured: format!("{ratio:.2}"),
            outcome: outcome(
                r,
                &[(work, load, pool), (work, load, bounded)],
                ratio <= 1.05,
            ),
        });
    }
    tail_against_plain(r, work, load, 0.7, out);
}

/// Goal 4: the tails under open load, at 70% and 90%.
fn tails(r: &Results, work: usize, out: &mut Vec<Verdict>) {
    for percent in [70, 90] {
        if r.open_percents.contains(&percent) {
            tail_against_plain(r, work, Load::Open(percent), 0.5, out);
        }
    }
}

/// `Pool`'s and `Bounded`'s p99 against plain threads' under `load`.
fn tail_against_plain(r: &Results, work: usize, load: Load, limit: f64, out: &mut Vec<Verdict>) {
    let Some(plain) = r.variant(PLAIN) else {
        return;
    };
    let Some(base) = p99_ms(r, work, load, plain) else {
        return;
    };
    for name in [POOL, BOUNDED] {
        let Some(v) = r.variant(name) else { continue };
        let Some(ours) = p99_ms(r, work, load, v) else {
            continue;
        };
        let ratio = ours / base;
        out.push(Verdict {
            what: format!("work, {}: {} / {PLAIN}, p99", load.label(), short(name)),
            target: format!("<= {limit}x"),
            measured: format!("{ratio:.2} ({ours:.0} / {base:.0} ms)"),
            outcome: outcome(r, &[(work, load, v), (work, load, plain)], ratio <= limit),
        });
    }
}

/// Goal 5: `Inline` costs nothing beside plain threads at n = 25000. Both
/// start a thread per connection (the `ThreadCache` rows do not, and would
/// win for that alone).
fn inline_is_free(r: &Results, seed: usize, out: &mut Vec<Verdict>) {
    let (Some(plain), Some(inline)) = (r.variant(PLAIN), r.variant(INLINE_NEW_THREADS)) else {
        return;
    };
    let (mut plain_total, mut inline_total) = (0.0, 0.0);
    let mut cells = Vec::new();
    for c in [1, 2, 4, 8] {
        let load = Load::Closed(c);
        if let (Some(p), Some(i)) = (wall(r, seed, load, plain), wall(r, seed, load, inline)) {
            plain_total += p;
            inline_total += i;
            cells.extend([(seed, load, plain), (seed, load, inline)]);
        }
    }
    if plain_total > 0.0 {
        // Same requests, so the throughput ratio is the wall ratio.
        let ratio = inline_total / plain_total;
        out.push(Verdict {
            what: format!(
                "n = 25000, C=1/2/4/8: {} / {PLAIN}, wall",
                short(INLINE_NEW_THREADS)
            ),
            target: "<= 1.05x".into(),
            measured: format!("{ratio:.2}"),
            outcome: outcome(r, &cells, ratio <= 1.05),
        });
    }
}

/// Goal 6: isolation costs little: `Processes` against `Pool` at C = 64.
fn processes_cost_little(r: &Results, work: usize, out: &mut Vec<Verdict>) {
    let load = Load::Closed(64);
    let (Some(pool), Some(processes)) = (r.variant(POOL), r.variant(PROCESSES)) else {
        return;
    };
    let (Some(pool_wall), Some(proc_wall), Some(pool_p99), Some(proc_p99)) = (
        wall(r, work, load, pool),
        wall(r, work, load, processes),
        p99_ms(r, work, load, pool),
        p99_ms(r, work, load, processes),
    ) else {
        return;
    };
    let cells = [(work, load, pool), (work, load, processes)];
    // Same requests, so the throughput ratio is the wall ratio.
    let throughput = proc_wall / pool_wall;
    out.push(Verdict {
        what: format!("work, C=64: {} / {}, wall", short(PROCESSES), short(POOL)),
        target: "<= 1.1x".into(),
        measured: format!("{throughput:.2}"),
        outcome: outcome(r, &cells, throughput <= 1.1),
    });
    let tail = proc_p99 / pool_p99;
    out.push(Verdict {
        what: format!("work, C=64: {} / {}, p99", short(PROCESSES), short(POOL)),
        target: "<= 1.2x".into(),
        measured: format!("{tail:.2}"),
        outcome: outcome(r, &cells, tail <= 1.2),
    });
}
