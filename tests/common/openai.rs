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
    /// answer this many requests with HTTP 400 (a request that will never succeed)
    pub reject_next: AtomicUsize,
    pub delay_ms: AtomicU64,
    pub requests: AtomicUsize,
    pub tokens: AtomicU64,
    /// chat: the status to answer with instead of a stream (0: stream)
    pub chat_status: AtomicU64,
    /// chat: never answer
    pub chat_hang: std::sync::atomic::AtomicBool,
    /// chat: tokens per answer, and the pause before each
    pub chat_tokens: AtomicUsize,
    pub chat_token_delay_ms: AtomicU64,
    /// chat: tokens actually written to the wire
    pub chat_sent: AtomicUsize,
    /// chat: the tokens to answer with instead of `chat_token(i)` (then `chat_tokens` is their number)
    pub chat_text: std::sync::Mutex<Option<Vec<String>>>,
    /// chat: the last request body
    pub chat_last: std::sync::Mutex<Option<Value>>,
}

pub const CHAT_PROMPT_TOKENS: u64 = 123;

/// The n-th token a chat answer streams.
pub fn chat_token(i: usize) -> String {
    if i == 0 { "According to [1], ".to_owned() } else { format!("word{i} ") }
}

async fn chat(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return (StatusCode::UNAUTHORIZED, "bad key").into_response();
    }
    *control.chat_last.lock().unwrap() = Some(body.clone());
    if control.chat_hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let status = control.chat_status.load(Ordering::SeqCst);
    if status != 0 {
        let code = StatusCode::from_u16(status as u16).unwrap();
        return (
            code,
            Json(
                json!({"error": {"message": "upstream says no", "type": "server_error", "param": null, "code": null}}),
            ),
        )
            .into_response();
    }
    let text = control.chat_text.lock().unwrap().clone();
    let n = text.as_ref().map_or_else(|| control.chat_tokens.load(Ordering::SeqCst).max(1), Vec::len);
    let delay = control.chat_token_delay_ms.load(Ordering::SeqCst);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let chunk = move |delta: Value, usage: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                   "choices": if usage.is_null() { json!([{"index": 0, "delta": delta, "finish_reason": null}]) } else { json!([]) },
                   "usage": usage})
        )
    };
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let control = control.clone();
        let chunk = chunk.clone();
        let tokens = text.clone();
        async move {
            if i > n + 1 {
                return None;
            }
            let text = if i < n {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                control.chat_sent.fetch_add(1, Ordering::SeqCst);
                let token = tokens.as_ref().map_or_else(|| chat_token(i), |t| t[i].clone());
                chunk(json!({"content": token}), Value::Null)
            } else if i == n {
                chunk(
                    json!({}),
                    json!({"prompt_tokens": CHAT_PROMPT_TOKENS, "completion_tokens": n, "total_tokens": CHAT_PROMPT_TOKENS as usize + n}),
                )
            } else {
                "data: [DONE]\n\n".to_owned()
            };
            Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(text)), i + 1))
        }
    });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
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
    if control.reject_next.load(Ordering::SeqCst) > 0 {
        control.reject_next.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": "bad input", "type": "invalid_request_error", "param": null, "code": null}}),
            ),
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
        control.chat_tokens.store(8, Ordering::SeqCst);
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat))
            .with_state(control.clone());
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

    /// Environment for a DocuChat that chats with this server (and embeds locally).
    pub fn chat_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OPENAI_BASE_URL", self.base_url()),
            ("OPENAI_API_KEY", KEY.into()),
            ("CHAT_MODEL", "test-chat".into()),
            ("CHAT_MODELS_ALLOWED", "test-chat,other-chat".into()),
        ]
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
