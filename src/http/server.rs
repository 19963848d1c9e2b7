//! The connection loop: accepts TCP connections and serves HTTP/1.1 (with WebSocket upgrades) on
//! each, with a deadline on reading a request's headers. (`axum::serve` sets no timer, so a client
//! that sends its headers a byte a minute holds a connection and its task for ever.)

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::mpsc};
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
            let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
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
