//! Resident memory and CPU time of processes, read from `/proc` (Linux only).

use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS since start), KiB.
    pub hwm_kib: u64,
    /// `utime + stime`, clock ticks.
    pub cpu_ticks: u64,
    /// `cutime + cstime`: CPU of its children that exited and were waited for, ticks.
    pub children_ticks: u64,
}

/// Reads `/proc/{pid}/status` and `/proc/{pid}/stat`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(ProcSample {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_ticks: utime + stime,
        children_ticks: cutime + cstime,
    })
}

/// `RssAnon`, `RssFile`, `RssShmem` of a process, MiB.
pub fn rss_parts(pid: u32) -> Option<(f64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    Some((mib("RssAnon:"), mib("RssFile:"), mib("RssShmem:")))
}

/// Total size of the files in a directory (not recursive), MiB.
pub fn dir_mib(dir: &std::path::Path) -> f64 {
    std::fs::read_dir(dir).map_or(0.0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len() as f64)
            .sum::<f64>()
            / (1024.0 * 1024.0)
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Busy and total jiffies of the whole machine (first line of `/proc/stat`).
pub fn system_cpu() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Processes whose command name is `name` (e.g. RabbitMQ's `beam.smp`).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Whose CPU a [`CpuWindow`] measures.
#[derive(Clone, Debug)]
enum Who {
    /// A fixed set of processes.
    Pids(Vec<u32>),
    /// Every process of this command name, listed again at each reading.
    Named(&'static str),
}

/// CPU of a set of processes over a window, as % of one core.
#[derive(Clone, Debug)]
pub struct CpuWindow {
    who: Who,
    start_ticks: u64,
    start: Instant,
}

impl CpuWindow {
    /// Starts measuring now.
    pub fn start(pids: &[u32]) -> Self {
        Self::start_for(Who::Pids(pids.to_vec()))
    }

    /// Starts measuring every process named `name` (e.g. PostgreSQL's `postgres`:
    /// the postmaster and one process per connection, some coming and going within
    /// the window). The processes are listed again at the end, and each one's
    /// `cutime + cstime` is counted too, so a backend that exited during the window
    /// still counts: its CPU moved into its parent's (the postmaster's) children
    /// time when the parent waited for it. The count is cumulative over the whole
    /// process tree, so the difference of two readings is the window's CPU.
    pub fn named(name: &'static str) -> Self {
        Self::start_for(Who::Named(name))
    }

    fn start_for(who: Who) -> Self {
        Self {
            start_ticks: ticks(&who),
            who,
            start: Instant::now(),
        }
    }

    /// Average CPU % (of one core) since [`start`](Self::start).
    pub fn percent(&self) -> f64 {
        let used = ticks(&self.who).saturating_sub(self.start_ticks) as f64;
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        100.0 * used / ticks_per_second() / secs
    }
}

fn ticks(who: &Who) -> u64 {
    match who {
        Who::Pids(pids) => pids
            .iter()
            .filter_map(|p| sample(*p))
            .map(|s| s.cpu_ticks)
            .sum(),
        Who::Named(name) => pids_named(name)
            .into_iter()
            .filter_map(sample)
            .map(|s| s.cpu_ticks + s.children_ticks)
            .sum(),
    }
}

/// Machine-wide CPU busy % (of all cores, so 100 % = every core busy) over a window.
#[derive(Clone, Copy, Debug)]
pub struct SystemWindow {
    busy: u64,
    total: u64,
}

impl SystemWindow {
    /// Starts measuring now.
    pub fn start() -> Self {
        let (busy, total) = system_cpu();
        Self { busy, total }
    }

    /// Busy % of all cores since the start.
    pub fn percent(&self) -> f64 {
        let (busy, total) = system_cpu();
        let total = total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

/// RSS of one process sampled at a fixed interval.
pub struct RssSeries {
    /// (time since the series started, RSS KiB)
    pub points: Vec<(Duration, u64)>,
}

impl RssSeries {
    /// Largest RSS in MiB.
    pub fn max_mib(&self) -> f64 {
        self.points.iter().map(|p| p.1).max().unwrap_or(0) as f64 / 1024.0
    }

    /// Largest RSS in the first and in the second half of the series, MiB.
    pub fn halves_mib(&self) -> (f64, f64) {
        let Some(end) = self.points.last().map(|p| p.0) else {
            return (0.0, 0.0);
        };
        let mid = end / 2;
        let max = |first: bool| {
            self.points
                .iter()
                .filter(|p| (p.0 <= mid) == first)
                .map(|p| p.1)
                .max()
                .unwrap_or(0) as f64
                / 1024.0
        };
        (max(true), max(false))
    }

    /// Largest RSS in each second of the series, MiB.
    pub fn each_second_mib(&self) -> Vec<f64> {
        let mut out: Vec<f64> = Vec::new();
        for (t, kib) in &self.points {
            let second = t.as_secs() as usize;
            if out.len() <= second {
                out.resize(second + 1, 0.0);
            }
            out[second] = out[second].max(*kib as f64 / 1024.0);
        }
        out
    }

    /// RSS at the end, MiB.
    pub fn last_mib(&self) -> f64 {
        self.points.last().map_or(0, |p| p.1) as f64 / 1024.0
    }
}

/// Samples a process's RSS every `every` until the returned sender is dropped or
/// set; bounded by `limit` samples.
pub fn spawn_rss_sampler(
    pid: u32,
    every: Duration,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<RssSeries>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let mut points = Vec::new();
        // At most one hour of samples, whatever the interval.
        let limit = (3600.0 / every.as_secs_f64().max(0.01)) as usize;
        let mut tick = tokio::time::interval(every);
        while points.len() < limit {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            match sample(pid) {
                Some(s) => points.push((start.elapsed(), s.rss_kib)),
                None => break,
            }
        }
        RssSeries { points }
    });
    (stop, task)
}

/// CPU ticks per thread name of a process (`/proc/{pid}/task/*/`), threads with the
/// same name summed (tokio's workers all share one name).
pub fn thread_ticks(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        *out.entry(name).or_insert(0) += ticks;
    }
    out
}

/// [`thread_ticks`] of several processes, summed per thread name (replicas of the
/// relay).
pub fn thread_ticks_of(pids: &[u32]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for pid in pids {
        for (name, ticks) in thread_ticks(*pid) {
            *out.entry(name).or_insert(0) += ticks;
        }
    }
    out
}

/// CPU % (of one core) per thread name between two [`thread_ticks`] readings over
/// `secs` seconds, largest first, threads under 1 % left out.
pub fn thread_percent(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    secs: f64,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = after
        .iter()
        .map(|(name, ticks)| {
            let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
            (
                name.clone(),
                100.0 * used as f64 / ticks_per_second() / secs.max(1e-3),
            )
        })
        .filter(|(_, pct)| *pct >= 1.0)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}
