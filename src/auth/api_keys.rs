//! API keys for machines (billing jobs, upload scripts): created and revoked by tenant admins, each
//! with scopes. The secret (`dck_` + 64 hex digits, 256 random bits) is shown once; only its SHA-256
//! is stored, and a presented key is found by that hash. The routes are in
//! [`super::routes`].

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::ApiError;

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
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// Why a presented key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// unknown, malformed, or another tenant's: all refused the same way
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has been revoked")]
    Revoked,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid => {
                ApiError::Unauthorized { code: "invalid_api_key", message: "the API key is not valid" }
            }
            KeyError::Revoked => {
                ApiError::Unauthorized { code: "api_key_revoked", message: "the API key has been revoked" }
            }
            KeyError::Database(e) => e.into(),
        }
    }
}

pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Finds the tenant's live key for a presented secret: remembered by `access` for a minute at
/// most, and forgotten at once when it is revoked (src/auth/access.rs).
pub async fn authenticate(
    db: &sqlx::PgPool,
    access: &std::sync::Arc<super::access::AccessWatch>,
    tenant_id: Uuid,
    secret: &str,
) -> Result<KeyCaller, KeyError> {
    if secret.len() != KEY_PREFIX.len() + 64 {
        return Err(KeyError::Invalid);
    }
    let hashed = hash(secret);
    if let Some((key, stamp_due)) = access.cached_key(&hashed, tenant_id) {
        if stamp_due {
            stamp(db, tenant_id, key.id);
        }
        return Ok(key);
    }
    let generation = access.generation();
    let row: Option<(Uuid, Uuid, Vec<String>, bool, bool)> = sqlx::query_as(
        "select id, tenant_id, scopes, revoked_at is not null,
                last_used_at is null or last_used_at < now() - interval '1 minute'
           from api_keys where secret_hash = $1",
    )
    .bind(&hashed[..])
    // the tenant's keys only (row-level security): another tenant's key is not found
    .fetch_optional(&mut *crate::db::for_tenant(db, tenant_id).await?)
    .await?;
    let Some((id, key_tenant, scopes, revoked, stale)) = row else { return Err(KeyError::Invalid) };
    if key_tenant != tenant_id {
        tracing::debug!(key_id = %id, "API key used with another tenant");
        return Err(KeyError::Invalid);
    }
    if revoked {
        return Err(KeyError::Revoked);
    }
    if stale {
        stamp(db, tenant_id, id);
    }
    let key = KeyCaller { id, scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect() };
    access.remember_key(hashed, tenant_id, key.clone(), generation);
    Ok(key)
}

/// Writes the key's last-used stamp (at most once a minute per key), off the request's path.
fn stamp(db: &sqlx::PgPool, tenant_id: Uuid, id: Uuid) {
    let db = db.clone();
    tokio::spawn(async move {
        let Ok(mut tx) = crate::db::for_tenant(&db, tenant_id).await else { return };
        let stamped = sqlx::query("update api_keys set last_used_at = now() where tenant_id = $1 and id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await;
        if stamped.is_ok() {
            let _ = tx.commit().await;
        }
    });
}

/// Creates a key with these scopes, unless the tenant already has `max_live` keys that are not
/// revoked (`None` then); returns it with its secret, which is shown only now.
pub async fn create(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    created_by: Uuid,
    name: &str,
    scopes: &[Scope],
    max_live: i64,
) -> Result<Option<(ApiKey, String)>, sqlx::Error> {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = format!("{KEY_PREFIX}{}", hex::encode(raw));
    let prefix = secret[..KEY_PREFIX.len() + 6].to_owned();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let key: Option<ApiKey> = sqlx::query_as(
        "insert into api_keys (id, tenant_id, name, prefix, secret_hash, scopes, created_by)
         select $1, $2, $3, $4, $5, $6, $7
          where (select count(*) from api_keys where tenant_id = $2 and revoked_at is null) < $8
         returning id, name, prefix, scopes, created_by, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(name)
    .bind(&prefix)
    .bind(&hash(&secret)[..])
    .bind(&scopes)
    .bind(created_by)
    .bind(max_live)
    .fetch_optional(db)
    .await?;
    Ok(key.map(|k| (k, secret)))
}

pub async fn list(db: impl PgExecutor<'_>, tenant_id: Uuid) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, prefix, scopes, created_by, created_at, last_used_at, revoked_at
           from api_keys where tenant_id = $1 order by created_at desc",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

/// The names of those of `ids` that are keys of the tenant.
pub async fn names(db: impl PgExecutor<'_>, tenant_id: Uuid, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("select id, name from api_keys where tenant_id = $1 and id = any($2)")
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(db)
        .await
}

/// Revokes a key at once (revoking it again changes nothing); false when the tenant has no such
/// key.
pub async fn revoke(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let found =
        sqlx::query("update api_keys set revoked_at = coalesce(revoked_at, now()) where tenant_id = $1 and id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(db)
            .await?
            .rows_affected();
    Ok(found > 0)
}
