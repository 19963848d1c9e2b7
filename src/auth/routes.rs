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
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

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
    error::{ApiError, ApiResult, Envelope as Error},
    http::extractors::{AppJson, ClientIp, page},
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestCode {
    #[schema(example = "ann@acme.example")]
    email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyCode {
    #[schema(example = "ann@acme.example")]
    email: String,
    /// the 6 digits of the mail
    #[schema(example = "123456")]
    code: String,
}

/// The same answer whether or not the address may log in.
#[derive(Serialize, ToSchema)]
pub struct CodeSent {
    /// always `code_sent`
    status: &'static str,
    message: &'static str,
    /// seconds the code is valid
    expires_in: u64,
}

/// A login token.
#[derive(Serialize, ToSchema)]
pub struct AccessToken {
    /// a JWT: `Authorization: Bearer <access_token>`, or `?token=` on the chat socket
    access_token: String,
    /// always `bearer`
    token_type: &'static str,
    /// seconds the token is valid
    expires_in: u64,
}

fn parse_email(raw: &str) -> ApiResult<Email> {
    Email::parse(raw).map_err(|why| ApiError::bad_request("invalid_email", why))
}

/// Always the same answer for a valid address, whether or not it belongs to a user yet.
#[utoipa::path(
    post, path = "/v1/auth/request-code", operation_id = "requestCode", tag = "auth",
    summary = "Send a 6-digit login code by e-mail",
    description = "The answer (and its timing) is the same whether or not the address may log in to the tenant; \
        an address that may not gets no mail. One code per address per minute, 5 per address per hour, \
        30 per client address per hour.",
    request_body = RequestCode,
    responses(
        (status = 202, description = "If the address may log in, a code is on its way", body = CodeSent),
        (status = 400, description = "`invalid_email`", body = Error),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = Error),
    )
)]
pub async fn request_code(
    State(state): State<AppState>,
    tenant: TenantCtx,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<RequestCode>,
) -> ApiResult<(StatusCode, Json<CodeSent>)> {
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
        Json(CodeSent {
            status: "code_sent",
            message: "if the address can receive mail, a 6-digit code is on its way",
            expires_in: ttl.as_secs(),
        }),
    ))
}

#[utoipa::path(
    post, path = "/v1/auth/verify-code", operation_id = "verifyCode", tag = "auth",
    summary = "Exchange the code for a token",
    description = "Creates the user on first login. An address that may not log in fails as a wrong code does.",
    request_body = VerifyCode,
    responses(
        (status = 200, description = "Logged in", body = AccessToken),
        (status = 400, description = "`invalid_email`", body = Error),
        (status = 401, description = "`invalid_code` (wrong, expired or used), `too_many_attempts` (5 wrong codes burn it)", body = Error),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = Error),
    )
)]
pub async fn verify_code(
    State(state): State<AppState>,
    tenant: TenantCtx,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<VerifyCode>,
) -> ApiResult<Json<AccessToken>> {
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
    Ok(Json(AccessToken { access_token: token, token_type: "bearer", expires_in: state.jwt.ttl().as_secs() }))
}

/// Revokes the presented token.
#[utoipa::path(
    post, path = "/v1/auth/logout", operation_id = "logout", tag = "auth", security(("bearer" = [])),
    summary = "Revoke this token",
    responses((status = 204, description = "The token no longer works"))
)]
pub async fn logout(State(state): State<AppState>, user: CurrentUser) -> ApiResult<StatusCode> {
    let t = user.token;
    let expires_at = chrono::DateTime::from_timestamp(t.exp as i64, 0).unwrap_or_else(chrono::Utc::now);
    users::revoke_token(&state.db, user.tenant.0.id, user.user.id, t.jti, expires_at).await?;
    // this process forgets the token at once; the others when the notification arrives
    state.access.changed(user.user.id);
    tracing::info!(user_id = %user.user.id, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every token of the caller, this one included.
#[utoipa::path(
    post, path = "/v1/auth/logout-all", operation_id = "logoutAll", tag = "auth", security(("bearer" = [])),
    summary = "Revoke every token of the caller",
    responses((status = 204, description = "None of the caller's tokens works any more, this one included"))
)]
pub async fn logout_all(State(state): State<AppState>, user: CurrentUser) -> ApiResult<StatusCode> {
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    users::revoke_all_tokens(&mut *tx, user.tenant.0.id, user.user.id).await?;
    tx.commit().await?;
    state.access.changed(user.user.id);
    tracing::info!(user_id = %user.user.id, "logged out everywhere");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller and their tenant.
#[derive(Serialize, ToSchema)]
pub struct Me {
    user: MeUser,
    tenant: MeTenant,
}

#[derive(Serialize, ToSchema)]
pub struct MeUser {
    id: Uuid,
    email: String,
    role: Role,
    created_at: DateTime<Utc>,
    last_login_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct MeTenant {
    id: Uuid,
    name: String,
    slug: String,
}

#[utoipa::path(
    get, path = "/v1/me", operation_id = "me", tag = "auth", security(("bearer" = [])),
    summary = "The current user and tenant",
    responses((status = 200, description = "Who the token belongs to", body = Me))
)]
pub async fn me(user: CurrentUser) -> Json<Me> {
    let t = &user.tenant.0;
    Json(Me {
        user: MeUser {
            id: user.user.id,
            email: user.user.email.clone(),
            role: user.user.role,
            created_at: user.user.created_at,
            last_login_at: user.user.last_login_at,
        },
        tenant: MeTenant { id: t.id, name: t.name.clone(), slug: t.slug.clone() },
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// 1 to 100 characters
    #[schema(example = "billing")]
    name: String,
    /// any of `usage:read`, `documents:read`, `documents:write`; at least one
    #[schema(example = json!(["usage:read"]))]
    scopes: Vec<String>,
}

/// A new key, with its secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    api_key: api_keys::ApiKey,
    /// the secret: `dck_` and 64 hex digits; send it as `Authorization: Bearer <key>`
    key: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    api_keys: Vec<api_keys::ApiKey>,
}

#[utoipa::path(
    post, path = "/v1/api-keys", operation_id = "createApiKey", tag = "api keys", security(("bearer" = [])),
    summary = "Create an API key (admins)",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret", body = CreatedKey),
        (status = 400, description = "`invalid_name`, `invalid_scope`", body = Error),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
        (status = 409, description = "`api_key_limit`: the tenant has `API_KEYS_PER_TENANT` live keys", body = Error),
    )
)]
pub async fn create_key(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
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
    Ok((StatusCode::CREATED, Json(CreatedKey { api_key: key, key: secret })))
}

