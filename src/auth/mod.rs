//! Authentication: e-mail codes, the mailer, JWTs, and the extractors handlers use.

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

use self::{
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
        let user = user_from_token(state, &tenant, token).await?;
        Ok(CurrentUser { user, tenant })
    }
}
