//! The tokio runtime a network backend's async client (ScyllaDB driver, Redis
//! connection manager) runs on, for backends whose trait methods are synchronous.
//!
//! A service has one runtime — the one its binary builds — and hands its [`Handle`] to
//! every backend ([`ClientRuntime::shared`]): the clients' connection tasks run on its
//! workers and each synchronous call `block_on`s the handle. Only a caller without a
//! runtime (a test, a tool) lets a backend start a small one of its own
//! ([`ClientRuntime::own`]).
//!
//! Invariants: the runtime is multi-thread — a current-thread runtime drives I/O only
//! inside its own `block_on`, so calls from other threads would stall; and calls come
//! from plain threads or `spawn_blocking`, never from an async task (tokio panics on a
//! `block_on` nested in a runtime worker).

use std::future::Future;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

/// A backend's way onto a tokio runtime: the service's, or (tests, tools) its own.
#[derive(Debug)]
pub(crate) struct ClientRuntime {
    handle: Handle,
    /// The runtime [`ClientRuntime::own`] started (`None` on the service's); shut
    /// down in the background on drop, so dropping a backend from anywhere (even an
    /// async context) is safe.
    own: Option<Runtime>,
}

impl ClientRuntime {
    /// The caller's runtime. Refuses a current-thread runtime, naming `backend`.
    pub(crate) fn shared(handle: Handle, backend: &str) -> Result<Self, String> {
        if handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
            return Err(format!(
                "{backend}: the client needs a multi-thread tokio runtime; a current-thread one \
                 only runs it inside its own block_on"
            ));
        }
        Ok(Self { handle, own: None })
    }

    /// A runtime of the backend's own, for callers that have none: `workers` threads
    /// named `name`.
    pub(crate) fn own(name: &str, workers: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            own: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` to completion on the runtime, blocking this (non-async) thread.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.own.take() {
            runtime.shutdown_background();
        }
    }
}
