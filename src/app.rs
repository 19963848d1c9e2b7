//! Application state, start-up and the server loop.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{access::AccessWatch, codes::CodeStore, jwt::JwtKeys, mailer::Mailer},
    chat::{record::Recorder, sockets::SocketCaps},
    config::{Config, IngestionConfig},
    db,
    documents::watch::DocumentWatch,
    embed, http,
    ingestion::{
        pipeline::Pipeline,
        sandbox::{Sandbox, SandboxConfig},
        worker::Workers,
    },
    llm::Models,
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
    /// The chat models and the allow-list.
    pub models: Arc<Models>,
    /// Caps on the chat sockets open at once, per user and per tenant.
    pub sockets: Arc<SocketCaps>,
    /// Caps on the document event streams open at once (the chat sockets' numbers), and their
    /// end when the server stops.
    pub streams: Arc<SocketCaps>,
    /// Passes documents' changes to the streams that follow them.
    pub documents: Arc<DocumentWatch>,
    /// Wakes the open sockets of a user whose access changed.
    pub access: Arc<AccessWatch>,
    /// Which tenants have quotas (admission without a round trip for those without).
    pub quotas: Arc<QuotaGate>,
    /// Runs the PDF-reading children (uploads' inspections, the workers' extractions).
    pub sandbox: Arc<Sandbox>,
    /// Wakes this process's idle ingestion workers when a job is enqueued.
    pub ingest_wakeup: Arc<Notify>,
    /// The configured embedder, loaded on first use (the local model takes a moment).
    embedder: Arc<OnceLock<Result<Arc<dyn embed::Embedder>, String>>>,
    /// Writes answers, started on first use.
    recorder: Arc<OnceLock<Recorder>>,
    /// The models of chunks not yet re-embedded with the configured one (during a model switch).
    pub previous_embedders: Arc<embed::Previous>,
    /// Which models each tenant's chunks are embedded with (a few seconds' cache).
    pub tenant_models: Arc<crate::retrieval::TenantModels>,
}

