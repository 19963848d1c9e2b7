//! A TCP forwarder between the service and a real server, which the test can cut (every
//! connection dropped, new ones refused) and restore: the server becomes unreachable, as when its
//! host goes down, without stopping it for the other tests.

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

pub struct TcpProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    forwarding: Option<JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self { addr, target, forwarding: Some(tokio::spawn(forward(listener, target))) }
    }

    /// Drops every forwarded connection and refuses new ones.
    pub async fn cut(&mut self) {
        if let Some(task) = self.forwarding.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&mut self) {
        if self.forwarding.is_none() {
            let listener = TcpListener::bind(self.addr).await.unwrap();
            self.forwarding = Some(tokio::spawn(forward(listener, self.target)));
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.forwarding.take() {
            task.abort();
        }
    }
}

/// Forwards until aborted; the connections live in a set the task owns, so they end with it.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
