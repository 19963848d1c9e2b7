//! The connection loop: accepts TCP connections and serves HTTP/1.1 (with WebSocket upgrades) on
//! each, with a deadline on reading a request's headers and one on writes that make no progress
//! (or too little). (`axum::serve` sets no timer, so a client that sends its headers a byte a minute, or
//! stops reading a response, holds a connection, its task and what the response holds for ever.)

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::mpsc,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` resolves, then lets every open connection finish
/// the request it is serving (idle keep-alive connections close at once) and returns when they
/// have. Sockets upgraded to WebSockets are outside HTTP and end on their own: the chat sockets
/// close when the process stops.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    write_stall_timeout: Duration,
    min_send_rate: u64,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    // every connection task holds a sender: when the last is dropped, all have finished
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // out of file descriptors and the like: wait, as the connections in flight
                    // give theirs back, rather than spin
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // no Nagle delay on small writes (streamed tokens, WebSocket frames)
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let conn = http
                .serve_connection(TokioIo::new(StallTimeout::new(tcp, write_stall_timeout, min_send_rate)), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => log_end(result, peer),
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    log_end(conn.await, peer);
                }
            }
            drop(open);
        });
    }
    stop.cancel();
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        // a client that timed out on its headers, or went away mid-request: theirs, not ours
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A connection whose writes stop making progress for `timeout` fails with `TimedOut`: a client
/// that stops reading (a response body, an event stream, a WebSocket) loses the connection, and
/// hyper drops what the response held (a file's bytes and its download slot, an answer's stream)
/// rather than keep it for as long as the client likes. Reading and idle time are not counted: only
/// a write that the peer's window keeps waiting.
///
/// A client that reads a trickle (a segment now and then) never lets one write wait that long, so
/// the time writes have waited is also added up over the connection: it may reach `timeout`, plus
/// one second for every `min_rate` bytes written, plus the time no write was waiting — no more. A
/// client that reads at `min_rate` or faster never runs out (its writes wait at most as long as
/// its bytes are worth), nor does a chat socket whose client falls behind now and then (its idle
/// time pays for it); one that keeps the server waiting and reads slower is closed once its credit
/// is spent, whatever its response holds.
struct StallTimeout<T> {
    inner: T,
    timeout: Duration,
    /// bytes per second a waiting client must take, on average
    min_rate: u64,
    /// bytes written so far
    written: u64,
    /// how long writes have waited so far, in all (the current wait not included)
    waited: Duration,
    /// when the connection was accepted
    opened: Instant,
    /// armed when a write first waits, disarmed when one goes through: when it began, and the
    /// deadline (the nearer of `timeout` and the credit left)
    stalled: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<T> StallTimeout<T> {
    fn new(inner: T, timeout: Duration, min_rate: u64) -> Self {
        let min_rate = min_rate.max(1);
        Self { inner, timeout, min_rate, written: 0, waited: Duration::ZERO, opened: Instant::now(), stalled: None }
    }

    /// How long writes may still wait, in all, from `now` (when no write is waiting).
    fn credit(&self, now: Instant) -> Duration {
        let earned = Duration::try_from_secs_f64(self.written as f64 / self.min_rate as f64).unwrap_or(Duration::MAX);
        let unhurried = now.saturating_duration_since(self.opened).saturating_sub(self.waited);
        self.timeout.saturating_add(earned).saturating_add(unhurried).saturating_sub(self.waited)
    }

    /// What a write (or flush, or shutdown) returned, with the stall deadlines applied.
    fn deadline<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            if let Some((since, _)) = self.stalled.take() {
                self.waited += since.elapsed();
            }
            return polled;
        }
        if self.stalled.is_none() {
            let now = Instant::now();
            let wait = self.timeout.min(self.credit(now));
            self.stalled = Some((now, Box::pin(tokio::time::sleep_until(now + wait))));
        }
        let (_, stalled) = self.stalled.as_mut().expect("armed above");
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading, or reads too slowly")))
    }

    /// [`Self::deadline`] for a write, counting what it wrote.
    fn wrote(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            self.written = self.written.saturating_add(n as u64);
        }
        self.deadline(cx, polled)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.deadline(cx, polled)
    }
}
