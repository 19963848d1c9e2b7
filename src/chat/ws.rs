//! `WS /ws/chat`: authenticated before the upgrade (JWT in `?token=` or `Authorization:
//! Bearer`; the tenant is the token's, and an `X-Tenant-ID`, if sent, must name the same one).
//!
//! Client frames: `{"type":"ask","session_id":null|"…","content":"…","model"?:"…"}` and
//! `{"type":"cancel"}`. Server frames per question: `start`, `sources`, `token`…, `done`; or
//! `error` at any point — the socket stays usable after a per-question error.
//!
//! One task reads the socket, one writes it (through a bounded queue, so a slow client slows only
//! its own answer), and each answer runs in a task of its own that a cancel or a disconnect stops;
//! what was produced until then is saved and metered.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{
        Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use uuid::Uuid;

use super::{prompt, record::Record};
use crate::{
    app::AppState,
    auth::{self, jwt::TokenError, users::User},
    error::ApiError,
    ingestion::{chunk::count_tokens, normalize::is_stray_control},
    llm::{ChatModel, Usage, offline},
    retrieval::{self, Params},
    tenants::{TENANT_HEADER, Tenant},
    usage::quota,
};

/// Largest text frame read from a client.
const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames waiting for a slow client, per socket.
const OUTBOX: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(20);
/// A quota hold outlives any answer (the model's timeout applies per piece of the stream).
const HOLD_FOR: Duration = Duration::from_secs(15 * 60);
/// The system prompt, citation labels and message framing, over-estimated.
const PROMPT_OVERHEAD_TOKENS: usize = 600;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

struct Caller {
    user: User,
    tenant: Tenant,
}

async fn authenticate(state: &AppState, query: &WsQuery, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let from_header = {
        let mut parts = axum::http::Request::new(()).into_parts().0;
        parts.headers = headers.clone();
        auth::bearer(&parts)?.map(str::to_owned)
    };
    let token = from_header
        .or_else(|| query.token.clone())
        .ok_or_else(|| auth::unauthorized("missing_token", "send the token as ?token= or Authorization: Bearer"))?;
    let claims = state.jwt.verify(&token).map_err(|e| match e {
        TokenError::Expired => auth::unauthorized("token_expired", "the token has expired: log in again"),
        TokenError::Invalid => auth::unauthorized("invalid_token", "the token is not valid"),
    })?;
    let tenant = state
        .tenants
        .resolve(&state.db, &claims.tid.to_string())
        .await?
        .ok_or_else(|| auth::unauthorized("invalid_token", "the token is not valid"))?;
    if let Some(value) = headers.get(TENANT_HEADER) {
        let named = state.tenants.resolve(&state.db, value.to_str().unwrap_or("").trim()).await?;
        if named.map(|t| t.id) != Some(tenant.id) {
            return Err(auth::unauthorized("invalid_token", "the token is not valid for this tenant"));
        }
    }
    let user = auth::users::find(&state.db, tenant.id, claims.sub)
        .await?
        .ok_or_else(|| auth::unauthorized("invalid_token", "the token is not valid"))?;
    Ok(Caller { user, tenant })
}

pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = query.map(|q| q.0).unwrap_or(WsQuery { token: None });
    let caller = match authenticate(&state, &query, &headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::bad_request("websocket_required", "connect with a WebSocket upgrade").into_response();
        }
    };
    // small buffers: thousands of mostly idle sockets must stay cheap (the defaults are 128 KiB
    // each way). Frames are gathered in the write buffer and sent with one write when the writer
    // flushes — after every burst it takes from the outbox, so tokens are not held back.
    ws.max_message_size(MAX_FRAME_BYTES * 4)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| run(socket, state, Arc::new(caller)))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Ask {
        session_id: Option<String>,
        content: String,
        #[serde(default)]
        model: Option<String>,
    },
    Cancel,
}

fn frame(value: Value) -> Message {
    Message::Text(value.to_string().into())
}

fn error_frame(code: &str, message: &str) -> Message {
    frame(json!({ "type": "error", "code": code, "message": message }))
}