impl AppState {
    /// Connects to Postgres and Redis. Does not migrate (see `docuchat migrate`).
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let db = db::connect(&config).await?;
        db::check_roles(&db, config.is_production()).await?;
        Self::with_pool(config, db).await
    }

    /// Builds the state around an existing pool (tests hand in a per-test database).
    pub async fn with_pool(config: Config, db: PgPool) -> anyhow::Result<Self> {
        let redis = Redis::connect(config.redis_url.expose(), &config.redis_key_prefix, 4)
            .await
            .with_context(|| format!("Redis at {}", config.redis_url.redacted()))?;
        let jwt = Arc::new(JwtKeys::new(&config.jwt_secret, config.jwt_ttl));
        let codes = CodeStore::new(redis.clone(), config.login_code_key.clone(), config.auth.clone());
        let mailer = Mailer::from_config(&config)?;
        let limits = Limiter::new(redis.clone(), &config.rate_limits);
        let sandbox = Arc::new(Sandbox::new(sandbox_config(&config.ingestion)?));
        let sockets = SocketCaps::new(config.sockets_per_user, config.sockets_per_tenant);
        let streams = SocketCaps::new(config.sockets_per_user, config.sockets_per_tenant);
        let config = Arc::new(config);
        let previous_embedders = Arc::new(embed::Previous::from_config(&config));
        Ok(Self {
            sockets,
            streams,
            documents: DocumentWatch::new(db.clone()),
            sandbox,
            models: Arc::new(Models::new(config.clone())),
            config,
            quotas: QuotaGate::new(db.clone()),
            access: AccessWatch::new(db.clone()),
            db,
            redis,
            jwt,
            codes,
            mailer,
            limits,
            tenants: Arc::new(tenants::TenantCache::default()),
            ingest_wakeup: Arc::new(Notify::new()),
            embedder: Arc::new(OnceLock::new()),
            recorder: Arc::new(OnceLock::new()),
            previous_embedders,
            tenant_models: Arc::new(crate::retrieval::TenantModels::default()),
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

    /// The cross-language model, if one is configured and its files load (otherwise documents are
    /// embedded and searched by the configured model alone; the failure is logged).
    pub fn cross_embedder(&self) -> Option<Arc<dyn embed::Embedder>> {
        self.config.cross_language_model.as_deref().and_then(|m| self.previous_embedders.get(m))
    }

    /// What a chat turn needs of the process.
    pub fn turn_services(&self) -> crate::chat::turn::Services {
        crate::chat::turn::Services {
            db: self.db.clone(),
            config: self.config.clone(),
            quotas: self.quotas.clone(),
            recorder: self.recorder().clone(),
            embedder: self.embedder().map_err(|e| format!("{e:#}")),
            previous_embedders: self.previous_embedders.clone(),
            cross_embedder: self.cross_embedder(),
            tenant_models: self.tenant_models.clone(),
        }
    }

    /// The ingestion workers, with the pipeline of the configured embedder.
    pub fn workers(&self) -> anyhow::Result<Arc<Workers>> {
        let pipeline = Pipeline {
            db: self.db.clone(),
            embedder: self.embedder()?,
            cross: self.cross_embedder(),
            sandbox: self.sandbox.clone(),
            config: self.config.ingestion.clone(),
        };
        Ok(Workers::new(pipeline, self.ingest_wakeup.clone()))
    }
}

/// The children's limits; their program is this binary unless `EXTRACT_PROGRAM` names another.
fn sandbox_config(ingestion: &IngestionConfig) -> anyhow::Result<SandboxConfig> {
    let program = match &ingestion.extract_program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this program to run PDF readers")?,
    };
    Ok(SandboxConfig {
        program,
        memory_bytes: ingestion.extract_memory_bytes,
        max_text_bytes: ingestion.extract_max_text_bytes,
        inspect_timeout: ingestion.inspect_timeout,
        inspections: ingestion.inspect_concurrency,
    })
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mailer = state.mailer.describe(), "DocuChat listening");
    // the in-process workers stop once the server has
    let stop_workers = CancellationToken::new();
    let workers = match (state.config.ingestion.workers, state.workers()) {
        (0, _) => None,
        (n, Ok(workers)) => Some(tokio::spawn(workers.run(n, stop_workers.clone()))),
        (_, Err(e)) => {
            tracing::warn!("ingestion is off in this process: {e:#}");
            None
        }
    };
    let (header_read_timeout, write_stall_timeout, min_send_rate) =
        (state.config.header_read_timeout, state.config.write_stall_timeout, state.config.min_send_rate);
    let (sockets, grace) = (state.sockets.clone(), state.config.chat.shutdown_grace);
    let streams = state.streams.clone();
    let app = http::router(state);
    // event streams are responses that do not end by themselves: they end when the server
    // stops taking connections, so that it can finish the requests in flight
    let shutdown = async move {
        shutdown.await;
        streams.close_all();
    };
    let served = http::server::serve(listener, app, header_read_timeout, write_stall_timeout, min_send_rate, shutdown)
        .await
        .context("server error");
    // no new connections now; the chat sockets finish their answers (or cut them past the grace
    // period), save and charge them, and close
    sockets.close_all();
    if tokio::time::timeout(grace + Duration::from_secs(5), sockets.closed()).await.is_err() {
        tracing::warn!("chat sockets were still open at exit");
    }
    stop_workers.cancel();
    if let Some(w) = workers {
        let _ = w.await;
    }
    served
}

/// Serves `GET /metrics` on its own listener until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics at /metrics");
    let (headers, writes, rate) =
        (state.config.header_read_timeout, state.config.write_stall_timeout, state.config.min_send_rate);
    http::server::serve(listener, crate::metrics::router(state), headers, writes, rate, shutdown)
        .await
        .context("metrics server error")
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
