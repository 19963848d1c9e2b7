//! Who may join a tenant: the login policy (`invite`, `domain`, `open`), the members API, and
//! that a removal or a role change applies to the member's next request.

mod common;

use std::{process::Command, time::Duration};

use common::{ADMIN, TestApp, database_url_of, error_of};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn send(app: &TestApp, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Response {
    let mut req = app.client.request(method, app.url(path)).header("X-Tenant-ID", "acme").bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// Runs the `docuchat` command against the test's database.
fn docuchat(db: &PgPool, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_docuchat"))
        .current_dir(std::env::temp_dir())
        .args(args)
        .env("DATABASE_URL", database_url_of(db))
        .output()
        .unwrap()
}

async fn users_named(app: &TestApp, email: &str) -> i64 {
    sqlx::query_scalar("select count(*) from users where email = $1").bind(email).fetch_one(&app.db).await.unwrap()
}

#[sqlx::test]
async fn a_stranger_cannot_join_an_invite_tenant_and_cannot_tell_it_was_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.invite_tenant("acme", ADMIN).await;
    let mail = app.mail.as_ref().unwrap();

    // the admin address may log in; a stranger's request is answered the same way
    let allowed = app.request_code("acme", ADMIN).await;
    let refused = app.request_code("acme", "eve@elsewhere.example").await;
    assert_eq!(allowed.status(), refused.status());
    assert_eq!(allowed.status(), StatusCode::ACCEPTED);
    let (allowed, refused): (Value, Value) = (allowed.json().await.unwrap(), refused.json().await.unwrap());
    assert_eq!(allowed, refused);
    assert!(mail.next_to(ADMIN, Duration::from_secs(10)).await.is_some());
    // no mail for the stranger, nothing created, and every code is wrong
    assert!(mail.next_to("eve@elsewhere.example", Duration::from_millis(500)).await.is_none());
    for code in ["000000", "123456"] {
        let (status, code, _) = error_of(app.verify_code("acme", "eve@elsewhere.example", code).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));
    }
    assert_eq!(users_named(&app, "eve@elsewhere.example").await, 0);

    // once an admin adds the address, it may log in, as the role it was given
    let admin = app.login("acme", ADMIN).await;
    let resp =
        send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(json!({"email": "Ann@Acme.example"}))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let ann: Value = resp.json().await.unwrap();
    assert_eq!(
        (ann["email"].as_str(), ann["role"].as_str(), ann["status"].as_str()),
        (Some("ann@acme.example"), Some("member"), Some("invited"))
    );
    let again =
        send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(json!({"email": "ann@acme.example"}))).await;
    let (status, code, _) = error_of(again).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "member_exists"));
    let token = app.login("acme", "ann@acme.example").await;
    let me: Value = app.get_as("/v1/me", "acme", &token).await.json().await.unwrap();
    assert_eq!(me["user"]["role"], "member");
    let listed: Value = app.get_as("/v1/members", "acme", &admin).await.json().await.unwrap();
    let ann = listed["members"].as_array().unwrap().iter().find(|m| m["email"] == "ann@acme.example").unwrap().clone();
    assert_eq!(ann["status"], "active");
    // members do not manage members
    assert_eq!(app.get_as("/v1/members", "acme", &token).await.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test]