/// An HTTP-style refusal as an error frame; one that says when to come back carries
/// `retry_after` (seconds).
fn api_error_frame(e: &ApiError) -> Message {
    let mut value = json!({ "type": "error", "code": e.code(), "message": e.to_string() });
    if let ApiError::TooManyRequests { retry_after, .. } = e {
        value["retry_after"] = json!(retry_after.as_millis().div_ceil(1000).max(1) as u64);
    }
    frame(value)
}

struct Running {
    handle: JoinHandle<()>,
    cancel: watch::Sender<bool>,
    /// set just before the answer's last frame goes out
    finishing: Arc<AtomicBool>,
}

async fn run(socket: WebSocket, state: AppState, caller: Arc<Caller>) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);
    // frames waiting in the outbox go out together: one flush (one write) for a burst of tokens
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        'write: while outbox.recv_many(&mut batch, OUTBOX).await > 0 {
            for message in batch.drain(..) {
                let close = matches!(message, Message::Close(_));
                if sink.feed(message).await.is_err() || close {
                    break 'write;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let idle = state.config.chat.idle_timeout;
    let mut last_seen = Instant::now();
    // pings keep proxies from closing a quiet socket; the same tick checks the idle timeout
    let mut ping = tokio::time::interval(PING_EVERY.min(idle / 2));
    ping.tick().await;
    let mut running: Option<Running> = None;
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(Ok(message)) = incoming else { break };
                // idle means no frames from the client; its pongs only show it is alive
                if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                    last_seen = Instant::now();
                }
                match message {
                    Message::Text(text) => {
                        if running.as_ref().is_some_and(|r| r.handle.is_finished()) {
                            running = None;
                        }
                        handle_text(&state, &caller, text.as_str(), &out, &mut running).await;
                    }
                    Message::Binary(_) => {
                        let _ = out.send(error_frame("unsupported_frame", "send JSON text frames")).await;
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > idle {
                    let _ = out.send(error_frame("idle_timeout", "closing an idle connection")).await;
                    let _ = out.send(Message::Close(None)).await;
                    break;
                }
                let _ = out.send(Message::Ping(Vec::new().into())).await;
            }
        }
    }
    // a disconnect stops the answer in progress; it saves what it has
    if let Some(r) = running {
        let _ = r.cancel.send(true);
        let _ = r.handle.await;
    }
    drop(out);
    let _ = writer.await;
}

async fn handle_text(
    state: &AppState,
    caller: &Arc<Caller>,
    text: &str,
    out: &mpsc::Sender<Message>,
    running: &mut Option<Running>,
) {
    if text.len() > MAX_FRAME_BYTES {
        let _ = out.send(error_frame("frame_too_large", "frames are limited to 64 KiB")).await;
        return;
    }
    let parsed: ClientFrame = match serde_json::from_str::<Value>(text) {
        Err(_) => {
            let _ = out.send(error_frame("malformed_frame", "frames are JSON objects with a `type`")).await;
            return;
        }
        Ok(value) => match serde_json::from_value(value.clone()) {
            Ok(f) => f,
            Err(e) => {
                let known = matches!(value.get("type").and_then(Value::as_str), Some("ask" | "cancel"));
                let (code, message) = if known {
                    ("malformed_frame", format!("the frame is incomplete: {e}"))
                } else {
                    ("unknown_type", "the frame `type` must be `ask` or `cancel`".to_owned())
                };
                let _ = out.send(error_frame(code, &message)).await;
                return;
            }
        },
    };
    match parsed {
        ClientFrame::Cancel => {
            if let Some(r) = running.as_ref() {
                let _ = r.cancel.send(true);
            }
        }
        ClientFrame::Ask { session_id, content, model } => {
            if let Some(r) = running.take() {
                if r.finishing.load(Ordering::SeqCst) || r.handle.is_finished() {
                    // its last frame is out: the client may ask again at once
                    let _ = r.handle.await;
                } else {
                    *running = Some(r);
                    let _ = out.send(error_frame("busy", "wait for the answer in progress, or cancel it")).await;
                    return;
                }
            }
            // control characters carry no meaning in a question (and Postgres text cannot hold NUL)
            let question: String =
                content.chars().filter(|c| !is_stray_control(*c)).collect::<String>().trim().to_owned();
            if question.is_empty() {
                let _ = out.send(error_frame("empty_question", "the question is empty")).await;
                return;
            }
            let max = state.config.chat.max_question_chars;
            if question.chars().count() > max {
                let _ = out
                    .send(error_frame("question_too_long", &format!("questions are limited to {max} characters")))
                    .await;
                return;
            }
            if let Err(e) = state.limits.check_chat(caller.user.id).await {
                let _ = out.send(api_error_frame(&e)).await;
                return;
            }
            let (chat_model, model_name) = match state.chat_model(model.as_deref()) {
                Ok(m) => m,
                Err(e) => {
                    let _ = out.send(error_frame(e.code(), &e.to_string())).await;
                    return;
                }
            };
            let session_id = match session_id.as_deref().map(Uuid::try_parse) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => {
                    let _ = out.send(error_frame("session_not_found", "no such chat session")).await;
                    return;
                }
            };
            let (cancel, cancelled) = watch::channel(false);
            let finishing = Arc::new(AtomicBool::new(false));
            let task = Answer {
                state: state.clone(),
                caller: caller.clone(),
                out: out.clone(),
                model: chat_model,
                model_name,
                finishing: finishing.clone(),
            };
            let handle = tokio::spawn(task.run(session_id, question, cancelled));
            *running = Some(Running { handle, cancel, finishing });
        }
    }
}

