//! `WS /ws/chat`: the socket transport. The caller is authenticated before the upgrade (see
//! [`super::routes`]); each question is a [`Turn`] whose frames this module writes to the socket.
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
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::Response,
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    sockets::Slot,
    turn::{self, Frame, FrameSink, Services, Turn},
};
use crate::{
    auth::{CurrentUser, access::AccessWatch, extractors::recheck},
    error::ApiError,
    llm::Models,
    ratelimit::{Limited, Limiter},
};

/// Largest text frame read from a client.
const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames waiting for a slow client, per socket.
const OUTBOX: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(20);

/// What a socket uses of the process.
pub struct Context {
    pub turns: Services,
    pub limits: Arc<Limiter>,
    pub models: Arc<Models>,
    pub access: Arc<AccessWatch>,
    /// cancelled when the server stops
    pub closing: CancellationToken,
}

/// Takes the socket of an authenticated caller; its place under the caps is given back when it
/// ends.
pub fn accept(ws: WebSocketUpgrade, context: Context, caller: CurrentUser, slot: Slot) -> Response {
    // small buffers: thousands of mostly idle sockets must stay cheap (the defaults are 128 KiB
    // each way). Frames are gathered in the write buffer and sent with one write when the writer
    // flushes — after every burst it takes from the outbox, so tokens are not held back.
    // a frame is read whole before the message limit is checked: it gets the same bound (the
    // default would let every socket make the server hold 16 MiB)
    ws.max_message_size(MAX_FRAME_BYTES * 4)
        .max_frame_size(MAX_FRAME_BYTES * 4)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| async move {
            run(socket, Arc::new(context), Arc::new(caller)).await;
            drop(slot);
        })
}

/// What a client sends on the chat socket.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Ask {
        session_id: Option<String>,
        content: String,
        #[serde(default)]
        model: Option<String>,
    },
    Cancel,
}

fn text(frame: &Frame<'_>) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

fn error_frame(code: &str, message: &str) -> Message {
    text(&Frame::error(code, message))
}

/// A rate limit's refusal, with `retry_after` (seconds, rounded up).
fn limited_frame(e: &Limited) -> Message {
    let retry_after = Some(e.retry_after.as_millis().div_ceil(1000).max(1) as u64);
    text(&Frame::Error { code: "rate_limited", message: &e.to_string(), retry_after, resets_at: None })
}

/// The socket's outbox, as a turn's sink: it notes when the turn's last frame goes out.
struct Outbox {
    tx: mpsc::Sender<Message>,
    finishing: Arc<AtomicBool>,
}

impl FrameSink for Outbox {
    async fn send(&self, frame: Frame<'_>) {
        if frame.is_last() {
            self.finishing.store(true, Ordering::SeqCst);
        }
        // a client that went away no longer gets frames; the answer is still saved
        let _ = self.tx.send(text(&frame)).await;
    }
}

struct Running {
    handle: JoinHandle<()>,
    cancel: CancellationToken,
    /// set just before the answer's last frame goes out
    finishing: Arc<AtomicBool>,
}

async fn run(socket: WebSocket, context: Arc<Context>, caller: Arc<CurrentUser>) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);
    // set when the writer gives up: the client went away, or stopped reading for longer than the
    // write timeout (it would otherwise hold its answer, and the answer's quota hold, for as long
    // as its TCP connection stays open)
    let gone = CancellationToken::new();
    let write_timeout = context.turns.config.chat.write_timeout;
    // frames waiting in the outbox go out together: one flush (one write) for a burst of tokens
    let writer = tokio::spawn({
        let gone = gone.clone();
        async move {
            let mut batch = Vec::new();
            'write: while outbox.recv_many(&mut batch, OUTBOX).await > 0 {
                for message in batch.drain(..) {
                    let close = matches!(message, Message::Close(_));
                    // feeding waits too once the write buffer is full
                    match tokio::time::timeout(write_timeout, sink.feed(message)).await {
                        Ok(Ok(())) if !close => {}
                        _ => break 'write,
                    }
                }
                if !matches!(tokio::time::timeout(write_timeout, sink.flush()).await, Ok(Ok(()))) {
                    tracing::info!("closing a chat socket whose client stopped reading");
                    break;
                }
            }
            gone.cancel();
            // the close handshake gets the same patience, no more
            let _ = tokio::time::timeout(write_timeout, sink.close()).await;
        }
    });

    let idle = context.turns.config.chat.idle_timeout;
    let mut last_seen = Instant::now();
    // pings keep proxies from closing a quiet socket; the same tick checks the idle timeout
    let mut ping = tokio::time::interval(PING_EVERY.min(idle / 2));
    ping.tick().await;
    let mut running: Option<Running> = None;
    // the socket ends with its token: at its expiry, or when it is revoked (a logout, a change of
    // role, the member's removal), which the access watch reports at once
    let mut access = context.access.watch(caller.user.id);
    let expires = tokio::time::Instant::now()
        + Duration::from_secs(caller.token.exp.saturating_sub(jsonwebtoken::get_current_timestamp()))
            .min(Duration::from_secs(1 << 30));
    let mut stopping = false;
    loop {
        tokio::select! {
            // nothing more can reach the client: what it was being sent is ended (and saved)
            () = gone.cancelled() => break,
            () = context.closing.cancelled() => {
                stopping = true;
                break;
            }
            () = tokio::time::sleep_until(expires) => {
                let _ = out.send(error_frame("token_expired", "the token has expired: log in again")).await;
                let _ = out.send(Message::Close(None)).await;
                break;
            }
            () = access.changed() => match recheck(&context.turns.db, &caller).await {
                Ok(()) => {}
                Err(ApiError::Unauthorized { code, message }) => {
                    let _ = out.send(error_frame(code, message)).await;
                    let _ = out.send(Message::Close(None)).await;
                    break;
                }
                // the database did not answer: the next change, or the expiry, decides
                Err(e) => tracing::warn!(error = %e, "cannot check a socket's token again"),
            },
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
                        handle_text(&context, &caller, text.as_str(), &out, &mut running).await;
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
    // a server that stops gives the answer in progress a moment to finish; a disconnect stops it
    // at once. Either way it saves (and charges) what it has.
    if let Some(mut r) = running {
        let grace = if stopping { context.turns.config.chat.shutdown_grace } else { Duration::ZERO };
        if tokio::time::timeout(grace, &mut r.handle).await.is_err() {
            r.cancel.cancel();
            let _ = r.handle.await;
        }
    }
    if stopping {
        let _ = out.send(error_frame("shutting_down", "the server is restarting: connect again")).await;
        let _ = out.send(Message::Close(None)).await;
    }
    drop(out);
    let _ = writer.await;
}

/// Reads a client frame: `Err` is the error frame to answer with.
fn parse(text: &str) -> Result<ClientFrame, Message> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(error_frame("frame_too_large", "frames are limited to 64 KiB"));
    }
    let value = serde_json::from_str::<Value>(text)
        .map_err(|_| error_frame("malformed_frame", "frames are JSON objects with a `type`"))?;
    serde_json::from_value(value.clone()).map_err(|e| {
        if matches!(value.get("type").and_then(Value::as_str), Some("ask" | "cancel")) {
            error_frame("malformed_frame", &format!("the frame is incomplete: {e}"))
        } else {
            error_frame("unknown_type", "the frame `type` must be `ask` or `cancel`")
        }
    })
}

