//! The HTTP server with socket limits (`[http]`): a connection cap, hyper's
//! header-read timeout, an idle timeout and (in the router) a request body limit, so
//! slow or idle clients cannot hold the descriptors that MQTT sessions and `/healthz`
//! need. Over the cap a connection is answered 503 and closed at once; the accept loop
//! never waits on a client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// The HTTP server's socket limits (`[http]`).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Most connections open at once; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request line and headers, counted from the
    /// connection's start or the end of the previous answer (hyper's header-read
    /// timeout, which also bounds a kept-alive connection's wait for its next request).
    pub header_timeout: Duration,
    /// Time a connection may go without a byte moving either way.
    pub idle_timeout: Duration,
}

/// What a connection over the cap is told before it is closed (best effort: written
/// only if the socket takes it at once).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 61\r\n\
\r\n\
{\"error\":\"too many HTTP connections open; try again shortly\"}";

/// Serves `app` on `listener` (HTTP/1.1) within `limits`. Each accepted connection
/// takes a slot; over the cap it is answered 503 and closed without waiting, so the
/// accept loop never blocks on a slow client. Runs until the task is aborted.
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits) {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refused = metrics::counter!(crate::metrics::HTTP_REFUSED);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept():
                // pause briefly rather than spin, and keep serving.
                tracing::debug!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            let _ = stream.try_write(OVER_CAPACITY);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection closed");
            }
            drop(slot);
        });
    }
}

/// A connection that fails with `TimedOut` when no byte has moved either way for
/// `idle` (a client that stopped reading its answer, a stalled upload), so hyper
/// closes it. Checked whenever hyper waits on the socket.
struct IdleTimeout {
    io: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(io: TcpStream, idle: Duration) -> Self {
        IdleTimeout {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Passes a socket poll's result on: progress moves the deadline; waiting is an
    /// error once the deadline has passed.
    fn track<T>(
        &mut self,
        polled: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            let next = Instant::now() + self.idle;
            self.deadline.as_mut().reset(next);
            return polled;
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "http connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.track(polled, cx)
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.track(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.track(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].is_string());
    }

    /// A loopback pair: the server's end wrapped in [`IdleTimeout`].
    async fn idle_pair(idle: Duration) -> (IdleTimeout, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (IdleTimeout::new(server, idle), client)
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_when_nothing_moves() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_millis(300);
        let (mut server, mut client) = idle_pair(idle).await;
        // A byte every 100 ms keeps it open well past `idle`...
        let mut buf = [0u8; 1];
        for _ in 0..8 {
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ...silence closes it after `idle`, not before.
        let started = std::time::Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
