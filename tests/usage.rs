//! Metering end to end: the ledger against what clients were told, and `GET /v1/usage` windows
//! and visibility, against real Postgres and Redis and a server speaking OpenAI's protocol
//! (embeddings and streamed chat).

mod common;

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use common::{
    TestApp, error_of,
    metering::*,
    ws::{connect, next_json, send},
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

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

/// A busy tenant: thousands of ledger rows packed around the minute, hour and day edges where the
/// windows are cut (the last 24 h and 7 days, and ranges with edges on and off every boundary),
/// spent by an admin, a member, an API key and a removed user, in every kind and two models, in
/// several statements (so several rollup stripes). Every figure — the admin's, the key's, the
/// member's, in every grouping — must equal the ledger summed directly over the same bounds.
#[sqlx::test]
async fn a_busy_tenants_windows_are_exact_at_every_edge(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (admin, member, _) = two_tenants(&app).await;
    let created: serde_json::Value = create_key(&app, "acme", &admin, &["usage:read"]).await.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let acme = tenant_id(&app.db, "acme").await;
    let (boss, ann) = (user_id(&app.db, "boss@acme.example").await, user_id(&app.db, "ann@acme.example").await);

    // rows every quarter second for five minutes around each edge (only before it for now), the
    // edge itself and a microsecond either side, and one every seven minutes over eight days
    let spend = |anchor: String, from_s: f64, to_s: f64, step_s: f64| {
        let db = app.db.clone();
        async move {
            sqlx::query(
                "insert into usage_events (tenant_id, user_id, api_key_id, kind, model, tokens, created_at)
                 select $1,
                        case i % 4 when 0 then $2 when 1 then $3 else null end,
                        case i % 4 when 2 then $4 end,
                        (array['embedding', 'prompt', 'completion'])[i % 3 + 1],
                        (array['m-a', 'm-b'])[i % 2 + 1],
                        1 + (i * 7919) % 1000,
                        x.at
                   from (select ($5::timestamptz + make_interval(secs => s::float8)) as at, row_number() over () as i
                           from (select generate_series($6::numeric, $7::numeric, $8::numeric) as s
                                 union all
                                 select unnest(array[-0.000001, 0, 0.000001]::numeric[]) where $7 > 0) g) x",
            )
            .bind(acme)
            .bind(boss)
            .bind(ann)
            .bind(key_id)
            .bind(anchor)
            .bind(from_s)
            .bind(to_s)
            .bind(step_s)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    let now: String = sqlx::query_scalar("select now()::text").fetch_one(&app.db).await.unwrap();
    let now = now.as_str();
    for (anchor, from_s, to_s) in [
        (now, -300.0, -0.25),
        (now, -86_400.0 - 150.0, -86_400.0 + 150.0),
        (now, -604_800.0 - 150.0, -604_800.0 + 150.0),
        ("2026-01-10T10:00:00Z", -150.0, 150.0),
        ("2026-01-10T00:00:00Z", -150.0, 150.0),
        ("2026-01-10T10:17:00Z", -150.0, 150.0),
    ] {
        spend(anchor.to_owned(), from_s, to_s, 0.25).await;
    }
    spend(now.to_owned(), -8.0 * 86_400.0, -1.0, 420.0).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from usage_events").fetch_one(&app.db).await.unwrap();
    assert!(rows > 8_000, "{rows}");
    assert_rollup_equals_ledger(&app.db).await;

    // the fixed windows: the admin's and the key's are the tenant's, the member's her own
    for (token, user) in [(&admin, None), (&key, None), (&member, Some(ann))] {
        let v = usage(&app, token, "").await;
        let as_of: DateTime<Utc> = v["as_of"].as_str().unwrap().parse().unwrap();
        for (window, span) in [("last_24h", chrono::Duration::hours(24)), ("last_7d", chrono::Duration::days(7))] {
            let (e, p, c) = ledger_sum(&app.db, acme, user, &(as_of - span).to_rfc3339(), "infinity").await;
            assert_eq!(
                (total(&v, window, "embedding"), total(&v, window, "prompt"), total(&v, window, "completion")),
                (e, p, c),
                "{window} of {user:?}: {v}"
            );
            assert!(e > 0 && p > 0 && c > 0);
        }
    }

    // ranges between edges on and off the minute, hour and day boundaries, in every grouping
    let mut edges = Vec::new();
    for anchor in ["2026-01-10T00:00:00Z", "2026-01-10T10:00:00Z", "2026-01-10T10:17:00Z"] {
        let a: DateTime<Utc> = anchor.parse().unwrap();
        for us in [-61_000_000, -1, 0, 1, 59_500_000] {
            edges.push(a + chrono::Duration::microseconds(us));
        }
    }
    edges.sort();
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for (i, from) in edges.iter().enumerate() {
        for to in &edges[i + 1..] {
            let (from, to) = (fmt(*from), fmt(*to));
            let q = format!("?from={}&to={}", urlencode(&from), urlencode(&to));
            let want = ledger_sum(&app.db, acme, None, &from, &to).await;
            for group in ["", "&group_by=day", "&group_by=user", "&group_by=model"] {
                let v = usage(&app, &admin, &format!("{q}{group}")).await;
                let r = &v["range"]["totals"];
                let got = (
                    r["embedding"].as_i64().unwrap(),
                    r["prompt"].as_i64().unwrap(),
                    r["completion"].as_i64().unwrap(),
                );
                assert_eq!(got, want, "{from}..{to} {group}");
                if group.is_empty() {
                    continue;
                }
                // and bucket by bucket
                let key_sql = match group {
                    "&group_by=day" => "to_char(created_at at time zone 'UTC', 'YYYY-MM-DD')",
                    "&group_by=user" => "coalesce(user_id::text, api_key_id::text, '-')",
                    _ => "model",
                };
                let mut expected: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {key_sql}, sum(tokens)::bigint from usage_events
                      where tenant_id = $1 and created_at >= $2::timestamptz and created_at < $3::timestamptz
                      group by 1"
                )))
                .bind(acme)
                .bind(&from)
                .bind(&to)
                .fetch_all(&app.db)
                .await
                .unwrap();
                expected.sort();
                let mut buckets: Vec<(String, i64)> = v["range"]["buckets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        let key = ["day", "model", "user_id", "api_key_id"]
                            .iter()
                            .find_map(|k| b[*k].as_str())
                            .unwrap_or("-")
                            .to_owned();
                        (key, b["totals"]["total"].as_i64().unwrap())
                    })
                    .collect();
                buckets.sort();
                assert_eq!(buckets, expected, "{from}..{to} {group}");
            }
            let v = usage(&app, &member, &q).await;
            let (e, p, c) = ledger_sum(&app.db, acme, Some(ann), &from, &to).await;
            assert_eq!(v["range"]["totals"]["total"].as_i64().unwrap(), e + p + c, "member {from}..{to}");
        }
    }
}
