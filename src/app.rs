//! Application state, start-up and the server loop.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    auth::{codes::CodeStore, jwt::JwtKeys, mailer::Mailer},
    chat::record::Recorder,
    config::Config,
    db, embed, http,
    ingestion::worker::{Pipeline, ShutdownFlag},
    llm::{self, ChatModel, offline},
    ratelimit::Limiter,
    redis::Redis,
    tenants,
    usage::gate::QuotaGate,
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
    pub limits: Arc<Limiter>,
    pub tenants: Arc<tenants::TenantCache>,
    /// Which tenants have quotas (admission without a round trip for those without).
    pub quotas: Arc<QuotaGate>,
    /// Wakes this process's idle ingestion workers when a job is enqueued.
    pub ingest_wakeup: Arc<Notify>,
    /// The configured embedder, loaded on first use (the local model takes a moment).
    embedder: Arc<OnceLock<Result<Arc<dyn embed::Embedder>, String>>>,
    chat: Arc<OnceLock<Result<Arc<dyn ChatModel>, String>>>,
    /// Writes answers, started on first use.
    recorder: Arc<OnceLock<Recorder>>,
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
        let limits = Limiter::new(redis.clone(), &config.rate_limits);
        Ok(Self {
            config: Arc::new(config),
            quotas: QuotaGate::new(db.clone()),
            db,
            redis,
            jwt,
            codes,
            mailer,
            limits,
            tenants: Arc::new(tenants::TenantCache::default()),
            ingest_wakeup: Arc::new(Notify::new()),
            embedder: Arc::new(OnceLock::new()),
            chat: Arc::new(OnceLock::new()),
            recorder: Arc::new(OnceLock::new()),
        })
    }

    /// The writer of answers (started on first use, on the current Tokio runtime).
    pub fn recorder(&self) -> &Recorder {
        self.recorder.get_or_init(|| Recorder::start(self.db.clone()))
    }

    /// The configured embedder (loaded once per process state).
    pub fn embedder(&self) -> anyhow::Result<Arc<dyn embed::Embedder>> {
        self.embedder
            .get_or_init(|| embed::from_config(&self.config).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// The chat model for a question and the model name to ask for: a client may name one from
    /// the allow-list. Without `OPENAI_API_KEY`, answers are extractive (offline).
    pub fn chat_model(&self, requested: Option<&str>) -> Result<(Arc<dyn ChatModel>, String), ModelError> {
        if let Some(name) = requested
            && name != offline::NAME
            && !self.config.chat_models_allowed.iter().any(|m| m == name)
        {
            return Err(ModelError::NotAllowed(name.to_owned()));
        }
        if self.config.openai_api_key.is_none() || requested == Some(offline::NAME) {
            return Ok((Arc::new(offline::OfflineModel), offline::NAME.to_owned()));
        }
        let model = self
            .chat
            .get_or_init(|| {
                llm::openai::OpenAiChat::from_config(&self.config)
                    .map(|m| Arc::new(m) as Arc<dyn ChatModel>)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(ModelError::Unavailable)?;
        Ok((model, requested.unwrap_or(&self.config.chat_model).to_owned()))
    }

    /// The ingestion pipeline with the configured embedder.
    pub fn pipeline(&self) -> anyhow::Result<Arc<Pipeline>> {
        let embedder = self.embedder()?;
        Ok(Arc::new(Pipeline {
            db: self.db.clone(),
            embedder,
            config: self.config.ingestion.clone(),
            wakeup: self.ingest_wakeup.clone(),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model `{0}` is not allowed here")]
    NotAllowed(String),
    #[error("the chat model is not available")]
    Unavailable(String),
}

impl ModelError {
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::NotAllowed(_) => "model_not_allowed",
            ModelError::Unavailable(_) => "upstream_unavailable",
        }
    }
}

/// Runs `workers` ingestion workers until `shutdown` resolves, then lets them finish their job.
pub async fn run_workers(pipeline: Arc<Pipeline>, workers: usize, shutdown: impl Future<Output = ()>) {
    let flag = Arc::new(ShutdownFlag::default());
    let handles = pipeline.spawn_workers(workers, flag.clone());
    shutdown.await;
    flag.trigger();
    let all = futures_join(handles);
    if tokio::time::timeout(Duration::from_secs(30), all).await.is_err() {
        tracing::warn!("ingestion workers did not stop within 30 s; their jobs will be taken again after the lease");
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
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
    // one shutdown signal for the server and the in-process workers
    let (tx, rx) = tokio::sync::watch::channel(false);
    let workers = match (state.config.ingestion.workers, state.pipeline()) {
        (0, _) => None,
        (n, Ok(pipeline)) => {
            let mut rx = rx.clone();
            Some(tokio::spawn(run_workers(pipeline, n, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })))
        }
        (_, Err(e)) => {
            tracing::warn!("ingestion is off in this process: {e:#}");
            None
        }
    };
    let app = http::router(state);
    let mut server_rx = rx;
    // no Nagle delay on small writes (streamed tokens, WebSocket frames)
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                _ = server_rx.wait_for(|stop| *stop) => {}
            }
        })
        .await
        .context("server error");
    let _ = tx.send(true);
    if let Some(w) = workers {
        let _ = w.await;
    }
    served
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