async fn a_domain_tenant_admits_only_its_domains(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.invite_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    let tenant: Value = app.get_as("/v1/tenant", "acme", &admin).await.json().await.unwrap();
    assert_eq!((tenant["signup"].as_str(), tenant["allowed_domains"].clone()), (Some("invite"), json!([])));
    // the policy needs real domains, and at least one for `domain`
    for body in [json!({"signup": "domain"}), json!({"signup": "domain", "allowed_domains": ["not a domain"]})] {
        let (status, code, _) =
            error_of(send(&app, reqwest::Method::PATCH, "/v1/tenant", &admin, Some(body)).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_domain"));
    }
    let resp = send(
        &app,
        reqwest::Method::PATCH,
        "/v1/tenant",
        &admin,
        Some(json!({"signup": "domain", "allowed_domains": ["Acme.example", "@partner.example"]})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let policy: Value = resp.json().await.unwrap();
    assert_eq!(policy["allowed_domains"], json!(["acme.example", "partner.example"]));

    let carl = app.login("acme", "carl@partner.example").await;
    let me: Value = app.get_as("/v1/me", "acme", &carl).await.json().await.unwrap();
    assert_eq!(me["user"]["role"], "member");
    // not a sub-domain, not a look-alike
    for stranger in ["eve@evil.acme.example.net", "eve@sub.acme.example", "eve@acme.example.evil"] {
        assert_eq!(app.request_code("acme", stranger).await.status(), StatusCode::ACCEPTED);
        assert!(app.mail.as_ref().unwrap().next_to(stranger, Duration::from_millis(300)).await.is_none(), "{stranger}");
        assert_eq!(users_named(&app, stranger).await, 0);
    }
    // members may not read or change the policy
    assert_eq!(app.get_as("/v1/tenant", "acme", &carl).await.status(), StatusCode::FORBIDDEN);
    let resp = send(&app, reqwest::Method::PATCH, "/v1/tenant", &carl, Some(json!({"signup": "open"}))).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test]
async fn removal_and_role_changes_apply_to_the_next_request(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.invite_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    let boss: Value = app.get_as("/v1/me", "acme", &admin).await.json().await.unwrap();
    let boss_id = boss["user"]["id"].as_str().unwrap().to_owned();
    let ann: Value =
        send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(json!({"email": "ann@acme.example"})))
            .await
            .json()
            .await
            .unwrap();
    let ann_id = ann["id"].as_str().unwrap().to_owned();
    let ann_token = app.login("acme", "ann@acme.example").await;

    // the last admin can be neither demoted nor removed
    let path = format!("/v1/members/{boss_id}");
    let (status, code, _) =
        error_of(send(&app, reqwest::Method::PATCH, &path, &admin, Some(json!({"role": "member"}))).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "last_admin"));
    let (status, code, _) = error_of(send(&app, reqwest::Method::DELETE, &path, &admin, None).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "last_admin"));

    // a new role revokes the member's tokens: she logs in again, with the new rights
    let ann_path = format!("/v1/members/{ann_id}");
    assert_eq!(app.get_as("/v1/members", "acme", &ann_token).await.status(), StatusCode::FORBIDDEN);
    let promoted = send(&app, reqwest::Method::PATCH, &ann_path, &admin, Some(json!({"role": "admin"}))).await;
    assert_eq!(promoted.status(), StatusCode::OK);
    let (status, code, _) = error_of(app.get_as("/v1/members", "acme", &ann_token).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "token_revoked"));
    let ann_token = app.login("acme", "ann@acme.example").await;
    assert_eq!(app.get_as("/v1/members", "acme", &ann_token).await.status(), StatusCode::OK);
    // setting the role it already has revokes nothing
    let same = send(&app, reqwest::Method::PATCH, &ann_path, &admin, Some(json!({"role": "admin"}))).await;
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(app.get_as("/v1/members", "acme", &ann_token).await.status(), StatusCode::OK);
    // with two admins, the first may be demoted: his token stops, and his new one is a member's
    let stepped = send(&app, reqwest::Method::PATCH, &path, &ann_token, Some(json!({"role": "member"}))).await;
    assert_eq!(stepped.status(), StatusCode::OK);
    assert_eq!(app.get_as("/v1/members", "acme", &admin).await.status(), StatusCode::UNAUTHORIZED);
    let admin = app.login("acme", ADMIN).await;
    assert_eq!(app.get_as("/v1/members", "acme", &admin).await.status(), StatusCode::FORBIDDEN);
    let restored = send(&app, reqwest::Method::PATCH, &path, &ann_token, Some(json!({"role": "admin"}))).await;
    assert_eq!(restored.status(), StatusCode::OK);
    let admin = app.login("acme", ADMIN).await;

    // removed: the token stops working at once, and the address may not log in again
    assert_eq!(send(&app, reqwest::Method::DELETE, &ann_path, &admin, None).await.status(), StatusCode::NO_CONTENT);
    let (status, code, _) = error_of(app.get_as("/v1/me", "acme", &ann_token).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    assert_eq!(app.request_code("acme", "ann@acme.example").await.status(), StatusCode::ACCEPTED);
    assert!(app.mail.as_ref().unwrap().next_to("ann@acme.example", Duration::from_millis(500)).await.is_none());
    let (status, _, _) = error_of(send(&app, reqwest::Method::DELETE, &ann_path, &admin, None).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // another tenant's admin cannot touch acme's members
    app.create_tenant("other", "root@other.example").await;
    let outsider = app.login("other", "root@other.example").await;
    let resp =
        app.client.delete(app.url(&path)).header("X-Tenant-ID", "other").bearer_auth(&outsider).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn members_are_listed_in_pages(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.invite_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    for i in 0..5 {
        let body = json!({"email": format!("m{i}@acme.example"), "role": if i == 0 { "admin" } else { "member" }});
        assert_eq!(
            send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(body)).await.status(),
            StatusCode::CREATED
        );
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/members?limit=2&after={a}"),
            None => "/v1/members?limit=2".to_owned(),
        };
        let page: Value = app.get_as(&path, "acme", &admin).await.json().await.unwrap();
        for m in page["members"].as_array().unwrap() {
            seen.push(m["email"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [ADMIN, "m0@acme.example", "m1@acme.example", "m2@acme.example", "m3@acme.example", "m4@acme.example"]
    );
    let (status, code, _) = error_of(app.get_as("/v1/members?limit=0", "acme", &admin).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_limit"));
}

#[sqlx::test]
async fn operators_set_the_policy_and_members_from_the_command_line(db: PgPool) {
    let run = |args: &[&str]| docuchat(&db, args);
    let out =
        run(&["tenant", "create", "--name", "Acme", "--slug", "acme", "--admin-email", ADMIN, "--signup", "domain"]);
    assert!(!out.status.success(), "`domain` without a domain is refused");
    let out = run(&[
        "tenant",
        "create",
        "--name",
        "Acme",
        "--slug",
        "acme",
        "--admin-email",
        ADMIN,
        "--signup",
        "domain",
        "--allowed-domain",
        "acme.example",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tenant: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (tenant["signup"].as_str(), tenant["allowed_domains"].clone()),
        (Some("domain"), json!(["acme.example"]))
    );

    let out = run(&["member", "add", "--tenant", "acme", "--email", "ops@partner.example", "--role", "admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["member", "add", "--tenant", "acme", "--email", "ops@partner.example"]);
    assert!(!out.status.success(), "adding a member twice fails");
    let listed: Value = serde_json::from_slice(&run(&["member", "list", "--tenant", "acme"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!((listed[0]["role"].as_str(), listed[0]["status"].as_str()), (Some("admin"), Some("invited")));
    // the only admin cannot be removed; a second admin lets the first go
    let out = run(&["member", "remove", "--tenant", "acme", "--email", "ops@partner.example"]);
    assert!(!out.status.success());
    run(&["member", "add", "--tenant", "acme", "--email", ADMIN, "--role", "admin"]);
    let out = run(&["member", "remove", "--tenant", "acme", "--email", "ops@partner.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&run(&["member", "list", "--tenant", "acme"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn logout_revokes_the_token_and_logout_all_every_token(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", ADMIN).await;
    let (first, second) = (app.login("acme", ADMIN).await, app.login("acme", ADMIN).await);
    // logout: this token only
    assert_eq!(
        send(&app, reqwest::Method::POST, "/v1/auth/logout", &first, None).await.status(),
        StatusCode::NO_CONTENT
    );
    let (status, code, _) = error_of(app.get_as("/v1/me", "acme", &first).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "token_revoked"));
    assert_eq!(app.get_as("/v1/me", "acme", &second).await.status(), StatusCode::OK);
    // a revoked token cannot open a chat socket either
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat?token={first}", app.addr)).await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // logout-all: every token issued until now, and a new login works
    let third = app.login("acme", ADMIN).await;
    assert_eq!(
        send(&app, reqwest::Method::POST, "/v1/auth/logout-all", &second, None).await.status(),
        StatusCode::NO_CONTENT
    );
    for token in [&second, &third] {
        let (status, code, _) = error_of(app.get_as("/v1/me", "acme", token).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "token_revoked"));
    }
    let fresh = app.login("acme", ADMIN).await;
    assert_eq!(app.get_as("/v1/me", "acme", &fresh).await.status(), StatusCode::OK);
    // without a token there is nothing to log out of
    let resp = app.client.post(app.url("/v1/auth/logout")).header("X-Tenant-ID", "acme").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The error frame a socket gets before it is closed, and that it is closed, within `secs`.
async fn closed_with(ws: &mut common::ws::Socket, secs: u64) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut code = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await.expect("the socket was not closed in time") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "error", "{v}");
                code = v["code"].as_str().map(str::to_owned);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    code.expect("an error frame before the close")
}

#[sqlx::test]
async fn open_sockets_close_when_their_token_is_revoked_or_expires(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    let ann = app.login("acme", "ann@acme.example").await;
    let ann_me: Value = app.get_as("/v1/me", "acme", &ann).await.json().await.unwrap();
    let ann_id = ann_me["user"]["id"].as_str().unwrap().to_owned();

    // removed: both of her sockets are closed at once
    let (mut one, mut two) = (common::ws::connect(&app, &ann).await, common::ws::connect(&app, &ann).await);
    let mut boss = common::ws::connect(&app, &admin).await;
    let resp = send(&app, reqwest::Method::DELETE, &format!("/v1/members/{ann_id}"), &admin, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(closed_with(&mut one, 5).await, "access_revoked");
    assert_eq!(closed_with(&mut two, 5).await, "access_revoked");

    // the admin's socket is not touched by that, and still answers
    let frames = common::ws::ask(&mut boss, None, "anything?").await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    // logged out everywhere: revoked
    let resp = send(&app, reqwest::Method::POST, "/v1/auth/logout-all", &admin, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(closed_with(&mut boss, 5).await, "token_revoked");

    // a token that expires in two seconds: its socket closes then
    let admin = app.login("acme", ADMIN).await;
    let me: Value = app.get_as("/v1/me", "acme", &admin).await.json().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let generation: i32 = sqlx::query_scalar("select token_generation from users where email = $1")
        .bind(ADMIN)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let short = app.state.jwt.sign_raw(&json!({
        "sub": me["user"]["id"], "tid": me["tenant"]["id"], "role": "admin",
        "iat": now, "exp": now + 2, "jti": uuid::Uuid::new_v4(), "gen": generation,
    }));
    let mut expiring = common::ws::connect(&app, &short).await;
    let started = std::time::Instant::now();
    assert_eq!(closed_with(&mut expiring, 8).await, "token_expired");
    assert!(started.elapsed() >= Duration::from_secs(1), "closed before it expired");
}

#[sqlx::test]
async fn the_demo_tenant_is_open_even_one_made_before_it_had_a_policy(db: PgPool) {
    let run = |args: &[&str]| docuchat(&db, args);
    // as a tenant made before the policy existed is now: invite
    let out = run(&["tenant", "create", "--name", "Demo", "--slug", "demo", "--admin-email", "admin@demo.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["tenant", "ensure-demo"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("open"));
    let signup: String =
        sqlx::query_scalar("select signup from tenants where slug = 'demo'").fetch_one(&db).await.unwrap();
    assert_eq!(signup, "open");
}

/// A tenant has at most MEMBERS_PER_TENANT users: an admin's addition past it is `409
/// member_limit`, an open tenant admits no new address (no mail, like any refused address), and
/// the members already in keep logging in.
#[sqlx::test]
async fn a_full_tenant_admits_nobody_new(db: PgPool) {
    let app = TestApp::builder().var("MEMBERS_PER_TENANT", "3").spawn(db).await;
    app.create_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    for who in ["ann@acme.example", "bob@acme.example"] {
        let resp = send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(json!({"email": who}))).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let resp =
        send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(json!({"email": "cat@acme.example"}))).await;
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "member_limit"));
    // an address already in is still `member_exists`, not the limit
    let resp =
        send(&app, reqwest::Method::POST, "/v1/members", &admin, Some(json!({"email": "ann@acme.example"}))).await;
    assert_eq!(error_of(resp).await.1, "member_exists");

    // the tenant is open, but full: a new address gets the usual answer and no code
    let mail = app.mail.as_ref().unwrap();
    assert_eq!(app.request_code("acme", "dan@elsewhere.example").await.status(), StatusCode::ACCEPTED);
    assert!(mail.next_to("dan@elsewhere.example", Duration::from_millis(500)).await.is_none());
    assert_eq!(users_named(&app, "dan@elsewhere.example").await, 0);
    // members who are in still log in
    app.login("acme", "bob@acme.example").await;
    // removing one makes room
    let bob: String = sqlx::query_scalar("select id::text from users where email = 'bob@acme.example'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let resp = send(&app, reqwest::Method::DELETE, &format!("/v1/members/{bob}"), &admin, None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    app.login("acme", "dan@elsewhere.example").await;
}

/// A token checked a moment ago is remembered by the process; a change made behind the service's
/// back (psql, another process) reaches it through the notification: the next requests fail.
#[sqlx::test]
async fn a_change_made_elsewhere_reaches_a_remembered_token_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", ADMIN).await;
    let token = app.login("acme", "ann@acme.example").await;
    for _ in 0..3 {
        assert_eq!(app.get_as("/v1/me", "acme", &token).await.status(), StatusCode::OK);
    }
    sqlx::query("delete from users where email = 'ann@acme.example'").execute(&app.db).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let status = app.get_as("/v1/me", "acme", &token).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(3), "the removal did not reach the cached token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