async fn handle_text(
    context: &Context,
    caller: &Arc<CurrentUser>,
    text: &str,
    out: &mpsc::Sender<Message>,
    running: &mut Option<Running>,
) {
    let (session_id, content, model) = match parse(text) {
        Err(refusal) => {
            let _ = out.send(refusal).await;
            return;
        }
        Ok(ClientFrame::Cancel) => {
            if let Some(r) = running.as_ref() {
                r.cancel.cancel();
            }
            return;
        }
        Ok(ClientFrame::Ask { session_id, content, model }) => (session_id, content, model),
    };
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
    match start(context, caller, session_id, &content, model.as_deref(), out).await {
        Ok(r) => *running = Some(r),
        Err(refusal) => {
            let _ = out.send(refusal).await;
        }
    }
}

/// Checks an `ask` and starts its turn in a task of its own.
async fn start(
    context: &Context,
    caller: &CurrentUser,
    session_id: Option<String>,
    content: &str,
    model: Option<&str>,
    out: &mpsc::Sender<Message>,
) -> Result<Running, Message> {
    let question = turn::clean_question(content, context.turns.config.chat.max_question_chars)
        .map_err(|(code, message)| error_frame(code, &message))?;
    context.limits.check_chat(caller.user.id).await.map_err(|e| limited_frame(&e))?;
    let (model, model_name) = context.models.select(model).map_err(|e| error_frame(e.code(), &e.to_string()))?;
    let session = match session_id.as_deref().map(Uuid::try_parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return Err(error_frame("session_not_found", "no such chat session")),
    };
    let cancel = CancellationToken::new();
    let finishing = Arc::new(AtomicBool::new(false));
    let turn = Turn {
        services: context.turns.clone(),
        model,
        model_name,
        tenant: caller.tenant.0.id,
        user: caller.user.id,
        sink: Outbox { tx: out.clone(), finishing: finishing.clone() },
    };
    let handle = tokio::spawn(turn.run(session, question, cancel.clone()));
    Ok(Running { handle, cancel, finishing })
}
