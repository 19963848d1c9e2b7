//! Metering end to end: the ledger against what clients were told, `GET /v1/usage` windows and
//! visibility, API keys, quotas and rate limits, against real Postgres and Redis and a server
//! speaking OpenAI's protocol (embeddings and streamed chat).

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use chrono::{DateTime, Utc};
use common::{
    RedisProcess, TestApp, error_of,
    openai::EmbeddingServer,
    ws::{Socket, ask, connect, fixture, next_json, send},
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;
use sqlx::PgPool;
use uuid::Uuid;

const QUESTION: &str = "What are the standard and recommended packages supplied with R?";

/// A tenant `acme` with one ready document, its admin's token, and a member's token; embeddings
/// and answers come from the OpenAI-protocol server.
async fn setup(db: PgPool, tweak: impl FnOnce(&mut docuchat::config::Config) + Send + 'static) -> Setup {
    let server = EmbeddingServer::start().await;
    let mut builder = TestApp::builder().config(tweak);
    for (k, v) in server.vars().into_iter().chain(server.chat_vars()) {
        builder = builder.var(k, v);
    }
    let app = builder.spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let admin = app.login("acme", "boss@acme.example").await;
    let member = app.login("acme", "ann@acme.example").await;
    let resp = app.upload("acme", &admin, "r-intro.pdf", fixture("english-2page.pdf")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    app.drain().await;
    Setup { app, server, admin, member }
}

struct Setup {
    app: TestApp,
    server: EmbeddingServer,
    admin: String,
    member: String,
}

async fn usage(app: &TestApp, token: &str, query: &str) -> Value {
    usage_in(app, "acme", token, query).await
}

async fn usage_in(app: &TestApp, tenant: &str, token: &str, query: &str) -> Value {
    let resp = app.get_as(&format!("/v1/usage{query}"), tenant, token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

fn total(v: &Value, window: &str, kind: &str) -> i64 {
    v[window][kind].as_i64().unwrap_or_else(|| panic!("{window}.{kind} in {v}"))
}

/// The ledger summed directly (the reference every figure must equal).
async fn ledger_sum(db: &PgPool, tenant: Uuid, user: Option<Uuid>, from: &str, to: &str) -> (i64, i64, i64) {
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

async fn tenant_id(db: &PgPool, slug: &str) -> Uuid {
    sqlx::query_scalar("select id from tenants where slug = $1").bind(slug).fetch_one(db).await.unwrap()
}

async fn user_id(db: &PgPool, email: &str) -> Uuid {
    sqlx::query_scalar("select id from users where email = $1").bind(email).fetch_one(db).await.unwrap()
}

/// Every rollup must equal the ledger summed by the rollup's keys (both ways round).
async fn assert_rollup_equals_ledger(db: &PgPool) {
    let pairs = [
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
async fn finish(ws: &mut Socket) -> Value {
    loop {
        let f = next_json(ws).await;
        if f["type"] == "done" || f["type"] == "error" {
            return f;
        }
    }
}

#[sqlx::test]
async fn the_ledger_equals_the_usage_reported_over_concurrent_chats(db: PgPool) {
    let s = setup(db, |_| {}).await;
    s.server.control.chat_tokens.store(40, Ordering::SeqCst);
    s.server.control.chat_token_delay_ms.store(5, Ordering::SeqCst);
    let before = usage(&s.app, &s.admin, "").await;

    // 12 sockets, 3 questions each; every third socket cancels its second answer mid-stream
    let mut tasks = Vec::new();
    for i in 0..12 {
        let token = if i % 2 == 0 { s.admin.clone() } else { s.member.clone() };
        let mut ws = connect(&s.app, &token).await;
        tasks.push(tokio::spawn(async move {
            let (mut prompt, mut completion, mut cancelled) = (0i64, 0i64, 0usize);
            for q in 0..3 {
                send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
                if i % 3 == 0 && q == 1 {
                    // cancel once the answer is streaming
                    loop {
                        if next_json(&mut ws).await["type"] == "token" {
                            break;
                        }
                    }
                    send(&mut ws, json!({"type": "cancel"})).await;
                }
                let done = finish(&mut ws).await;
                assert_eq!(done["type"], "done", "{done}");
                if done["status"] == "cancelled" {
                    cancelled += 1;
                }
                prompt += done["usage"]["prompt_tokens"].as_i64().unwrap();
                completion += done["usage"]["completion_tokens"].as_i64().unwrap();
            }
            (prompt, completion, cancelled)
        }));
    }
    let (mut prompt, mut completion, mut cancelled) = (0, 0, 0);
    for t in tasks {
        let (p, c, n) = t.await.unwrap();
        prompt += p;
        completion += c;
        cancelled += n;
    }
    assert!(cancelled >= 1, "no answer was cancelled mid-stream");
    assert!(prompt > 0 && completion > 0);

    let tenant = tenant_id(&s.app.db, "acme").await;
    let (_, ledger_prompt, ledger_completion) = ledger_sum(&s.app.db, tenant, None, "-infinity", "infinity").await;
    assert_eq!((ledger_prompt, ledger_completion), (prompt, completion));
    // and the API reports the same, in both windows
    let after = usage(&s.app, &s.admin, "").await;
    for window in ["last_24h", "last_7d"] {
        assert_eq!(total(&after, window, "prompt") - total(&before, window, "prompt"), prompt);
        assert_eq!(total(&after, window, "completion") - total(&before, window, "completion"), completion);
        assert_eq!(
            total(&after, window, "total"),
            total(&after, window, "embedding") + total(&after, window, "prompt") + total(&after, window, "completion")
        );
    }
    // the embedding of the document and of every question is in the ledger too
    let (embedding, _, _) = ledger_sum(&s.app.db, tenant, None, "-infinity", "infinity").await;
    assert_eq!(total(&after, "last_24h", "embedding"), embedding);
    assert!(embedding > 0);
    assert_rollup_equals_ledger(&s.app.db).await;

    // the ledger cannot be changed afterwards
    let err = sqlx::query("update usage_events set tokens = 0").execute(&s.app.db).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("delete from usage_events").execute(&s.app.db).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

/// Writes ledger rows at chosen times (the trigger keeps the rollup as it would for live rows).
async fn insert_at(db: &PgPool, tenant: Uuid, user: Option<Uuid>, kind: &str, model: &str, tokens: i64, at: &str) {
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

#[sqlx::test]
async fn windows_are_exact_at_their_edges(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let admin = app.login("acme", "boss@acme.example").await;
    let tenant = tenant_id(&app.db, "acme").await;
    let boss = user_id(&app.db, "boss@acme.example").await;

    // rows just inside and just outside the 24 h and 7 d windows, around hour boundaries, and a
    // spread of others (a distinct power of two each, so any wrong inclusion shows)
    let offsets = [
        "-24 hours -1 second",
        "-24 hours +1 second",
        "-7 days -1 second",
        "-7 days +1 second",
        "-1 second",
        "-3 hours",
        "-30 days",
        "-6 days -23 hours -59 minutes",
        "-23 hours -59 minutes",
        "-2 days -17 minutes",
    ];
    for (i, offset) in offsets.iter().enumerate() {
        let at: String =
            sqlx::query_scalar("select (now() + $1::interval)::text").bind(*offset).fetch_one(&app.db).await.unwrap();
        let kind = ["embedding", "prompt", "completion"][i % 3];
        insert_at(&app.db, tenant, Some(boss), kind, "m", 1 << i, &at).await;
    }
    // rows on exact hour boundaries
    for (j, at) in ["2026-01-10T10:00:00Z", "2026-01-10T11:00:00Z", "2026-01-10T10:59:59.999999Z"].iter().enumerate() {
        insert_at(&app.db, tenant, Some(boss), "prompt", "m", 1 << (20 + j), at).await;
    }
    assert_rollup_equals_ledger(&app.db).await;

    let v = usage(&app, &admin, "").await;
    let as_of = v["as_of"].as_str().unwrap().to_owned();
    let as_of_t: DateTime<Utc> = as_of.parse().unwrap();
    let at = |d: chrono::Duration| (as_of_t - d).to_rfc3339();
    for (window, span) in [("last_24h", chrono::Duration::hours(24)), ("last_7d", chrono::Duration::days(7))] {
        let (e, p, c) = ledger_sum(&app.db, tenant, None, &at(span), &as_of).await;
        // the API's clock is the database's, a moment after `as_of` was read; rows were written before
        assert_eq!(
            (total(&v, window, "embedding"), total(&v, window, "prompt"), total(&v, window, "completion")),
            (e, p, c),
            "{window}: {v}"
        );
    }
    // the 24 h window holds exactly the rows at -24h+1s, -23h59m, -3h and -1s
    let want = (1 << 1) + (1 << 8) + (1 << 5) + (1 << 4);
    assert_eq!(total(&v, "last_24h", "total"), want);

    // ranges with edges inside hours, on hours, and within one hour
    let ranges = [
        ("2026-01-10T10:00:00Z", "2026-01-10T11:00:00Z"),
        ("2026-01-10T10:00:00Z", "2026-01-10T11:00:00.000001Z"),
        ("2026-01-10T10:30:00Z", "2026-01-10T10:59:59.999999Z"),
        ("2026-01-10T09:59:59Z", "2026-01-10T10:00:01Z"),
        ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
    ];
    for (from, to) in ranges {
        let q = format!("?from={}&to={}", urlencode(from), urlencode(to));
        let v = usage(&app, &admin, &q).await;
        let (e, p, c) = ledger_sum(&app.db, tenant, None, from, to).await;
        let r = &v["range"]["totals"];
        assert_eq!(
            (r["embedding"].as_i64(), r["prompt"].as_i64(), r["completion"].as_i64()),
            (Some(e), Some(p), Some(c)),
            "{from}..{to}"
        );
        // the same through the rollup per user and model
        let v = usage(&app, &admin, &format!("{q}&group_by=model")).await;
        assert_eq!(v["range"]["totals"], r.clone(), "{from}..{to} by model");
    }
    // a member's own windows, through the rollup per user
    let member = app.login("acme", "ann@acme.example").await;
    let ann = user_id(&app.db, "ann@acme.example").await;
    for (i, offset) in offsets.iter().enumerate() {
        let at: String =
            sqlx::query_scalar("select (now() + $1::interval)::text").bind(*offset).fetch_one(&app.db).await.unwrap();
        insert_at(&app.db, tenant, Some(ann), "completion", "m", 3 << i, &at).await;
    }
    let v = usage(&app, &member, "").await;
    let as_of: DateTime<Utc> = v["as_of"].as_str().unwrap().parse().unwrap();
    for (window, span) in [("last_24h", chrono::Duration::hours(24)), ("last_7d", chrono::Duration::days(7))] {
        let (e, p, c) = ledger_sum(&app.db, tenant, Some(ann), &(as_of - span).to_rfc3339(), &as_of.to_rfc3339()).await;
        assert_eq!(v[window]["total"].as_i64().unwrap(), e + p + c, "member {window}: {v}");
    }
    assert_eq!(v["last_24h"]["total"].as_i64().unwrap(), 3 * want);
    // ranges ending now, at every offset used above, and by day
    for offset in ["-7 days -2 seconds", "-24 hours", "-90 minutes", "-31 days"] {
        let from: String = sqlx::query_scalar(
            "select to_char((now() + $1::interval) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .bind(offset)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let v = usage(&app, &admin, &format!("?from={}&group_by=day", urlencode(&from))).await;
        let to = v["range"]["to"].as_str().unwrap().to_owned();
        let (e, p, c) = ledger_sum(&app.db, tenant, None, &from, &to).await;
        assert_eq!(v["range"]["totals"]["total"].as_i64().unwrap(), e + p + c, "from {from}: {v}");
        let by_day: i64 =
            v["range"]["buckets"].as_array().unwrap().iter().map(|b| b["totals"]["total"].as_i64().unwrap()).sum();
        assert_eq!(by_day, e + p + c);
    }
    let by_day = usage(&app, &admin, "?from=2026-01-10T00:00:00Z&to=2026-01-12T00:00:00Z&group_by=day").await;
    assert_eq!(
        by_day["range"]["buckets"],
        json!([{"day": "2026-01-10", "totals": {"embedding": 0, "prompt": 7 << 20, "completion": 0, "total": 7 << 20}}])
    );

    // bad parameters get the error envelope
    for (q, code) in [
        ("?from=yesterday", "invalid_timestamp"),
        ("?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "invalid_range"),
        ("?group_by=week", "invalid_group_by"),
        ("?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "invalid_range"),
    ] {
        let (status, got, _) = error_of(app.get_as(&format!("/v1/usage{q}"), "acme", &admin).await).await;
        assert_eq!((status, got.as_str()), (StatusCode::BAD_REQUEST, code), "{q}");
    }
}

/// Tenants `acme` (admin boss@, member ann@) and `other` (admin root@): their tokens.
async fn two_tenants(app: &TestApp) -> (String, String, String) {
    app.create_tenant("acme", "boss@acme.example").await;
    app.create_tenant("other", "root@other.example").await;
    let admin = app.login("acme", "boss@acme.example").await;
    let member = app.login("acme", "ann@acme.example").await;
    let outsider = app.login("other", "root@other.example").await;
    (admin, member, outsider)
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[sqlx::test]
async fn admins_see_the_tenant_and_members_only_themselves(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (admin, member, outsider) = two_tenants(&app).await;
    let (acme, other) = (tenant_id(&app.db, "acme").await, tenant_id(&app.db, "other").await);
    let (boss, ann) = (user_id(&app.db, "boss@acme.example").await, user_id(&app.db, "ann@acme.example").await);
    let now: String =
        sqlx::query_scalar("select (now() - interval '1 minute')::text").fetch_one(&app.db).await.unwrap();
    insert_at(&app.db, acme, Some(boss), "prompt", "gpt-a", 100, &now).await;
    insert_at(&app.db, acme, Some(ann), "prompt", "gpt-a", 10, &now).await;
    insert_at(&app.db, acme, Some(ann), "completion", "gpt-b", 5, &now).await;
    insert_at(&app.db, acme, None, "embedding", "emb", 1000, &now).await;
    insert_at(&app.db, other, None, "embedding", "emb", 99999, &now).await;

    let v = usage(&app, &admin, "").await;
    assert_eq!(v["scope"], "tenant");
    assert_eq!(v["last_24h"], json!({"embedding": 1000, "prompt": 110, "completion": 5, "total": 1115}));
    let v = usage(&app, &member, "").await;
    assert_eq!(v["scope"], "user");
    assert_eq!(v["user_id"], json!(ann));
    assert_eq!(v["last_24h"], json!({"embedding": 0, "prompt": 10, "completion": 5, "total": 15}));
    assert_eq!(usage_in(&app, "other", &outsider, "").await["last_24h"]["total"], 99999);

    // buckets by user (with addresses) and by model
    let v = usage(&app, &admin, "?group_by=user").await;
    let buckets = v["range"]["buckets"].as_array().unwrap();
    let of = |email: &str| buckets.iter().find(|b| b["email"] == email).unwrap()["totals"]["total"].as_i64().unwrap();
    assert_eq!((of("boss@acme.example"), of("ann@acme.example")), (100, 15));
    assert!(buckets.iter().any(|b| b["user_id"].is_null() && b["totals"]["total"] == 1000));
    let v = usage(&app, &member, "?group_by=model").await;
    assert_eq!(
        v["range"]["buckets"],
        json!([
            {"model": "gpt-a", "totals": {"embedding": 0, "prompt": 10, "completion": 0, "total": 10}},
            {"model": "gpt-b", "totals": {"embedding": 0, "prompt": 0, "completion": 5, "total": 5}},
        ])
    );
    // a member grouping by user still sees only themselves
    let v = usage(&app, &member, "?group_by=user").await;
    assert_eq!(v["range"]["buckets"].as_array().unwrap().len(), 1);

    // without a token, or with another tenant's token
    let resp = app.client.get(app.url("/v1/usage")).header("X-Tenant-ID", "acme").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _, _) = error_of(app.get_as("/v1/usage", "acme", &outsider).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn create_key(app: &TestApp, tenant: &str, token: &str, scopes: &[&str]) -> Response {
    app.client
        .post(app.url("/v1/api-keys"))
        .header("X-Tenant-ID", tenant)
        .bearer_auth(token)
        .json(&json!({"name": "billing job", "scopes": scopes}))
        .send()
        .await
        .unwrap()
}

#[sqlx::test]
async fn api_keys_work_within_their_scopes_until_revoked(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (admin, member, outsider) = two_tenants(&app).await;

    // only admins create keys, with known scopes
    assert_eq!(create_key(&app, "acme", &member, &["usage:read"]).await.status(), StatusCode::FORBIDDEN);
    let (status, code, _) = error_of(create_key(&app, "acme", &admin, &["usage:write"]).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_scope"));
    let (_, code, _) = error_of(create_key(&app, "acme", &admin, &[]).await).await;
    assert_eq!(code, "invalid_scope");

    let resp = create_key(&app, "acme", &admin, &["usage:read"]).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let usage_key = created["key"].as_str().unwrap().to_owned();
    assert!(usage_key.starts_with("dck_") && usage_key.len() == 68, "{usage_key}");
    assert!(usage_key.starts_with(created["prefix"].as_str().unwrap()));
    let key_id = created["id"].as_str().unwrap().to_owned();
    // the secret is stored only as a hash, and never listed
    let (stored, row): (Vec<u8>, String) =
        sqlx::query_as("select secret_hash, row_to_json(k)::text from api_keys k").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, sha2::Sha256::digest(usage_key.as_bytes()).to_vec());
    assert!(!row.contains(&usage_key[10..]), "{row}");
    let listed = app.get_as("/v1/api-keys", "acme", &admin).await.text().await.unwrap();
    assert!(listed.contains(&key_id) && !listed.contains(&usage_key[8..]), "{listed}");
    assert_eq!(app.get_as("/v1/api-keys", "acme", &member).await.status(), StatusCode::FORBIDDEN);

    let docs_key: Value =
        create_key(&app, "acme", &admin, &["documents:write", "documents:read"]).await.json().await.unwrap();
    let docs_key = docs_key["key"].as_str().unwrap().to_owned();

    // usage:read reads the tenant's usage, and nothing else
    let v = usage(&app, &usage_key, "").await;
    assert_eq!(v["scope"], "tenant");
    let (status, code, _) = error_of(app.get_as("/v1/documents", "acme", &usage_key).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "insufficient_scope"));
    let (status, code, _) = error_of(app.upload("acme", &usage_key, "a.pdf", fixture("english-2page.pdf")).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "insufficient_scope"));
    // keys are not users: no key management, no /v1/me, no chat
    assert_eq!(create_key(&app, "acme", &usage_key, &["usage:read"]).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get_as("/v1/me", "acme", &usage_key).await.status(), StatusCode::FORBIDDEN);
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat?token={usage_key}", app.addr)).await;
    assert!(ws.is_err(), "a key opened a chat socket");

    // documents:write uploads (charged to the key) and lists
    let resp = app.upload("acme", &docs_key, "a.pdf", fixture("english-2page.pdf")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(app.get_as("/v1/documents", "acme", &docs_key).await.status(), StatusCode::OK);
    assert_eq!(app.get_as("/v1/usage", "acme", &docs_key).await.status(), StatusCode::FORBIDDEN);
    app.drain().await;
    let charged: (Option<Uuid>, Option<Uuid>) =
        sqlx::query_as("select user_id, api_key_id from usage_events where document_id = $1::uuid")
            .bind(doc["document_id"].as_str().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(charged.0.is_none() && charged.1.is_some(), "{charged:?}");
    let v = usage(&app, &usage_key, "?group_by=user").await;
    assert_eq!(v["range"]["buckets"][0]["api_key_name"], "billing job", "{v}");

    // another tenant's key, a made-up key, a revoked key: 401
    let (status, code, _) = error_of(app.get_as("/v1/usage", "other", &usage_key).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_api_key"));
    let fake = format!("dck_{}", "0".repeat(64));
    assert_eq!(app.get_as("/v1/usage", "acme", &fake).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.get_as("/v1/usage", "acme", "dck_short").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.delete_as(&format!("/v1/api-keys/{key_id}"), "other", &outsider).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.delete_as(&format!("/v1/api-keys/{key_id}"), "acme", &member).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.delete_as(&format!("/v1/api-keys/{key_id}"), "acme", &admin).await.status(), StatusCode::NO_CONTENT);
    let (status, code, _) = error_of(app.get_as("/v1/usage", "acme", &usage_key).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "api_key_revoked"));
    let listed: Value = app.get_as("/v1/api-keys", "acme", &admin).await.json().await.unwrap();
    let revoked = listed["api_keys"].as_array().unwrap().iter().find(|k| k["id"] == key_id.as_str()).unwrap();
    assert!(revoked["revoked_at"].is_string());
    assert!(revoked["last_used_at"].is_string());
}

async fn put_quota(app: &TestApp, token: &str, body: Value) -> Response {
    app.client
        .put(app.url("/v1/quotas"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_quota_stops_a_conversation_and_uploads_until_it_resets(db: PgPool) {
    let s = setup(db, |_| {}).await;
    let app = &s.app;
    // members may not set quotas
    let resp = put_quota(app, &s.member, json!({"scope": "tenant", "period": "day", "token_limit": 1})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // what the tenant has spent so far today (the document's embedding), plus room for one answer
    let today: i64 = sqlx::query_scalar(
        "select coalesce(sum(tokens), 0)::bigint from usage_events where created_at >= date_trunc('day', now(), 'UTC')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let resp = put_quota(app, &s.admin, json!({"scope": "tenant", "period": "day", "token_limit": today + 50})).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let mut ws = connect(app, &s.member).await;
    let first = ask(&mut ws, None, QUESTION).await;
    assert_eq!(first.last().unwrap()["type"], "done", "{first:?}");
    // the first answer used more than the 50 tokens left; the next question is refused
    let refused = ask(&mut ws, None, QUESTION).await;
    let err = refused.last().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(err["code"], "quota_exceeded", "{err}");
    let resets: DateTime<Utc> = err["resets_at"].as_str().unwrap().parse().unwrap();
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert_eq!(resets, tomorrow);
    assert!(err["message"].as_str().unwrap().contains("daily"));
    // the socket stays usable, and the refusal cost nothing
    let again = ask(&mut ws, None, QUESTION).await;
    assert_eq!(again.last().unwrap()["code"], "quota_exceeded");
    // uploads are refused too, with Retry-After
    let resp = app.upload("acme", &s.admin, "b.pdf", fixture("persian.pdf")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 86_400);
    let (_, code, _) = error_of(resp).await;
    assert_eq!(code, "quota_exceeded");
    // the quota as admins and members see it
    let q: Value = app.get_as("/v1/quotas", "acme", &s.member).await.json().await.unwrap();
    let used = q["quotas"][0]["used"].as_i64().unwrap();
    assert!(used >= today + 50, "{q}");
    assert_eq!(q["quotas"][0]["token_limit"].as_i64().unwrap(), today + 50);
    // nothing is held once the answers are done
    let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&app.db).await.unwrap();
    assert_eq!(held, 0);

    // raising the limit lets the conversation go on; a per-user limit then stops only that user
    put_quota(app, &s.admin, json!({"scope": "tenant", "period": "day", "token_limit": null})).await;
    let resp = put_quota(app, &s.admin, json!({"scope": "user", "period": "month", "token_limit": 1})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let refused = ask(&mut ws, None, QUESTION).await;
    assert_eq!(refused.last().unwrap()["code"], "quota_exceeded");
    assert!(refused.last().unwrap()["message"].as_str().unwrap().contains("your monthly"));
    let boss = user_id(&app.db, "boss@acme.example").await;
    let resp = put_quota(
        app,
        &s.admin,
        json!({"scope": "user", "user_id": boss, "period": "month", "token_limit": 1_000_000}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut boss_ws = connect(app, &s.admin).await;
    assert_eq!(ask(&mut boss_ws, None, QUESTION).await.last().unwrap()["type"], "done");
    // removing a quota that is not there is a 404
    let resp = app
        .client
        .delete(app.url("/v1/quotas?scope=tenant&period=day"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn concurrent_questions_overshoot_a_quota_by_at_most_one_answer(db: PgPool) {
    let s = setup(db, |_| {}).await;
    let app = &s.app;
    s.server.control.chat_tokens.store(30, Ordering::SeqCst);
    s.server.control.chat_token_delay_ms.store(5, Ordering::SeqCst);
    let tenant = tenant_id(&app.db, "acme").await;
    let (before_e, before_p, before_c) = ledger_sum(&app.db, tenant, None, "-infinity", "infinity").await;
    let before = before_e + before_p + before_c;
    let limit = before + 1_000;
    put_quota(app, &s.admin, json!({"scope": "tenant", "period": "day", "token_limit": limit})).await;

    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(connect(app, &s.member).await);
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut answered = 0;
                for _ in 0..3 {
                    let f = ask(&mut ws, None, QUESTION).await;
                    match f.last().unwrap()["type"].as_str().unwrap() {
                        "done" => answered += 1,
                        _ => assert_eq!(f.last().unwrap()["code"], "quota_exceeded"),
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert!(answered >= 1);
    let costs: Vec<i64> = sqlx::query_scalar(
        "select sum(tokens)::bigint from usage_events where message_id is not null group by message_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let (e, p, c) = ledger_sum(&app.db, tenant, None, "-infinity", "infinity").await;
    let spent = e + p + c;
    let largest = costs.iter().copied().max().unwrap();
    // each answer costs several hundred tokens: without holds, all ten sockets would have been
    // let through at once
    assert!(spent <= limit + largest, "spent {spent}, limit {limit}, one answer at most {largest}");
    assert!(spent > before);
}

#[sqlx::test]
async fn quotas_can_be_set_from_the_command_line(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    app.login("acme", "ann@acme.example").await;
    let url = common::database_url_of(&app.db);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_docuchat"))
            .args(["tenant", "quota", "--tenant", "acme"])
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let out = run(&["--period", "month", "--tokens", "5000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--period", "day", "--tokens", "70", "--user", "ann@acme.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&run(&[]).stdout).unwrap();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(rows.iter().any(|q| q["scope"] == "tenant" && q["period"] == "month" && q["token_limit"] == 5000));
    assert!(rows.iter().any(|q| q["scope"] == "user" && q["user_id"].is_string() && q["token_limit"] == 70));
    let out = run(&["--period", "day", "--tokens", "5", "--user", "nobody@acme.example"]);
    assert!(!out.status.success());
    let out = run(&["--period", "month", "--remove"]);
    assert!(out.status.success());
    let out = run(&["--period", "month", "--remove"]);
    assert!(!out.status.success());
    let listed: Value = serde_json::from_slice(&run(&[]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn rate_limits_answer_429_with_retry_after(db: PgPool) {
    let s = setup(db, |c| {
        c.rate_limits.auth_per_minute = 5;
        c.rate_limits.chat_per_minute = 2;
        c.rate_limits.upload_per_minute = 1;
    })
    .await;
    let app = &s.app;
    // setup logged in twice (4 auth requests): one more is allowed this minute from here
    assert_eq!(app.request_code("acme", "carl@acme.example").await.status(), StatusCode::ACCEPTED);
    let resp = app.request_code("acme", "carl@acme.example").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (_, code, _) = error_of(resp).await;
    assert_eq!(code, "rate_limited");

    // setup's upload used this minute's only upload
    let (status, code, _) = error_of(app.upload("acme", &s.admin, "b.pdf", fixture("persian.pdf")).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));

    // questions: two a minute per user, across sockets
    let mut ws = connect(app, &s.member).await;
    assert_eq!(ask(&mut ws, None, QUESTION).await.last().unwrap()["type"], "done");
    let mut other = connect(app, &s.member).await;
    assert_eq!(ask(&mut other, None, QUESTION).await.last().unwrap()["type"], "done");
    let refused = ask(&mut ws, None, QUESTION).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["code"], "rate_limited");
    assert!(refused[0]["retry_after"].as_u64().unwrap() >= 1);
    // another user is not affected
    let mut boss = connect(app, &s.admin).await;
    assert_eq!(ask(&mut boss, None, QUESTION).await.last().unwrap()["type"], "done");
}

#[sqlx::test]
async fn the_limit_is_shared_by_processes_and_survives_redis_going_away(db: PgPool) {
    let mut redis = RedisProcess::start().await;
    let prefix = format!("test:{}:", Uuid::new_v4());
    let spawn = |db: PgPool| {
        let (url, prefix) = (redis.url(), prefix.clone());
        async move {
            TestApp::builder()
                .var("REDIS_URL", url)
                .var("REDIS_KEY_PREFIX", prefix)
                .config(|c| c.rate_limits.upload_per_minute = 3)
                .spawn(db)
                .await
        }
    };
    let one = spawn(db.clone()).await;
    let two = spawn(db.clone()).await;
    one.create_tenant("acme", "boss@acme.example").await;
    let token = one.login("acme", "boss@acme.example").await;
    let pdfs = ["english-2page.pdf", "persian.pdf", "two-column.pdf", "scanned.pdf"];

    // two processes, one limit of 3 a minute: the fourth upload is refused wherever it lands
    let statuses = [
        one.upload("acme", &token, "a.pdf", fixture(pdfs[0])).await.status(),
        two.upload("acme", &token, "b.pdf", fixture(pdfs[1])).await.status(),
        one.upload("acme", &token, "c.pdf", fixture(pdfs[2])).await.status(),
        two.upload("acme", &token, "d.pdf", fixture(pdfs[3])).await.status(),
    ];
    assert_eq!(statuses[..3], [StatusCode::ACCEPTED; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);

    // Redis stops: each process still limits on its own (process two has used one of its 3)
    redis.stop();
    let started = std::time::Instant::now();
    let resp = two.upload("acme", &token, "e.pdf", fixture(pdfs[3])).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the limit waited for Redis");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mut refused = false;
    for i in 0..4 {
        let r = two.upload("acme", &token, &format!("f{i}.pdf"), fixture(pdfs[i % 4])).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let (_, code, _) = error_of(r).await;
            assert_eq!(code, "rate_limited");
            refused = true;
            break;
        }
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    assert!(refused, "without Redis, the in-process limit must still hold");
    one.stop().await;
    two.stop().await;
}

#[sqlx::test]
async fn an_ingestion_over_the_quota_waits_for_the_reset(db: PgPool) {
    let s = setup(db, |_| {}).await;
    let app = &s.app;
    let today: i64 = sqlx::query_scalar(
        "select coalesce(sum(tokens), 0)::bigint from usage_events where created_at >= date_trunc('day', now(), 'UTC')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    put_quota(app, &s.admin, json!({"scope": "tenant", "period": "day", "token_limit": today + 10})).await;
    // both uploads are let in (nothing of the quota is used yet) ...
    let a: Value = app.upload("acme", &s.admin, "a.pdf", fixture("persian.pdf")).await.json().await.unwrap();
    let b: Value = app.upload("acme", &s.admin, "b.pdf", fixture("two-column.pdf")).await.json().await.unwrap();
    app.drain().await;
    // ... the first one embedded overshoots by itself; the second waits, queued, for the reset
    let first = document(app, &s.admin, &a).await;
    let second = document(app, &s.admin, &b).await;
    assert_eq!(first["status"], "ready", "{first}");
    assert_eq!(second["status"], "queued", "{second}");
    assert_eq!(second["error"]["code"], "quota_exceeded", "{second}");
    let (attempts, wait): (i32, f64) = sqlx::query_as(
        "select attempts, extract(epoch from run_at - now())::float8 from ingestion_jobs where document_id = $1::uuid",
    )
    .bind(b["document_id"].as_str().unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(attempts, 0, "waiting for a quota must not use up attempts");
    let until_midnight: f64 = sqlx::query_scalar(
        "select extract(epoch from date_trunc('day', now(), 'UTC') + interval '1 day' - now())::float8",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!((wait - until_midnight).abs() < 5.0, "the job runs again at the reset ({wait} s vs {until_midnight} s)");
    let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&app.db).await.unwrap();
    assert_eq!(held, 0);
    // and new uploads are refused while the quota is used up
    let resp = app.upload("acme", &s.admin, "c.pdf", fixture("scanned.pdf")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

async fn document(app: &TestApp, token: &str, uploaded: &Value) -> Value {
    let id = uploaded["document_id"].as_str().unwrap();
    app.get_as(&format!("/v1/documents/{id}"), "acme", token).await.json().await.unwrap()
}

/// Polls `f` every 10 ms until it holds, for at most `secs` seconds.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[sqlx::test]
async fn a_tenant_without_quotas_is_admitted_from_memory_until_a_quota_appears_anywhere(db: PgPool) {
    let s = setup(db, |_| {}).await;
    let app = &s.app;
    let tenant = tenant_id(&app.db, "acme").await;
    let gate = app.state.quotas.clone();
    let mut ws = connect(app, &s.member).await;
    // the first question starts listening for quota changes; from then on "no quota" is remembered
    let mut remembered = false;
    for _ in 0..50 {
        assert_eq!(ask(&mut ws, None, QUESTION).await.last().unwrap()["type"], "done");
        if gate.remembers(tenant) == Some(false) {
            remembered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(remembered, "a tenant without quotas is remembered");

    // a quota written by someone else (another server, a script), not through this process's API
    sqlx::query("insert into quotas (tenant_id, scope, period, token_limit) values ($1, 'tenant', 'day', 0)")
        .bind(tenant)
        .execute(&app.db)
        .await
        .unwrap();
    assert!(eventually(5, || gate.remembers(tenant) != Some(false)).await, "the change's notification arrives");
    let refused = ask(&mut ws, None, QUESTION).await;
    assert_eq!(refused.last().unwrap()["code"], "quota_exceeded", "{refused:?}");
    assert_eq!(gate.remembers(tenant), Some(true));

    // the listening connection dies: nothing is remembered until it listens again, and a quota
    // removed meanwhile is not missed
    sqlx::query("delete from quotas where tenant_id = $1").bind(tenant).execute(&app.db).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
          where datname = current_database() and query ilike 'listen%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    assert!(eventually(5, || gate.remembers(tenant).is_none()).await);
    let mut answered = false;
    for _ in 0..50 {
        let frames = ask(&mut ws, None, QUESTION).await;
        assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
        if gate.remembers(tenant) == Some(false) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "listening again, the gate remembers again");
}
