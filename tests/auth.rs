//! The e-mail code login and the JWTs it hands out, against real Postgres, Redis and SMTP.

mod common;

use std::time::Duration;

use common::{TestApp, error_of};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test]
async fn login_through_a_real_mail_server(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let tenant = app.create_tenant("acme", "boss@acme.example").await;

    let resp = app.request_code("acme", "Boss@Acme.example").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mail = app.mail.as_ref().unwrap().next_to("boss@acme.example", Duration::from_secs(10)).await.expect("mail");
    assert_eq!(mail.to, vec!["boss@acme.example".to_string()]);
    let code = mail.code().expect("code in mail");
    assert_eq!(code.len(), 6);

    // the address is compared case-insensitively
    let resp = app.verify_code("acme", "BOSS@acme.EXAMPLE", &code).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 7 * 24 * 3600);
    let token = body["access_token"].as_str().unwrap();

    // by slug and by id
    for header in ["acme".to_string(), tenant.id.to_string()] {
        let me: Value = app.get_as("/v1/me", &header, token).await.json().await.unwrap();
        assert_eq!(me["user"]["email"], "boss@acme.example");
        assert_eq!(me["user"]["role"], "admin");
        assert_eq!(me["tenant"]["id"], tenant.id.to_string());
        assert_eq!(me["tenant"]["slug"], "acme");
    }

    // anyone else becomes a member on first login; a second login is the same user
    let t1 = app.login("acme", "worker@acme.example").await;
    let t2 = app.login("acme", "worker@acme.example").await;
    let me1: Value = app.get_as("/v1/me", "acme", &t1).await.json().await.unwrap();
    let me2: Value = app.get_as("/v1/me", "acme", &t2).await.json().await.unwrap();
    assert_eq!(me1["user"]["role"], "member");
    assert_eq!(me1["user"]["id"], me2["user"]["id"]);
    let users: i64 = sqlx::query_scalar("select count(*) from users where tenant_id = $1")
        .bind(tenant.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 2);
}

#[sqlx::test]
async fn the_answer_does_not_reveal_whether_a_user_exists(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    app.login("acme", "known@acme.example").await;

    let known = app.request_code("acme", "known@acme.example").await;
    let unknown = app.request_code("acme", "stranger@acme.example").await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(known.text().await.unwrap(), unknown.text().await.unwrap());
}

#[sqlx::test]
async fn codes_are_stored_hashed(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let code = app.code_by_mail("acme", "someone@acme.example").await;

    let redis = app.state.redis.client();
    let keys: Vec<String> =
        fred::interfaces::KeysInterface::scan_page(redis, "0", app.state.redis.key("*"), Some(1000), None)
            .await
            .map(|(_, keys): (String, Vec<String>)| keys)
            .unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        assert!(!key.contains("someone"), "the address is in a key name: {key}");
        let dump: Value =
            match fred::interfaces::HashesInterface::hgetall::<std::collections::HashMap<String, String>, _>(
                redis, &key,
            )
            .await
            {
                Ok(map) => json!(map),
                Err(_) => json!(fred::interfaces::KeysInterface::get::<Option<String>, _>(redis, &key).await.unwrap()),
            };
        assert!(!dump.to_string().contains(&code), "the code is stored in clear under {key}: {dump}");
    }
}

#[sqlx::test]
async fn wrong_reused_and_malformed_codes_are_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let code = app.code_by_mail("acme", "u@acme.example").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };

    let (status, c, _) = error_of(app.verify_code("acme", "u@acme.example", wrong).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));
    for bad in ["12345", "abcdef", ""] {
        let (status, c, _) = error_of(app.verify_code("acme", "u@acme.example", bad).await).await;
        assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"), "{bad:?}");
    }

    // every call counts as an attempt (4 so far, of 5): the right code still works, once
    assert_eq!(app.verify_code("acme", "u@acme.example", &code).await.status(), StatusCode::OK);
    let (status, c, _) = error_of(app.verify_code("acme", "u@acme.example", &code).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));

    // a code for one address does not work for another
    let code = app.code_by_mail("acme", "a@acme.example").await;
    let (_, c, _) = error_of(app.verify_code("acme", "b@acme.example", &code).await).await;
    assert_eq!(c, "invalid_code");
}

#[sqlx::test]
async fn five_wrong_codes_burn_the_code(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let code = app.code_by_mail("acme", "u@acme.example").await;
    let wrong = if code == "999999" { "999998" } else { "999999" };
    for attempt in 1..=5 {
        let (status, c, _) = error_of(app.verify_code("acme", "u@acme.example", wrong).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let expected = if attempt < 5 { "invalid_code" } else { "too_many_attempts" };
        assert_eq!(c, expected, "attempt {attempt}");
    }
    let (status, c, _) = error_of(app.verify_code("acme", "u@acme.example", &code).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));
}

