//! Token quotas per tenant and per user, per UTC day or calendar month.
//!
//! Admission happens in Postgres (`quota_admit`, migration 0005): under a per-tenant advisory lock
//! it adds the ledger's tokens for the period to the tokens *held* by requests in flight (the most
//! each may spend) and refuses when a quota is used up; otherwise it records the new request's hold.
//! The hold goes away in the same transaction as the request's ledger rows, so concurrent requests
//! overshoot a quota by at most one request. Tenants without quotas skip all of it, and their
//! requests are admitted without a round trip (see [`super::gate`]).
//!
//! `GET /v1/quotas` (the quotas that apply to the caller; admins see all), `PUT /v1/quotas` and
//! `DELETE /v1/quotas?scope=&period=&user_id=` (admins).

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::{CurrentUser, jwt::Role},
    error::{ApiError, ApiResult},
    http::extractors::AppJson,
};

/// A quota that is used up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub scope: String,
    pub period: String,
    pub token_limit: i64,
    pub used: i64,
    pub resets_at: DateTime<Utc>,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let whose = if self.scope == "tenant" { "the tenant's" } else { "your" };
        let period = if self.period == "day" { "daily" } else { "monthly" };
        format!(
            "{whose} {period} token quota ({} tokens) is used up; it resets at {}",
            self.token_limit,
            self.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    pub fn retry_after(&self) -> Duration {
        (self.resets_at - Utc::now()).to_std().unwrap_or(Duration::from_secs(1))
    }
}

impl From<Exceeded> for ApiError {
    fn from(e: Exceeded) -> Self {
        ApiError::TooManyRequests { code: "quota_exceeded", message: e.message(), retry_after: e.retry_after() }
    }
}

/// The result of an admission: a hold to release when the request's usage is written (`None` when
/// no quota applies), or the quota that is used up.
pub type Admission = Result<Option<Uuid>, Exceeded>;

#[derive(sqlx::FromRow)]
struct AdmitRow {
    admitted: bool,
    held: bool,
    scope: Option<String>,
    period: Option<String>,
    token_limit: Option<i64>,
    used: Option<i64>,
    resets_at: Option<DateTime<Utc>>,
}

async fn admit_inner(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    user: Option<Uuid>,
    hold: Option<Uuid>,
    tokens: i64,
    hold_for: Duration,
) -> Result<Admission, sqlx::Error> {
    let row: AdmitRow = sqlx::query_as(
        "select admitted, held, scope, period, token_limit, used, resets_at
           from quota_admit($1, $2, $3, $4, make_interval(secs => $5))",
    )
    .bind(tenant)
    .bind(user)
    .bind(hold)
    .bind(tokens)
    .bind(hold_for.as_secs_f64())
    .fetch_one(db)
    .await?;
    if row.admitted {
        return Ok(Ok(if row.held { hold } else { None }));
    }
    Ok(Err(Exceeded {
        scope: row.scope.unwrap_or_default(),
        period: row.period.unwrap_or_default(),
        token_limit: row.token_limit.unwrap_or_default(),
        used: row.used.unwrap_or_default(),
        resets_at: row.resets_at.unwrap_or_else(Utc::now),
    }))
}

/// Admits a request that may spend up to `tokens`, holding them until [`release`] (or the ledger
/// write that names the hold) or until `hold_for` has passed.
pub async fn admit(
    db: &PgPool,
    tenant: Uuid,
    user: Option<Uuid>,
    tokens: i64,
    hold_for: Duration,
) -> Result<Admission, sqlx::Error> {
    admit_inner(db, tenant, user, Some(Uuid::now_v7()), tokens, hold_for).await
}

