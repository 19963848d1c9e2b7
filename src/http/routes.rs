//! `GET /healthz` (liveness and readiness of Postgres and Redis) and `GET /`.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::app::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = async {
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("select 1").execute(&state.db))
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))
    };
    let redis = async {
        tokio::time::timeout(CHECK_TIMEOUT, state.redis.ping())
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let (postgres, redis) = tokio::join!(postgres, redis);

    let mut failed = Vec::new();
    for (name, result) in [("postgres", &postgres), ("redis", &redis)] {
        if let Err(e) = result {
            // the reason goes to the log, not to the (unauthenticated) caller
            tracing::warn!(dependency = name, error = %e, "health check failed");
            failed.push(name);
        }
    }
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" };
    let mut body = json!({
        "status": if failed.is_empty() { "ok" } else { "unavailable" },
        "postgres": word(&postgres),
        "redis": word(&redis),
    });
    if failed.is_empty() {
        (StatusCode::OK, Json(body))
    } else {
        body["error"] = json!({
            "code": "dependency_unavailable",
            "message": format!("unavailable: {}", failed.join(", ")),
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

pub async fn root() -> Json<Value> {
    Json(json!({
        "name": "DocuChat",
        "description": "multi-tenant document chat: upload PDFs, ask questions, get cited answers",
        "version": env!("CARGO_PKG_VERSION"),
        "links": {
            "health": "/healthz",
            "request_code": "/v1/auth/request-code",
            "verify_code": "/v1/auth/verify-code",
            "me": "/v1/me",
        },
    }))
}
