//! What the report says about the machine, read from `/proc` (Linux); on
//! other systems the fields say "unknown" and CPU accounting is absent.

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The machine the benchmark ran on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
}

impl Machine {
    pub(crate) fn detect() -> Machine {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cores: ythread_demo::cores(),
            cpu_model,
            kernel,
        }
    }
}

/// The 1-minute load average, if known.
pub(crate) fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second of `/proc/*/stat`: `USER_HZ`, 100 on every Linux
/// architecture that matters here.
const USER_HZ: f64 = 100.0;

/// CPU time used so far by the whole machine (busy, including time stolen
/// by the hypervisor) and by this process, to tell how much of the machine
/// others used during a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    machine_busy: f64,
    process: f64,
    at: std::time::Instant,
}

/// CPU use over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// Seconds of CPU this process (server and client threads) and its
    /// child processes (worker processes) used.
    pub(crate) process_secs: f64,
    /// Share of the machine (all cores) that other processes and the
    /// hypervisor took, 0 to 1.
    pub(crate) others_share: f64,
}

impl CpuTimes {
    /// The times so far; `None` if `/proc` cannot be read.
    pub(crate) fn now() -> Option<CpuTimes> {
        let at = std::time::Instant::now();
        Some(CpuTimes {
            machine_busy: machine_busy_seconds()?,
            process: process_cpu_seconds()?,
            at,
        })
    }

    /// The use from `earlier` to `self`, on a machine of `cores` cores.
    pub(crate) fn since(&self, earlier: &CpuTimes, cores: usize) -> CpuUse {
        let process_secs = (self.process - earlier.process).max(0.0);
        let wall = (self.at - earlier.at).as_secs_f64();
        let others = (self.machine_busy - earlier.machine_busy - process_secs).max(0.0);
        let others_share = if wall > 0.0 {
            (others / (wall * cores as f64)).min(1.0)
        } else {
            0.0
        };
        CpuUse {
            process_secs,
            others_share,
        }
    }
}

/// CPU time the whole machine spent busy so far, in seconds: every core's,
/// from the first line of `/proc/stat`.
fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already
    // counted in user).
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy / USER_HZ)
}

/// User plus system CPU time of this process so far, in seconds, from
/// `/proc/self/stat`, with that of its child processes (the `Processes`
/// row's workers, where its work runs): those reaped, and those alive.
/// (ythread's `benches/busy.rs` has a copy of the parsing: benches cannot
/// use this package.)
fn process_cpu_seconds() -> Option<f64> {
    let own = stat_fields("/proc/self/stat")?;
    // utime, stime, cutime, cstime are fields 14 to 17 of the line, 12 to 15
    // here.
    let mut ticks = own.get(11)? + own.get(12)? + own.get(13)? + own.get(14)?;
    for child in live_children() {
        if let Some(fields) = stat_fields(&format!("/proc/{child}/stat")) {
            ticks += fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0);
        }
    }
    Some(ticks / USER_HZ)
}

/// The fields of a `/proc/<pid>/stat` line after the command name (which
/// may hold spaces).
fn stat_fields(path: &str) -> Option<Vec<f64>> {
    let line = fs::read_to_string(path).ok()?;
    let after_name = &line[line.rfind(')')? + 2..];
    Some(
        after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect(),
    )
}

/// The process ids of this process's children, from every thread's
/// `/proc/self/task/<tid>/children`.
fn live_children() -> Vec<u32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Today's date, UTC, as `YYYY-MM-DD`.
pub(crate) fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a
/// proleptic Gregorian date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Connections the kernel dropped so far, machine-wide, because a listen
/// queue was full (`TcpExt: ListenDrops`). A dropped SYN is retransmitted
/// by the client after a second, which shows as a one-second latency.
pub(crate) fn listen_drops() -> Option<u64> {
    let netstat = fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == "ListenDrops")
        .and_then(|(_, value)| value.parse().ok())
}

/// Gives the calling thread the scheduling priority `nice`; threads it
/// starts afterwards inherit it. Linux applies `setpriority` to a thread id
/// alone, which `renice -p <tid>` does.
///
/// # Errors
///
/// What went wrong, if the priority could not be set (a negative `nice`
/// needs root or `CAP_SYS_NICE`).
pub(crate) fn renice_this_thread(nice: i32) -> Result<(), String> {
    let link = fs::read_link("/proc/thread-self").map_err(|e| format!("/proc/thread-self: {e}"))?;
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .ok_or("/proc/thread-self names no thread id")?
        .to_owned();
    let output = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &tid])
        .output()
        .map_err(|e| format!("renice: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "renice: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
