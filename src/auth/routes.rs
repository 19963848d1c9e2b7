//! `POST /v1/auth/request-code`, `POST /v1/auth/verify-code`, `GET /v1/me`, and the API keys:
//! `POST /v1/api-keys`, `GET /v1/api-keys`, `DELETE /v1/api-keys/{id}` (admins).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{delete, get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use uuid::Uuid;

use super::{
    CurrentUser,
    api_keys::{self, Scope},
    email::Email,
    jwt::Role,
    users,
};
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
        .route("/v1/api-keys", get(list_keys).post(create_key))
        .route("/v1/api-keys/{id}", delete(revoke_key))
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
    state.codes.verify(tenant.0.id, &email, body.code.trim()).await?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    scopes: Vec<String>,
}

async fn create_key(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    user.require_admin()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request("invalid_name", "a key name is 1 to 100 characters"));
    }
    let mut scopes: Vec<Scope> = Vec::new();
    for s in &body.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_scope",
                format!("unknown scope `{s}`: use usage:read, documents:read or documents:write"),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request("invalid_scope", "give a key at least one scope"));
    }
    let (key, secret) = api_keys::create(&state.db, user.tenant.0.id, user.user.id, name, &scopes).await?;
    tracing::info!(key_id = %key.id, scopes = ?key.scopes, "API key created");
    let mut body = serde_json::to_value(&key).map_err(anyhow::Error::from)?;
    body["key"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_keys(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let keys = api_keys::list(&state.db, user.tenant.0.id).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

/// Revokes a key at once; revoking it again changes nothing.
async fn revoke_key(State(state): State<AppState>, user: CurrentUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let not_found = || ApiError::not_found("api_key_not_found", "no such API key");
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    if !api_keys::revoke(&state.db, user.tenant.0.id, id).await? {
        return Err(not_found());
    }
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