/// Refuses at once when a quota that applies is used up (no hold: for requests whose cost is held
/// later, such as uploads, whose embedding is admitted by the ingestion worker).
pub async fn check(db: &PgPool, tenant: Uuid, user: Option<Uuid>) -> Result<(), ApiError> {
    match admit_inner(db, tenant, user, None, 0, Duration::ZERO).await? {
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Gives back a hold whose request ended without writing usage.
pub async fn release(db: impl PgExecutor<'_>, hold: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from quota_holds where id = $1").bind(hold).execute(db).await?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaScope {
    Tenant,
    User,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl QuotaScope {
    fn as_str(self) -> &'static str {
        match self {
            QuotaScope::Tenant => "tenant",
            QuotaScope::User => "user",
        }
    }
}

impl Period {
    fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// A quota row with what has been used of it this period (`used` is absent for the per-user
/// default, which every user has separately).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct QuotaView {
    pub scope: String,
    pub user_id: Option<Uuid>,
    pub period: String,
    pub token_limit: i64,
    pub used: Option<i64>,
    pub resets_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const VIEW: &str = "select q.scope, q.user_id, q.period, q.token_limit,
        case when q.scope = 'tenant' or q.user_id is not null
             then quota_used(q.tenant_id, q.scope, q.user_id, q.period) end as used,
        quota_reset(q.period) as resets_at,
        q.updated_at
   from quotas q";

/// All of a tenant's quotas.
pub async fn list(db: impl PgExecutor<'_>, tenant: Uuid) -> Result<Vec<QuotaView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} where q.tenant_id = $1 order by q.scope, q.user_id nulls first, q.period"
    )))
    .bind(tenant)
    .fetch_all(db)
    .await
}

/// Sets (or, with `limit: None`, removes) one quota. `user` is only for the `user` scope: `None`
/// there means every user of the tenant.
pub async fn set(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    scope: QuotaScope,
    user: Option<Uuid>,
    period: Period,
    limit: Option<i64>,
) -> Result<bool, ApiError> {
    if scope == QuotaScope::Tenant && user.is_some() {
        return Err(ApiError::bad_request("invalid_quota", "a tenant quota names no user"));
    }
    let Some(limit) = limit else {
        let removed = sqlx::query(
            "delete from quotas where tenant_id = $1 and scope = $2 and user_id is not distinct from $3 and period = $4",
        )
        .bind(tenant)
        .bind(scope.as_str())
        .bind(user)
        .bind(period.as_str())
        .execute(db)
        .await?
        .rows_affected();
        return Ok(removed > 0);
    };
    if limit < 0 {
        return Err(ApiError::bad_request("invalid_quota", "a token limit is 0 or more"));
    }
    let result = sqlx::query(
        "insert into quotas (tenant_id, scope, user_id, period, token_limit) values ($1, $2, $3, $4, $5)
         on conflict (tenant_id, scope, user_id, period)
         do update set token_limit = excluded.token_limit, updated_at = now()",
    )
    .bind(tenant)
    .bind(scope.as_str())
    .bind(user)
    .bind(period.as_str())
    .bind(limit)
    .execute(db)
    .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(ApiError::not_found("user_not_found", "no such user in this tenant"))
        }
        other => {
            other?;
            Ok(true)
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/quotas", get(show).put(put).delete(remove))
}

/// Admins see every quota of the tenant; members the ones that apply to them.
async fn show(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    let tenant = user.tenant.0.id;
    let quotas = if user.user.role == Role::Admin {
        list(&state.db, tenant).await?
    } else {
        sqlx::query_as(
            "with mine as (select * from quotas_for($1, $2))
             select m.scope, case when m.scope = 'user' then $2 end as user_id, m.period, m.token_limit,
                    quota_used($1, m.scope, $2, m.period) as used,
                    quota_reset(m.period) as resets_at,
                    now() as updated_at
               from mine m order by m.scope, m.period",
        )
        .bind(tenant)
        .bind(user.user.id)
        .fetch_all(&state.db)
        .await?
    };
    Ok(Json(json!({ "quotas": quotas })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuota {
    scope: QuotaScope,
    #[serde(default)]
    user_id: Option<Uuid>,
    period: Period,
    /// `null` removes the quota
    token_limit: Option<i64>,
}

async fn put(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<PutQuota>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let tenant = user.tenant.0.id;
    set(&state.db, tenant, body.scope, body.user_id, body.period, body.token_limit).await?;
    // this process's questions see it at once; others when the change's notification arrives
    state.quotas.forget();
    tracing::info!(scope = ?body.scope, period = ?body.period, limit = ?body.token_limit, "quota set");
    Ok(Json(json!({ "quotas": list(&state.db, tenant).await? })))
}

#[derive(Deserialize)]
struct DeleteQuota {
    scope: QuotaScope,
    #[serde(default)]
    user_id: Option<Uuid>,
    period: Period,
}

async fn remove(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<DeleteQuota>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let Query(q) = query.map_err(|_| {
        ApiError::bad_request("invalid_quota", "name the quota: ?scope=tenant|user&period=day|month[&user_id=…]")
    })?;
    let removed = set(&state.db, user.tenant.0.id, q.scope, q.user_id, q.period, None).await?;
    state.quotas.forget();
    if removed { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("quota_not_found", "no such quota")) }
}
