//! `WS /ws/chat` (see [`super::ws`]), and the history: `GET /v1/chat/sessions`,
//! `DELETE /v1/chat/sessions/{id}`, `GET /v1/chat/sessions/{id}/messages`.

use axum::{
    Json, Router,
    extract::{
        Path, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{store, ws};
use crate::{
    app::AppState,
    auth::{ChatCaller, CurrentUser},
    db,
    error::{ApiError, ApiResult, Envelope as Error},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/chat", get(chat_socket))
        .route("/v1/chat/sessions", get(list_sessions))
        .route("/v1/chat/sessions/{id}", axum::routing::delete(delete_session))
        .route("/v1/chat/sessions/{id}/messages", get(list_messages))
}

/// Authenticated before the upgrade: a refused caller gets a 401, not a socket.
#[utoipa::path(
    get, path = "/ws/chat", operation_id = "chatSocket", tag = "chat",
    security(("bearer" = []), ("token_query" = [])),
    summary = "The chat WebSocket",
    description = include_str!("protocol.md"),
    params(
        ("token" = Option<String>, Query, description = "the access token, for clients that cannot set headers on a WebSocket"),
        ("X-Tenant-ID" = Option<String>, Header, description = "optional here: the tenant is the token's; if sent, it must name the same tenant"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the socket is open (frames: `ClientFrame`, `ServerFrame`)"),
        (status = 400, description = "`websocket_required`: not a WebSocket upgrade", body = Error),
        (status = 401, description = "`missing_token`, `invalid_token` (also: a token of another tenant than `X-Tenant-ID`), `token_expired`, `token_revoked`", body = Error),
        (status = 403, description = "`forbidden`: API keys cannot chat", body = Error),
        (status = 429, description = "`too_many_sockets` (with `Retry-After`): `WS_MAX_PER_USER` / `WS_MAX_PER_TENANT` are open", body = Error),
    )
)]
pub async fn chat_socket(
    State(state): State<AppState>,
    ChatCaller(caller): ChatCaller,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return ApiError::bad_request("websocket_required", "connect with a WebSocket upgrade").into_response();
    };
    let Some(slot) = state.sockets.open(caller.tenant.0.id, caller.user.id) else {
        return ApiError::TooManyRequests {
            code: "too_many_sockets",
            message: "too many chat connections are open: close one first".into(),
            retry_after: std::time::Duration::from_secs(5),
        }
        .into_response();
    };
    let context = ws::Context {
        turns: state.turn_services(),
        limits: state.limits.clone(),
        models: state.models.clone(),
        access: state.access.clone(),
        closing: state.sockets.closing(),
    };
    ws::accept(ws, context, caller, slot)
}

fn not_found() -> ApiError {
    ApiError::not_found("session_not_found", "no such chat session")
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<store::Session>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageList {
    session_id: Uuid,
    /// oldest first
    messages: Vec<store::Message>,
}

#[utoipa::path(
    get, path = "/v1/chat/sessions", operation_id = "listSessions", tag = "chat", security(("bearer" = [])),
    summary = "The caller's own chat sessions, most recent first",
    responses((status = 200, description = "The sessions", body = SessionList))
)]
pub async fn list_sessions(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<SessionList>> {
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    let sessions = store::list_sessions(&mut *tx, user.tenant.0.id, user.user.id).await?;
    Ok(Json(SessionList { sessions }))
}

#[utoipa::path(
    get, path = "/v1/chat/sessions/{id}/messages", operation_id = "listMessages", tag = "chat", security(("bearer" = [])),
    summary = "A session's questions and answers",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 200, description = "Questions, answers, sources, model, tokens, status", body = MessageList),
        (status = 404, description = "`session_not_found` (also another user's session)", body = Error),
    )
)]
pub async fn list_messages(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageList>> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    store::find_session(&mut *tx, user.tenant.0.id, user.user.id, id).await?.ok_or_else(not_found)?;
    let messages = store::messages(&mut *tx, user.tenant.0.id, id).await?;
    Ok(Json(MessageList { session_id: id, messages }))
}

#[utoipa::path(
    delete, path = "/v1/chat/sessions/{id}", operation_id = "deleteSession", tag = "chat", security(("bearer" = [])),
    summary = "Delete a session and its messages",
    description = "The usage ledger keeps what was spent.",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`session_not_found` (also another user's session)", body = Error),
    )
)]
pub async fn delete_session(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    if store::delete_session(&mut *tx, user.tenant.0.id, user.user.id, id).await? {
        tx.commit().await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
