//! Chat: the WebSocket session, prompts, and the saved history (`chat_sessions`, `messages`).
//! A user sees only their own sessions.

pub mod prompt;
pub mod record;
pub mod ws;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgExecutor;
use uuid::Uuid;

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

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Session {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Message {
    pub id: Uuid,
    pub question: String,
    pub answer: String,
    pub sources: sqlx::types::Json<Value>,
    pub model: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub status: String,
    pub error_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The session if it is this user's.
pub async fn find_session(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    user: Uuid,
    id: Uuid,
) -> Result<Option<Session>, sqlx::Error> {
    sqlx::query_as(
        "select id, title, created_at, updated_at from chat_sessions where tenant_id = $1 and user_id = $2 and id = $3",
    )
    .bind(tenant)
    .bind(user)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Completed (question, answer) turns of a session, oldest first.
pub async fn history(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    session: Uuid,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut rows: Vec<(String, String)> = sqlx::query_as(
        "select question, answer from messages where tenant_id = $1 and session_id = $2 and status = 'complete'
         order by created_at desc, id desc limit $3",
    )
    .bind(tenant)
    .bind(session)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.reverse();
    Ok(rows)
}

fn not_found() -> ApiError {
    ApiError::not_found("session_not_found", "no such chat session")
}

async fn list_sessions(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    let sessions: Vec<Session> = sqlx::query_as(
        "select id, title, created_at, updated_at from chat_sessions where tenant_id = $1 and user_id = $2
         order by updated_at desc limit 100",
    )
    .bind(user.tenant.0.id)
    .bind(user.user.id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(json!({ "sessions": sessions })))
}

async fn list_messages(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    find_session(&state.db, user.tenant.0.id, user.user.id, id).await?.ok_or_else(not_found)?;
    let messages: Vec<Message> = sqlx::query_as(
        "select id, question, answer, sources, model, prompt_tokens, completion_tokens, status, error_code, created_at
           from messages where tenant_id = $1 and session_id = $2 order by created_at, id",
    )
    .bind(user.tenant.0.id)
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(json!({ "session_id": id, "messages": messages })))
}

async fn delete_session(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let done = sqlx::query("delete from chat_sessions where tenant_id = $1 and user_id = $2 and id = $3")
        .bind(user.tenant.0.id)
        .bind(user.user.id)
        .bind(id)
        .execute(&state.db)
        .await?;
    if done.rows_affected() == 1 { Ok(StatusCode::NO_CONTENT) } else { Err(not_found()) }
}
