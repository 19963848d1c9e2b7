//! The web app at `/app`: a chat, documents and usage client for people, and the reference client
//! of the HTTP and WebSocket contract. Its files (`web/`) are compiled into the binary: nothing is
//! built at install time or fetched at run time, and the app works wherever the API does.
//!
//! Caching: the page itself is revalidated on every load (`no-cache` with an `ETag`, so a reload
//! costs a `304`); it names its script and style sheet with their content hash (`?v=`), and those
//! URLs are immutable for a year. A new binary ships new hashes, so a browser never mixes versions.
//!
//! Every response carries a strict Content-Security-Policy: scripts and styles from this origin
//! only (no inline code), connections to this origin only (the API and its WebSocket), no frames,
//! no forms posted elsewhere. The script writes text from documents and models with `textContent`,
//! never as markup.

use std::sync::OnceLock;

use axum::{
    Router,
    extract::{Path, Query},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{app::AppState, error::error_response};

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &[u8] = include_bytes!("../web/app.js");
const STYLE: &[u8] = include_bytes!("../web/app.css");
const ICON: &[u8] = include_bytes!("../web/icon.svg");

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data: blob:; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// the first 16 hex digits of the body's SHA-256: the `?v=` of its URL and its ETag
    hash: String,
}

impl Asset {
    fn new(body: &'static [u8], content_type: &'static str) -> Self {
        Self { body, content_type, hash: hash(body) }
    }
}

fn hash(body: &[u8]) -> String {
    hex::encode(&Sha256::digest(body)[..8])
}

struct Assets {
    index: Vec<u8>,
    index_etag: String,
    script: Asset,
    style: Asset,
    icon: Asset,
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let script = Asset::new(SCRIPT, "text/javascript; charset=utf-8");
        let style = Asset::new(STYLE, "text/css; charset=utf-8");
        let icon = Asset::new(ICON, "image/svg+xml");
        let index = INDEX
            .replace("{{script}}", &format!("app.js?v={}", script.hash))
            .replace("{{style}}", &format!("app.css?v={}", style.hash))
            .replace("{{icon}}", &format!("icon.svg?v={}", icon.hash))
            .into_bytes();
        let index_etag = hash(&index);
        Assets { index, index_etag, script, style, icon }
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/app", get(|uri: axum::http::Uri| async move { Redirect::permanent(&to_slash(uri.query())) }))
        .route("/app/", get(index))
        .route("/app/{file}", get(file))
}

fn to_slash(query: Option<&str>) -> String {
    match query {
        Some(q) => format!("/app/?{q}"),
        None => "/app/".to_owned(),
    }
}

/// The headers of every response of the app.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag))
}

fn send(headers: &HeaderMap, body: &'static [u8], content_type: &'static str, hash: &str, immutable: bool) -> Response {
    let etag = format!("\"{hash}\"");
    let cache = if immutable { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut resp = if not_modified(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    secured(resp)
}

async fn index(headers: HeaderMap) -> Response {
    let a = assets();
    send(&headers, &a.index, "text/html; charset=utf-8", &a.index_etag, false)
}

#[derive(Deserialize)]
struct Version {
    v: Option<String>,
}

async fn file(
    Path(name): Path<String>,
    headers: HeaderMap,
    version: Result<Query<Version>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let a = assets();
    let asset = match name.as_str() {
        "app.js" => &a.script,
        "app.css" => &a.style,
        "icon.svg" => &a.icon,
        _ => return secured(error_response(StatusCode::NOT_FOUND, "not_found", "no such file in the app")),
    };
    // only the URL naming this very content may be cached for good
    let immutable = version.ok().and_then(|Query(v)| v.v).is_some_and(|v| v == asset.hash);
    send(&headers, asset.body, asset.content_type, &asset.hash, immutable)
}

/// The page and its files, for tests and for the size the README states.
pub fn sizes() -> [(&'static str, usize); 4] {
    let a = assets();
    [
        ("index.html", a.index.len()),
        ("app.js", a.script.body.len()),
        ("app.css", a.style.body.len()),
        ("icon.svg", a.icon.body.len()),
    ]
}
