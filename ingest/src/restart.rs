//! Restarting the process in place: the same binary, arguments and environment, the
//! same process id, with nothing of the old run's memory. For a processor whose
//! ownership lease lapsed ([`crate::kafka::lease`]): what it holds must not be
//! written, and its in-memory aggregates count it, so only a fresh run — hydrated from
//! the store, its partitions assigned afresh — is right. Nothing is flushed or drained
//! on the way out (that would be the write the lease forbids); to the store it is a
//! `kill -9` and a restart, which it already survives. Without a supervisor in the
//! way this also keeps a console session or a test's child process running; where the
//! binary cannot be executed again (replaced on disk), the process exits with
//! [`EXIT_TEMPFAIL`] for its supervisor to restart it.

use std::os::unix::process::CommandExt;
use std::process::Command;

use tracing::error;

/// `EX_TEMPFAIL` of sysexits.h: a temporary failure, try again.
pub const EXIT_TEMPFAIL: i32 = 75;

/// Replaces this process with a fresh run of its binary, logging `why`. Never returns.
pub fn in_place(why: &str) -> ! {
    error!(
        reason = why,
        "restarting in place without writing what this run holds (the partitions' owners replay it from the log)"
    );
    let program = std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(Into::into));
    if let Some(program) = program {
        let error = Command::new(program)
            .args(std::env::args_os().skip(1))
            .exec();
        error!(%error, "cannot run this binary again; exiting for the supervisor to restart it");
    }
    std::process::exit(EXIT_TEMPFAIL)
}
