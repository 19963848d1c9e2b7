//! Authentication: e-mail codes, the mailer, JWTs, and the extractors handlers use.

pub mod api_keys;
pub mod codes;
pub mod email;
pub mod jwt;
pub mod mailer;
pub mod routes;
pub mod users;

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};

use uuid::Uuid;

use self::{
    api_keys::{KeyCaller, Scope},
    jwt::{Role, TokenError},
    users::User,
};
use crate::{app::AppState, error::ApiError, tenants::TenantCtx};

/// The logged-in user of the request's tenant. Rejects a token issued for another tenant.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub user: User,
    pub tenant: TenantCtx,
}

impl CurrentUser {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.role == Role::Admin { Ok(()) } else { Err(ApiError::Forbidden("this needs a tenant admin")) }
    }
}

pub(crate) fn unauthorized(code: &'static str, message: &'static str) -> ApiError {
    ApiError::Unauthorized { code, message }
}

/// The bearer token of an `Authorization` header, if there is one.
pub(crate) fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| unauthorized("invalid_token", "the Authorization header is malformed"))?;
    let (scheme, token) =
        value.split_once(' ').ok_or_else(|| unauthorized("invalid_token", "use `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized("invalid_token", "use `Authorization: Bearer <token>`"));
    }
    Ok(Some(token.trim()))
}

/// Checks a JWT against the tenant it is used with and loads its user.
pub(crate) async fn user_from_token(state: &AppState, tenant: &TenantCtx, token: &str) -> Result<User, ApiError> {
    let claims = state.jwt.verify(token).map_err(|e| match e {
        TokenError::Expired => unauthorized("token_expired", "the token has expired: log in again"),
        TokenError::Invalid => unauthorized("invalid_token", "the token is not valid"),
    })?;
    if claims.tid != tenant.0.id {
        tracing::debug!(token_tenant = %claims.tid, "token used with another tenant");
        return Err(unauthorized("invalid_token", "the token is not valid"));
    }
    users::find(&state.db, tenant.0.id, claims.sub)
        .await?
        .ok_or_else(|| unauthorized("invalid_token", "the token is not valid"))
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
        let user = user_from_token(state, &tenant, token).await?;
        Ok(CurrentUser { user, tenant })
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
            let key = api_keys::authenticate(&state.db, tenant.0.id, token).await?;
            return Ok(Principal::Key { key, tenant });
        }
        let user = user_from_token(state, &tenant, token).await?;
        Ok(Principal::User(CurrentUser { user, tenant }))
    }
}
