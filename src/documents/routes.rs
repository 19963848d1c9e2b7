//! `POST /v1/files`, `GET /v1/documents`, `GET /v1/documents/{id}`, `DELETE /v1/documents/{id}`.

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{DocumentView, upload};
use crate::{
    app::AppState,
    auth::{Principal, api_keys::Scope},
    error::{ApiError, ApiResult},
};

pub fn router(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/files", post(upload::upload).layer(DefaultBodyLimit::max(max_upload + upload::MULTIPART_OVERHEAD)))
        .route("/v1/documents", get(list))
        .route("/v1/documents/{id}", get(show).delete(remove))
}

fn not_found() -> ApiError {
    ApiError::not_found("document_not_found", "no such document")
}

/// Any id that is not a UUID of this tenant's document is simply not found.
fn parse_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| not_found())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(State(state): State<AppState>, user: Principal, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    user.require(Scope::DocumentsRead)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 100"));
    }
    let after = match q.after.as_deref() {
        Some(a) => Some(
            Uuid::try_parse(a).map_err(|_| ApiError::bad_request("invalid_cursor", "`after` must be a document id"))?,
        ),
        None => None,
    };
    let docs = super::list(&state.db, user.tenant_id(), after, limit + 1).await?;
    let has_more = docs.len() as i64 > limit;
    let docs: Vec<DocumentView> = docs.into_iter().take(limit as usize).map(Into::into).collect();
    let next = if has_more { docs.last().map(|d| d.id) } else { None };
    Ok(Json(json!({ "documents": docs, "next_cursor": next })))
}

async fn show(State(state): State<AppState>, user: Principal, Path(id): Path<String>) -> ApiResult<Json<DocumentView>> {
    user.require(Scope::DocumentsRead)?;
    let id = parse_id(&id)?;
    let doc = super::get(&state.db, user.tenant_id(), id).await?.ok_or_else(not_found)?;
    Ok(Json(doc.into()))
}

async fn remove(State(state): State<AppState>, user: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    user.require(Scope::DocumentsWrite)?;
    let id = parse_id(&id)?;
    if super::delete(&state.db, user.tenant_id(), id).await? {
        tracing::info!(document_id = %id, "document deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
