//! HTTP basics: tenant resolution, the error envelope on every failure path, request ids, health
//! (with Redis really stopped), the CLI and graceful shutdown.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{RedisProcess, TestApp, database_url_of, error_of, free_port};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

#[sqlx::test]
async fn tenant_header_is_required_and_resolved(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let post = |tenant: Option<&str>| {
        // a fresh address each time: the resend cooldown is per address
        let email = format!("u{}@acme.example", uuid::Uuid::new_v4().simple());
        let mut req = app.client.post(app.url("/v1/auth/request-code")).json(&serde_json::json!({ "email": email }));
        if let Some(t) = tenant {
            req = req.header("X-Tenant-ID", t);
        }
        req.send()
    };
    let (status, code, _) = error_of(post(None).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "tenant_required"));
    for unknown in ["nobody", "Not A Slug!", "00000000-0000-0000-0000-000000000000", "", "%%%"] {
        let (status, code, _) = error_of(post(Some(unknown)).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "tenant_not_found"), "{unknown:?}");
    }
    assert_eq!(post(Some("acme")).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(post(Some(" acme ")).await.unwrap().status(), StatusCode::ACCEPTED);
}

#[sqlx::test]
async fn every_failure_speaks_the_envelope(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let url = app.url("/v1/auth/request-code");
    let send = |body: &'static str, content_type: &'static str| {
        app.client.post(&url).header("X-Tenant-ID", "acme").header("Content-Type", content_type).body(body).send()
    };

    let (status, code, _) = error_of(send("{not json", "application/json").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "malformed_json"));
    let (status, code, _) = error_of(send("", "application/json").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "malformed_json"));
    let (status, code, message) = error_of(send(r#"{"mail": "x@y.com"}"#, "application/json").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    assert!(message.contains("email") || message.contains("mail"), "{message}");
    let (status, code, _) = error_of(send(r#"{"email": 42}"#, "application/json").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    let (status, code, _) = error_of(send(r#"{"email": "x@y.com"}"#, "text/plain").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    // an array whose items would fill the fields in order is not an object (found by the
    // contract fuzzing: `PATCH /v1/tenant` took `[null, null]`)
    let (status, code, message) = error_of(send(r#"["x@y.com"]"#, "application/json").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    assert!(message.contains("object"), "{message}");
    assert_eq!(
        send(r#" {"email": "x@y.com"}"#, "application/vnd.api+json").await.unwrap().status(),
        StatusCode::ACCEPTED
    );

    let huge = format!(r#"{{"email": "{}@y.com"}}"#, "a".repeat(200_000));
    let resp = app
        .client
        .post(&url)
        .header("X-Tenant-ID", "acme")
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    let (status, code, _) = error_of(app.client.get(app.url("/no/such/thing")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (status, code, _) = error_of(app.client.delete(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

#[sqlx::test]
async fn every_response_has_a_request_id(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let a = app.client.get(app.url("/healthz")).send().await.unwrap();
    let b = app.client.get(app.url("/nowhere")).send().await.unwrap();
    let ida = a.headers()["x-request-id"].to_str().unwrap().to_owned();
    let idb = b.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(ida, idb);
    assert_eq!(ida.len(), 36);
    // a caller's own id is kept
    let c = app.client.get(app.url("/")).header("x-request-id", "trace-me-123").send().await.unwrap();
    assert_eq!(c.headers()["x-request-id"], "trace-me-123");
}

#[sqlx::test]
async fn root_names_the_service(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let body: Value = app.client.get(app.url("/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["name"], "DocuChat");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["links"]["health"], "/healthz");
}

#[sqlx::test]
async fn cors_allows_only_configured_origins(db: PgPool) {
    let app = TestApp::builder().var("CORS_ORIGINS", "https://chat.example.com").spawn(db).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/me"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization,x-tenant-id")
            .send()
    };
    let ok = preflight("https://chat.example.com").await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://chat.example.com");
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[sqlx::test]
async fn health_names_redis_when_it_stops_and_recovers(db: PgPool) {
    let mut redis = RedisProcess::start().await;
    let port = redis.port;
    let app = TestApp::builder().var("REDIS_URL", redis.url()).without_mail().spawn(db).await;

    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["postgres"].as_str(), body["redis"].as_str()),
        (Some("ok"), Some("ok"), Some("ok"))
    );

    redis.stop();
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["redis"], "unavailable");
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["error"]["code"], "dependency_unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("redis"));

    // a login needs Redis: a clean 503 in the envelope, nothing internal
    app.create_tenant("acme", "boss@acme.example").await;
    let (status, code, message) = error_of(app.request_code("acme", "u@acme.example").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"));
    assert!(!message.to_lowercase().contains("connection refused"), "{message}");

    // Redis comes back on the same port: the service heals without a restart
    let _redis = RedisProcess::start_on(port).await;
    let mut healthy = false;
    for _ in 0..50 {
        if app.client.get(app.url("/healthz")).send().await.unwrap().status() == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healthy, "health did not recover after Redis came back");
}

fn docuchat(db: &PgPool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docuchat"));
    // away from the project directory, so a developer's .env does not leak in
    cmd.current_dir(std::env::temp_dir());
    cmd.env("DATABASE_URL", database_url_of(db)).env("RUST_LOG", "warn");
    cmd
}

#[sqlx::test]
async fn cli_creates_and_lists_tenants(db: PgPool) {
    let out = docuchat(&db)
        .args(["tenant", "create", "--name", "Acme Inc", "--slug", "acme", "--admin-email", "Boss@Acme.example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tenant: Value = serde_json::from_slice(&out.stdout).expect("tenant JSON on stdout");
    assert_eq!(tenant["slug"], "acme");
    assert_eq!(tenant["name"], "Acme Inc");
    assert_eq!(tenant["admin_email"], "boss@acme.example");
    let id = tenant["id"].as_str().unwrap();
    let from_db: String =
        sqlx::query_scalar("select slug from tenants where id = $1::uuid").bind(id).fetch_one(&db).await.unwrap();
    assert_eq!(from_db, "acme");

    // the same slug again, a bad slug, a bad address: refused with a reason and a failure code
    for args in [
        vec!["--name", "Again", "--slug", "acme", "--admin-email", "a@b.example"],
        vec!["--name", "Bad", "--slug", "Bad Slug", "--admin-email", "a@b.example"],
        vec!["--name", "Bad", "--slug", "bad", "--admin-email", "not-an-address"],
    ] {
        let out = docuchat(&db).args(["tenant", "create"]).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!out.stderr.is_empty());
    }

    let out = docuchat(&db).args(["tenant", "list"]).output().unwrap();
    assert!(out.status.success());
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id);
}

#[sqlx::test]
async fn serve_stops_cleanly_on_sigterm(db: PgPool) {
    let port = free_port();
    let mut child = docuchat(&db)
        .arg("serve")
        // a port of its own for the metrics: processes run side by side
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", std::env::var("REDIS_URL").unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await {
            assert_eq!(r.status(), StatusCode::OK);
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "server did not come up");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("server did not exit within 10 s of SIGTERM");
}

#[test]
fn production_refuses_to_start_without_a_real_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_docuchat"))
        .current_dir(std::env::temp_dir())
        .args(["serve"])
        // a port of its own for the metrics: processes run side by side
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("ENVIRONMENT", "production")
        .env("SMTP_URL", "smtp://127.0.0.1:1")
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"));

    let out = Command::new(env!("CARGO_BIN_EXE_docuchat"))
        .current_dir(std::env::temp_dir())
        .args(["serve"])
        // a port of its own for the metrics: processes run side by side
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("ENVIRONMENT", "production")
        .env("JWT_SECRET", "0123456789abcdef0123456789abcdef-long-enough")
        .env_remove("SMTP_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SMTP_URL"));
}

/// The per-address login caps count the address the trusted proxy saw, not what a client wrote
/// at the left of `X-Forwarded-For`, and IPv6 clients per /64.
#[sqlx::test]
async fn client_addresses_come_only_from_trusted_proxies(db: PgPool) {
    // the test client connects from 127.0.0.1: that is the one proxy in front of the service
    let app =
        TestApp::builder().var("TRUSTED_PROXIES", "1").config(|c| c.auth.codes_per_ip_per_hour = 2).spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let ask = |forwarded: String| {
        let email = format!("u{}@acme.example", uuid::Uuid::new_v4().simple());
        app.client
            .post(app.url("/v1/auth/request-code"))
            .header("X-Tenant-ID", "acme")
            .header("X-Forwarded-For", forwarded)
            .json(&serde_json::json!({ "email": email }))
            .send()
    };
    // one client making up a new left-most entry each time is still one client
    for i in 0..2 {
        assert_eq!(ask(format!("10.0.0.{i}, 203.0.113.5")).await.unwrap().status(), StatusCode::ACCEPTED);
    }
    let (status, code, _) = error_of(ask("10.0.0.9, 203.0.113.5".into()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    // another address the proxy saw has its own allowance
    assert_eq!(ask("203.0.113.5, 203.0.113.6".into()).await.unwrap().status(), StatusCode::ACCEPTED);
    // IPv6: addresses of one /64 share one allowance; another /64 has its own
    assert_eq!(ask("2001:db8:0:1::1".into()).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(ask("2001:db8:0:1::2".into()).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(ask("2001:db8:0:1:ffff::3".into()).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ask("2001:db8:0:2::1".into()).await.unwrap().status(), StatusCode::ACCEPTED);
}

#[sqlx::test]
async fn without_trusted_proxies_forwarded_for_is_ignored(db: PgPool) {
    let app = TestApp::builder().config(|c| c.auth.codes_per_ip_per_hour = 2).spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let email = format!("u{i}@acme.example");
        let resp = app
            .client
            .post(app.url("/v1/auth/request-code"))
            .header("X-Tenant-ID", "acme")
            .header("X-Forwarded-For", format!("198.51.100.{i}"))
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS]);
}

#[test]
fn trust_forwarded_for_is_refused_for_its_left_most_entry() {
    let err = docuchat::config::Config::from_lookup(|k| (k == "TRUST_FORWARDED_FOR").then(|| "true".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("TRUSTED_PROXIES"), "{err}");
}

/// A client that sends its headers slowly (or never finishes them) loses the connection after
/// the header timeout; other clients are served meanwhile.
#[sqlx::test]
async fn slow_headers_lose_the_connection(db: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder().var("HTTP_HEADER_TIMEOUT_SECONDS", "1").spawn(db).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a").await.unwrap();
        slow.push(tcp);
    }
    let started = std::time::Instant::now();
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    // a byte now and then does not keep a connection: the deadline is for the whole head
    let mut dripping = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    dripping.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    for tcp in slow.iter_mut().chain(std::iter::once(&mut dripping)) {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                // keep dripping until the server has had enough
                let _ = tcp.write_all(b"b").await;
                let mut chunk = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut chunk)).await {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "a slow-header connection stayed open");
        // whatever was answered, it was not the health page
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "{}", String::from_utf8_lossy(&buf));
    }
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
}

/// While Postgres cannot be reached, requests are `503 service_unavailable` and questions get an
/// `error` frame with that code; once it is back the service answers again, without a restart.
#[sqlx::test]
async fn an_unreachable_database_is_service_unavailable_and_recovery_is_at_once(db: PgPool) {
    use common::{tcp_proxy::TcpProxy, ws};
    use sqlx::postgres::PgConnectOptions;
    let options: PgConnectOptions = database_url_of(&db).parse().unwrap();
    let target = tokio::net::lookup_host((options.get_host(), options.get_port())).await.unwrap().next().unwrap();
    let mut proxy = TcpProxy::start(target).await;
    // the owner's pool, as `#[sqlx::test]` gives it; the service's own is made from its options
    let through_proxy = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.host("127.0.0.1").port(proxy.addr.port()))
        .await
        .unwrap();
    let app = TestApp::spawn(through_proxy).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let token = app.login("acme", "boss@acme.example").await;
    let mut socket = ws::connect(&app, &token).await;
    assert_eq!(app.get_as("/v1/documents", "acme", &token).await.status(), StatusCode::OK);

    proxy.cut().await;
    for path in ["/v1/documents", "/v1/usage", "/v1/members"] {
        let (status, code, message) = error_of(app.get_as(path, "acme", &token).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"), "{path}");
        assert!(!message.contains("127.0.0.1") && !message.contains("pool"), "{message}");
    }
    let (status, code, _) = error_of(app.request_code("acme", "boss@acme.example").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"));
    let frames = ws::ask(&mut socket, None, "what is in the documents?").await;
    let last = frames.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["code"].as_str()),
        (Some("error"), Some("service_unavailable")),
        "{frames:?}"
    );

    proxy.restore().await;
    let back = std::time::Instant::now();
    loop {
        if app.get_as("/v1/documents", "acme", &token).await.status() == StatusCode::OK {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "the service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frames = ws::ask(&mut socket, None, "what is in the documents?").await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
}

#[sqlx::test]
async fn a_client_cannot_mint_metric_labels(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap();
        let resp = app.client.request(method, app.url(&format!("/v1/nothing/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let metrics = app.metrics().await;
    assert!(!metrics.contains("PROBE"), "a method became a label");
    assert!(!metrics.contains("/v1/nothing"), "a path became a label");
    assert!(
        common::sample(&metrics, "docuchat_http_requests_total", &[("route", "unmatched"), ("method", "other")])
            >= 20.0
    );
    app.stop().await;
}
