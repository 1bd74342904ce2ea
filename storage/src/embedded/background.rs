//! The priority of the store's background threads: fjall's workers, which flush
//! memtables into tables and compact tables, run at a higher nice value than the
//! pipeline, so that they take the CPU the pipeline leaves idle instead of taking it
//! from the threads that hold the acks.
//!
//! Why: a flush or a compaction is a burst of CPU work (tens to hundreds of
//! milliseconds for the store's 8 MiB memtables and tables). On a small machine that
//! burst takes one of the cores from the shards, the sink and the I/O threads, and
//! every ack waiting in them waits as long. At a lower priority the same work runs in
//! the gaps between their bursts. The work is not less, only later: under a load
//! that leaves no core idle, flushes lag, and fjall itself then holds the writer
//! (four sealed memtables waiting, or twenty tables in level 0) until they catch up,
//! which gives them the CPU back. Measured on the bench's 2-core machine in
//! bench/README.md, "Background work at a lower priority".
//!
//! fjall names its workers `fjall:worker` and has no hook for the threads it spawns,
//! so [`lower_priority`] finds them by that name among the process's threads
//! (`/proc/self/task/*/comm`) once the database is open (fjall starts them in
//! `open` and spawns none later) and sets their nice value. Rust's standard library
//! names a thread from inside it as it starts, so a worker spawned a moment ago may
//! still carry the process's name: it looks again until it has found as many as the
//! store started, for at most [`NAMED_WITHIN`]. Raising a nice value needs no
//! privilege. Elsewhere than on Linux it does nothing.

use std::io;
use std::time::Duration;

/// The name fjall (`=3.1.13`, `worker_pool.rs`) gives its worker threads.
#[cfg(target_os = "linux")]
const WORKER_THREAD_NAME: &str = "fjall:worker";

/// The highest nice value: the lowest priority of the normal scheduling class.
pub const LOWEST_PRIORITY_NICE: i32 = 19;

/// How long [`lower_priority`] waits for the workers to carry their names.
pub const NAMED_WITHIN: Duration = Duration::from_secs(1);

/// Sets the nice value of every fjall worker thread of this process to `nice`
/// (0–19), unless one already runs at that value or higher, looking again until it
/// has found `expected` of them or [`NAMED_WITHIN`] has passed; returns how many it
/// found.
#[cfg(target_os = "linux")]
pub fn lower_priority(nice: i32, expected: usize) -> io::Result<usize> {
    use std::time::Instant;

    if !(0..=LOWEST_PRIORITY_NICE).contains(&nice) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a nice value for background work is 0 to {LOWEST_PRIORITY_NICE}, not {nice}"),
        ));
    }
    let deadline = Instant::now() + NAMED_WITHIN;
    loop {
        let found = lower_named_workers(nice)?;
        if found >= expected || Instant::now() >= deadline {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One look through the process's threads: sets the nice value of each one named
/// [`WORKER_THREAD_NAME`] and returns how many there are.
#[cfg(target_os = "linux")]
fn lower_named_workers(nice: i32) -> io::Result<usize> {
    use rustix::process::{getpriority_process, setpriority_process};

    let workers = named_workers()?;
    for &tid in &workers {
        // On Linux, PRIO_PROCESS with a thread id sets that one thread's nice value.
        if getpriority_process(Some(tid))? < nice {
            setpriority_process(Some(tid), nice)?;
        }
    }
    Ok(workers.len())
}

/// The ids of this process's threads named [`WORKER_THREAD_NAME`]. A thread that
/// exits while it looks is skipped.
#[cfg(target_os = "linux")]
fn named_workers() -> io::Result<Vec<rustix::process::Pid>> {
    use rustix::process::Pid;

    let mut workers = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if name.trim_end() == WORKER_THREAD_NAME {
            workers.push(tid);
        }
    }
    Ok(workers)
}

/// Does nothing: thread priorities are set only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn lower_priority(_nice: i32, _expected: usize) -> io::Result<usize> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use rustix::process::getpriority_process;

    /// Nice values of this process's fjall worker threads.
    fn worker_nice_values() -> Vec<i32> {
        named_workers()
            .unwrap()
            .into_iter()
            .filter_map(|tid| getpriority_process(Some(tid)).ok())
            .collect()
    }

    #[test]
    fn the_stores_workers_get_the_nice_value_and_the_caller_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let own = getpriority_process(None).unwrap();

        let found = store
            .lower_background_priority(LOWEST_PRIORITY_NICE)
            .unwrap();

        assert!(found >= 1, "an open store has at least one worker thread");
        let values = worker_nice_values();
        assert!(values.len() >= found, "{values:?}");
        assert!(
            values.iter().all(|&nice| nice == LOWEST_PRIORITY_NICE),
            "{values:?}"
        );
        assert_eq!(getpriority_process(None).unwrap(), own);
    }

    #[test]
    fn a_worker_that_takes_its_name_late_is_found_too() {
        let before = worker_nice_values().len();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write("/proc/thread-self/comm", WORKER_THREAD_NAME).unwrap();
            wait.recv().unwrap();
            getpriority_process(None).unwrap()
        });

        // More than there can be: it looks for all of `NAMED_WITHIN` (other tests'
        // stores may start workers meanwhile, so no smaller count is sure to wait).
        let started = std::time::Instant::now();
        let found = lower_priority(LOWEST_PRIORITY_NICE, usize::MAX).unwrap();
        done.send(()).unwrap();

        assert!(started.elapsed() >= NAMED_WITHIN);
        assert!(found > before, "{found} after {before}");
        assert_eq!(late.join().unwrap(), LOWEST_PRIORITY_NICE);
    }

    #[test]
    fn a_nice_value_out_of_range_is_refused() {
        for nice in [-1, 20] {
            let error = lower_priority(nice, 1).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains(&nice.to_string()), "{error}");
        }
    }
}
