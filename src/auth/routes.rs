//! `POST /v1/auth/request-code`, `POST /v1/auth/verify-code`, `GET /v1/me`.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use super::{CurrentUser, email::Email, jwt::Role, users};
use crate::{
    app::AppState,
    error::{ApiError, ApiResult},
    http::extractors::{AppJson, ClientIp},
    tenants::TenantCtx,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/request-code", post(request_code))
        .route("/v1/auth/verify-code", post(verify_code))
        .route("/v1/me", get(me))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestCode {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyCode {
    email: String,
    code: String,
}

fn parse_email(raw: &str) -> ApiResult<Email> {
    Email::parse(raw).map_err(|why| ApiError::bad_request("invalid_email", why))
}

/// Always the same answer for a valid address, whether or not it belongs to a user yet.
async fn request_code(
    State(state): State<AppState>,
    tenant: TenantCtx,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<RequestCode>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    state.limits.check_auth(ip).await?;
    let email = parse_email(&body.email)?;
    let code = state.codes.issue(tenant.0.id, &email, ip).await?;
    let ttl = state.codes.limits().code_ttl;
    // Delivery happens off the request path: the answer (and its timing) says nothing about it.
    let mailer = state.mailer.clone();
    let tenant_name = tenant.0.name.clone();
    tokio::spawn(
        async move {
            if let Err(e) = mailer.send_code(&email, &code, &tenant_name, ttl).await {
                tracing::error!(error = format!("{e:#}"), "could not send a login code");
            }
        }
        .instrument(tracing::Span::current()),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "code_sent",
            "message": "if the address can receive mail, a 6-digit code is on its way",
            "expires_in": ttl.as_secs(),
        })),
    ))
}

async fn verify_code(
    State(state): State<AppState>,
    tenant: TenantCtx,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<VerifyCode>,
) -> ApiResult<Json<Value>> {
    state.limits.check_auth(ip).await?;
    state.codes.check_verify_rate(ip).await?;
    let email = parse_email(&body.email)?;
    state.codes.verify(tenant.0.id, &email, body.code.trim()).await??;
    let role = if email.as_str() == tenant.0.admin_email { Role::Admin } else { Role::Member };
    let user = users::upsert_on_login(&state.db, tenant.0.id, &email, role).await?;
    let token = state.jwt.issue(user.id, tenant.0.id, user.role)?;
    tracing::info!(user_id = %user.id, tenant_id = %tenant.0.id, "user logged in");
    Ok(Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": state.jwt.ttl().as_secs(),
    })))
}

async fn me(user: CurrentUser) -> Json<Value> {
    let t = &user.tenant.0;
    Json(json!({
        "user": {
            "id": user.user.id,
            "email": user.user.email,
            "role": user.user.role,
            "created_at": user.user.created_at,
            "last_login_at": user.user.last_login_at,
        },
        "tenant": { "id": t.id, "name": t.name, "slug": t.slug },
    }))
}
