//! `WS /ws/chat` (see [`super::ws`]), and the history: `GET /v1/chat/sessions`,
//! `DELETE /v1/chat/sessions/{id}`, `GET /v1/chat/sessions/{id}/messages`.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{store, ws};
use crate::{
    app::AppState,
    auth::CurrentUser,
    error::{ApiError, ApiResult},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/chat", get(ws::upgrade))
        .route("/v1/chat/sessions", get(list_sessions))
        .route("/v1/chat/sessions/{id}", axum::routing::delete(delete_session))
        .route("/v1/chat/sessions/{id}/messages", get(list_messages))
}

fn not_found() -> ApiError {
    ApiError::not_found("session_not_found", "no such chat session")
}

async fn list_sessions(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    let sessions = store::list_sessions(&state.db, user.tenant.0.id, user.user.id).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

async fn list_messages(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    store::find_session(&state.db, user.tenant.0.id, user.user.id, id).await?.ok_or_else(not_found)?;
    let messages = store::messages(&state.db, user.tenant.0.id, id).await?;
    Ok(Json(json!({ "session_id": id, "messages": messages })))
}

async fn delete_session(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    if store::delete_session(&state.db, user.tenant.0.id, user.user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
