//! `GET /healthz` (liveness and readiness of Postgres and Redis) and `GET /`.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{app::AppState, error::ErrorBody};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the service and what it depends on can serve.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when a dependency is
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `ok` or `unavailable`
    pub postgres: &'static str,
    /// `ok` or `unavailable`
    pub redis: &'static str,
    /// `dependency_unavailable`, naming what is (only when `status` is `unavailable`)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[utoipa::path(
    get, path = "/healthz", operation_id = "health", tag = "service",
    summary = "Liveness and readiness",
    description = "Checks Postgres and Redis (2 s each). The reason a check failed goes to the log, not to the caller.",
    responses(
        (status = 200, description = "Postgres and Redis answer", body = Health),
        (status = 503, description = "`dependency_unavailable`: the body names what is unavailable", body = Health),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
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
    if redis.is_err() {
        crate::metrics::get().redis_errors.inc();
    }

    let mut failed = Vec::new();
    for (name, result) in [("postgres", &postgres), ("redis", &redis)] {
        if let Err(e) = result {
            // the reason goes to the log, not to the (unauthenticated) caller
            tracing::warn!(dependency = name, error = %e, "health check failed");
            failed.push(name);
        }
    }
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" };
    let mut body = Health {
        status: if failed.is_empty() { "ok" } else { "unavailable" },
        postgres: word(&postgres),
        redis: word(&redis),
        error: None,
    };
    if failed.is_empty() {
        (StatusCode::OK, Json(body))
    } else {
        body.error = Some(ErrorBody::new("dependency_unavailable", format!("unavailable: {}", failed.join(", "))));
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

/// What the service is and where to start.
#[derive(Serialize, ToSchema)]
pub struct Root {
    #[schema(example = "DocuChat")]
    pub name: &'static str,
    pub description: &'static str,
    pub version: &'static str,
    pub links: Links,
}

/// Where things are.
#[derive(Serialize, ToSchema)]
pub struct Links {
    /// the API description (OpenAPI 3.1)
    pub openapi: &'static str,
    /// the API's docs page
    pub docs: &'static str,
    pub health: &'static str,
    pub request_code: &'static str,
    pub verify_code: &'static str,
    pub me: &'static str,
    /// the chat WebSocket
    pub chat: &'static str,
    /// the web app: log in, upload, chat
    pub app: &'static str,
}

#[utoipa::path(
    get, path = "/", operation_id = "root", tag = "service",
    summary = "Name, version and links",
    responses((status = 200, description = "What the service is and where its description and docs are", body = Root))
)]
pub async fn root() -> Json<Root> {
    Json(Root {
        name: "DocuChat",
        description: "multi-tenant document chat: upload PDFs, ask questions, get cited answers",
        version: env!("CARGO_PKG_VERSION"),
        links: Links {
            openapi: "/openapi.json",
            docs: "/docs/",
            health: "/healthz",
            request_code: "/v1/auth/request-code",
            verify_code: "/v1/auth/verify-code",
            me: "/v1/me",
            chat: "/ws/chat",
            app: "/app/",
        },
    })
}