#[utoipa::path(
    get, path = "/v1/api-keys", operation_id = "listApiKeys", tag = "api keys", security(("bearer" = [])),
    summary = "The tenant's API keys (admins; never their secrets)",
    responses(
        (status = 200, description = "Every key, revoked ones too", body = ApiKeyList),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
    )
)]
pub async fn list_keys(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<ApiKeyList>> {
    user.require_admin()?;
    let keys = api_keys::list(&mut *db::for_tenant(&state.db, user.tenant.0.id).await?, user.tenant.0.id).await?;
    Ok(Json(ApiKeyList { api_keys: keys }))
}

/// Revokes a key at once; revoking it again changes nothing.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", operation_id = "revokeApiKey", tag = "api keys", security(("bearer" = [])),
    summary = "Revoke an API key (admins)",
    params(("id" = String, Path, description = "the key's id")),
    responses(
        (status = 204, description = "The key stops working at once"),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
        (status = 404, description = "`api_key_not_found`", body = Error),
    )
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[schema(example = "ann@acme.example")]
    email: String,
    /// `member` unless said
    #[serde(default = "member_role")]
    #[schema(default = "member")]
    role: Role,
}

fn member_role() -> Role {
    Role::Member
}

#[utoipa::path(
    post, path = "/v1/members", operation_id = "addMember", tag = "members", security(("bearer" = [])),
    summary = "Add a member (admins)",
    description = "The address may log in from now on, with this role; `status` is `invited` until the first login.",
    request_body = AddMember,
    responses(
        (status = 201, description = "The member", body = users::Member),
        (status = 400, description = "`invalid_email`", body = Error),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
        (status = 409, description = "`member_exists`, `member_limit` (`MEMBERS_PER_TENANT`)", body = Error),
    )
)]
pub async fn add_member(
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListMembers {
    /// 1 to 200 (50)
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// the `next_cursor` of the previous page
    after: Option<String>,
}

/// A page of members, in the order they were added.
#[derive(Serialize, ToSchema)]
pub struct MemberList {
    members: Vec<users::Member>,
    /// give it as `after` for the next page; `null` on the last
    next_cursor: Option<Uuid>,
}

#[utoipa::path(
    get, path = "/v1/members", operation_id = "listMembers", tag = "members", security(("bearer" = [])),
    summary = "The tenant's members (admins)",
    params(ListMembers),
    responses(
        (status = 200, description = "A page of members", body = MemberList),
        (status = 400, description = "`invalid_query`, `invalid_limit`, `invalid_cursor`", body = Error),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
    )
)]
pub async fn list_members(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<axum::extract::Query<ListMembers>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<MemberList>> {
    user.require_admin()?;
    let axum::extract::Query(q) = query.map_err(|_| ApiError::bad_request("invalid_query", "use ?limit=&after="))?;
    let (limit, after) = page(q.limit, q.after.as_deref(), 50, 200, "member")?;
    let mut tx = db::for_tenant(&state.db, user.tenant.0.id).await?;
    let mut members = users::list_members(&mut *tx, user.tenant.0.id, after, limit + 1).await?;
    drop(tx);
    let next = if members.len() as i64 > limit {
        members.truncate(limit as usize);
        members.last().map(|m| m.id)
    } else {
        None
    };
    Ok(Json(MemberList { members, next_cursor: next }))
}

fn member_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| MemberError::NotFound.into())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeMember {
    role: Role,
}

#[utoipa::path(
    patch, path = "/v1/members/{id}", operation_id = "changeMember", tag = "members", security(("bearer" = [])),
    summary = "Change a member's role (admins)",
    description = "Revokes the member's tokens: they log in again and get the new role.",
    params(("id" = String, Path, description = "the member's id")),
    request_body = ChangeMember,
    responses(
        (status = 200, description = "The member", body = users::Member),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
        (status = 404, description = "`member_not_found`", body = Error),
        (status = 409, description = "`last_admin`: the tenant keeps one admin at least", body = Error),
    )
)]
pub async fn change_member(
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

#[utoipa::path(
    delete, path = "/v1/members/{id}", operation_id = "removeMember", tag = "members", security(("bearer" = [])),
    summary = "Remove a member (admins)",
    description = "Their chat sessions and per-user quotas go with them; their documents stay the tenant's, \
        and the ledger keeps what they spent.",
    params(("id" = String, Path, description = "the member's id")),
    responses(
        (status = 204, description = "Removed; their tokens stop working at once"),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
        (status = 404, description = "`member_not_found`", body = Error),
        (status = 409, description = "`last_admin`: the tenant keeps one admin at least", body = Error),
    )
)]
pub async fn remove_member(
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
