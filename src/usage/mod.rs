//! `GET /v1/usage`: token usage from the ledger, for billing jobs and people.
//!
//! Every figure is a sum over `usage_events` (append-only). To stay fast with millions of rows,
//! a window `[from, to)` is summed from the hourly rollup `usage_hourly` for its whole hours and
//! from the ledger itself for the partial hours at either end (both read through indexes); the
//! rollup is written by a trigger in the same transaction as each ledger row, so the two always
//! agree. Admins and API keys see the tenant; members see only their own usage.
//!
//! The ledger is written by [`ledger`] only; quotas and their admission are in [`quota`] and
//! [`gate`]; the HTTP routes in [`routes`].

pub mod gate;
pub mod ledger;
pub mod quota;
pub mod routes;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Day,
    User,
    Model,
}

impl GroupBy {
    /// The bucket key of a row (`r`) of the summed window, and how a grouped key (`g.key`) is
    /// shown (days are grouped as times and formatted once per bucket).
    fn key_sql(group: Option<GroupBy>) -> (&'static str, &'static str) {
        match group {
            None => ("null::text", "g.key"),
            Some(GroupBy::Day) => ("date_trunc('day', r.at, 'UTC')", "to_char(g.key at time zone 'UTC', 'YYYY-MM-DD')"),
            Some(GroupBy::User) => ("coalesce('u' || r.user_id::text, 'k' || r.api_key_id::text, '-')", "g.key"),
            Some(GroupBy::Model) => ("r.model", "g.key"),
        }
    }
}

/// Tokens by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Totals {
    pub embedding: i64,
    pub prompt: i64,
    pub completion: i64,
    pub total: i64,
}

impl Totals {
    pub(crate) fn add(&mut self, kind: &str, tokens: i64) {
        match kind {
            "embedding" => self.embedding += tokens,
            "prompt" => self.prompt += tokens,
            "completion" => self.completion += tokens,
            _ => {}
        }
        self.total += tokens;
    }
}

/// What to sum: always the last 24 hours and 7 days up to now, and a range when asked.
pub struct UsageQuery {
    pub tenant: Uuid,
    /// only this user's usage
    pub user: Option<Uuid>,
    pub range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub group_by: Option<GroupBy>,
}

/// The sums of one request: the fixed windows, and the range with its buckets when asked.
#[derive(Debug, Default)]
pub struct UsageSums {
    pub as_of: Option<DateTime<Utc>>,
    pub last_24h: Totals,
    pub last_7d: Totals,
    pub range: Totals,
    pub buckets: BTreeMap<String, Totals>,
}

/// window, bucket key, kind, tokens, the database's time
type SumRow = (i32, Option<String>, String, i64, DateTime<Utc>);

/// A range and its grouping, as asked.
pub type RangeAsked = (Option<(DateTime<Utc>, DateTime<Utc>)>, Option<GroupBy>);

/// Sums the ledger over the windows in one statement. Window 1 is the last 24 h, window 2 the last
/// 7 days (both ending now, by the database's clock), window 3 the range.
///
/// A window `[f, t)` is cut at hour and day boundaries (UTC): the partial hours at either end come
/// from the ledger itself, whole hours and days from a rollup. Tenant-wide totals (by kind, or by
/// day) read the tenant rollups (days, then the hours around them); a member's own usage and
/// buckets by user or model read the rollup per user, key and model (hours).
pub async fn sum(db: impl PgExecutor<'_>, q: &UsageQuery) -> Result<UsageSums, sqlx::Error> {
    // the fine rollup when the coarse one lacks a dimension the answer needs
    let range_fine = q.user.is_some() || matches!(q.group_by, Some(GroupBy::User | GroupBy::Model));
    let rows: Vec<SumRow> = sqlx::query_as(sqlx::AssertSqlSafe(sum_sql(q)))
        .bind(q.tenant)
        .bind(q.user)
        .bind(q.range.map(|r| r.0))
        .bind(q.range.map(|r| r.1))
        .bind(range_fine)
        .fetch_all(db)
        .await?;
    let mut sums = UsageSums::default();
    for (window, key, kind, tokens, as_of) in rows {
        sums.as_of = Some(as_of);
        match window {
            1 => sums.last_24h.add(&kind, tokens),
            2 => sums.last_7d.add(&kind, tokens),
            _ => {
                sums.range.add(&kind, tokens);
                if let Some(key) = key {
                    sums.buckets.entry(key).or_default().add(&kind, tokens);
                }
            }
        }
    }
    Ok(sums)
}

