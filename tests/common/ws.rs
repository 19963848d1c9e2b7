//! A WebSocket client for the chat tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{connect_async, tungstenite::Message};

use super::TestApp;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp, token: &str) -> Socket {
    let url = format!("ws://{}/ws/chat?token={token}", app.addr);
    connect_async(url).await.expect("websocket connects").0
}

pub async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

pub async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Asks and collects the frames up to `done` (or an error).
pub async fn ask(ws: &mut Socket, session: Option<&str>, question: &str) -> Vec<Value> {
    send(ws, json!({"type": "ask", "session_id": session, "content": question})).await;
    let mut frames = Vec::new();
    loop {
        let f = next_json(ws).await;
        let kind = f["type"].as_str().unwrap().to_owned();
        frames.push(f);
        if kind == "done" || kind == "error" {
            return frames;
        }
    }
}
