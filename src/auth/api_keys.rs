//! API keys for machines (billing jobs, upload scripts): created and revoked by tenant admins, each
//! with scopes. The secret (`dck_` + 64 hex digits, 256 random bits) is shown once; only its SHA-256
//! is stored, and a presented key is found by that hash.
//!
//! `POST /v1/api-keys`, `GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{delete, get},
};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::CurrentUser;
use crate::{
    app::AppState,
    error::{ApiError, ApiResult},
    http::extractors::AppJson,
};

/// Every key starts with this, so a leaked one is easy to recognise (and scan for).
pub const KEY_PREFIX: &str = "dck_";

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    UsageRead,
    DocumentsRead,
    DocumentsWrite,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::UsageRead, Scope::DocumentsRead, Scope::DocumentsWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsageRead => "usage:read",
            Scope::DocumentsRead => "documents:read",
            Scope::DocumentsWrite => "documents:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// A key as listed (never with its secret).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key presented with a request, after its checks.
#[derive(Clone, Debug)]
pub struct KeyCaller {
    pub id: Uuid,
    pub scopes: Vec<Scope>,
}

pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Finds the tenant's live key for a presented secret. A revoked key, another tenant's key and an
/// unknown one are all refused the same way.
pub async fn authenticate(db: &sqlx::PgPool, tenant_id: Uuid, secret: &str) -> Result<KeyCaller, ApiError> {
    let invalid = || super::extractors::unauthorized("invalid_api_key", "the API key is not valid");
    if secret.len() != KEY_PREFIX.len() + 64 {
        return Err(invalid());
    }
    let row: Option<(Uuid, Uuid, Vec<String>, bool, bool)> = sqlx::query_as(
        "select id, tenant_id, scopes, revoked_at is not null,
                last_used_at is null or last_used_at < now() - interval '1 minute'
           from api_keys where secret_hash = $1",
    )
    .bind(&hash(secret)[..])
    .fetch_optional(db)
    .await?;
    let Some((id, key_tenant, scopes, revoked, stale)) = row else { return Err(invalid()) };
    if key_tenant != tenant_id {
        tracing::debug!(key_id = %id, "API key used with another tenant");
        return Err(invalid());
    }
    if revoked {
        return Err(super::extractors::unauthorized("api_key_revoked", "the API key has been revoked"));
    }
    if stale {
        // the last-used stamp is written at most once a minute per key, off the request's path
        let db = db.clone();
        tokio::spawn(async move {
            let _ = sqlx::query("update api_keys set last_used_at = now() where id = $1").bind(id).execute(&db).await;
        });
    }
    Ok(KeyCaller { id, scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect() })
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/api-keys", get(list).post(create)).route("/v1/api-keys/{id}", delete(revoke))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    scopes: Vec<String>,
}

async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    user.require_admin()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request("invalid_name", "a key name is 1 to 100 characters"));
    }
    let mut scopes: Vec<&'static str> = Vec::new();
    for s in &body.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_scope",
                format!("unknown scope `{s}`: use usage:read, documents:read or documents:write"),
            )
        })?;
        if !scopes.contains(&scope.as_str()) {
            scopes.push(scope.as_str());
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request("invalid_scope", "give a key at least one scope"));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = format!("{KEY_PREFIX}{}", hex::encode(raw));
    let prefix = secret[..KEY_PREFIX.len() + 6].to_owned();
    let key: ApiKey = sqlx::query_as(
        "insert into api_keys (id, tenant_id, name, prefix, secret_hash, scopes, created_by)
         values ($1, $2, $3, $4, $5, $6, $7)
         returning id, name, prefix, scopes, created_by, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(user.tenant.0.id)
    .bind(name)
    .bind(&prefix)
    .bind(&hash(&secret)[..])
    .bind(&scopes)
    .bind(user.user.id)
    .fetch_one(&state.db)
    .await?;
    tracing::info!(key_id = %key.id, scopes = ?scopes, "API key created");
    let mut body = serde_json::to_value(&key).map_err(anyhow::Error::from)?;
    body["key"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list_keys(db: impl PgExecutor<'_>, tenant_id: Uuid) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, prefix, scopes, created_by, created_at, last_used_at, revoked_at
           from api_keys where tenant_id = $1 order by created_at desc",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

async fn list(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let keys = list_keys(&state.db, user.tenant.0.id).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

/// Revokes a key at once; revoking it again changes nothing.
async fn revoke(State(state): State<AppState>, user: CurrentUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let not_found = || ApiError::not_found("api_key_not_found", "no such API key");
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let found =
        sqlx::query("update api_keys set revoked_at = coalesce(revoked_at, now()) where tenant_id = $1 and id = $2")
            .bind(user.tenant.0.id)
            .bind(id)
            .execute(&state.db)
            .await?
            .rows_affected();
    if found == 0 {
        return Err(not_found());
    }
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
