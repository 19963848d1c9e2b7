//! Who is calling: [`CurrentUser`] (a login token of the request's tenant), [`Principal`] (a
//! login token or an API key) and [`ChatCaller`] (the chat socket's login token, whose tenant is
//! the token's). All three check tokens with the same code; a refusal is a generic 401 whose
//! reason is logged at debug level only.

use axum::{
    extract::{FromRequestParts, Query},
    http::{header, request::Parts},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    api_keys::{self, KeyCaller, Scope},
    jwt::{Role, TokenError},
    users::{self, TokenOwner, User},
};
use crate::{
    app::AppState,
    error::ApiError,
    tenants::{TENANT_HEADER, Tenant, TenantCtx},
};

/// The logged-in user of the request's tenant. Rejects a token issued for another tenant, and
/// tokens revoked by a logout or a change of role.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub user: User,
    pub tenant: TenantCtx,
    /// the presented token
    pub token: TokenRef,
}

/// What a request knows of its token: a logout revokes it by id; a socket closes at its expiry,
/// and checks it again (id and generation) when the user's access changes.
#[derive(Clone, Copy, Debug)]
pub struct TokenRef {
    pub jti: Uuid,
    /// seconds since the epoch
    pub exp: u64,
    pub generation: i32,
}

/// Whether a token is still its user's, as [`user_from_token`] judges it: `Err` is the refusal.
pub async fn recheck(db: &sqlx::PgPool, caller: &CurrentUser) -> Result<(), ApiError> {
    let t = caller.token;
    let mut tx = crate::db::for_tenant(db, caller.tenant.0.id).await?;
    match users::find_for_token(&mut *tx, caller.tenant.0.id, caller.user.id, t.jti, t.generation).await? {
        TokenOwner::Live(_) => Ok(()),
        TokenOwner::Revoked => Err(unauthorized("token_revoked", "the token was revoked: log in again")),
        TokenOwner::Gone => Err(unauthorized("access_revoked", "you are no longer a member of this tenant")),
    }
}

impl CurrentUser {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.role == Role::Admin { Ok(()) } else { Err(ApiError::Forbidden("this needs a tenant admin")) }
    }
}

pub(crate) fn unauthorized(code: &'static str, message: &'static str) -> ApiError {
    ApiError::Unauthorized { code, message }
}

fn invalid_token() -> ApiError {
    unauthorized("invalid_token", "the token is not valid")
}

/// The bearer token of an `Authorization` header, if there is one.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| unauthorized("invalid_token", "the Authorization header is malformed"))?;
    let (scheme, token) =
        value.split_once(' ').ok_or_else(|| unauthorized("invalid_token", "use `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized("invalid_token", "use `Authorization: Bearer <token>`"));
    }
    Ok(Some(token.trim()))
}

