//! API keys: created by admins, used within their scopes, charged for what they upload, refused
//! once revoked or with another tenant.

mod common;

use common::{TestApp, error_of, fixture, metering::*};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest;
use sqlx::PgPool;
use uuid::Uuid;

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

#[sqlx::test]
async fn a_tenant_s_live_keys_are_capped(db: PgPool) {
    let app = TestApp::builder().config(|c| c.api_keys_per_tenant = 2).spawn(db).await;
    let (admin, _, outsider) = two_tenants(&app).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = create_key(&app, "acme", &admin, &["usage:read"]).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        ids.push(resp.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    let (status, code, _) = error_of(create_key(&app, "acme", &admin, &["usage:read"]).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "api_key_limit"));
    // another tenant has a cap of its own
    assert_eq!(create_key(&app, "other", &outsider, &["usage:read"]).await.status(), StatusCode::CREATED);
    // a revoked key no longer counts
    assert_eq!(
        app.delete_as(&format!("/v1/api-keys/{}", ids[0]), "acme", &admin).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(create_key(&app, "acme", &admin, &["usage:read"]).await.status(), StatusCode::CREATED);
}

/// A key checked a moment ago is remembered by the process; revoking it behind the service's back
/// (psql, another process) reaches it through the notification: the next requests are refused.
#[sqlx::test]
async fn a_key_revoked_elsewhere_is_refused_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (admin, _, _) = two_tenants(&app).await;
    let created: Value = create_key(&app, "acme", &admin, &["usage:read"]).await.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(app.get_as("/v1/usage", "acme", &key).await.status(), StatusCode::OK);
    }
    sqlx::query("update api_keys set revoked_at = now()").execute(&app.db).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let resp = app.get_as("/v1/usage", "acme", &key).await;
        if resp.status() == StatusCode::UNAUTHORIZED {
            assert_eq!(error_of(resp).await.1, "api_key_revoked");
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "the revocation did not reach the cached key");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
