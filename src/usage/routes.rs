//! `GET /v1/usage` (for billing jobs and people), and the quotas: `GET /v1/quotas` (the quotas
//! that apply to the caller; admins see all), `PUT /v1/quotas` and
//! `DELETE /v1/quotas?scope=&period=&user_id=` (admins).

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    routing::get,
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    GroupBy, RangeAsked, Totals, UsageQuery,
    quota::{self, Period, QuotaScope},
};
use crate::{
    app::AppState,
    auth::{
        CurrentUser, Principal,
        api_keys::{self, Scope},
        jwt::Role,
        users,
    },
    error::{ApiError, ApiResult, Envelope as Error},
    http::extractors::AppJson,
};

/// The longest range one request may ask for.
const MAX_RANGE_DAYS: i64 = 400;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/usage", get(usage))
        .route("/v1/quotas", get(show_quotas).put(put_quota).delete(remove_quota))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// RFC 3339; 7 days before `to` unless given
    #[param(example = "2026-11-01T00:00:00Z")]
    from: Option<String>,
    /// RFC 3339; now unless given
    to: Option<String>,
    /// `day`, `user` or `model`: the range's totals in buckets
    #[param(pattern = "^(day|user|model)$")]
    group_by: Option<String>,
}

/// Tokens spent: always the last 24 hours and 7 days, and a range when asked for.
#[derive(Serialize, ToSchema)]
pub struct Usage {
    tenant_id: Uuid,
    /// `tenant` (admins and API keys) or `user` (members see their own)
    #[schema(example = "tenant")]
    scope: &'static str,
    /// the windows' "now" (RFC 3339, milliseconds): `last_24h` and `last_7d` hold every ledger row
    /// from 24 hours and 7 days before it on, to the last one written
    as_of: String,
    last_24h: Totals,
    last_7d: Totals,
    /// the member, when `scope` is `user`
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<UsageRange>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageRange {
    from: String,
    to: String,
    totals: Totals,
    /// `day`, `user`, `model`, or `null`
    group_by: Option<&'static str>,
    /// one per day, user or API key, or model; `null` without `group_by`
    buckets: Option<Vec<Bucket>>,
}

/// A bucket: `day` (YYYY-MM-DD, UTC), `model`, `user_id` with `email`, or `api_key_id` with
/// `api_key_name` — by the range's `group_by` — and its totals.
#[derive(Default, Serialize, ToSchema)]
pub struct Bucket {
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// `null`: spent by a user since removed
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    user_id: Option<Option<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    api_key_name: Option<Option<String>>,
    totals: Totals,
}

fn parse_time(name: &str, raw: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw.trim()).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::bad_request(
            "invalid_timestamp",
            format!("`{name}` must be an RFC 3339 time such as 2026-11-01T00:00:00Z"),
        )
    })
}

