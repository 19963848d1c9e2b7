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
use serde_json::{Value, json};
use uuid::Uuid;

use super::{store, turn, ws};
use crate::{
    app::AppState,
    auth::{ChatCaller, CurrentUser},
    db,
    error::{ApiError, ApiResult},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/chat", get(chat_socket))
        .route("/v1/chat/sessions", get(list_sessions))
        .route("/v1/chat/sessions/{id}", axum::routing::delete(delete_session))
        .route("/v1/chat/sessions/{id}/messages", get(list_messages))
}

/// Authenticated before the upgrade: a refused caller gets a 401, not a socket.
async fn chat_socket(
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
        turns: turn::Services {
            db: state.db.clone(),
            config: state.config.clone(),
            quotas: state.quotas.clone(),
            recorder: state.recorder().clone(),
            embedder: state.embedder().map_err(|e| format!("{e:#}")),
        },
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

async fn list_sessions(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    let sessions = store::list_sessions(&mut *tx, user.tenant.0.id, user.user.id).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

async fn list_messages(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    store::find_session(&mut *tx, user.tenant.0.id, user.user.id, id).await?.ok_or_else(not_found)?;
    let messages = store::messages(&mut *tx, user.tenant.0.id, id).await?;
    Ok(Json(json!({ "session_id": id, "messages": messages })))
}

async fn delete_session(
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
