//! What the kernel says about a process under test: CPU time from `/proc/<pid>/stat`,
//! resident memory from `/proc/<pid>/status`, open descriptors from `/proc/<pid>/fd`,
//! and established TCP connections on a listening port from `/proc/net/tcp`.
//!
//! The parsers are pure functions of the file text (unit-tested with captured text);
//! [`Sampler`] is the only part that reads files and sleeps. It samples on its own
//! thread at a fixed period so the harness's main thread can block on the load
//! generator; samples are kept in memory (a 10-minute run at 4 Hz is 2,400 samples).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// CPU time (user + system) in clock ticks from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the *last* `)`: after it come `state`
/// (field 3) … `utime` (field 14) and `stime` (field 15).
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // Field 3 is the first after the name; utime is field 14, 11 further on.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in KiB.
pub(crate) fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_ascii_whitespace();
        let value = parts.next()?.parse().ok()?;
        (parts.next() == Some("kB")).then_some(value)
    })
}

/// TCP state code of ESTABLISHED in `/proc/net/tcp`.
const TCP_ESTABLISHED: &str = "01";

/// Established connections whose *local* port is `port` in the text of
/// `/proc/net/tcp` (`sl local_address rem_address st …`, addresses as
/// `HEXIP:HEXPORT`): the server side of the connections to a listener on `port`.
pub(crate) fn count_established_on_port(net_tcp: &str, port: u16) -> usize {
    net_tcp
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (Some(_sl), Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            state == TCP_ESTABLISHED
                && local
                    .rsplit_once(':')
                    .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
                    == Some(port)
        })
        .count()
}

/// Kernel clock ticks per second (`USER_HZ`), the unit of `/proc/<pid>/stat` times.
pub(crate) fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ProcSample {
    /// Seconds since the sampler started.
    pub(crate) t_s: f64,
    /// CPU used since the previous sample, percent of one core (200 % = both cores).
    pub(crate) cpu_pct: f64,
    pub(crate) rss_kib: u64,
    /// Cumulative CPU seconds of the process.
    pub(crate) cpu_s: f64,
    /// Established connections on the watched port (0 when no port is watched).
    pub(crate) connections: usize,
}

/// Samples one process's CPU and RSS (and optionally the connections on a port) every
/// `period` on a background thread until stopped.
pub(crate) struct Sampler {
    /// When sampling began: sample times are relative to it.
    pub(crate) started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<ProcSample>>>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(pid: u32, period: Duration, watch_port: Option<u16>) -> Sampler {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let handle = thread::Builder::new()
            .name(format!("sampler-{pid}"))
            .spawn({
                let stop = Arc::clone(&stop);
                let samples = Arc::clone(&samples);
                move || sample_loop(pid, started, period, watch_port, &stop, &samples)
            })
            .ok();
        Sampler {
            started,
            stop,
            samples,
            handle,
        }
    }

    /// Seconds since sampling began, on the samples' clock.
    pub(crate) fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Samples so far.
    pub(crate) fn snapshot(&self) -> Vec<ProcSample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the thread and returns every sample.
    pub(crate) fn finish(mut self) -> Vec<ProcSample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.snapshot()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample_loop(
    pid: u32,
    started: Instant,
    period: Duration,
    watch_port: Option<u16>,
    stop: &AtomicBool,
    samples: &Mutex<Vec<ProcSample>>,
) {
    let ticks_per_s = clock_ticks_per_second().max(1) as f64;
    let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let mut previous: Option<(f64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let t_s = started.elapsed().as_secs_f64();
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(&stat_path),
            std::fs::read_to_string(&status_path),
        ) else {
            // The process is gone.
            return;
        };
        let ticks = parse_stat_cpu_ticks(&stat).unwrap_or(0);
        let rss_kib = parse_status_kib(&status, "VmRSS").unwrap_or(0);
        let cpu_pct = match previous {
            Some((t0, ticks0)) if t_s > t0 => {
                ticks.saturating_sub(ticks0) as f64 / ticks_per_s / (t_s - t0) * 100.0
            }
            _ => 0.0,
        };
        previous = Some((t_s, ticks));
        let connections = watch_port.map_or(0, established_connections);
        if let Ok(mut samples) = samples.lock() {
            samples.push(ProcSample {
                t_s,
                cpu_pct,
                rss_kib,
                cpu_s: ticks as f64 / ticks_per_s,
                connections,
            });
        }
        thread::sleep(period);
    }
}

/// Established connections to a local listener on `port` (IPv4 loopback only: the
/// harness binds every service to 127.0.0.1).
pub(crate) fn established_connections(port: u16) -> usize {
    std::fs::read_to_string("/proc/net/tcp")
        .map(|text| count_established_on_port(&text, port))
        .unwrap_or(0)
}

/// Cumulative CPU seconds of a process, `None` once it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat_cpu_ticks(&stat)? as f64 / clock_ticks_per_second().max(1) as f64)
}

