//! `GET /v1/tenant`, `PATCH /v1/tenant` (admins): the tenant and who may log in to it.

use axum::{Json, Router, extract::State, routing::get};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Access, Signup, access, set_access};
use crate::{
    app::AppState,
    auth::CurrentUser,
    db,
    error::{ApiResult, Envelope as Error},
    http::extractors::AppJson,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenant", get(show).patch(update))
}

/// The tenant as its admins see it.
#[derive(Serialize, ToSchema)]
pub struct TenantView {
    id: Uuid,
    name: String,
    slug: String,
    admin_email: String,
    #[serde(flatten)]
    access: Access,
}

#[utoipa::path(
    get, path = "/v1/tenant", operation_id = "getTenant", tag = "tenant", security(("bearer" = [])),
    summary = "The tenant and its login policy (admins)",
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
    )
)]
pub async fn show(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<TenantView>> {
    user.require_admin()?;
    let t = &user.tenant.0;
    let access = access(&mut *db::for_tenant(&state.db, t.id).await?, t.id).await?;
    Ok(Json(TenantView {
        id: t.id,
        name: t.name.clone(),
        slug: t.slug.clone(),
        admin_email: t.admin_email.clone(),
        access,
    }))
}

/// What to change; what is left out stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TenantUpdate)]
pub struct Update {
    signup: Option<Signup>,
    /// lower-cased and checked; at most 100; `domain` needs one at least
    #[schema(example = json!(["acme.example"]))]
    allowed_domains: Option<Vec<String>>,
}

#[utoipa::path(
    patch, path = "/v1/tenant", operation_id = "updateTenant", tag = "tenant", security(("bearer" = [])),
    summary = "Change who may log in (admins)",
    request_body = Update,
    responses(
        (status = 200, description = "The policy now", body = Access),
        (status = 400, description = "`invalid_domain` (also: `domain` without domains)", body = Error),
        (status = 403, description = "`forbidden`: for tenant admins", body = Error),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<Update>,
) -> ApiResult<Json<Access>> {
    user.require_admin()?;
    let tenant = user.tenant.0.id;
    let mut tx = db::for_tenant(&state.db, tenant).await?;
    let current = access(&mut *tx, tenant).await?;
    let signup = body.signup.unwrap_or(current.signup);
    let domains = body.allowed_domains.unwrap_or(current.allowed_domains);
    let policy = set_access(&mut *tx, tenant, signup, &domains).await?;
    tx.commit().await?;
    tracing::info!(signup = ?policy.signup, domains = policy.allowed_domains.len(), "login policy changed");
    Ok(Json(policy))
}