struct Answer {
    state: AppState,
    caller: Arc<Caller>,
    out: mpsc::Sender<Message>,
    model: Arc<dyn ChatModel>,
    /// the model asked for (recorded with the message and the usage)
    model_name: String,
    finishing: Arc<AtomicBool>,
}

impl Answer {
    async fn send(&self, message: Message) {
        // a client that went away no longer gets frames; the answer is still saved
        let _ = self.out.send(message).await;
    }

    /// The answer's last frame (`done` or `error`).
    async fn finish(&self, message: Message) {
        self.finishing.store(true, Ordering::SeqCst);
        self.send(message).await;
    }

    async fn run(self, session_id: Option<Uuid>, question: String, cancelled: watch::Receiver<bool>) {
        let mut hold = None;
        let result = self.answer(session_id, &question, cancelled, &mut hold).await;
        // the hold goes with the answer's ledger rows; an answer that wrote none gives it back
        if let Some(id) = hold
            && let Err(e) = quota::release(&self.state.db, id).await
        {
            tracing::warn!(error = %e, "could not release a quota hold (it expires on its own)");
        }
        if let Err(e) = result {
            tracing::error!(error = format!("{e:#}"), "chat answer failed");
            self.finish(error_frame("internal_error", "the answer could not be completed")).await;
        }
    }

    /// The most one answer to `question` may spend: the question embedded and in the prompt,
    /// the context, the prompt's own words, and the longest answer.
    fn most_tokens(&self, question: &str) -> i64 {
        let chat = &self.state.config.chat;
        let answer = if self.model_name == offline::NAME { chat.context_tokens } else { chat.max_answer_tokens };
        (2 * count_tokens(question) + chat.context_tokens + PROMPT_OVERHEAD_TOKENS + answer) as i64
    }

