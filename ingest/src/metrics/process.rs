//! The standard Prometheus process metrics, read from `/proc/self` each time
//! `/metrics` is scraped (Linux; elsewhere, or if `/proc` is unreadable, they are
//! left out). Rendered as exposition text appended to the recorder's, because
//! `process_cpu_seconds_total` is a counter of fractional seconds, which the
//! `metrics` crate's integer counters cannot carry.

use std::fmt::Write as _;

pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";
pub const START_TIME: &str = "process_start_time_seconds";

/// Every process metric: name, type, help.
pub const DESCRIPTIONS: [(&str, &str, &str); 5] = [
    (
        CPU_SECONDS,
        "counter",
        "User and system CPU time spent by meterflow, seconds.",
    ),
    (
        RESIDENT_MEMORY,
        "gauge",
        "Resident memory of the meterflow process, bytes.",
    ),
    (
        OPEN_FDS,
        "gauge",
        "File descriptors open in the meterflow process (sockets, store files, logs).",
    ),
    (
        MAX_FDS,
        "gauge",
        "The process's open-file limit (soft RLIMIT_NOFILE).",
    ),
    (
        START_TIME,
        "gauge",
        "When the meterflow process started, seconds since the Unix epoch.",
    ),
];

/// `/proc` reports CPU and start times in USER_HZ ticks, which Linux fixes at 100
/// for userspace on every architecture meterflow runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics now, as Prometheus text (empty where `/proc` is unreadable).
pub fn render() -> String {
    let values = [
        (CPU_SECONDS, cpu_seconds()),
        (RESIDENT_MEMORY, resident_bytes()),
        (OPEN_FDS, open_fds()),
        (MAX_FDS, max_fds()),
        (START_TIME, start_time_seconds()),
    ];
    let mut out = String::new();
    for ((name, kind, help), (_, value)) in DESCRIPTIONS.iter().zip(values) {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
    out
}

/// Fields of `/proc/self/stat` after the command name (which may hold spaces), so
/// that index 0 is the state (field 3 of proc(5)).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().collect())
}

fn read_stat() -> Option<String> {
    std::fs::read_to_string("/proc/self/stat").ok()
}

/// utime + stime (fields 14 and 15 of proc(5)).
fn cpu_seconds_of(stat: &str) -> Option<f64> {
    let fields = stat_fields(stat)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of(&read_stat()?)
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes_of(status: &str) -> Option<f64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb * 1024) as f64)
}

fn resident_bytes() -> Option<f64> {
    resident_bytes_of(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn open_fds() -> Option<f64> {
    // Less the descriptor read_dir itself holds open while listing.
    let count = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(count.saturating_sub(1) as f64)
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_fds_of(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse::<u64>().ok().map(|v| v as f64)
}

fn max_fds() -> Option<f64> {
    max_fds_of(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// Boot time (`btime` of `/proc/stat`) plus the process's start (field 22 of
/// proc(5), ticks since boot).
fn start_time_of(stat: &str, proc_stat: &str) -> Option<f64> {
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let start_ticks: u64 = stat_fields(stat)?.get(19)?.parse().ok()?;
    Some(btime as f64 + start_ticks as f64 / TICKS_PER_SECOND)
}

fn start_time_seconds() -> Option<f64> {
    start_time_of(&read_stat()?, &std::fs::read_to_string("/proc/stat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (mf (io) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
        150 75 0 0 20 0 6 0 12345 123456789 3000 18446744073709551615";

    #[test]
    fn parses_proc_files() {
        assert_eq!(cpu_seconds_of(STAT), Some(2.25));
        let start = start_time_of(STAT, "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n").unwrap();
        assert!((start - 1_700_000_123.45).abs() < 1e-3, "{start}");
        assert_eq!(
            resident_bytes_of("Name:\tmeterflow\nVmRSS:\t   2048 kB\n"),
            Some(2_097_152.0)
        );
        assert_eq!(
            max_fds_of(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max open files            1024                 524288               files\n"
            ),
            Some(1024.0)
        );
        assert_eq!(cpu_seconds_of("garbage"), None);
    }

    #[test]
    fn renders_every_metric_on_linux() {
        let text = render();
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        for (name, kind, _) in DESCRIPTIONS {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no value for {name}: {text}"));
            if name != CPU_SECONDS {
                assert!(value > 0.0, "{name} = {value}");
            }
        }
    }
}
