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