#[sqlx::test]
async fn a_code_logs_in_once_even_when_sent_many_times_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let code = app.code_by_mail("acme", "u@acme.example").await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url, code) = (app.client.clone(), app.url("/v1/auth/verify-code"), code.clone());
        set.spawn(async move {
            client
                .post(url)
                .header("X-Tenant-ID", "acme")
                .json(&json!({"email": "u@acme.example", "code": code}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let statuses = set.join_all().await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED));
}

#[sqlx::test]
async fn codes_expire(db: PgPool) {
    let app = TestApp::builder().config(|c| c.auth.code_ttl = Duration::from_millis(800)).spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let code = app.code_by_mail("acme", "u@acme.example").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, c, _) = error_of(app.verify_code("acme", "u@acme.example", &code).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_code"));
}

#[sqlx::test]
async fn a_new_code_replaces_the_old_one(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let first = app.code_by_mail("acme", "u@acme.example").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = app.code_by_mail("acme", "u@acme.example").await;
    if first != second {
        let (_, c, _) = error_of(app.verify_code("acme", "u@acme.example", &first).await).await;
        assert_eq!(c, "invalid_code");
    }
    assert_eq!(app.verify_code("acme", "u@acme.example", &second).await.status(), StatusCode::OK);
}

#[sqlx::test]
async fn resend_cooldown_and_request_caps(db: PgPool) {
    let app = TestApp::builder()
        .config(|c| {
            c.auth.resend_cooldown = Duration::from_secs(30);
        })
        .spawn(db)
        .await;
    app.create_tenant("acme", "boss@acme.example").await;
    assert_eq!(app.request_code("acme", "u@acme.example").await.status(), StatusCode::ACCEPTED);
    let resp = app.request_code("acme", "U@acme.example").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let (_, c, _) = error_of(resp).await;
    assert_eq!(c, "rate_limited");
    // another address is not held up
    assert_eq!(app.request_code("acme", "other@acme.example").await.status(), StatusCode::ACCEPTED);
}

#[sqlx::test]
async fn per_address_and_per_ip_caps(db: PgPool) {
    let app = TestApp::builder()
        .config(|c| {
            c.auth.codes_per_email_per_hour = 2;
            c.auth.codes_per_ip_per_hour = 4;
        })
        .spawn(db)
        .await;
    app.create_tenant("acme", "boss@acme.example").await;
    for _ in 0..2 {
        assert_eq!(app.request_code("acme", "u@acme.example").await.status(), StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, c, _) = error_of(app.request_code("acme", "u@acme.example").await).await;
    assert_eq!((status, c.as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    // the IP has used 3 of 4; one more address passes, the next is refused whatever the address
    assert_eq!(app.request_code("acme", "v@acme.example").await.status(), StatusCode::ACCEPTED);
    let resp = app.request_code("acme", "w@acme.example").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
}

#[sqlx::test]
async fn invalid_addresses_are_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    for bad in ["not-an-address", "a@b", "", "x@@y.com"] {
        let (status, c, _) = error_of(app.request_code("acme", bad).await).await;
        assert_eq!((status, c.as_str()), (StatusCode::BAD_REQUEST, "invalid_email"), "{bad:?}");
    }
    let (status, c, _) = error_of(app.verify_code("acme", "nope", "123456").await).await;
    assert_eq!((status, c.as_str()), (StatusCode::BAD_REQUEST, "invalid_email"));
}

#[sqlx::test]
async fn a_token_only_works_with_its_own_tenant(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("alpha", "a@alpha.example").await;
    let beta = app.create_tenant("beta", "b@beta.example").await;
    let token = app.login("alpha", "a@alpha.example").await;

    assert_eq!(app.get_as("/v1/me", "alpha", &token).await.status(), StatusCode::OK);
    for header in ["beta".to_string(), beta.id.to_string()] {
        let (status, c, _) = error_of(app.get_as("/v1/me", &header, &token).await).await;
        assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    }
    // and a code issued in one tenant does not log in to another
    let code = app.code_by_mail("alpha", "shared@x.example").await;
    let (_, c, _) = error_of(app.verify_code("beta", "shared@x.example", &code).await).await;
    assert_eq!(c, "invalid_code");
}

#[sqlx::test]
async fn forged_expired_and_missing_tokens_are_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let tenant = app.create_tenant("acme", "boss@acme.example").await;
    let token = app.login("acme", "boss@acme.example").await;
    let me: Value = app.get_as("/v1/me", "acme", &token).await.json().await.unwrap();
    let user_id: Uuid = me["user"]["id"].as_str().unwrap().parse().unwrap();

    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": user_id, "tid": tenant.id, "role": "admin", "iat": now, "exp": now + 3600, "jti": Uuid::new_v4()});

    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    let (status, c, _) = error_of(app.get_as("/v1/me", "acme", &alg_none).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));

    let expired = app.state.jwt.sign_raw(&json!({"sub": user_id, "tid": tenant.id, "role": "admin",
        "iat": now - 7200, "exp": now - 3600, "jti": Uuid::new_v4()}));
    let (status, c, _) = error_of(app.get_as("/v1/me", "acme", &expired).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "token_expired"));

    let unknown_user = app.state.jwt.sign_raw(&json!({"sub": Uuid::new_v4(), "tid": tenant.id, "role": "admin",
        "iat": now, "exp": now + 3600, "jti": Uuid::new_v4()}));
    let (status, c, _) = error_of(app.get_as("/v1/me", "acme", &unknown_user).await).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));

    for garbage in ["garbage", "a.b.c", &token[..token.len() - 3]] {
        let (status, c, _) = error_of(app.get_as("/v1/me", "acme", garbage).await).await;
        assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"), "{garbage}");
    }

    let resp = app.client.get(app.url("/v1/me")).header("X-Tenant-ID", "acme").send().await.unwrap();
    let (status, c, _) = error_of(resp).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "missing_token"));

    let resp = app
        .client
        .get(app.url("/v1/me"))
        .header("X-Tenant-ID", "acme")
        .header("Authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    let (status, c, _) = error_of(resp).await;
    assert_eq!((status, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_token"));
}