/// The statement of [`sum`]: one for the tenant, another for one user, so that each is planned on
/// its own index; the range's bucket key as asked.
fn sum_sql(q: &UsageQuery) -> String {
    let (key, shown) = GroupBy::key_sql(q.group_by);
    let (user_u, user_e) = if q.user.is_some() { ("and u.user_id = $2", "and e.user_id = $2") } else { ("", "") };
    format!(
        "with w(n, f, t, fine) as (
             values (1, now() - interval '24 hours', now(), $2::uuid is not null),
                    (2, now() - interval '7 days', now(), $2::uuid is not null),
                    (3, $3::timestamptz, $4::timestamptz, $5::bool)
         ),
         e as (
             select n, f, t, fine,
                    date_trunc('hour', f, 'UTC')
                      + case when f = date_trunc('hour', f, 'UTC') then interval '0' else interval '1 hour' end as fh,
                    date_trunc('hour', t, 'UTC') as th,
                    date_trunc('day', f, 'UTC')
                      + case when f = date_trunc('day', f, 'UTC') then interval '0' else interval '24 hours' end as fd,
                    date_trunc('day', t, 'UTC') as td
               from w where f is not null and f < t
         ),
         b as (
             select e.*,
                    case when fd < td then fd else greatest(fh, th) end as d1,
                    case when fd < td then td else greatest(fh, th) end as d2
               from e
         )
         select g.n, {shown}, g.kind, g.tokens, now()
           from (
         select b.n, case when b.n = 3 then {key} end as key, r.kind, sum(r.tokens)::bigint as tokens
           from b cross join lateral (
                -- tenant-wide: whole days, then whole hours around them
                select d.day as at, null::uuid as user_id, null::uuid as api_key_id, d.kind, null::text as model, d.tokens
                  from usage_tenant_daily d
                 where not b.fine and d.tenant_id = $1 and d.day >= b.d1 and d.day < b.d2
                union all
                select h.hour, null, null, h.kind, null, h.tokens
                  from usage_tenant_hourly h
                 where not b.fine and h.tenant_id = $1 and h.hour >= b.fh and h.hour < b.d1
                union all
                select h.hour, null, null, h.kind, null, h.tokens
                  from usage_tenant_hourly h
                 where not b.fine and h.tenant_id = $1 and h.hour >= b.d2 and h.hour < b.th
                union all
                -- per user, key and model: whole hours
                select u.hour, u.user_id, u.api_key_id, u.kind, u.model, u.tokens
                  from usage_hourly u
                 where b.fine and u.tenant_id = $1 {user_u}
                   and u.hour >= b.fh and u.hour < b.th
                union all
                -- the ledger: the partial hours at either end
                select e.created_at, e.user_id, e.api_key_id, e.kind, e.model, e.tokens
                  from usage_events e
                 where e.tenant_id = $1 {user_e}
                   and e.created_at >= b.f and e.created_at < least(b.fh, b.t)
                union all
                select e.created_at, e.user_id, e.api_key_id, e.kind, e.model, e.tokens
                  from usage_events e
                 where e.tenant_id = $1 {user_e}
                   and e.created_at >= greatest(b.th, b.fh) and e.created_at < b.t
           ) r
          group by 1, 2, 3
         ) g"
    )
}
