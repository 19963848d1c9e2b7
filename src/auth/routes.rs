//! `POST /v1/auth/request-code`, `POST /v1/auth/verify-code`, `GET /v1/me`; the API keys:
//! `POST /v1/api-keys`, `GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`; and the members:
//! `POST /v1/members`, `GET /v1/members`, `PATCH /v1/members/{id}`, `DELETE /v1/members/{id}`
//! (admins). A member's rights are read from the database at every request, so a removal or a
//! role change applies to their next request.

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
    codes::CodeError,
    email::Email,
    jwt::Role,
    users::{self, MemberError},
};
use crate::{
    app::AppState,
    db,
    error::{ApiError, ApiResult},
    http::extractors::{AppJson, ClientIp},
    tenants::TenantCtx,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/request-code", post(request_code))
        .route("/v1/auth/verify-code", post(verify_code))
        .route("/v1/me", get(me))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/logout-all", post(logout_all))
        .route("/v1/api-keys", get(list_keys).post(create_key))
        .route("/v1/members", get(list_members).post(add_member))
        .route("/v1/members/{id}", axum::routing::patch(change_member).delete(remove_member))
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
    // an address that may not log in gets the same answer, and no code
    let allowed = {
        let mut tx = db::for_tenant(&state.db, tenant.0.id).await?;
        users::may_log_in(&mut tx, &tenant.0, &email, state.config.members_per_tenant).await?.is_some()
    };
    let code = state.codes.issue(tenant.0.id, &email, ip, allowed).await?;
    let ttl = state.codes.limits().code_ttl;
    // Delivery happens off the request path: the answer (and its timing) says nothing about it.
    if let Some(code) = code {
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
    } else {
        tracing::debug!("login code refused: the address may not log in to this tenant");
    }
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
    // removed (or the policy changed) since the code was sent: as if the code were wrong
    let mut tx = db::for_tenant(&state.db, tenant.0.id).await?;
    let role = users::may_log_in(&mut tx, &tenant.0, &email, state.config.members_per_tenant)
        .await?
        .ok_or(CodeError::Invalid)?;
    let user = users::upsert_on_login(&mut *tx, tenant.0.id, &email, role).await?;
    tx.commit().await?;
    let token = state.jwt.issue(user.id, tenant.0.id, user.role, user.token_generation)?;
    tracing::info!(user_id = %user.id, tenant_id = %tenant.0.id, "user logged in");
    Ok(Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": state.jwt.ttl().as_secs(),
    })))
}

/// Revokes the presented token.
async fn logout(State(state): State<AppState>, user: CurrentUser) -> ApiResult<StatusCode> {
    let t = user.token;
    let expires_at = chrono::DateTime::from_timestamp(t.exp as i64, 0).unwrap_or_else(chrono::Utc::now);
    users::revoke_token(&state.db, user.tenant.0.id, user.user.id, t.jti, expires_at).await?;
    // this process forgets the token at once; the others when the notification arrives
    state.access.changed(user.user.id);
    tracing::info!(user_id = %user.user.id, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every token of the caller, this one included.
async fn logout_all(State(state): State<AppState>, user: CurrentUser) -> ApiResult<StatusCode> {
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    users::revoke_all_tokens(&mut *tx, user.tenant.0.id, user.user.id).await?;
    tx.commit().await?;
    state.access.changed(user.user.id);
    tracing::info!(user_id = %user.user.id, "logged out everywhere");
    Ok(StatusCode::NO_CONTENT)
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
    let max = state.config.api_keys_per_tenant;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    let (key, secret) = api_keys::create(&mut *tx, user.tenant.0.id, user.user.id, name, &scopes, max)
        .await?
        .ok_or_else(|| ApiError::Conflict {
            code: "api_key_limit",
            message: format!("the tenant has {max} API keys already: revoke one first"),
        })?;
    tx.commit().await?;
    tracing::info!(key_id = %key.id, scopes = ?key.scopes, "API key created");
    let mut body = serde_json::to_value(&key).map_err(anyhow::Error::from)?;
    body["key"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_keys(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let keys = api_keys::list(&mut *db::for_tenant(&state.db, user.tenant.0.id).await?, user.tenant.0.id).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

/// Revokes a key at once; revoking it again changes nothing.
async fn revoke_key(State(state): State<AppState>, user: CurrentUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let not_found = || ApiError::not_found("api_key_not_found", "no such API key");
    let id = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    if !api_keys::revoke(&mut *tx, user.tenant.0.id, id).await? {
        return Err(not_found());
    }
    tx.commit().await?;
    // this process forgets the key at once; the others when the notification arrives
    state.access.key_changed(id);
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    email: String,
    #[serde(default = "member_role")]
    role: Role,
}

fn member_role() -> Role {
    Role::Member
}

async fn add_member(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<AddMember>,
) -> ApiResult<(StatusCode, Json<users::Member>)> {
    user.require_admin()?;
    let email = parse_email(&body.email)?;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    let member = users::invite(&mut tx, user.tenant.0.id, &email, body.role, state.config.members_per_tenant).await?;
    tx.commit().await?;
    tracing::info!(member_id = %member.id, role = ?member.role, "member added");
    Ok((StatusCode::CREATED, Json(member)))
}

#[derive(Deserialize)]
struct ListMembers {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list_members(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<axum::extract::Query<ListMembers>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let axum::extract::Query(q) = query.map_err(|_| ApiError::bad_request("invalid_query", "use ?limit=&after="))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 200"));
    }
    let after = match q.after.as_deref() {
        Some(a) => Some(
            Uuid::try_parse(a).map_err(|_| ApiError::bad_request("invalid_cursor", "`after` must be a member id"))?,
        ),
        None => None,
    };
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    let mut members = users::list_members(&mut *tx, user.tenant.0.id, after, limit + 1).await?;
    drop(tx);
    let next = if members.len() as i64 > limit {
        members.truncate(limit as usize);
        members.last().map(|m| m.id)
    } else {
        None
    };
    Ok(Json(json!({ "members": members, "next_cursor": next })))
}

fn member_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| MemberError::NotFound.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeMember {
    role: Role,
}

async fn change_member(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    AppJson(body): AppJson<ChangeMember>,
) -> ApiResult<Json<users::Member>> {
    user.require_admin()?;
    let member = users::set_role(&state.db, user.tenant.0.id, member_id(&id)?, body.role).await?;
    state.access.changed(member.id);
    tracing::info!(member_id = %member.id, role = ?member.role, "member's role changed");
    Ok(Json(member))
}

async fn remove_member(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let id = member_id(&id)?;
    users::remove(&state.db, user.tenant.0.id, id).await?;
    state.access.changed(id);
    tracing::info!(member_id = %id, "member removed");
    Ok(StatusCode::NO_CONTENT)
}