/// Checks a login token: signed with our key, not expired, of `tenant` when one is named (else
/// of the tenant it names itself), and of a user that exists there.
async fn user_from_token(state: &AppState, tenant: Option<&Tenant>, token: &str) -> Result<CurrentUser, ApiError> {
    let claims = state.jwt.verify(token).map_err(|e| match e {
        TokenError::Expired => unauthorized("token_expired", "the token has expired: log in again"),
        TokenError::Invalid => invalid_token(),
    })?;
    let tenant = match tenant {
        Some(t) if t.id == claims.tid => t.clone(),
        Some(_) => {
            tracing::debug!(token_tenant = %claims.tid, "token used with another tenant");
            return Err(invalid_token());
        }
        None => state.tenants.resolve(&state.db, &claims.tid.to_string()).await?.ok_or_else(invalid_token)?,
    };
    let token = TokenRef { jti: claims.jti, exp: claims.exp, generation: claims.r#gen };
    // a token found good a moment ago, whose user's access has not changed since (src/auth/access.rs)
    if let Some(user) = state.access.cached_token(claims.jti, tenant.id)
        && user.id == claims.sub
        && user.token_generation == claims.r#gen
    {
        return Ok(CurrentUser { user, tenant: TenantCtx(tenant), token });
    }
    let generation = state.access.generation();
    let mut tx = crate::db::for_tenant(&state.db, tenant.id).await?;
    let owner = users::find_for_token(&mut *tx, tenant.id, claims.sub, claims.jti, claims.r#gen).await?;
    drop(tx);
    let user = match owner {
        TokenOwner::Live(user) => {
            state.access.remember_token(claims.jti, user.clone(), generation);
            user
        }
        TokenOwner::Revoked => return Err(unauthorized("token_revoked", "the token was revoked: log in again")),
        TokenOwner::Gone => return Err(invalid_token()),
    };
    Ok(CurrentUser { user, tenant: TenantCtx(tenant), token })
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let tenant = TenantCtx::from_request_parts(parts, state).await?;
        let token = bearer(parts)?
            .ok_or_else(|| unauthorized("missing_token", "log in and send `Authorization: Bearer <token>`"))?;
        if api_keys::looks_like_key(token) {
            return Err(ApiError::Forbidden("this endpoint is for logged-in users, not API keys"));
        }
        user_from_token(state, Some(&tenant.0), token).await
    }
}

/// The chat socket's caller: a login token in `Authorization: Bearer` or `?token=` (browsers
/// cannot set headers on a WebSocket). The tenant is the token's; an `X-Tenant-ID`, if sent, must
/// name the same one.
#[derive(Clone, Debug)]
pub struct ChatCaller(pub CurrentUser);

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<AppState> for ChatCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let from_query = || Query::<TokenQuery>::try_from_uri(&parts.uri).ok().and_then(|q| q.0.token);
        let token = match bearer(parts)? {
            Some(t) => t.to_owned(),
            None => from_query()
                .ok_or_else(|| unauthorized("missing_token", "send the token as ?token= or Authorization: Bearer"))?,
        };
        let named = match parts.headers.get(TENANT_HEADER) {
            None => None,
            Some(value) => {
                let named = state.tenants.resolve(&state.db, value.to_str().unwrap_or("").trim()).await?;
                Some(named.ok_or_else(|| unauthorized("invalid_token", "the token is not valid for this tenant"))?)
            }
        };
        let caller = user_from_token(state, None, &token).await?;
        if named.is_some_and(|t| t.id != caller.tenant.0.id) {
            return Err(unauthorized("invalid_token", "the token is not valid for this tenant"));
        }
        Ok(ChatCaller(caller))
    }
}

/// Who is calling an endpoint that also takes API keys: a logged-in user or a key of the tenant.
#[derive(Clone, Debug)]
pub enum Principal {
    User(CurrentUser),
    Key { key: KeyCaller, tenant: TenantCtx },
}

impl Principal {
    pub fn tenant(&self) -> &TenantCtx {
        match self {
            Principal::User(u) => &u.tenant,
            Principal::Key { tenant, .. } => tenant,
        }
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant().0.id
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::User(u) => Some(u.user.id),
            Principal::Key { .. } => None,
        }
    }

    pub fn api_key_id(&self) -> Option<Uuid> {
        match self {
            Principal::User(_) => None,
            Principal::Key { key, .. } => Some(key.id),
        }
    }

    /// The user's or the key's id (rate limits and charges are kept per caller).
    pub fn id(&self) -> Uuid {
        match self {
            Principal::User(u) => u.user.id,
            Principal::Key { key, .. } => key.id,
        }
    }

    /// Admins and keys act for the whole tenant; members only for themselves.
    pub fn is_tenant_wide(&self) -> bool {
        match self {
            Principal::User(u) => u.user.role == Role::Admin,
            Principal::Key { .. } => true,
        }
    }

    /// Checks that the caller may do what `scope` names: a key needs the scope; a user needs to
    /// be an admin to write documents.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            Principal::Key { key, .. } if key.scopes.contains(&scope) => Ok(()),
            Principal::Key { .. } => Err(ApiError::MissingScope(match scope {
                Scope::UsageRead => "this API key lacks the usage:read scope",
                Scope::DocumentsRead => "this API key lacks the documents:read scope",
                Scope::DocumentsWrite => "this API key lacks the documents:write scope",
            })),
            Principal::User(u) if scope == Scope::DocumentsWrite => u.require_admin(),
            Principal::User(_) => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let tenant = TenantCtx::from_request_parts(parts, state).await?;
        let token = bearer(parts)?.ok_or_else(|| {
            unauthorized("missing_token", "send `Authorization: Bearer <token>` with a login token or an API key")
        })?;
        if api_keys::looks_like_key(token) {
            let key = api_keys::authenticate(&state.db, &state.access, tenant.0.id, token).await?;
            return Ok(Principal::Key { key, tenant });
        }
        Ok(Principal::User(user_from_token(state, Some(&tenant.0), token).await?))
    }
}
