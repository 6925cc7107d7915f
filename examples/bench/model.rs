//! What the benchmark measures and what it found: the loads, the workloads,
//! one measured cell, the calibration, the floors, and [`Results`], which the
//! report and the plot read.

use std::time::Duration;

use ythread_demo::client::LoadReport;

use crate::openloop::OpenStats;
use crate::sys::{CpuUse, Machine};
use crate::variants::Family;

/// How a cell loads the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// The seed's client: this many threads, each waiting for its answer
    /// before sending the next request.
    Closed(usize),
    /// Poisson arrivals at this percentage of the workload's capacity.
    Open(u32),
}

impl Load {
    /// The column heading: `C=8`, `open 90%`.
    pub(crate) fn label(self) -> String {
        match self {
            Load::Closed(c) => format!("C={c}"),
            Load::Open(p) => format!("open {p}%"),
        }
    }
}

/// What the benchmark asks the servers to compute, and how often.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Short name, used in the CSV.
    pub(crate) key: &'static str,
    /// The heading of the workload's tables.
    pub(crate) title: String,
    /// What each request asks: `sumn(n)`.
    pub(crate) n: u64,
    /// CPU time of one `sumn(n)` on an idle core.
    pub(crate) work: Duration,
    /// Requests per closed-loop cell.
    pub(crate) closed_requests: u64,
    /// Requests per open-loop cell.
    pub(crate) open_requests: u64,
    /// Runs per cell; the report keeps the median one. Short cells are noisy
    /// on a shared machine.
    pub(crate) repeats: usize,
}

impl Workload {
    /// A short title, for the plot's panels: `work (n = 11990407)`.
    pub(crate) fn key_title(&self) -> String {
        format!("{} (n = {})", self.key, self.n)
    }
}

/// One measured cell: a workload, a load, a server.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    /// Index into [`Results::workloads`].
    pub(crate) workload: usize,
    pub(crate) load: Load,
    /// Index into [`Results::variants`].
    pub(crate) variant: usize,
    pub(crate) report: LoadReport,
    /// What the open loop measured beyond `report`; `None` in a closed loop.
    pub(crate) open: Option<OpenStats>,
    /// CPU use during the cell, if `/proc` could be read.
    pub(crate) cpu: Option<CpuUse>,
    /// Connections dropped because a listen queue was full (machine-wide).
    pub(crate) listen_drops: Option<u64>,
}

/// The start-up measurement of `sumn`'s speed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Calibration {
    /// The work-dominated `n`.
    pub(crate) n: u64,
    /// One `sumn(n)` alone on the machine, at the typical speed.
    pub(crate) single: Duration,
    /// One `sumn(n)` while every core runs one, at the typical speed: more
    /// than `single` if the cores share execution units or a power budget.
    pub(crate) parallel: Duration,
    /// One `sumn(SEED_N)`.
    pub(crate) seed: Duration,
    /// The fastest and slowest speed seen, ns per iteration of `sumn`: how
    /// much the machine's speed drifts.
    pub(crate) ns_per_iteration: (f64, f64),
}

/// The CPU work of a cell alone, no network, no server: `requests` calls
/// of `sumn(n)` split across `threads` threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    /// Index into [`Results::workloads`].
    pub(crate) workload: usize,
    /// The closed loop's client threads.
    pub(crate) clients: usize,
    /// The median measured wall time.
    pub(crate) wall: Duration,
}

/// Everything the report needs.
#[derive(Debug)]
pub(crate) struct Results {
    /// Whether this was the full matrix (`--full`) or the quick one.
    pub(crate) full: bool,
    /// The command that reproduces the run.
    pub(crate) command: String,
    /// The day of the run, UTC, `YYYY-MM-DD`.
    pub(crate) date: String,
    pub(crate) machine: Machine,
    pub(crate) calibration: Calibration,
    pub(crate) workloads: Vec<Workload>,
    /// The closed loops' client threads, one column each.
    pub(crate) closed_clients: Vec<usize>,
    /// The open loops' loads, in percent of the capacity, one column each.
    pub(crate) open_percents: Vec<u32>,
    /// The rows, in table order: name and family.
    pub(crate) variants: Vec<(&'static str, Family)>,
    /// The arrival rate 100% stands for, per workload, requests/s.
    pub(crate) capacity: Vec<f64>,
    pub(crate) cells: Vec<Cell>,
    /// The measured floor of each closed-loop cell.
    pub(crate) floors: Vec<Floor>,
    /// The client threads' nice value, if it could be set.
    pub(crate) client_nice: Option<i32>,
    /// The 1-minute load average before the run, if known.
    pub(crate) load_before: Option<f64>,
    /// The 1-minute load average after the run, if known.
    pub(crate) load_after: Option<f64>,
    /// How long the whole run took.
    pub(crate) elapsed: Duration,
    /// What went wrong along the way, for the report's last section.
    pub(crate) warnings: Vec<String>,
}

impl Results {
    /// The cell of `variant` under `load` in `workload`, if it ran.
    pub(crate) fn cell(&self, workload: usize, load: Load, variant: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.workload == workload && c.load == load && c.variant == variant)
    }

    /// The measured floor of a closed-loop cell with `clients` clients.
    pub(crate) fn floor(&self, workload: usize, clients: usize) -> Option<Duration> {
        self.floors
            .iter()
            .find(|f| f.workload == workload && f.clients == clients)
            .map(|f| f.wall)
    }

    /// The index of the row called `name`, if it ran.
    pub(crate) fn variant(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|&(n, _)| n == name)
    }

    /// Every load, closed loops first: the latency tables' columns.
    pub(crate) fn loads(&self) -> Vec<Load> {
        self.closed_clients
            .iter()
            .map(|&c| Load::Closed(c))
            .chain(self.open_percents.iter().map(|&p| Load::Open(p)))
            .collect()
    }
}

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
