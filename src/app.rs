//! Application state, start-up and the server loop.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{
    auth::{codes::CodeStore, jwt::JwtKeys, mailer::Mailer},
    config::Config,
    db, http,
    redis::Redis,
};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: Redis,
    pub jwt: Arc<JwtKeys>,
    pub codes: CodeStore,
    pub mailer: Mailer,
}

impl AppState {
    /// Connects to Postgres and Redis. Does not migrate (see `docuchat migrate`).
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let db = db::connect(&config).await?;
        Self::with_pool(config, db).await
    }

    /// Builds the state around an existing pool (tests hand in a per-test database).
    pub async fn with_pool(config: Config, db: PgPool) -> anyhow::Result<Self> {
        let redis = Redis::connect(config.redis_url.expose(), &config.redis_key_prefix, 4)
            .await
            .with_context(|| format!("Redis at {}", config.redis_url.redacted()))?;
        let jwt = Arc::new(JwtKeys::new(&config.jwt_secret, config.jwt_ttl));
        let codes = CodeStore::new(redis.clone(), config.jwt_secret.clone(), config.auth.clone());
        let mailer = Mailer::from_config(&config)?;
        Ok(Self { config: Arc::new(config), db, redis, jwt, codes, mailer })
    }
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mailer = state.mailer.describe(), "DocuChat listening");
    let app = http::router(state);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("server error")
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
