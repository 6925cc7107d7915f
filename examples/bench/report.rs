//! The report: Markdown tables (written as `report.md`), the target checks
//! first, the short summary the terminal shows, and a CSV of every cell.

use std::fmt::Write as _;

use crate::model::{Load, Results, ms};
use crate::table::Table;
use crate::verdict;

/// The Python seed's figures (Python 2.7, 4-core Mac Pro, n = 25000, 1000
/// requests, seconds), from the blog post, for reference beside ours.
const SEED_FIGURES: [(&str, [f64; 4]); 4] = [
    ("plain threads", [4.35, 7.81, 9.53, 10.21]),
    ("yieldable, default apply", [4.96, 7.83, 9.26, 9.96]),
    ("exclusive apply", [4.56, 5.75, 5.75, 5.82]),
    ("process pool", [4.51, 2.30, 1.45, 1.60]),
];

/// The seed's columns.
const SEED_CLIENTS: [usize; 4] = [1, 2, 4, 8];

/// The whole report as Markdown.
pub(crate) fn render(r: &Results) -> String {
    let mut out = String::new();
    header(&mut out, r);
    let _ = writeln!(out, "## Targets\n");
    out.push_str(&verdict::table(&verdict::check(r)));
    seed_tables(&mut out, r);
    same_work(&mut out, r);
    latency_tables(&mut out, r);
    if !r.warnings.is_empty() {
        let _ = writeln!(out, "## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(out, "- {w}");
        }
        out.push('\n');
    }
    out
}

/// What the terminal shows: one line on the run, then the verdict table.
/// The tables behind each verdict are in the report.
pub(crate) fn summary(r: &Results) -> String {
    let shares: Vec<f64> = r
        .cells
        .iter()
        .filter_map(|c| c.cpu.map(|u| u.others_share))
        .collect();
    let others = if shares.is_empty() {
        String::new()
    } else {
        format!(
            "; other processes took {:.0}% of the machine on average",
            shares.iter().sum::<f64>() / shares.len() as f64 * 100.0
        )
    };
    let mut out = format!(
        "ythread benchmark ({} run), {}, {} cores; took {:.0} s; {} wrong answers, {} failed{others}\n\n",
        if r.full { "full" } else { "quick" },
        r.date,
        r.machine.cores,
        r.elapsed.as_secs_f64(),
        r.cells.iter().map(|c| c.report.wrong).sum::<u64>(),
        r.cells.iter().map(|c| c.report.errors).sum::<u64>()
    );
    out.push_str(&verdict::table(&verdict::check(r)));
    out
}

