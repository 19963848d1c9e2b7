//! Users of a tenant. A user is created on their first successful login.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::{email::Email, jwt::Role};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

macro_rules! columns {
    () => {
        "id, tenant_id, email, role, created_at, last_login_at"
    };
}

/// Records a login: creates the user the first time (with `role_if_new`), else stamps the time.
pub async fn upsert_on_login(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    email: &Email,
    role_if_new: Role,
) -> Result<User, sqlx::Error> {
    sqlx::query_as(concat!(
        "insert into users (id, tenant_id, email, role, last_login_at) values ($1, $2, $3, $4, now())
         on conflict (tenant_id, email) do update set last_login_at = now()
         returning ",
        columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(role_if_new)
    .fetch_one(db)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(concat!("select ", columns!(), " from users where tenant_id = $1 and id = $2"))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The user with this address, if they have logged in once.
pub async fn find_by_email(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    email: &Email,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(concat!("select ", columns!(), " from users where tenant_id = $1 and email = $2"))
        .bind(tenant_id)
        .bind(email.as_str())
        .fetch_optional(db)
        .await
}

/// The addresses of those of `ids` that are users of the tenant.
pub async fn emails(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("select id, email from users where tenant_id = $1 and id = any($2)")
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(db)
        .await
}
