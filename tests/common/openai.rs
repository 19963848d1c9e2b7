//! A server speaking OpenAI's embeddings protocol (`POST /v1/embeddings`), started by the tests.
//! Its vectors are deterministic (hashed words), so similar texts get similar vectors; it can be
//! told to fail or to answer slowly.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::HeaderMap, response::IntoResponse, routing::post};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const DIMS: usize = 64;
pub const MODEL: &str = "test-embed-64";
pub const KEY: &str = "sk-test-key";

#[derive(Default)]
pub struct Control {
    /// answer this many requests with HTTP 500 before answering normally
    pub fail_next: AtomicUsize,
    pub delay_ms: AtomicU64,
    pub requests: AtomicUsize,
    pub tokens: AtomicU64,
}

#[derive(Clone)]
pub struct EmbeddingServer {
    pub addr: SocketAddr,
    pub control: Arc<Control>,
}

pub fn embed_text(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; DIMS];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in word.to_lowercase().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        v[(h % DIMS as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

async fn embeddings(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    control.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": {"message": "bad key", "type": "invalid_request_error", "param": null, "code": null}}),
            ),
        );
    }
    let delay = control.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if control.fail_next.load(Ordering::SeqCst) > 0 {
        control.fail_next.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})),
        );
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    };
    let tokens: u64 = inputs.iter().map(|t| t.split_whitespace().count() as u64).sum();
    control.tokens.fetch_add(tokens, Ordering::SeqCst);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embed_text(t)}))
        .collect();
    (
        StatusCode::OK,
        Json(json!({
            "object": "list",
            "model": body["model"],
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })),
    )
}

impl EmbeddingServer {
    pub async fn start() -> Self {
        let control = Arc::new(Control::default());
        let app = Router::new().route("/v1/embeddings", post(embeddings)).with_state(control.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, control }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Environment for a DocuChat that embeds with this server.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EMBEDDING_PROVIDER", "openai".into()),
            ("EMBEDDING_MODEL", MODEL.into()),
            ("EMBEDDING_DIMENSIONS", DIMS.to_string()),
            ("OPENAI_BASE_URL", self.base_url()),
            ("OPENAI_API_KEY", KEY.into()),
        ]
    }
}
