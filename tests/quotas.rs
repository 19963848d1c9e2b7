//! Token quotas: conversations and uploads stop when one is used up, concurrent questions overshoot
//! by at most one answer, ingestion waits for the reset, the command line manages them, and the
//! per-process memory of tenants without quotas follows every change.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use chrono::{DateTime, Utc};
use common::{
    TestApp, error_of, fixture,
    metering::*,
    ws::{ask, connect},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

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
          where datname = current_database() and query ilike 'listen%docuchat_quotas%'",
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

/// A quota the operator set with the command line binds the tenant's admins: the API cannot
/// raise, lower or remove it; the admins' own quotas stay theirs, and the operator may take one over.
#[sqlx::test]
async fn admins_cannot_change_the_quotas_the_operator_set(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let admin = app.login("acme", "boss@acme.example").await;
    let url = common::database_url_of(&app.db);
    let operator = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_docuchat"))
            .args(["tenant", "quota", "--tenant", "acme"])
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let listed = operator(&["--period", "month", "--tokens", "5000"]);
    assert_eq!(listed[0]["set_by"], "operator", "{listed}");

    for limit in [json!(1_000_000), json!(10), json!(null)] {
        let resp = put_quota(&app, &admin, json!({"scope": "tenant", "period": "month", "token_limit": limit})).await;
        let (status, code, _) = common::error_of(resp).await;
        assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "operator_quota"), "{limit}");
    }
    let resp = app
        .client
        .delete(app.url("/v1/quotas?scope=tenant&period=month"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let (status, code, _) = common::error_of(resp).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "operator_quota"));
    let limit: i64 = sqlx::query_scalar("select token_limit from quotas where scope = 'tenant' and period = 'month'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(limit, 5000);

    // the admin's own quota (another period) is theirs to change and remove
    let resp = put_quota(&app, &admin, json!({"scope": "tenant", "period": "day", "token_limit": 300})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let day = body["quotas"].as_array().unwrap().iter().find(|q| q["period"] == "day").unwrap().clone();
    assert_eq!(day["set_by"], "admin");
    let resp = put_quota(&app, &admin, json!({"scope": "tenant", "period": "day", "token_limit": 400})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // the operator takes it over: from then on it is the operator's
    operator(&["--period", "day", "--tokens", "200"]);
    let resp = put_quota(&app, &admin, json!({"scope": "tenant", "period": "day", "token_limit": 900})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // and the operator can remove it
    let listed = operator(&["--period", "day", "--remove"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}
