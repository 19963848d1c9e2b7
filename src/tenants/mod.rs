//! Tenants: creation (CLI), lookup, their login policy, and the cache behind the `X-Tenant-ID`
//! resolver every tenant-scoped request goes through ([`extractors::TenantCtx`]). The policy is
//! read from the database at each login, never from the cache, so a change applies at once.

pub mod extractors;
pub mod routes;

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

pub use self::extractors::TenantCtx;
use crate::{auth::email::Email, error::ApiError};

pub const TENANT_HEADER: &str = "x-tenant-id";

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub admin_email: String,
    pub created_at: DateTime<Utc>,
}

/// Checks a slug against the rules the database enforces, with a sentence for the operator.
pub fn validate_slug(slug: &str) -> Result<(), &'static str> {
    let bytes = slug.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return Err("a slug is 1 to 63 characters");
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err("a slug has only lower-case letters, digits and hyphens");
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err("a slug may not start or end with a hyphen");
    }
    if Uuid::try_parse(slug).is_ok() {
        return Err("a slug may not look like a UUID");
    }
    Ok(())
}

/// Why a tenant could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("a tenant name is 1 to 200 characters")]
    InvalidName,
    #[error("{0}")]
    InvalidSlug(&'static str),
    #[error("a tenant with slug `{0}` already exists")]
    SlugTaken(String),
    #[error("{0}")]
    InvalidDomain(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::InvalidName => ApiError::bad_request("invalid_name", e.to_string()),
            TenantError::InvalidSlug(m) => ApiError::bad_request("invalid_slug", m),
            TenantError::SlugTaken(_) => ApiError::Conflict { code: "slug_taken", message: e.to_string() },
            TenantError::InvalidDomain(m) => ApiError::bad_request("invalid_domain", m),
            TenantError::Database(e) => e.into(),
        }
    }
}

/// Who may log in to a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Signup {
    /// the tenant's admin address and the addresses its admins added
    Invite,
    /// also any address in one of the allowed domains (as a member)
    Domain,
    /// anyone (as a member): for demos
    Open,
}

impl Signup {
    pub fn parse(s: &str) -> Option<Signup> {
        match s {
            "invite" => Some(Signup::Invite),
            "domain" => Some(Signup::Domain),
            "open" => Some(Signup::Open),
            _ => None,
        }
    }
}

/// A tenant's login policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Access {
    pub signup: Signup,
    pub allowed_domains: Vec<String>,
}

/// Lower-cases and checks domains (`example.com`, `mail.example.co.uk`): labels of letters,
/// digits and inner hyphens, at least two of them. At most 100.
pub fn clean_domains(domains: &[String]) -> Result<Vec<String>, TenantError> {
    if domains.len() > 100 {
        return Err(TenantError::InvalidDomain("at most 100 domains".into()));
    }
    let mut out: Vec<String> = Vec::with_capacity(domains.len());
    for raw in domains {
        let d = raw.trim().trim_start_matches('@').to_ascii_lowercase();
        let labels: Vec<&str> = d.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if d.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(TenantError::InvalidDomain(format!("`{raw}` is not a domain such as example.com")));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// The tenant's login policy.
pub async fn access(db: impl PgExecutor<'_>, tenant: Uuid) -> Result<Access, sqlx::Error> {
    sqlx::query_as("select signup, allowed_domains from tenants where id = $1").bind(tenant).fetch_one(db).await
}

/// Sets the tenant's login policy (domains as given to [`clean_domains`]).
pub async fn set_access(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    signup: Signup,
    domains: &[String],
) -> Result<Access, TenantError> {
    let domains = clean_domains(domains)?;
    if signup == Signup::Domain && domains.is_empty() {
        return Err(TenantError::InvalidDomain("the `domain` policy needs at least one allowed domain".into()));
    }
    Ok(sqlx::query_as(
        "update tenants set signup = $2, allowed_domains = $3 where id = $1 returning signup, allowed_domains",
    )
    .bind(tenant)
    .bind(signup)
    .bind(&domains)
    .fetch_one(db)
    .await?)
}

pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    slug: &str,
    admin_email: &Email,
) -> Result<Tenant, TenantError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(TenantError::InvalidName);
    }
    validate_slug(slug).map_err(TenantError::InvalidSlug)?;
    let result = sqlx::query_as::<_, Tenant>(
        "insert into tenants (id, name, slug, admin_email) values ($1, $2, $3, $4)
         returning id, name, slug, admin_email, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(slug)
    .bind(admin_email.as_str())
    .fetch_one(db)
    .await;
    match result {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(TenantError::SlugTaken(slug.to_owned())),
        other => Ok(other?),
    }
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Tenant>, sqlx::Error> {
    sqlx::query_as("select id, name, slug, admin_email, created_at from tenants order by created_at")
        .fetch_all(db)
        .await
}

/// A tenant by slug, from any tenant's context (through a security-definer function: the row-level
/// security of `tenants` shows a transaction its own tenant only).
pub async fn find_by_slug(db: impl PgExecutor<'_>, slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as("select id, name, slug, admin_email, created_at from docuchat_tenant_by_slug($1)")
        .bind(slug)
        .fetch_optional(db)
        .await
}

/// Resolves an `X-Tenant-ID` value: a UUID is looked up by id, anything else by slug.
pub async fn resolve(db: impl PgExecutor<'_>, id_or_slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
    if let Ok(id) = Uuid::try_parse(id_or_slug) {
        return sqlx::query_as("select id, name, slug, admin_email, created_at from docuchat_tenant_by_id($1)")
            .bind(id)
            .fetch_optional(db)
            .await;
    }
    if validate_slug(id_or_slug).is_err() {
        return Ok(None);
    }
    find_by_slug(db, id_or_slug).await
}

/// Recently resolved `X-Tenant-ID` values, so most requests skip a query. Tenants are never
/// renamed or removed while the service runs, so an entry can only be stale by being absent
/// (unknown values are never cached); entries still expire, to bound the memory.
pub struct TenantCache {
    entries: RwLock<HashMap<String, (Tenant, Instant)>>,
}

const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX: usize = 10_000;

impl Default for TenantCache {
    fn default() -> Self {
        Self { entries: RwLock::new(HashMap::new()) }
    }
}

impl TenantCache {
    pub async fn resolve(&self, db: &sqlx::PgPool, id_or_slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
        if let Some((tenant, at)) = self.entries.read().unwrap_or_else(|e| e.into_inner()).get(id_or_slug)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Some(tenant.clone()));
        }
        let found = resolve(db, id_or_slug).await?;
        if let Some(tenant) = &found {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            if entries.len() >= CACHE_MAX {
                entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if entries.len() >= CACHE_MAX {
                    entries.clear();
                }
            }
            entries.insert(id_or_slug.to_owned(), (tenant.clone(), Instant::now()));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::validate_slug;

    #[test]
    fn slugs() {
        for ok in ["acme", "a", "acme-corp-2", "0abc"] {
            assert!(validate_slug(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "-a", "a-", "Acme", "a_b", "a b", "شرکت", &"a".repeat(64), "0b2c4d6e-1111-4222-8333-944455556666"]
        {
            assert!(validate_slug(bad).is_err(), "{bad:?}");
        }
    }
}
