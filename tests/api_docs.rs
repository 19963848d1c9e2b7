//! The API description and its docs page, as a running server serves them.

mod common;

use std::collections::BTreeSet;

use common::TestApp;
use reqwest::{StatusCode, header, redirect};
use serde_json::Value;
use sqlx::PgPool;

/// The (method, path) pairs of the README's API table: `| \`GET /v1/documents?limit=\` | …`.
fn readme_endpoints() -> BTreeSet<(String, String)> {
    let readme = include_str!("../README.md");
    let mut out = BTreeSet::new();
    for line in readme.lines() {
        let Some(rest) = line.strip_prefix("| `") else { continue };
        let Some((endpoint, _)) = rest.split_once('`') else { continue };
        let Some((method, path)) = endpoint.split_once(' ') else { continue };
        if !matches!(method, "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "WS") {
            continue;
        }
        let path = path.split('?').next().unwrap().to_owned();
        // the description does not describe itself, its page, the metrics or the web app
        if ["/openapi.json", "/docs/", "/metrics", "/app/"].contains(&path.as_str()) {
            continue;
        }
        // a WebSocket starts as a GET
        let method = if method == "WS" { "get".to_owned() } else { method.to_lowercase() };
        out.insert((method, path));
    }
    out
}

#[sqlx::test]
async fn the_description_names_every_endpoint_of_the_readme(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let resp = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone())))
        .collect();
    let listed = readme_endpoints();
    assert!(listed.len() >= 25, "the README's table was not read: {listed:?}");
    let missing: Vec<_> = listed.difference(&described).collect();
    assert!(missing.is_empty(), "in the README but not described: {missing:?}");
    let unlisted: Vec<_> = described.difference(&listed).collect();
    assert!(unlisted.is_empty(), "described but not in the README's table: {unlisted:?}");

    // the error envelope, both ways to authenticate, the tenant header and the socket's frames
    assert_eq!(doc["components"]["schemas"]["Error"]["required"], serde_json::json!(["error"]));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    let upload = &doc["paths"]["/v1/files"]["post"];
    assert!(upload["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "X-Tenant-ID" && p["in"] == "header"));
    for status in ["400", "401", "403", "413", "415", "422", "429", "500", "503"] {
        assert!(upload["responses"][status].is_object(), "POST /v1/files lacks {status}");
    }
    assert!(upload["responses"]["422"]["description"].as_str().unwrap().contains("encrypted_pdf"));
    let socket = &doc["paths"]["/ws/chat"]["get"];
    let protocol = socket["description"].as_str().unwrap();
    for code in ["malformed_frame", "frame_too_large", "busy", "quota_exceeded", "shutting_down"] {
        assert!(protocol.contains(code), "the socket's description lacks {code}");
    }
    let server_frame = doc["components"]["schemas"]["ServerFrame"].to_string();
    for frame in ["start", "sources", "token", "done", "error"] {
        assert!(server_frame.contains(&format!("\"{frame}\"")), "ServerFrame lacks {frame}");
    }

    // the root links to both
    let root: Value = app.client.get(app.url("/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(root["links"]["openapi"], "/openapi.json");
    assert_eq!(root["links"]["docs"], "/docs/");
    app.stop().await;
}

#[sqlx::test]
async fn the_docs_page_and_its_files_come_from_the_server(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let client = reqwest::Client::builder().redirect(redirect::Policy::none()).build().unwrap();
    for path in ["/docs", "/redoc"] {
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT, "{path}");
        assert_eq!(resp.headers()[header::LOCATION], "/docs/", "{path}");
    }
    let resp = client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");

    // every script and style the page loads: relative, and served by this server
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for piece in page.split(attr).skip(1) {
            let target = piece.split('"').next().unwrap();
            assert!(!target.contains("//"), "the page loads {target} from elsewhere");
            assets.push(target.trim_start_matches("./").to_owned());
        }
    }
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for asset in &assets {
        let resp = client.get(app.url(&format!("/docs/{asset}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        assert!(!resp.bytes().await.unwrap().is_empty(), "{asset}");
    }
    // the page is pointed at this server's description
    let init = client.get(app.url("/docs/swagger-initializer.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("/openapi.json"), "{init}");

    // a file the page does not have: the error envelope
    let resp = client.get(app.url("/docs/nothing-here.js")).send().await.unwrap();
    let (status, code, _) = common::error_of(resp).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    app.stop().await;
}
