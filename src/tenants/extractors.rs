//! The `X-Tenant-ID` extractor.

use axum::{extract::FromRequestParts, http::request::Parts};

use super::{TENANT_HEADER, Tenant};
use crate::{app::AppState, error::ApiError};

/// The tenant named by the request's `X-Tenant-ID` header.
#[derive(Clone, Debug)]
pub struct TenantCtx(pub Tenant);

impl FromRequestParts<AppState> for TenantCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(t) = parts.extensions.get::<TenantCtx>() {
            return Ok(t.clone());
        }
        let raw = parts.headers.get(TENANT_HEADER).ok_or_else(|| {
            ApiError::bad_request("tenant_required", "send the X-Tenant-ID header with your tenant's id or slug")
        })?;
        let not_found = || ApiError::not_found("tenant_not_found", "no tenant matches the X-Tenant-ID header");
        let value = raw.to_str().map_err(|_| not_found())?.trim();
        let tenant = state.tenants.resolve(&state.db, value).await?.ok_or_else(not_found)?;
        let ctx = TenantCtx(tenant);
        parts.extensions.insert(ctx.clone());
        Ok(ctx)
    }
}
