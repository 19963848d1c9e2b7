//! `GET /v1/tenant`, `PATCH /v1/tenant` (admins): the tenant and who may log in to it.

use axum::{Json, Router, extract::State, routing::get};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Signup, access, set_access};
use crate::{app::AppState, auth::CurrentUser, db, error::ApiResult, http::extractors::AppJson};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenant", get(show).patch(update))
}

async fn show(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let t = &user.tenant.0;
    let policy = access(&mut *db::for_tenant(&state.db, t.id).await?, t.id).await?;
    Ok(Json(json!({
        "id": t.id, "name": t.name, "slug": t.slug, "admin_email": t.admin_email,
        "signup": policy.signup, "allowed_domains": policy.allowed_domains,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    signup: Option<Signup>,
    allowed_domains: Option<Vec<String>>,
}

async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    AppJson(body): AppJson<Update>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let tenant = user.tenant.0.id;
    let mut tx = db::for_tenant(&state.db, tenant).await?;
    let current = access(&mut *tx, tenant).await?;
    let signup = body.signup.unwrap_or(current.signup);
    let domains = body.allowed_domains.unwrap_or(current.allowed_domains);
    let policy = set_access(&mut *tx, tenant, signup, &domains).await?;
    tx.commit().await?;
    tracing::info!(signup = ?policy.signup, domains = policy.allowed_domains.len(), "login policy changed");
    Ok(Json(json!({ "signup": policy.signup, "allowed_domains": policy.allowed_domains })))
}
