//! Prometheus metrics, served in the OpenMetrics text format at `GET /metrics` on a listener of
//! their own (`METRICS_ADDR`, `127.0.0.1:9464` by default; `off` turns it off) — never on the
//! public one, so that request rates, tenants' activity and queue depths are not the world's to
//! read. Point Prometheus at that address (in a container, bind `0.0.0.0:9464` and keep the port
//! unpublished, on the network Prometheus shares).
//!
//! The families live in one process-wide registry; the code that does the work counts (one
//! atomic add, or a histogram observation, per request, answer, job or batch — nothing per
//! streamed token). What is a state rather than an event (open sockets, the pool, the queue) is
//! read when Prometheus scrapes.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{app::AppState, error::error_response};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// the route's pattern (`/v1/documents/{id}`), `unmatched` for none: bounded
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State_ {
    pub state: &'static str,
}

/// Every family.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<StatusLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub sockets_open: Gauge,
    pub streams_open: Gauge,
    pub questions: Counter,
    pub answers: Family<Status, Counter>,
    pub time_to_first_token: Histogram,
    pub tokens: Family<Kind, Counter>,
    pub queue: Family<State_, Gauge>,
    pub jobs: Family<Outcome, Counter>,
    pub job_duration: Family<Outcome, Histogram>,
    pub pages: Counter,
    pub chunks: Counter,
    pub embed_batches: Counter,
    pub embed_batch_duration: Histogram,
    pub pool: Family<State_, Gauge>,
    pub redis_errors: Counter,
}

/// 1 ms to about 33 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 100 ms to about 27 minutes, doubling.
fn long() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("docuchat");
        let http_requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to its headers, for streams and socket upgrades)",
            http_duration.clone(),
        );
        let sockets_open = Gauge::default();
        registry.register("websockets_open", "Chat WebSockets open in this process", sockets_open.clone());
        let streams_open = Gauge::default();
        registry.register("event_streams_open", "Document event streams open in this process", streams_open.clone());
        let questions = Counter::default();
        registry.register("chat_questions", "Questions asked over the chat socket", questions.clone());
        let answers = Family::<Status, Counter>::default();
        registry.register(
            "chat_answers",
            "Answers saved, by status: complete, cancelled, failed (the model failed), not_kept (the session went while it was answered)",
            answers.clone(),
        );
        let time_to_first_token = latency();
        registry.register(
            "chat_time_to_first_token_seconds",
            "From the question's frame to its answer's first token",
            time_to_first_token.clone(),
        );
        let tokens = Family::<Kind, Counter>::default();
        registry.register("tokens_metered", "Tokens written to the usage ledger, by kind", tokens.clone());
        let queue = Family::<State_, Gauge>::default();
        registry.register(
            "ingestion_jobs_in_queue",
            "Ingestion jobs waiting (queued) and being worked on (running), every process's",
            queue.clone(),
        );
        let jobs = Family::<Outcome, Counter>::default();
        registry.register("ingestion_jobs", "Ingestion jobs ended by this process's workers, by outcome", jobs.clone());
        let job_duration = Family::<Outcome, Histogram>::new_with_constructor(long as fn() -> Histogram);
        registry.register(
            "ingestion_job_duration_seconds",
            "Time an ingestion job took, by outcome",
            job_duration.clone(),
        );
        let pages = Counter::default();
        registry.register("ingestion_pages", "Pages of documents made ready", pages.clone());
        let chunks = Counter::default();
        registry.register("ingestion_chunks", "Chunks stored for documents made ready", chunks.clone());
        let embed_batches = Counter::default();
        registry.register(
            "embedder_batches",
            "Batches embedded (documents' chunks and questions)",
            embed_batches.clone(),
        );
        let embed_batch_duration = latency();
        registry.register("embedder_batch_duration_seconds", "Time to embed one batch", embed_batch_duration.clone());
        let pool = Family::<State_, Gauge>::default();
        registry.register("db_pool_connections", "The service's Postgres connections, in_use and idle", pool.clone());
        let redis_errors = Counter::default();
        registry.register(
            "redis_errors",
            "Redis commands that failed (Redis out of reach, or timed out)",
            redis_errors.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            sockets_open,
            streams_open,
            questions,
            answers,
            time_to_first_token,
            tokens,
            queue,
            jobs,
            job_duration,
            pages,
            chunks,
            embed_batches,
            embed_batch_duration,
            pool,
            redis_errors,
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Counts tokens written to the ledger.
pub fn metered(kind: &'static str, tokens: i64) {
    if tokens > 0 {
        get().tokens.get_or_create(&Kind { kind }).inc_by(tokens as u64);
    }
}

/// An ingestion job's end.
pub fn job(outcome: &'static str, took: Duration) {
    let m = get();
    m.jobs.get_or_create(&Outcome { outcome }).inc();
    m.job_duration.get_or_create(&Outcome { outcome }).observe(took.as_secs_f64());
}

/// Middleware: every request's route, method, status and time.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    // any token is a method to HTTP: a client must not mint label values, so others are `other`
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    let m = get();
    let status = response.status().as_u16();
    m.http_duration
        .get_or_create(&RouteLabels { route: route.clone(), method: method.clone() })
        .observe(started.elapsed().as_secs_f64());
    m.http_requests.get_or_create(&StatusLabels { route, method, status }).inc();
    response
}

/// `GET /metrics`, for the metrics listener only.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", routing::get(scrape))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "metrics are at /metrics") })
        .with_state(state)
}

async fn scrape(State(state): State<AppState>) -> Response {
    let m = get();
    m.sockets_open.set(state.sockets.open_count() as i64);
    m.streams_open.set(state.streams.open_count() as i64);
    let idle = state.db.num_idle() as i64;
    m.pool.get_or_create(&State_ { state: "idle" }).set(idle);
    m.pool.get_or_create(&State_ { state: "in_use" }).set(i64::from(state.db.size()) - idle);
    // the queue is every process's: one cheap count, bounded in time
    let depth = tokio::time::timeout(Duration::from_secs(2), crate::ingestion::queue::depth(&state.db)).await;
    match depth {
        Ok(Ok((queued, running))) => {
            m.queue.get_or_create(&State_ { state: "queued" }).set(queued);
            m.queue.get_or_create(&State_ { state: "running" }).set(running);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot count the ingestion queue for the metrics"),
        Err(_) => tracing::warn!("counting the ingestion queue for the metrics timed out"),
    }
    let mut body = String::with_capacity(16 * 1024);
    if encode(&mut body, &m.registry).is_err() {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the metrics could not be written");
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
