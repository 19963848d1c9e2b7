//! `GET /v1/usage`: token usage from the ledger, for billing jobs and people.
//!
//! Every figure is a sum over `usage_events` (append-only). To stay fast with millions of rows and
//! busy tenants, a window `[from, to)` is summed from rollups of whole days, hours and minutes, and
//! from the ledger itself only for the partial minutes at either end ([`window`]); the rollups are
//! written by a trigger in the same transaction as each ledger row, so they always agree with it.
//! Admins and API keys see the tenant; members see only their own usage.
//!
//! The ledger is written by [`ledger`] only; quotas and their admission are in [`quota`] and
//! [`gate`]; the HTTP routes in [`routes`].

pub mod gate;
pub mod ledger;
pub mod quota;
pub mod routes;
pub mod window;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;
use window::{Rollups, Source};

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
    /// the windows' "now" (they are open at their end; see [`sum`])
    pub now: DateTime<Utc>,
}

/// The sums of one request: the fixed windows, and the range with its buckets when asked.
#[derive(Debug, Default)]
pub struct UsageSums {
    pub last_24h: Totals,
    pub last_7d: Totals,
    pub range: Totals,
    pub buckets: BTreeMap<String, Totals>,
}

/// window, bucket key, kind, tokens
type SumRow = (i16, Option<String>, String, i64);

/// A range and its grouping, as asked.
pub type RangeAsked = (Option<(DateTime<Utc>, DateTime<Utc>)>, Option<GroupBy>);

/// Sums the ledger over the windows in one statement. Window 1 is the last 24 h, window 2 the last
/// 7 days — every row from `now` less that span on, so the current day, hour and minute are read
/// whole from their rollups — and window 3 the range `[from, to)`.
///
/// Each window is cut ([`window::cut`]) into parts read from the coarsest rollup that fits: only the
/// partial minutes at a window's ends come from the ledger itself. Tenant-wide totals (by kind, or
/// by day) read the tenant rollups; a member's own usage and buckets by user or model read the
/// rollups by user, key and model.
pub async fn sum(db: impl PgExecutor<'_>, q: &UsageQuery) -> Result<UsageSums, sqlx::Error> {
    let fixed = if q.user.is_some() { Rollups::Fine } else { Rollups::Tenant };
    let ranged = if q.user.is_some() || matches!(q.group_by, Some(GroupBy::User | GroupBy::Model)) {
        Rollups::Fine
    } else {
        fixed
    };
    let mut parts: Vec<(i16, window::Part)> = Vec::new();
    for (n, span) in [(1, TimeDelta::hours(24)), (2, TimeDelta::days(7))] {
        parts.extend(window::cut(q.now - span, None, fixed).into_iter().map(|p| (n, p)));
    }
    if let Some((from, to)) = q.range {
        parts.extend(window::cut(from, Some(to), ranged).into_iter().map(|p| (3, p)));
    }
    let rows: Vec<SumRow> = sqlx::query_as(sqlx::AssertSqlSafe(sum_sql(q)))
        .bind(q.tenant)
        .bind(q.user)
        .bind(parts.iter().map(|(n, _)| *n).collect::<Vec<_>>())
        .bind(parts.iter().map(|(_, p)| p.source as i16).collect::<Vec<_>>())
        .bind(parts.iter().map(|(_, p)| p.from).collect::<Vec<_>>())
        .bind(parts.iter().map(|(_, p)| p.to).collect::<Vec<_>>())
        .fetch_all(db)
        .await?;
    let mut sums = UsageSums::default();
    for (window, key, kind, tokens) in rows {
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
/// its own index; the range's bucket key as asked. The parts come as arrays (`$3`–`$6`: window,
/// source, from, to or null for open); each part runs only the arm of its source (the others'
/// conditions on the part are one-time filters), one index range scan.
fn sum_sql(q: &UsageQuery) -> String {
    let (key, shown) = GroupBy::key_sql(q.group_by);
    let (user_u, user_e) = if q.user.is_some() { ("and u.user_id = $2", "and e.user_id = $2") } else { ("", "") };
    let (ledger, t_min, t_hour, t_day, minutes, hours) = (
        Source::Ledger as i16,
        Source::TenantMinutes as i16,
        Source::TenantHours as i16,
        Source::TenantDays as i16,
        Source::Minutes as i16,
        Source::Hours as i16,
    );
    format!(
        "select g.n, {shown}, g.kind, g.tokens
           from (
         select p.n, case when p.n = 3 then {key} end as key, r.kind, sum(r.tokens)::bigint as tokens
           -- an open end is infinity in the array itself: `coalesce(t, 'infinity')` here would
           -- not be an index bound, and every part would read all rows after its start
           from unnest($3::int2[], $4::int2[], $5::timestamptz[], array_replace($6::timestamptz[], null, 'infinity'))
                as p(n, src, f, t)
          cross join lateral (
                select d.day as at, null::uuid as user_id, null::uuid as api_key_id, d.kind, null::text as model, d.tokens
                  from usage_tenant_daily d
                 where p.src = {t_day} and d.tenant_id = $1 and d.day >= p.f and d.day < p.t
                union all
                select h.hour, null, null, h.kind, null, h.tokens
                  from usage_tenant_hourly h
                 where p.src = {t_hour} and h.tenant_id = $1 and h.hour >= p.f and h.hour < p.t
                union all
                select m.minute, null, null, m.kind, null, m.tokens
                  from usage_tenant_minutely m
                 where p.src = {t_min} and m.tenant_id = $1 and m.minute >= p.f and m.minute < p.t
                union all
                select u.hour, u.user_id, u.api_key_id, u.kind, u.model, u.tokens
                  from usage_hourly u
                 where p.src = {hours} and u.tenant_id = $1 {user_u} and u.hour >= p.f and u.hour < p.t
                union all
                select u.minute, u.user_id, u.api_key_id, u.kind, u.model, u.tokens
                  from usage_minutely u
                 where p.src = {minutes} and u.tenant_id = $1 {user_u} and u.minute >= p.f and u.minute < p.t
                union all
                select e.created_at, e.user_id, e.api_key_id, e.kind, e.model, e.tokens
                  from usage_events e
                 where p.src = {ledger} and e.tenant_id = $1 {user_e}
                   and e.created_at >= p.f and e.created_at < p.t
           ) r
          group by 1, 2, 3
         ) g"
    )
}