fn header(out: &mut String, r: &Results) {
    let c = &r.calibration;
    let m = &r.machine;
    let _ = writeln!(
        out,
        "# ythread benchmark ({} run)\n",
        if r.full { "full" } else { "quick" }
    );
    let _ = writeln!(out, "- date: {} (UTC)", r.date);
    let _ = writeln!(out, "- command: `{}`", r.command);
    let _ = writeln!(
        out,
        "- machine: {} cores, {}, Linux {}",
        m.cores, m.cpu_model, m.kernel
    );
    let _ = writeln!(
        out,
        "- calibration: work-dominated n = {} takes {:.2} ms alone, {:.2} ms with every core busy, at the typical speed; the seed's n = 25000 takes {:.1} µs. The speed drifted between {:.2} and {:.2} ns per iteration while calibrating",
        c.n,
        ms(c.single),
        ms(c.parallel),
        c.seed.as_secs_f64() * 1e6,
        c.ns_per_iteration.0,
        c.ns_per_iteration.1,
    );
    let _ = writeln!(
        out,
        "- client threads: {}",
        r.client_nice.map_or("normal priority".into(), |n| format!(
            "nice {n}, so that the load generator is not starved by the server it measures"
        ))
    );
    for (w, workload) in r.workloads.iter().enumerate() {
        let _ = writeln!(
            out,
            "- {}: {} requests per closed-loop cell, {} per open-loop cell, median of {} run(s); 100% load = {:.0} requests/s (plain threads' median closed-loop throughput, 2 to 64 clients)",
            workload.key,
            workload.closed_requests,
            workload.open_requests,
            workload.repeats,
            r.capacity.get(w).copied().unwrap_or(0.0)
        );
    }
    let shares: Vec<f64> = r
        .cells
        .iter()
        .filter_map(|c| c.cpu.map(|u| u.others_share))
        .collect();
    let fmt_load = |l: Option<f64>| l.map_or("unknown".into(), |l| format!("{l:.2}"));
    let _ = write!(
        out,
        "- quiet: 1-minute load average {} before, {} after",
        fmt_load(r.load_before),
        fmt_load(r.load_after)
    );
    if !shares.is_empty() {
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        let max = shares.iter().copied().fold(0.0, f64::max);
        let _ = write!(
            out,
            "; other processes (and the hypervisor) took {:.1}% of the machine on average during the cells, {:.1}% at worst",
            mean * 100.0,
            max * 100.0
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "- took {:.0} s; every answer checked: {} wrong, {} failed\n",
        r.elapsed.as_secs_f64(),
        r.cells.iter().map(|c| c.report.wrong).sum::<u64>(),
        r.cells.iter().map(|c| c.report.errors).sum::<u64>()
    );
}

fn seed_tables(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## The seed's table\n");
    for (w, workload) in r.workloads.iter().enumerate() {
        let _ = writeln!(
            out,
            "### {}\n\nWall time in seconds for {} requests, one fresh connection each, split across 1/2/4/8 client threads (closed loop).\n",
            workload.title, workload.closed_requests
        );
        let mut t = Table::new(["server", "1 client", "2", "4", "8"]);
        for (v, &(name, _)) in r.variants.iter().enumerate() {
            let mut row = vec![name.to_owned()];
            for c in SEED_CLIENTS {
                row.push(r.cell(w, Load::Closed(c), v).map_or("-".into(), |cell| {
                    format!("{:.3}", cell.report.wall.as_secs_f64())
                }));
            }
            t.row(row);
        }
        let mut measured =
            vec!["*floor, measured: sumn alone on min(C, cores) threads*".to_owned()];
        let mut computed =
            vec!["*floor, computed: requests × one sumn / min(C, cores)*".to_owned()];
        for c in SEED_CLIENTS {
            measured.push(
                r.floor(w, c)
                    .map_or("-".into(), |f| format!("*{:.3}*", f.as_secs_f64())),
            );
            computed.push(format!("*{:.3}*", computed_floor(r, w, c)));
        }
        t.row(measured);
        t.row(computed);
        t.write_to(out);
    }
    let _ = writeln!(
        out,
        "### For reference: the Python seed\n\nPython 2.7, 4-core Mac Pro, n = 25000, 1000 requests, seconds (from the blog post). One request took about 4.4 ms of interpreter time there, which is why the work-dominated table above, not the n = 25000 one, is the seed's proportion.\n"
    );
    let mut t = Table::new(["server", "1 client", "2", "4", "8"]);
    for (name, secs) in SEED_FIGURES {
        let mut row = vec![name.to_owned()];
        row.extend(secs.iter().map(|s| format!("{s:.2}")));
        t.row(row);
    }
    t.write_to(out);
}

/// Whether every server's `sumn` costs the same: the CPU time of one
/// request with one client, work-dominated minus n = 25000 (which is almost
/// only the connection), divided by the iterations in between.
///
/// Every row calls the one out-of-line `ythread_demo::sumn`, so the rows
/// should agree within the machine's drift. A row far from the others
/// burned CPU beside the loop while its work ran (a strategy that spins,
/// say), or met a slower spell of the machine. (Before `sumn` was
/// `#[inline(never)]`, each caller had its own copy, and where a copy landed
/// in memory decided its speed, by up to 2x; this table is how that showed.)
fn same_work(out: &mut String, r: &Results) {
    let (Some(seed), Some(work)) = (
        r.workloads.iter().position(|w| w.key == "seed"),
        r.workloads.iter().position(|w| w.key == "work"),
    ) else {
        return;
    };
    let per_request = |w: usize, v: usize| {
        let cell = r.cell(w, Load::Closed(1), v)?;
        let cpu = cell.cpu?;
        Some(cpu.process_secs / cell.report.requests.max(1) as f64)
    };
    let extra = r.workloads[work]
        .n
        .saturating_sub(r.workloads[seed].n)
        .max(1) as f64;
    let calibrated = r.calibration.single.as_secs_f64() / r.workloads[work].n as f64 * 1e9;
    let _ = writeln!(
        out,
        "## Does every server do the same work?\n\nCPU time of the whole process per request with one client (connection, server and client included), and what the work-dominated request costs beyond the n = 25000 one, per iteration of sumn. The calibration's typical speed was {calibrated:.2} ns per iteration. Every row runs the same copy of the loop, so the rows should agree within the machine's drift; a row far from the others burned CPU beside the loop while its work ran, or met a slower spell of the machine.\n"
    );
    let mut t = Table::new([
        "server",
        "n = 25000 µs/req",
        "work-dominated µs/req",
        "ns per sumn iteration",
        "vs the median row",
    ]);
    let rows: Vec<(&str, f64, f64, f64)> = r
        .variants
        .iter()
        .enumerate()
        .filter_map(|(v, &(name, _))| {
            let (a, b) = (per_request(seed, v)?, per_request(work, v)?);
            Some((name, a, b, (b - a) / extra * 1e9))
        })
        .collect();
    let mut speeds: Vec<f64> = rows.iter().map(|row| row.3).collect();
    speeds.sort_by(f64::total_cmp);
    let median = speeds.get(speeds.len() / 2).copied().unwrap_or(0.0);
    for (name, a, b, per_iteration) in rows {
        let ratio = per_iteration / median;
        t.row(vec![
            name.to_owned(),
            format!("{:.0}", a * 1e6),
            format!("{:.0}", b * 1e6),
            format!("{per_iteration:.2}"),
            format!(
                "{ratio:.2}x{}",
                if (0.8..=1.25).contains(&ratio) {
                    ""
                } else {
                    " (!)"
                }
            ),
        ]);
    }
    t.write_to(out);
    let _ = writeln!(
        out,
        "(!) marks a row more than 25% off the median: it burned CPU beside the loop, or the machine was slower while it ran.\n"
    );
}

fn latency_tables(out: &mut String, r: &Results) {
    let _ = writeln!(out, "## Latency\n");
    let loads = r.loads();
    for (w, workload) in r.workloads.iter().enumerate() {
        let _ = writeln!(out, "### {}\n", workload.title);
        let _ = writeln!(
            out,
            "p99 latency (ms) by load; C = closed-loop clients, open = Poisson arrivals at a share of {:.0} requests/s.\n",
            r.capacity[w]
        );
        let mut headers = vec!["server".to_owned()];
        headers.extend(loads.iter().map(|l| l.label()));
        let mut t = Table::new(headers);
        for (v, &(name, _)) in r.variants.iter().enumerate() {
            let mut row = vec![name.to_owned()];
            for &load in &loads {
                row.push(
                    r.cell(w, load, v)
                        .map_or("-".into(), |c| fmt_ms(c.report.p99_us())),
                );
            }
            t.row(row);
        }
        t.write_to(out);
        for &load in &loads {
            let what = match load {
                Load::Closed(c) => format!(
                    "closed loop, {c} clients, {} requests",
                    workload.closed_requests
                ),
                Load::Open(p) => format!(
                    "open loop, {p}% load = {:.0} requests/s offered, {} requests",
                    r.capacity[w] * f64::from(p) / 100.0,
                    workload.open_requests
                ),
            };
            let _ = writeln!(out, "#### {}: {what}\n", workload.key);
            let mut headers = vec![
                "server",
                "wall s",
                "req/s",
                "mean ms",
                "p50 ms",
                "p99 ms",
                "max ms",
                "wrong",
                "CPU µs/req",
                "cores busy",
                "SYN drops",
            ];
            if matches!(load, Load::Open(_)) {
                headers.extend(["sent req/s", "send lag p99 ms", "senders"]);
            }
            let mut t = Table::new(headers);
            for (v, &(name, _)) in r.variants.iter().enumerate() {
                let Some(cell) = r.cell(w, load, v) else {
                    continue;
                };
                let rep = &cell.report;
                let mut row = vec![
                    name.to_owned(),
                    format!("{:.3}", rep.wall.as_secs_f64()),
                    format!("{:.0}", rep.requests_per_sec()),
                    fmt_ms(rep.mean_us() as u64),
                    fmt_ms(rep.p50_us()),
                    fmt_ms(rep.p99_us()),
                    fmt_ms(rep.max_us()),
                    (rep.wrong + rep.errors).to_string(),
                    cell.cpu.map_or("-".into(), |u| {
                        format!("{:.0}", u.process_secs * 1e6 / rep.requests.max(1) as f64)
                    }),
                    cell.cpu.map_or("-".into(), |u| {
                        let capacity = rep.wall.as_secs_f64() * r.machine.cores as f64;
                        format!("{:.0}%", 100.0 * u.process_secs / capacity.max(1e-9))
                    }),
                    cell.listen_drops.map_or("-".into(), |d| d.to_string()),
                ];
                if let Some(open) = &cell.open {
                    row.push(open.sent_per_sec.map_or("-".into(), |r| format!("{r:.0}")));
                    row.push(fmt_ms(open.send_lag_us.value_at_quantile(0.99)));
                    row.push(open.senders.to_string());
                }
                t.row(row);
            }
            t.write_to(out);
        }
    }
    let _ = writeln!(
        out,
        "CPU µs/req is the whole process's CPU time (server and client threads, and worker processes) per request, at the 10 ms resolution of /proc, and cores busy the same time over wall time × cores: a server that leaves cores idle while requests wait shows there; wrong counts wrong answers plus failed requests; SYN drops are connections the kernel dropped because the server's listen queue (1024 connections, `ythread_demo::server::bind`) was full, each costing its client a one-second retransmission. Latency runs from connect to close in the closed loop, and from the scheduled arrival time in the open loop (send lag is how late the client itself was).\n"
    );
}

/// The floor of a closed-loop cell from the calibration: its CPU work at
/// the typical speed, spread over `min(clients, cores)` cores.
fn computed_floor(r: &Results, w: usize, clients: usize) -> f64 {
    let workload = &r.workloads[w];
    workload.work.as_secs_f64() * workload.closed_requests as f64
        / clients.min(r.machine.cores) as f64
}

/// A latency in µs as milliseconds, with the digits that matter.
fn fmt_ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Every cell, one line each.
pub(crate) fn csv(r: &Results) -> String {
    let mut out = String::from(
        "workload,n,load,clients,percent,server,family,requests,wrong,errors,retries,wall_s,requests_per_s,mean_us,p50_us,p99_us,p999_us,max_us,offered_per_s,sent_per_s,send_lag_p99_us,senders,cpu_s,others_share,listen_drops\n",
    );
    for cell in &r.cells {
        let workload = &r.workloads[cell.workload];
        let (name, family) = r.variants[cell.variant];
        let rep = &cell.report;
        let (kind, clients, percent) = match cell.load {
            Load::Closed(c) => ("closed", c.to_string(), String::new()),
            Load::Open(p) => ("open", String::new(), p.to_string()),
        };
        let opt = |x: Option<String>| x.unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{kind},{clients},{percent},{name},{family:?},{},{},{},{},{:.6},{:.1},{:.1},{},{},{},{},{},{},{},{},{},{},{}",
            workload.key,
            workload.n,
            rep.requests,
            rep.wrong,
            rep.errors,
            rep.retries,
            rep.wall.as_secs_f64(),
            rep.requests_per_sec(),
            rep.mean_us(),
            rep.p50_us(),
            rep.p99_us(),
            rep.p999_us(),
            rep.max_us(),
            opt(cell
                .open
                .as_ref()
                .map(|o| format!("{:.1}", o.offered_per_sec))),
            opt(cell
                .open
                .as_ref()
                .and_then(|o| o.sent_per_sec)
                .map(|r| format!("{r:.1}"))),
            opt(cell
                .open
                .as_ref()
                .map(|o| o.send_lag_us.value_at_quantile(0.99).to_string())),
            opt(cell.open.as_ref().map(|o| o.senders.to_string())),
            opt(cell.cpu.map(|u| format!("{:.2}", u.process_secs))),
            opt(cell.cpu.map(|u| format!("{:.3}", u.others_share))),
            opt(cell.listen_drops.map(|d| d.to_string())),
        );
    }
    out
}
