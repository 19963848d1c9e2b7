//! The Postgres pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{PgPool, Postgres, Transaction, migrate::Migrator, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::config::Config;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The role the service works as: it owns nothing, is no superuser and has no BYPASSRLS, so the
/// row-level security policies hold for every statement it runs (migration 0011).
pub const APP_ROLE: &str = "docuchat_app";

/// Pool options for the service: every connection works as [`APP_ROLE`], with the session
/// settings retrieval relies on: HNSW search breadth (`ef_search`), and pgvector ≥ 0.8's iterative
/// index scans (keep scanning until enough rows pass the tenant filter, so a small tenant in a big
/// shared index keeps its recall). Set once per connection, in one round trip.
pub fn pool_options(ef_search: u32) -> PgPoolOptions {
    let settings = format!(
        "set role {APP_ROLE}; set hnsw.ef_search = {}; set hnsw.iterative_scan = relaxed_order",
        ef_search.clamp(1, 1000)
    );
    PgPoolOptions::new().after_connect(move |conn, _meta| {
        let settings = settings.clone();
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(settings)).execute(conn).await?;
            Ok(())
        })
    })
}

/// The service's pool (see [`pool_options`]).
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    pool_options(config.chat.ef_search)
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(config.database_url.expose())
        .await
        .with_context(|| {
            format!(
                "cannot connect to Postgres at {} as a member of the role {APP_ROLE} (migrated? see README, \"Database roles\")",
                config.database_url.redacted()
            )
        })
}

/// A pool of the tables' owner, for migrations and the command line: `DATABASE_MIGRATION_URL`, or
/// `DATABASE_URL` when that is unset (development, where one role does both).
pub async fn connect_owner(config: &Config) -> anyhow::Result<PgPool> {
    let url = config.database_migration_url.as_ref().unwrap_or(&config.database_url);
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url.expose())
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", url.redacted()))
}

/// A transaction working for one tenant: the row-level security policies admit that tenant's
/// rows only. `BEGIN` and the setting go in one round trip. Commit what it writes; a transaction
/// that only reads may simply be dropped (its rollback travels with the pool's check of the
/// returned connection).
pub async fn for_tenant(pool: &PgPool, tenant: Uuid) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    // a Uuid prints as hex digits and hyphens only: nothing to quote
    pool.begin_with(sqlx::AssertSqlSafe(format!("begin; set local docuchat.tenant_id = '{tenant}'"))).await
}

/// [`for_tenant`], planning every statement of the transaction once per connection: the planner
/// keeps making a custom plan for each execution of a prepared statement while it estimates the
/// custom plans cheaper than the generic one — as it does for a usage statement of a quiet tenant,
/// whose custom plan took longer to make (0.4 ms) than to run (0.25 ms). For statements whose
/// generic plan is as good as any custom one (index range scans bounded by parameters).
pub async fn for_tenant_generic_plans(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "begin; set local docuchat.tenant_id = '{tenant}'; set local plan_cache_mode = force_generic_plan"
    )))
    .await
}

/// [`for_tenant`], for retrieval (`retrieval::search`): its statements planned once per
/// connection, and every plan reading through an index wherever one can serve. The hybrid
/// statement is the same for every tenant, and which vector search suits a tenant is decided at
/// execution by its size (`retrieval::hybrid_sql`); the generic plan, made without knowing the
/// tenant, would otherwise weigh a big tenant's HNSW search against sorting the rows a tenant of
/// average size would have, and choose the sort, which for the biggest tenants means computing
/// every distance (20k chunks: 20 ms against 1 ms). With sorts and sequential scans off, a path
/// that needs neither — the HNSW index's order, an index range of the tenant — wins over one
/// that does; sorts that nothing else can replace (the top-k of an exact scan, the fusion) stay.
/// Custom planning is also what this saves: 1.3 ms per question for the hybrid statement. The
/// other statement of the transaction, the session's earlier turns, is an index range as well.
pub async fn for_retrieval(pool: &PgPool, tenant: Uuid) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "begin; set local docuchat.tenant_id = '{tenant}'; set local plan_cache_mode = force_generic_plan; \
         set local enable_sort = off; set local enable_seqscan = off"
    )))
    .await
}

/// Switches the transaction `conn` is in to another tenant (for writers that batch the work of
/// several tenants into one transaction and one commit).
pub async fn switch_tenant(conn: &mut sqlx::PgConnection, tenant: Uuid) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set local docuchat.tenant_id = '{tenant}'"))).execute(conn).await?;
    Ok(())
}

/// Who the service is in the database, checked at start: the login role and the role it works
/// as must not own the tables, be superusers or bypass row-level security — in production the
/// service refuses to start otherwise (a statement could `RESET ROLE` to its login role).
pub async fn check_roles(pool: &PgPool, production: bool) -> anyhow::Result<()> {
    let (session, current, session_strong, current_strong): (String, String, bool, bool) = sqlx::query_as(
        "select session_user::text, current_user::text,
                exists (select 1 from pg_roles r where r.rolname = session_user
                         and (r.rolsuper or r.rolbypassrls
                              or exists (select 1 from pg_tables t where t.schemaname = 'public'
                                          and t.tablename = 'documents' and t.tableowner = r.rolname))),
                exists (select 1 from pg_roles r where r.rolname = current_user
                         and (r.rolsuper or r.rolbypassrls
                              or exists (select 1 from pg_tables t where t.schemaname = 'public'
                                          and t.tablename = 'documents' and t.tableowner = r.rolname)))",
    )
    .fetch_one(pool)
    .await?;
    if current_strong {
        anyhow::bail!(
            "the service works as `{current}`, which bypasses row-level security: see README, \"Database roles\""
        );
    }
    if session_strong {
        if production {
            anyhow::bail!(
                "DATABASE_URL logs in as `{session}`, which owns the tables or bypasses row-level security: \
                 give the service a login role of its own, granted {APP_ROLE} (README, \"Database roles\")"
            );
        }
        tracing::info!(login = %session, role = %current, "development: logged in as the owner, working as {APP_ROLE}");
    }
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("database migration failed")
}

/// What a [`listen`] loop reports to its owner.
pub enum Listening<'a> {
    /// subscribed (again): notifications sent while not listening were missed
    Live,
    Notified(&'a str),
    /// the connection was lost; it is tried again a second later
    Lost,
}

/// Listens on `channel` for as long as `owner` lives (a weak reference: the loop ends with it),
/// reconnecting a second after the connection is lost, and tells `owner` through `on`. `what`
/// names the loss in the log.
pub async fn listen<T>(
    owner: std::sync::Weak<T>,
    db_of: fn(&T) -> PgPool,
    channel: &'static str,
    what: &'static str,
    on: fn(&T, Listening<'_>),
) {
    loop {
        let Some(db) = owner.upgrade().map(|o| db_of(&o)) else { return };
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&db).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                let Some(o) = owner.upgrade() else { return };
                on(&o, Listening::Live);
                drop(o);
                // Ok(None) or an error: the connection was lost
                while let Ok(Some(n)) = l.try_recv().await {
                    let Some(o) = owner.upgrade() else { return };
                    on(&o, Listening::Notified(n.payload()));
                }
                let Some(o) = owner.upgrade() else { return };
                on(&o, Listening::Lost);
            }
            Err(e) => {
                if db.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "cannot listen for {what}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
