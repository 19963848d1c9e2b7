//! What the metering tests share: a tenant with a ready document whose embeddings and answers come
//! from the OpenAI-protocol server, the ledger summed directly (the reference every figure must
//! equal), and small request helpers.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    TestApp,
    openai::EmbeddingServer,
    ws::{Socket, next_json},
};

pub const QUESTION: &str = "What are the standard and recommended packages supplied with R?";

/// A tenant `acme` with one ready document, its admin's token, and a member's token; embeddings
/// and answers come from the OpenAI-protocol server.
pub async fn setup(db: PgPool, tweak: impl FnOnce(&mut docuchat::config::Config) + Send + 'static) -> Setup {
    let server = EmbeddingServer::start().await;
    let app = TestApp::builder().config(tweak).vars(server.vars()).vars(server.chat_vars()).spawn(db).await;
    let admin = app.acme_with_document().await;
    let member = app.login("acme", "ann@acme.example").await;
    Setup { app, server, admin, member }
}

pub struct Setup {
    pub app: TestApp,
    pub server: EmbeddingServer,
    pub admin: String,
    pub member: String,
}

pub async fn usage(app: &TestApp, token: &str, query: &str) -> Value {
    usage_in(app, "acme", token, query).await
}

pub async fn usage_in(app: &TestApp, tenant: &str, token: &str, query: &str) -> Value {
    let resp = app.get_as(&format!("/v1/usage{query}"), tenant, token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

pub fn total(v: &Value, window: &str, kind: &str) -> i64 {
    v[window][kind].as_i64().unwrap_or_else(|| panic!("{window}.{kind} in {v}"))
}

/// The ledger summed directly (the reference every figure must equal).
pub async fn ledger_sum(db: &PgPool, tenant: Uuid, user: Option<Uuid>, from: &str, to: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "select coalesce(sum(tokens) filter (where kind = 'embedding'), 0)::bigint,
                coalesce(sum(tokens) filter (where kind = 'prompt'), 0)::bigint,
                coalesce(sum(tokens) filter (where kind = 'completion'), 0)::bigint
           from usage_events
          where tenant_id = $1 and ($2::uuid is null or user_id = $2)
            and created_at >= $3::timestamptz and created_at < $4::timestamptz",
    )
    .bind(tenant)
    .bind(user)
    .bind(from)
    .bind(to)
    .fetch_one(db)
    .await
    .unwrap()
}

pub async fn tenant_id(db: &PgPool, slug: &str) -> Uuid {
    sqlx::query_scalar("select id from tenants where slug = $1").bind(slug).fetch_one(db).await.unwrap()
}

pub async fn user_id(db: &PgPool, email: &str) -> Uuid {
    sqlx::query_scalar("select id from users where email = $1").bind(email).fetch_one(db).await.unwrap()
}

/// Every rollup must equal the ledger summed by the rollup's keys (both ways round).
pub async fn assert_rollup_equals_ledger(db: &PgPool) {
    const MINUTE: &str = "date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00')";
    let by_minute = format!(
        "select tenant_id, {MINUTE}, user_id, api_key_id, kind, model, sum(tokens)::bigint, count(*)
           from usage_events group by 1, 2, 3, 4, 5, 6"
    );
    let tenant_by_minute =
        format!("select tenant_id, {MINUTE}, kind, sum(tokens)::bigint, count(*) from usage_events group by 1, 2, 3");
    let pairs = [
        (
            "usage_minutely",
            by_minute.as_str(),
            "select tenant_id, minute, user_id, api_key_id, kind, model, sum(tokens)::bigint, sum(events)::bigint
               from usage_minutely group by 1, 2, 3, 4, 5, 6",
        ),
        (
            "usage_tenant_minutely",
            tenant_by_minute.as_str(),
            "select tenant_id, minute, kind, sum(tokens)::bigint, sum(events)::bigint from usage_tenant_minutely
              group by 1, 2, 3",
        ),
        (
            "usage_hourly",
            "select tenant_id, date_trunc('hour', created_at, 'UTC'), user_id, api_key_id, kind, model,
                    sum(tokens)::bigint, count(*) from usage_events group by 1, 2, 3, 4, 5, 6",
            "select tenant_id, hour, user_id, api_key_id, kind, model, sum(tokens)::bigint, sum(events)::bigint
               from usage_hourly group by 1, 2, 3, 4, 5, 6",
        ),
        (
            "usage_tenant_hourly",
            "select tenant_id, date_trunc('hour', created_at, 'UTC'), kind, sum(tokens)::bigint, count(*)
               from usage_events group by 1, 2, 3",
            "select tenant_id, hour, kind, sum(tokens)::bigint, sum(events)::bigint from usage_tenant_hourly
              group by 1, 2, 3",
        ),
        (
            "usage_tenant_daily",
            "select tenant_id, date_trunc('day', created_at, 'UTC'), kind, sum(tokens)::bigint, count(*)
               from usage_events group by 1, 2, 3",
            "select tenant_id, day, kind, sum(tokens)::bigint, sum(events)::bigint from usage_tenant_daily
              group by 1, 2, 3",
        ),
    ];
    for (name, ledger, rollup) in pairs {
        let sql =
            format!("select count(*) from (({ledger} except all {rollup}) union all ({rollup} except all {ledger})) d");
        let diff: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(db).await.unwrap();
        assert_eq!(diff, 0, "{name} differs from the ledger");
    }
}

/// Reads frames to the end of one answer (`done` or `error`).
pub async fn finish(ws: &mut Socket) -> Value {
    loop {
        let f = next_json(ws).await;
        if f["type"] == "done" || f["type"] == "error" {
            return f;
        }
    }
}

/// Writes ledger rows at chosen times (the trigger keeps the rollup as it would for live rows).
pub async fn insert_at(db: &PgPool, tenant: Uuid, user: Option<Uuid>, kind: &str, model: &str, tokens: i64, at: &str) {
    sqlx::query(
        "insert into usage_events (tenant_id, user_id, kind, model, tokens, created_at)
         values ($1, $2, $3, $4, $5, $6::timestamptz)",
    )
    .bind(tenant)
    .bind(user)
    .bind(kind)
    .bind(model)
    .bind(tokens)
    .bind(at)
    .execute(db)
    .await
    .unwrap();
}

/// Tenants `acme` (admin boss@, member ann@) and `other` (admin root@): their tokens.
pub async fn two_tenants(app: &TestApp) -> (String, String, String) {
    app.create_tenant("acme", "boss@acme.example").await;
    app.create_tenant("other", "root@other.example").await;
    let admin = app.login("acme", "boss@acme.example").await;
    let member = app.login("acme", "ann@acme.example").await;
    let outsider = app.login("other", "root@other.example").await;
    (admin, member, outsider)
}

pub fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

pub async fn create_key(app: &TestApp, tenant: &str, token: &str, scopes: &[&str]) -> Response {
    app.client
        .post(app.url("/v1/api-keys"))
        .header("X-Tenant-ID", tenant)
        .bearer_auth(token)
        .json(&json!({"name": "billing job", "scopes": scopes}))
        .send()
        .await
        .unwrap()
}

pub async fn put_quota(app: &TestApp, token: &str, body: Value) -> Response {
    app.client
        .put(app.url("/v1/quotas"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn document(app: &TestApp, token: &str, uploaded: &Value) -> Value {
    let id = uploaded["document_id"].as_str().unwrap();
    app.get_as(&format!("/v1/documents/{id}"), "acme", token).await.json().await.unwrap()
}

/// Polls `f` every 10 ms until it holds, for at most `secs` seconds.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