/// Reads the range parameters: `to` defaults to now, `from` to 7 days before `to`.
fn parse_range(p: &Params, now: DateTime<Utc>) -> ApiResult<RangeAsked> {
    let group_by = match p.group_by.as_deref() {
        None => None,
        Some("day") => Some(GroupBy::Day),
        Some("user") => Some(GroupBy::User),
        Some("model") => Some(GroupBy::Model),
        Some(_) => return Err(ApiError::bad_request("invalid_group_by", "group_by is day, user or model")),
    };
    if p.from.is_none() && p.to.is_none() && group_by.is_none() {
        return Ok((None, None));
    }
    let to = p.to.as_deref().map(|t| parse_time("to", t)).transpose()?.unwrap_or(now);
    let from = p.from.as_deref().map(|f| parse_time("from", f)).transpose()?.unwrap_or(to - Duration::days(7));
    if from >= to {
        return Err(ApiError::bad_request("invalid_range", "`from` must be before `to`"));
    }
    if to - from > Duration::days(MAX_RANGE_DAYS) {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("a range is at most {MAX_RANGE_DAYS} days: ask for longer periods in parts"),
        ));
    }
    Ok((Some((from, to)), group_by))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[utoipa::path(
    get, path = "/v1/usage", operation_id = "getUsage", tag = "usage", security(("bearer" = []), ("api_key" = [])),
    summary = "Tokens metered (users, or a key with `usage:read`)",
    description = "Admins and API keys see the whole tenant; members see their own usage. A range is at most 400 days.",
    params(Params),
    responses(
        (status = 200, description = "The sums", body = Usage),
        (status = 400, description = "`invalid_query`, `invalid_timestamp`, `invalid_range`, `invalid_group_by`", body = Error),
        (status = 403, description = "`insufficient_scope`", body = Error),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Usage>> {
    principal.require(Scope::UsageRead)?;
    let Query(params) = params.map_err(|_| ApiError::bad_request("invalid_query", "use ?from=&to=&group_by="))?;
    let now = Utc::now();
    let (range, group_by) = parse_range(&params, now)?;
    let tenant = principal.tenant_id();
    let user = if principal.is_tenant_wide() { None } else { principal.user_id() };
    let mut tx = crate::db::for_tenant_generic_plans(&state.db, tenant).await?;
    let sums = super::sum(&mut *tx, &UsageQuery { tenant, user, range, group_by, now }).await?;

    let mut body = Usage {
        tenant_id: tenant,
        scope: if user.is_some() { "user" } else { "tenant" },
        as_of: rfc3339(now),
        last_24h: sums.last_24h,
        last_7d: sums.last_7d,
        user_id: user,
        range: None,
    };
    if let Some((from, to)) = range {
        let buckets = match group_by {
            None => None,
            Some(group) => Some(buckets(&mut tx, tenant, group, sums.buckets).await?),
        };
        body.range = Some(UsageRange {
            from: rfc3339(from),
            to: rfc3339(to),
            totals: sums.range,
            group_by: group_by.map(|g| match g {
                GroupBy::Day => "day",
                GroupBy::User => "user",
                GroupBy::Model => "model",
            }),
            buckets,
        });
    }
    Ok(Json(body))
}

/// Bucket keys as objects: days and models as they are; users with their e-mail, keys with their
/// name.
async fn buckets(
    db: &mut sqlx::PgConnection,
    tenant: Uuid,
    group: GroupBy,
    sums: BTreeMap<String, Totals>,
) -> Result<Vec<Bucket>, sqlx::Error> {
    let mut out = Vec::with_capacity(sums.len());
    match group {
        GroupBy::Day => {
            for (day, totals) in sums {
                out.push(Bucket { day: Some(day), totals, ..Bucket::default() });
            }
        }
        GroupBy::Model => {
            for (model, totals) in sums {
                out.push(Bucket { model: Some(model), totals, ..Bucket::default() });
            }
        }
        GroupBy::User => {
            let ids: Vec<Uuid> =
                sums.keys().filter_map(|k| k.get(1..).and_then(|id| Uuid::try_parse(id).ok())).collect();
            let mut names = users::emails(&mut *db, tenant, &ids).await?;
            names.extend(api_keys::names(&mut *db, tenant, &ids).await?);
            let name = |id: Uuid| names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone());
            for (key, totals) in sums {
                let id = key.get(1..).and_then(|id| Uuid::try_parse(id).ok());
                let entry = match (key.as_bytes().first(), id) {
                    (Some(b'u'), Some(id)) => {
                        Bucket { user_id: Some(Some(id)), email: Some(name(id)), totals, ..Bucket::default() }
                    }
                    (Some(b'k'), Some(id)) => {
                        Bucket { api_key_id: Some(id), api_key_name: Some(name(id)), totals, ..Bucket::default() }
                    }
                    _ => Bucket { user_id: Some(None), totals, ..Bucket::default() },
                };
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// Admins see every quota of the tenant; members the ones that apply to them.
/// Quotas, each with what was used of it this period.
#[derive(Serialize, ToSchema)]
pub struct QuotaList {
    quotas: Vec<quota::QuotaView>,
}

#[utoipa::path(
    get, path = "/v1/quotas", operation_id = "listQuotas", tag = "usage", security(("bearer" = [])),
    summary = "Token quotas",
    description = "Admins: the tenant's quotas; members: those that apply to them.",
    responses((status = 200, description = "The quotas", body = QuotaList))
)]
pub async fn show_quotas(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<QuotaList>> {
    let tenant = user.tenant.0.id;
    let quotas = if user.user.role == Role::Admin {
        quota::list(&mut *crate::db::for_tenant(&state.db, tenant).await?, tenant).await?
    } else {
        quota::list_for_user(&mut *crate::db::for_tenant(&state.db, tenant).await?, tenant, user.user.id).await?
    };
    Ok(Json(QuotaList { quotas }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutQuota {
    scope: QuotaScope,
    /// with `scope: user`: that member; without, the default of every user
    #[serde(default)]
    user_id: Option<Uuid>,
    period: Period,
    /// tokens per period; `null` removes the quota
    #[schema(minimum = 0)]
    token_limit: Option<i64>,
}

#[utoipa::path(
    put, path = "/v1/quotas", operation_id = "setQuota", tag = "usage", security(("bearer" = [])),
    summary = "Set a quota (admins)",
    request_body = PutQuota,
    responses(
        (status = 200, description = "The tenant's quotas now", body = QuotaList),
        (status = 400, description = "`invalid_quota` (a tenant quota with a user, a negative limit)", body = Error),
        (status = 403, description = "`forbidden`: for tenant admins; `operator_quota`: the operator's quotas are not the API's to change", body = Error),
        (status = 404, description = "`user_not_found`", body = Error),
    )
)]
pub async fn put_quota(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<PutQuota>,
) -> ApiResult<Json<QuotaList>> {
    user.require_admin()?;
    let tenant = user.tenant.0.id;
    let mut tx = crate::db::for_tenant(&state.db, tenant).await?;
    quota::set(&mut *tx, tenant, body.scope, body.user_id, body.period, body.token_limit, quota::SetBy::Admin).await?;
    let quotas = quota::list(&mut *tx, tenant).await?;
    tx.commit().await?;
    // this process's questions see it at once; others when the change's notification arrives
    state.quotas.forget();
    tracing::info!(scope = ?body.scope, period = ?body.period, limit = ?body.token_limit, "quota set");
    Ok(Json(QuotaList { quotas }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuota {
    scope: QuotaScope,
    #[serde(default)]
    user_id: Option<Uuid>,
    period: Period,
}

#[utoipa::path(
    delete, path = "/v1/quotas", operation_id = "removeQuota", tag = "usage", security(("bearer" = [])),
    summary = "Remove a quota (admins)",
    params(DeleteQuota),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`invalid_quota`", body = Error),
        (status = 403, description = "`forbidden`: for tenant admins; `operator_quota`", body = Error),
        (status = 404, description = "`quota_not_found`", body = Error),
    )
)]
pub async fn remove_quota(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<DeleteQuota>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let Query(q) = query.map_err(|_| {
        ApiError::bad_request("invalid_quota", "name the quota: ?scope=tenant|user&period=day|month[&user_id=…]")
    })?;
    let mut tx = crate::db::for_tenant(&state.db, user.tenant.0.id).await?;
    let removed =
        quota::set(&mut *tx, user.tenant.0.id, q.scope, q.user_id, q.period, None, quota::SetBy::Admin).await?;
    tx.commit().await?;
    state.quotas.forget();
    if removed { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("quota_not_found", "no such quota")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<&str>, to: Option<&str>, group_by: Option<&str>) -> Params {
        Params { from: from.map(Into::into), to: to.map(Into::into), group_by: group_by.map(Into::into) }
    }

    #[test]
    fn range_defaults_and_refusals() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_range(&params(None, None, None), now).unwrap(), (None, None));
        let (range, group) = parse_range(&params(None, None, Some("day")), now).unwrap();
        assert_eq!(range, Some((now - Duration::days(7), now)));
        assert_eq!(group, Some(GroupBy::Day));
        let (range, _) = parse_range(&params(Some("2026-11-01T00:00:00+03:30"), None, None), now).unwrap();
        assert_eq!(range.unwrap().0.to_rfc3339(), "2026-10-31T20:30:00+00:00");
        let code = |p: Params| parse_range(&p, now).unwrap_err().code();
        assert_eq!(code(params(Some("yesterday"), None, None)), "invalid_timestamp");
        assert_eq!(code(params(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T10:00:00Z"), None)), "invalid_range");
        assert_eq!(code(params(Some("2024-01-01T00:00:00Z"), None, None)), "invalid_range");
        assert_eq!(code(params(None, None, Some("week"))), "invalid_group_by");
    }
}
