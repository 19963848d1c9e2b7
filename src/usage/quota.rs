//! Token quotas per tenant and per user, per UTC day or calendar month.
//!
//! Admission happens in Postgres (`quota_admit`, migration 0005): under a per-tenant advisory lock
//! it adds the ledger's tokens for the period to the tokens *held* by requests in flight (the most
//! each may spend) and refuses when a quota is used up; otherwise it records the new request's hold.
//! The hold goes away in the same transaction as the request's ledger rows, so concurrent requests
//! overshoot a quota by at most one request. Tenants without quotas skip all of it, and their
//! requests are admitted without a round trip (see [`super::gate`]). The routes that manage
//! quotas are in [`super::routes`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::error::ApiError;

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

/// Why a request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("{}", .0.message())]
    Exceeded(Exceeded),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::Exceeded(e) => e.into(),
            AdmitError::Database(e) => e.into(),
        }
    }
}

/// An admitted request's hold, to release when its usage is written (`None` when no quota
/// applies).
pub type Hold = Option<Uuid>;

/// Why a quota could not be set.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("a tenant quota names no user")]
    TenantWithUser,
    #[error("a token limit is 0 or more")]
    NegativeLimit,
    #[error("no such user in this tenant")]
    UnknownUser,
    /// The operator set it (with the command line): the tenant's admins cannot change it.
    #[error("this quota was set by the operator of the service: only they can change or remove it")]
    OperatorSet,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::TenantWithUser | QuotaError::NegativeLimit => {
                ApiError::bad_request("invalid_quota", e.to_string())
            }
            QuotaError::UnknownUser => ApiError::not_found("user_not_found", e.to_string()),
            QuotaError::OperatorSet => ApiError::refused("operator_quota", e.to_string()),
            QuotaError::Database(e) => e.into(),
        }
    }
}

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
) -> Result<Hold, AdmitError> {
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
        return Ok(if row.held { hold } else { None });
    }
    Err(AdmitError::Exceeded(Exceeded {
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
) -> Result<Hold, AdmitError> {
    let mut tx = crate::db::for_tenant(db, tenant).await?;
    let hold = admit_inner(&mut *tx, tenant, user, Some(Uuid::now_v7()), tokens, hold_for).await?;
    tx.commit().await?;
    Ok(hold)
}

/// Refuses at once when a quota that applies is used up (no hold: for requests whose cost is held
/// later, such as uploads, whose embedding is admitted by the ingestion worker).
pub async fn check(db: &PgPool, tenant: Uuid, user: Option<Uuid>) -> Result<(), AdmitError> {
    let mut tx = crate::db::for_tenant(db, tenant).await?;
    admit_inner(&mut *tx, tenant, user, None, 0, Duration::ZERO).await?;
    // the admission sweeps the tenant's expired holds
    tx.commit().await?;
    Ok(())
}

/// Whether the tenant has any quota at all.
pub async fn tenant_has_quotas(db: impl PgExecutor<'_>, tenant: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from quotas where tenant_id = $1)").bind(tenant).fetch_one(db).await
}

/// Gives back a hold whose request ended without writing usage (in the caller's tenant
/// transaction).
pub async fn release(db: impl PgExecutor<'_>, tenant: Uuid, hold: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from quota_holds where tenant_id = $1 and id = $2").bind(tenant).bind(hold).execute(db).await?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuotaScope {
    Tenant,
    User,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
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

/// Who sets a quota: a tenant admin through the API, or the operator with the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetBy {
    Admin,
    Operator,
}

impl SetBy {
    fn as_str(self) -> &'static str {
        match self {
            SetBy::Admin => "admin",
            SetBy::Operator => "operator",
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
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QuotaView {
    pub scope: String,
    pub user_id: Option<Uuid>,
    pub period: String,
    pub token_limit: i64,
    pub used: Option<i64>,
    pub resets_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `operator` (binds the admins too) or `admin`; in the admins' view only
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
}

const VIEW: &str = "select q.scope, q.user_id, q.period, q.token_limit,
        case when q.scope = 'tenant' or q.user_id is not null
             then quota_used(q.tenant_id, q.scope, q.user_id, q.period) end as used,
        quota_reset(q.period) as resets_at,
        q.updated_at, q.set_by
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
/// there means every user of the tenant. A quota the operator set is the operator's: an admin's
/// change or removal of it is refused ([`QuotaError::OperatorSet`]); the operator's own change of
/// an admin's quota makes it the operator's.
pub async fn set(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    scope: QuotaScope,
    user: Option<Uuid>,
    period: Period,
    limit: Option<i64>,
    by: SetBy,
) -> Result<bool, QuotaError> {
    if scope == QuotaScope::Tenant && user.is_some() {
        return Err(QuotaError::TenantWithUser);
    }
    if limit.is_some_and(|l| l < 0) {
        return Err(QuotaError::NegativeLimit);
    }
    // one statement: `changed` is whether it took effect, `operators` whether an operator's quota
    // stood in the way
    let statement = if limit.is_none() {
        "with target as (
             select set_by from quotas
              where tenant_id = $1 and scope = $2 and user_id is not distinct from $3 and period = $4),
         removed as (
             delete from quotas
              where tenant_id = $1 and scope = $2 and user_id is not distinct from $3 and period = $4
                and (set_by = 'admin' or $6 = 'operator')
             returning 1)
         select exists (select 1 from removed) as changed,
                exists (select 1 from target where set_by = 'operator') and $6 <> 'operator' as operators
           from (select $5::bigint) unused"
    } else {
        "with written as (
             insert into quotas (tenant_id, scope, user_id, period, token_limit, set_by)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (tenant_id, scope, user_id, period)
             do update set token_limit = excluded.token_limit, set_by = excluded.set_by, updated_at = now()
                 where quotas.set_by = 'admin' or excluded.set_by = 'operator'
             returning 1)
         select exists (select 1 from written) as changed,
                not exists (select 1 from written) as operators"
    };
    let result: Result<(bool, bool), sqlx::Error> = sqlx::query_as(statement)
        .bind(tenant)
        .bind(scope.as_str())
        .bind(user)
        .bind(period.as_str())
        .bind(limit)
        .bind(by.as_str())
        .fetch_one(db)
        .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(QuotaError::UnknownUser),
        Err(e) => Err(e.into()),
        Ok((_, true)) => Err(QuotaError::OperatorSet),
        Ok((changed, false)) => Ok(changed),
    }
}

/// The quotas that apply to one user (the tenant's, and the user's own or the per-user default),
/// with what the user has used of each.
pub async fn list_for_user(db: impl PgExecutor<'_>, tenant: Uuid, user: Uuid) -> Result<Vec<QuotaView>, sqlx::Error> {
    sqlx::query_as(
        "with mine as (select * from quotas_for($1, $2))
         select m.scope, case when m.scope = 'user' then $2 end as user_id, m.period, m.token_limit,
                quota_used($1, m.scope, $2, m.period) as used,
                quota_reset(m.period) as resets_at,
                now() as updated_at, null::text as set_by
           from mine m order by m.scope, m.period",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(db)
    .await
}
