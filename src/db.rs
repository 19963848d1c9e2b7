//! The Postgres pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};

use crate::config::Config;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Pool options with the session settings retrieval relies on: HNSW search breadth
/// (`ef_search`), and pgvector ≥ 0.8's iterative index scans (keep scanning until enough rows
/// pass the tenant filter, so a small tenant in a big shared index keeps its recall). Set once per
/// connection, so a search needs no transaction of its own.
pub fn pool_options(ef_search: u32) -> PgPoolOptions {
    let settings =
        format!("set hnsw.ef_search = {}; set hnsw.iterative_scan = relaxed_order", ef_search.clamp(1, 1000));
    PgPoolOptions::new().after_connect(move |conn, _meta| {
        let settings = settings.clone();
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(settings)).execute(conn).await?;
            Ok(())
        })
    })
}

pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    pool_options(config.chat.ef_search)
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(config.database_url.expose())
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", config.database_url.redacted()))
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("database migration failed")
}
