//! Users of a tenant — its members: the only module that reads or writes `users`. A member is
//! added by an admin (`invited` until their first login) or, where the tenant's policy lets them,
//! created on their first login. Who may log in is [`may_log_in`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::{email::Email, jwt::Role};
use crate::tenants::{self, Signup, Tenant};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// tokens issued at an older generation are revoked
    #[serde(skip)]
    pub token_generation: i32,
}

macro_rules! columns {
    () => {
        "id, tenant_id, email, role, created_at, last_login_at, token_generation"
    };
}

/// Records a login: creates the user the first time (with `role_if_new`), else stamps the time.
pub async fn upsert_on_login(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    email: &Email,
    role_if_new: Role,
) -> Result<User, sqlx::Error> {
    sqlx::query_as(concat!(
        "insert into users (id, tenant_id, email, role, last_login_at) values ($1, $2, $3, $4, now())
         on conflict (tenant_id, email) do update set last_login_at = now()
         returning ",
        columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(role_if_new)
    .fetch_one(db)
    .await
}

/// The user a token names, if the token is still theirs: of their current token generation and
/// not revoked by itself (one statement: checking costs no more than loading the user).
pub async fn find_for_token(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    jti: Uuid,
    generation: i32,
) -> Result<TokenOwner, sqlx::Error> {
    let row: Option<(User, bool)> = sqlx::query_as(concat!(
        "select ",
        columns!(),
        ", token_generation = $4 and not exists (select 1 from revoked_tokens r where r.jti = $3) as live
           from users where tenant_id = $1 and id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .bind(jti)
    .bind(generation)
    .fetch_optional(db)
    .await
    .map(|r: Option<UserAndFlag>| r.map(|r| (r.user, r.live)))?;
    Ok(match row {
        None => TokenOwner::Gone,
        Some((_, false)) => TokenOwner::Revoked,
        Some((user, true)) => TokenOwner::Live(user),
    })
}

/// Whose a token is.
pub enum TokenOwner {
    Live(User),
    /// logged out, or the user's role changed since
    Revoked,
    /// no such user (removed)
    Gone,
}

#[derive(sqlx::FromRow)]
struct UserAndFlag {
    #[sqlx(flatten)]
    user: User,
    live: bool,
}

/// Revokes one token until it would have expired; the tenant's expired revocations are swept on
/// the way.
pub async fn revoke_token(
    db: &sqlx::PgPool,
    tenant_id: Uuid,
    user_id: Uuid,
    jti: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::for_tenant(db, tenant_id).await?;
    sqlx::query(
        "with swept as (delete from revoked_tokens where ctid in
                            (select ctid from revoked_tokens where expires_at < now() limit 100))
         insert into revoked_tokens (jti, tenant_id, user_id, expires_at) values ($1, $2, $3, $4)
         on conflict (jti) do nothing",
    )
    .bind(jti)
    .bind(tenant_id)
    .bind(user_id)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Revokes every token of the user issued so far.
pub async fn revoke_all_tokens(db: impl PgExecutor<'_>, tenant_id: Uuid, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update users set token_generation = token_generation + 1 where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The user with this address, if they have logged in once.
pub async fn find_by_email(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    email: &Email,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(concat!("select ", columns!(), " from users where tenant_id = $1 and email = $2"))
        .bind(tenant_id)
        .bind(email.as_str())
        .fetch_optional(db)
        .await
}

/// The addresses of those of `ids` that are users of the tenant.
pub async fn emails(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("select id, email from users where tenant_id = $1 and id = any($2)")
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(db)
        .await
}

/// The role an address logs in to the tenant with, or `None` when it may not: a member (invited
/// or not) keeps their role; the tenant's admin address is an admin; anyone else only where the
/// policy is `open`, or `domain` and the address is in an allowed domain.
/// A tenant that has `max_members` users admits no new address by its policy (an `open` tenant
/// could otherwise be filled with users by anyone with many mailboxes).
pub async fn may_log_in(
    db: &mut sqlx::PgConnection,
    tenant: &Tenant,
    email: &Email,
    max_members: i64,
) -> Result<Option<Role>, sqlx::Error> {
    if let Some(user) = find_by_email(&mut *db, tenant.id, email).await? {
        return Ok(Some(user.role));
    }
    if email.as_str() == tenant.admin_email {
        return Ok(Some(Role::Admin));
    }
    let access = tenants::access(&mut *db, tenant.id).await?;
    let admitted = match access.signup {
        Signup::Open => true,
        Signup::Domain => access.allowed_domains.iter().any(|d| d == email.domain()),
        Signup::Invite => false,
    };
    if admitted && count(&mut *db, tenant.id).await? >= max_members {
        tracing::warn!(tenant = %tenant.slug, max_members, "the tenant is full: a new address was not admitted");
        return Ok(None);
    }
    Ok(admitted.then_some(Role::Member))
}

async fn count(db: impl PgExecutor<'_>, tenant_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from users where tenant_id = $1").bind(tenant_id).fetch_one(db).await
}

/// A member as admins see them.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Member {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    /// `invited` until the first login, then `active`
    #[schema(example = "invited")]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

macro_rules! member_columns {
    () => {
        "id, email, role, case when last_login_at is null then 'invited' else 'active' end as status, created_at, \
         last_login_at"
    };
}

/// Why a member could not be added, changed or removed.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("{0} is already a member of this tenant")]
    Exists(String),
    #[error("no such member")]
    NotFound,
    #[error("the tenant's last admin cannot be demoted or removed")]
    LastAdmin,
    #[error("the tenant has {0} members, as many as it may have: remove one first")]
    Full(i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<MemberError> for crate::error::ApiError {
    fn from(e: MemberError) -> Self {
        use crate::error::ApiError;
        match e {
            MemberError::Exists(_) => ApiError::Conflict { code: "member_exists", message: e.to_string() },
            MemberError::NotFound => ApiError::not_found("member_not_found", e.to_string()),
            MemberError::LastAdmin => ApiError::Conflict { code: "last_admin", message: e.to_string() },
            MemberError::Full(_) => ApiError::Conflict { code: "member_limit", message: e.to_string() },
            MemberError::Database(e) => e.into(),
        }
    }
}

/// Adds an address to the tenant with a role; it may log in from now on. The tenant may have at
/// most `max_members` users.
pub async fn invite(
    db: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    email: &Email,
    role: Role,
    max_members: i64,
) -> Result<Member, MemberError> {
    let added: Option<Member> = sqlx::query_as(concat!(
        "insert into users (id, tenant_id, email, role)
         select $1, $2, $3, $4 where (select count(*) from users where tenant_id = $2) < $5
         on conflict (tenant_id, email) do nothing
         returning ",
        member_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(role)
    .bind(max_members)
    .fetch_optional(&mut *db)
    .await?;
    match added {
        Some(member) => Ok(member),
        None if find_by_email(&mut *db, tenant_id, email).await?.is_some() => {
            Err(MemberError::Exists(email.as_str().to_owned()))
        }
        None => Err(MemberError::Full(max_members)),
    }
}

/// Members in the order they were added; `after` continues after that member.
pub async fn list_members(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as(concat!(
        "select ",
        member_columns!(),
        " from users where tenant_id = $1 and ($2::uuid is null or id > $2) order by id limit $3"
    ))
    .bind(tenant_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Changes a member's role; the tenant keeps at least one admin.
pub async fn set_role(db: &sqlx::PgPool, tenant_id: Uuid, id: Uuid, role: Role) -> Result<Member, MemberError> {
    let mut tx = crate::db::for_tenant(db, tenant_id).await?;
    if role == Role::Member {
        keeps_an_admin(&mut tx, tenant_id, id).await?;
    }
    // a new role revokes the member's tokens: they log in again with it
    let changed: Option<Member> = sqlx::query_as(concat!(
        "update users set role = $3, token_generation = token_generation + (role <> $3)::int
          where tenant_id = $1 and id = $2 returning ",
        member_columns!()
    ))
    .bind(tenant_id)
    .bind(id)
    .bind(role)
    .fetch_optional(&mut *tx)
    .await?;
    let changed = changed.ok_or(MemberError::NotFound)?;
    tx.commit().await?;
    Ok(changed)
}

/// Removes a member; their chat sessions and per-user quotas go with them (by cascade), their
/// uploads stay the tenant's and the ledger keeps what they spent. The tenant keeps an admin.
pub async fn remove(db: &sqlx::PgPool, tenant_id: Uuid, id: Uuid) -> Result<(), MemberError> {
    let mut tx = crate::db::for_tenant(db, tenant_id).await?;
    keeps_an_admin(&mut tx, tenant_id, id).await?;
    let removed = sqlx::query("delete from users where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(MemberError::NotFound);
    }
    tx.commit().await?;
    Ok(())
}

/// Refuses when `id` is the tenant's only admin. The admins' rows are locked, so two admins
/// demoting each other at once cannot both succeed.
async fn keeps_an_admin(conn: &mut sqlx::PgConnection, tenant_id: Uuid, id: Uuid) -> Result<(), MemberError> {
    let admins: Vec<Uuid> =
        sqlx::query_scalar("select id from users where tenant_id = $1 and role = 'admin' order by id for update")
            .bind(tenant_id)
            .fetch_all(conn)
            .await?;
    if admins == [id] { Err(MemberError::LastAdmin) } else { Ok(()) }
}