    async fn answer(
        &self,
        session_id: Option<Uuid>,
        question: &str,
        mut cancelled: watch::Receiver<bool>,
        hold: &mut Option<Uuid>,
    ) -> anyhow::Result<()> {
        let state = &self.state;
        let (tenant, user) = (self.caller.tenant.id, self.caller.user.id);
        match state.quotas.admit(tenant, Some(user), self.most_tokens(question), HOLD_FOR).await? {
            Ok(h) => *hold = h,
            Err(exceeded) => {
                let mut value = json!({ "type": "error", "code": "quota_exceeded", "message": exceeded.message() });
                value["resets_at"] = json!(exceeded.resets_at);
                value["retry_after"] = json!(exceeded.retry_after().as_secs().max(1));
                self.finish(frame(value)).await;
                return Ok(());
            }
        }
        // a new session is written together with its first message, at the end
        let (session, title) = match session_id {
            Some(id) => match super::find_session(&state.db, tenant, user, id).await? {
                Some(s) => (s.id, None),
                None => {
                    self.finish(error_frame("session_not_found", "no such chat session")).await;
                    return Ok(());
                }
            },
            None => (Uuid::now_v7(), Some(question.chars().take(80).collect::<String>())),
        };
        let message_id = Uuid::now_v7();
        self.send(frame(json!({ "type": "start", "session_id": session, "message_id": message_id }))).await;

        let embedder = match state.embedder() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "no embedder for questions");
                self.finish(error_frame("embedding_unavailable", "questions cannot be searched right now")).await;
                return Ok(());
            }
        };
        let embedded = match embedder.embed(&[question.to_owned()]).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "question embedding failed");
                self.finish(error_frame("embedding_unavailable", "questions cannot be searched right now")).await;
                return Ok(());
            }
        };
        let chat = &state.config.chat;
        let params = Params { k: chat.k, min_similarity: chat.min_similarity, ..Params::default() };
        let sources = retrieval::search(
            &state.db,
            tenant,
            retrieval::Space { model: embedder.model(), dims: embedder.dimensions() },
            &embedded.vectors[0],
            question,
            &params,
        )
        .await?;
        // a session started by this question has no earlier turns
        let history = if title.is_none() { super::history(&state.db, tenant, session, 20).await? } else { Vec::new() };
        let request = prompt::build(&self.model_name, question, sources, &history, chat.context_tokens);
        self.send(frame(json!({ "type": "sources", "sources": request.sources }))).await;

        let mut answer = String::new();
        let mut status = "complete";
        let mut failure: Option<(&'static str, String)> = None;
        let (model_name, usage) = if request.sources.is_empty() {
            // nothing relevant: say so, without a model
            answer = prompt::nothing_found(request.persian).to_owned();
            self.send(frame(json!({ "type": "token", "content": answer }))).await;
            ("none".to_owned(), Usage::default())
        } else {
            let (tx, mut rx) = mpsc::channel::<String>(32);
            let model = self.model.clone();
            let generation = model.stream(&request, tx);
            tokio::pin!(generation);
            let mut reported: Option<Usage> = None;
            let mut done = false;
            while !done {
                tokio::select! {
                    biased;
                    _ = cancelled.changed() => {
                        status = "cancelled";
                        break;
                    }
                    token = rx.recv() => match token {
                        Some(t) => {
                            answer.push_str(&t);
                            self.send(frame(json!({ "type": "token", "content": t }))).await;
                        }
                        None => done = true,
                    },
                    result = &mut generation, if reported.is_none() && !done => {
                        match result {
                            Ok(u) => reported = Some(u.unwrap_or_default()),
                            Err(e) => {
                                tracing::warn!(code = e.code(), detail = e.detail(), "chat model failed");
                                status = "failed";
                                failure = Some((e.code(), e.to_string()));
                                break;
                            }
                        }
                        // drain what the model sent before it returned
                        while let Ok(t) = rx.try_recv() {
                            answer.push_str(&t);
                            self.send(frame(json!({ "type": "token", "content": t }))).await;
                        }
                        done = true;
                    }
                }
            }
            let usage = match reported {
                Some(u) if u.prompt_tokens > 0 || u.completion_tokens > 0 => u,
                // counted here only when the model reported nothing (cancelled, failed, or a
                // server without usage chunks)
                _ => Usage {
                    prompt_tokens: prompt::prompt_tokens(&request),
                    completion_tokens: count_tokens(&answer) as u32,
                },
            };
            (self.model_name.clone(), usage)
        };

        // the session (when new), the message, its ledger rows and the session's time: one
        // statement, written with other answers that end at the same time
        state
            .recorder()
            .save(Record {
                message_id,
                tenant,
                user,
                session,
                title,
                question: question.to_owned(),
                answer: answer.clone(),
                sources: serde_json::to_value(&request.sources)?,
                model: model_name.clone(),
                prompt_tokens: usage.prompt_tokens as i32,
                completion_tokens: usage.completion_tokens as i32,
                status,
                error_code: failure.as_ref().map(|f| f.0),
                embedding_model: embedder.model().to_owned(),
                embedding_tokens: embedded.tokens as i64,
                hold: *hold,
            })
            .await?;
        *hold = None;

        if let Some((code, message)) = failure {
            self.finish(error_frame(code, &message)).await;
        } else {
            let total = usage.prompt_tokens + usage.completion_tokens;
            self.finish(frame(json!({
                "type": "done",
                "message_id": message_id,
                "status": status,
                "model": model_name,
                "usage": { "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": total },
            })))
            .await;
        }
        Ok(())
    }
}
