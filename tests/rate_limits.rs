//! Rate limits: 429 with Retry-After (an error frame with `retry_after` on the socket), one limit
//! shared by processes through Redis, and the in-process limit alone when Redis is gone.

mod common;

use std::time::Duration;

use common::{
    RedisProcess, TestApp, error_of, fixture,
    metering::*,
    ws::{ask, connect},
};
use reqwest::StatusCode;
use sqlx::PgPool;
use uuid::Uuid;

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