/// Seconds a process's live threads have spent runnable but waiting for a CPU
/// (`run_delay`, the second field of `/proc/<pid>/task/<tid>/schedstat`): how much
/// the machine's other load held it back. Threads that have exited no longer count.
pub(crate) fn runqueue_wait_seconds(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += parse_schedstat_wait_ns(&text).unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// The run-queue wait in ns from the text of a `schedstat` file (`on-CPU ns`,
/// `waiting ns`, `timeslices`).
pub(crate) fn parse_schedstat_wait_ns(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Cumulative CPU seconds of one thread of this process, `None` once it is gone.
pub(crate) fn thread_cpu_seconds(tid: u64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    Some(parse_stat_cpu_ticks(&stat)? as f64 / clock_ticks_per_second().max(1) as f64)
}

/// Resident and peak resident memory of a process, KiB.
pub(crate) fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        parse_status_kib(&status, "VmRSS")?,
        parse_status_kib(&status, "VmHWM")?,
    ))
}

/// Open file descriptors of a process.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Summary of a run's samples: mean CPU over the samples in `[from_s, to_s]`, and the
/// highest RSS seen anywhere.
pub(crate) fn summarize(samples: &[ProcSample], from_s: f64, to_s: f64) -> (f64, u64) {
    let window: Vec<f64> = samples
        .iter()
        .filter(|s| s.t_s >= from_s && s.t_s <= to_s)
        .map(|s| s.cpu_pct)
        .collect();
    let cpu = if window.is_empty() {
        0.0
    } else {
        window.iter().sum::<f64>() / window.len() as f64
    };
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    (cpu, peak)
}

/// The pid of a server `scripts/{name}` runs on this machine (its pid file,
/// `$MF_RUN_DIR/{name}-{port}/{name}.pid`, the port from `port_variable` or
/// `default_port`), if it runs there.
pub(crate) fn script_server_pid(name: &str, port_variable: &str, default_port: u16) -> Option<u32> {
    let run_dir = std::env::var_os("MF_RUN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace_dir().join(".cache/run"));
    let port = std::env::var(port_variable).unwrap_or_else(|_| default_port.to_string());
    let text = std::fs::read_to_string(run_dir.join(format!("{name}-{port}/{name}.pid"))).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a real meterflow, with a name containing ") (" to exercise the
    // last-parenthesis rule.
    const STAT: &str = "4242 (meter) (flow) S 1 4242 4242 0 -1 4194560 20941 0 0 0 \
                        1234 567 0 0 20 0 12 0 8841 1469648896 9012 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_cpu_is_utime_plus_stime() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(1234 + 567));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tmeterflow\nVmPeak:\t 1440000 kB\nVmHWM:\t   98304 kB\n\
                      VmRSS:\t   65536 kB\nThreads:\t12\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(65_536));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(98_304));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        // A prefix of another field name is not that field.
        assert_eq!(parse_status_kib(status, "Vm"), None);
        assert_eq!(parse_status_kib(status, "Threads"), None, "no kB unit");
    }

    #[test]
    fn established_connections_are_counted_by_local_port() {
        // Port 0x075B = 1883; 0x0050 = 80. States: 0A listen, 01 established,
        // 06 time-wait.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:075B 0100007F:A001 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 0100007F:075B 0100007F:A002 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n\
   3: 0100007F:A003 0100007F:075B 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1\n\
   4: 0100007F:075B 0100007F:A004 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1\n\
   5: 0100007F:0050 0100007F:A005 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1\n";
        assert_eq!(count_established_on_port(text, 1883), 2);
        assert_eq!(count_established_on_port(text, 80), 1);
        assert_eq!(count_established_on_port(text, 9999), 0);
        assert_eq!(count_established_on_port("", 1883), 0);
    }

    #[test]
    fn summary_averages_cpu_in_the_window_and_keeps_the_peak() {
        let sample = |t_s, cpu_pct, rss_kib| ProcSample {
            t_s,
            cpu_pct,
            rss_kib,
            ..ProcSample::default()
        };
        let samples = [
            sample(0.0, 0.0, 100),
            sample(1.0, 50.0, 300),
            sample(2.0, 150.0, 200),
            sample(3.0, 10.0, 150),
        ];
        let (cpu, peak) = summarize(&samples, 0.5, 2.5);
        assert!((cpu - 100.0).abs() < 1e-9);
        assert_eq!(peak, 300);
        assert_eq!(summarize(&[], 0.0, 1.0), (0.0, 0));
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(runqueue_wait_seconds(pid).is_some());
        assert_eq!(parse_schedstat_wait_ns("123 456 7\n"), Some(456));
        assert_eq!(parse_schedstat_wait_ns("123"), None);
        let tid = rustix::thread::gettid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        assert!(thread_cpu_seconds(u64::from(tid)).is_some());
        let (rss, hwm) = memory_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(open_fds(pid).unwrap() >= 3);
    }
}
