//! Ingestion workers: claim a job, extract, chunk, embed, store, in that order. Running a job
//! twice never duplicates chunks: the chunks, the ledger row and the `ready` status are written
//! in one transaction that also removes the job, and only if the job is still this worker's.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinHandle};
use uuid::Uuid;

use super::{
    chunk::{Chunk, Chunker, SecondaryLimit},
    extract::{self, ExtractError, Limits},
    queue::{self, Job},
};
use crate::{config::IngestionConfig, embed::Embedder, usage::quota};

pub struct Pipeline {
    pub db: PgPool,
    pub embedder: Arc<dyn Embedder>,
    pub config: IngestionConfig,
    pub wakeup: Arc<Notify>,
}

/// How a job ended, for logs and tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ready {
        chunks: usize,
    },
    Failed {
        code: &'static str,
    },
    Retry,
    /// the job was deleted or taken over while this worker ran it
    Lost,
}

const IDLE_POLL: Duration = Duration::from_secs(1);

impl Pipeline {
    /// Starts `n` workers that run until `shutdown` is notified (they finish their current job).
    pub fn spawn_workers(self: &Arc<Self>, n: usize, shutdown: Arc<ShutdownFlag>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        if n == 0 {
            return handles;
        }
        handles.push(tokio::spawn(listen(self.db.clone(), self.wakeup.clone(), shutdown.clone())));
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        for i in 0..n {
            let me = self.clone();
            let name = format!("{host}:{}:{i}:{}", std::process::id(), &Uuid::new_v4().simple().to_string()[..8]);
            let shutdown = shutdown.clone();
            handles.push(tokio::spawn(async move { me.worker_loop(name, shutdown).await }));
        }
        handles
    }

    async fn worker_loop(self: Arc<Self>, name: String, shutdown: Arc<ShutdownFlag>) {
        tracing::info!(worker = %name, "ingestion worker started");
        while !shutdown.is_set() {
            match queue::claim(&self.db, &name, self.config.lease).await {
                Ok(Some(job)) => {
                    let outcome = self.run_job(&job, &name).await;
                    tracing::info!(worker = %name, document_id = %job.document_id, attempt = job.attempts, ?outcome, "ingestion job done");
                }
                Ok(None) => {
                    tokio::select! {
                        () = self.wakeup.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        () = shutdown.wait() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "cannot claim ingestion jobs");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        tracing::info!(worker = %name, "ingestion worker stopped");
    }

    /// Runs every due job in this task until the queue is empty (tests and `reindex`).
    pub async fn drain(&self, name: &str) -> Result<Vec<(Uuid, Outcome)>, sqlx::Error> {
        let mut done = Vec::new();
        while let Some(job) = queue::claim(&self.db, name, self.config.lease).await? {
            let outcome = self.run_job(&job, name).await;
            done.push((job.document_id, outcome));
        }
        Ok(done)
    }

    pub async fn run_job(&self, job: &Job, worker: &str) -> Outcome {
        match self.try_run(job, worker).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // database trouble: try again later
                let delay = queue::backoff(job.attempts);
                tracing::warn!(document_id = %job.document_id, error = %e, "ingestion failed, retrying in {delay:?}");
                let _ = queue::retry_later(&self.db, job.id, worker, delay, &e.to_string()).await;
                Outcome::Retry
            }
        }
    }

    async fn try_run(&self, job: &Job, worker: &str) -> Result<Outcome, sqlx::Error> {
        if job.attempts > job.max_attempts {
            let last: Option<String> = sqlx::query_scalar("select last_error from ingestion_jobs where id = $1")
                .bind(job.id)
                .fetch_optional(&self.db)
                .await?
                .flatten();
            let message = format!(
                "ingestion failed after {} attempts{}",
                job.max_attempts,
                last.map(|e| format!(": {e}")).unwrap_or_default()
            );
            return self.fail(job, worker, "ingestion_failed", &message).await;
        }
        let updated = sqlx::query(
            "update documents set status = 'processing', pages_done = 0, updated_at = now()
              where tenant_id = $1 and id = $2",
        )
        .bind(job.tenant_id)
        .bind(job.document_id)
        .execute(&self.db)
        .await?;
        let row: Option<(Vec<u8>, Option<Uuid>)> = sqlx::query_as(
            "select f.data, d.uploaded_by from document_files f join documents d on d.id = f.document_id
              where f.tenant_id = $1 and f.document_id = $2",
        )
        .bind(job.tenant_id)
        .bind(job.document_id)
        .fetch_optional(&self.db)
        .await?;
        let Some((data, uploader)) = row.filter(|_| updated.rows_affected() == 1) else {
            // the document was deleted
            queue::finish(&self.db, job.id, worker).await?;
            return Ok(Outcome::Lost);
        };

        // keep the lease and publish progress while the work runs
        let progress = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            self.db.clone(),
            job.clone(),
            worker.to_owned(),
            self.config.lease,
            progress.clone(),
            lost.clone(),
        ));
        let result = self.process(job, uploader, data, progress).await;
        heartbeat.abort();
        if lost.load(Ordering::SeqCst) {
            if let Ok(Embedded { hold: Some(hold), .. }) = &result {
                quota::release(&self.db, *hold).await?;
            }
            return Ok(Outcome::Lost);
        }

        match result {
            Ok(embedded) => self.store(job, worker, embedded).await,
            Err(JobError::Extract(e)) => self.fail(job, worker, e.code(), &e.to_string()).await,
            Err(JobError::Database(e)) => Err(e),
            Err(JobError::Quota(exceeded)) => {
                // not the document's fault: it waits, queued, until the quota resets
                let message = format!("waiting for the token quota: {}", exceeded.message());
                tracing::info!(document_id = %job.document_id, "{message}");
                queue::retry_later(&self.db, job.id, worker, exceeded.retry_after(), &message).await?;
                sqlx::query("update ingestion_jobs set attempts = greatest(attempts - 1, 0) where id = $1")
                    .bind(job.id)
                    .execute(&self.db)
                    .await?;
                sqlx::query(
                    "update documents set status = 'queued', error_code = 'quota_exceeded', error_message = $3,
                            updated_at = now()
                      where tenant_id = $1 and id = $2",
                )
                .bind(job.tenant_id)
                .bind(job.document_id)
                .bind(&message)
                .execute(&self.db)
                .await?;
                Ok(Outcome::Retry)
            }
            Err(JobError::Embed(message)) => {
                if job.attempts >= job.max_attempts {
                    self.fail(job, worker, "embedding_failed", &message).await
                } else {
                    let delay = queue::backoff(job.attempts);
                    tracing::warn!(document_id = %job.document_id, error = %message, "embedding failed, retrying in {delay:?}");
                    queue::retry_later(&self.db, job.id, worker, delay, &message).await?;
                    sqlx::query("update documents set status = 'queued', updated_at = now() where id = $1")
                        .bind(job.document_id)
                        .execute(&self.db)
                        .await?;
                    Ok(Outcome::Retry)
                }
            }
        }
    }

    async fn process(
        &self,
        job: &Job,
        uploader: Option<Uuid>,
        data: Vec<u8>,
        progress: Arc<AtomicUsize>,
    ) -> Result<Embedded, JobError> {
        let limits =
            Limits { max_pages: self.config.max_pages, time_budget: self.config.extract_budget, ..Limits::default() };
        let pages = tokio::task::spawn_blocking(move || {
            extract::extract(&data, &limits, |done| progress.store(done, Ordering::Relaxed))
        })
        .await
        .map_err(|_| JobError::Extract(ExtractError::Invalid))?
        .map_err(JobError::Extract)?;

        let embedder = self.embedder.clone();
        let (max_tokens, overlap) = (self.config.chunk_tokens, self.config.chunk_overlap);
        let (chunks, most_tokens) = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(max_tokens, overlap);
            let limit = embedder.input_limit();
            chunker.secondary = limit.map(|(count, max)| SecondaryLimit { count, max });
            let chunks = chunker.chunk(&pages);
            // what embedding them may cost, by either tokenizer
            let most: usize =
                chunks.iter().map(|c| (c.token_count as usize).max(limit.map_or(0, |(count, _)| count(&c.text)))).sum();
            (chunks, most)
        })
        .await
        .map_err(|_| JobError::Extract(ExtractError::Invalid))?;
        if chunks.is_empty() {
            return Err(JobError::Extract(ExtractError::NoText));
        }

        // the tenant's (and the uploader's) quota, checked now that the cost is known
        let hold_for = self.config.lease * 4 + Duration::from_secs(600);
        let hold = quota::admit(&self.db, job.tenant_id, uploader, most_tokens as i64, hold_for)
            .await
            .map_err(JobError::Database)?
            .map_err(JobError::Quota)?;

        let mut vectors = Vec::with_capacity(chunks.len());
        let mut tokens = 0;
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        for batch in texts.chunks(self.embedder.batch_size().max(1)) {
            match self.embedder.embed(batch).await {
                Ok(out) => {
                    tokens += out.tokens;
                    vectors.extend(out.vectors);
                }
                Err(e) => {
                    if let Some(hold) = hold {
                        quota::release(&self.db, hold).await.map_err(JobError::Database)?;
                    }
                    return Err(JobError::Embed(e.to_string()));
                }
            }
        }
        Ok(Embedded { chunks, vectors, tokens, hold })
    }

    async fn store(&self, job: &Job, worker: &str, embedded: Embedded) -> Result<Outcome, sqlx::Error> {
        let Embedded { chunks, vectors, tokens, hold } = embedded;
        let mut tx = self.db.begin().await?;
        if !queue::finish(&mut *tx, job.id, worker).await? {
            drop(tx);
            if let Some(hold) = hold {
                quota::release(&self.db, hold).await?;
            }
            return Ok(Outcome::Lost);
        }
        if let Some(hold) = hold {
            quota::release(&mut *tx, hold).await?;
        }
        sqlx::query("delete from chunks where tenant_id = $1 and document_id = $2")
            .bind(job.tenant_id)
            .bind(job.document_id)
            .execute(&mut *tx)
            .await?;
        let model = self.embedder.model().to_owned();
        super::store::insert_chunks(&mut tx, job.tenant_id, job.document_id, &model, &chunks, &vectors).await?;
        sqlx::query(
            "insert into usage_events (tenant_id, user_id, api_key_id, kind, model, tokens, document_id)
             select tenant_id, uploaded_by, uploaded_by_key, 'embedding', $3, $4, id
               from documents where tenant_id = $1 and id = $2",
        )
        .bind(job.tenant_id)
        .bind(job.document_id)
        .bind(&model)
        .bind(tokens as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "update documents set status = 'ready', chunk_count = $3, embedding_model = $4, pages_done = pages_total,
                    error_code = null, error_message = null, updated_at = now()
              where tenant_id = $1 and id = $2",
        )
        .bind(job.tenant_id)
        .bind(job.document_id)
        .bind(chunks.len() as i32)
        .bind(&model)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Outcome::Ready { chunks: chunks.len() })
    }

    async fn fail(&self, job: &Job, worker: &str, code: &'static str, message: &str) -> Result<Outcome, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        if !queue::finish(&mut *tx, job.id, worker).await? {
            return Ok(Outcome::Lost);
        }
        sqlx::query(
            "update documents set status = 'failed', error_code = $3, error_message = $4, updated_at = now()
              where tenant_id = $1 and id = $2",
        )
        .bind(job.tenant_id)
        .bind(job.document_id)
        .bind(code)
        .bind(message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Outcome::Failed { code })
    }
}

enum JobError {
    Extract(ExtractError),
    Embed(String),
    Quota(quota::Exceeded),
    Database(sqlx::Error),
}

/// A document's chunks with their vectors, the tokens the embedder reported, and the quota hold
/// to release with the ledger row.
struct Embedded {
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
    tokens: u64,
    hold: Option<Uuid>,
}

async fn heartbeat(
    db: PgPool,
    job: Job,
    worker: String,
    lease: Duration,
    progress: Arc<AtomicUsize>,
    lost: Arc<AtomicBool>,
) {
    let mut last = 0;
    loop {
        tokio::time::sleep((lease / 3).min(Duration::from_secs(1))).await;
        if let Ok(false) = queue::renew(&db, job.id, &worker, lease).await {
            lost.store(true, Ordering::SeqCst);
            return;
        }
        let done = progress.load(Ordering::Relaxed);
        if done != last {
            last = done;
            let _ = sqlx::query(
                "update documents set pages_done = $3, updated_at = now() where tenant_id = $1 and id = $2",
            )
            .bind(job.tenant_id)
            .bind(job.document_id)
            .bind(done as i32)
            .execute(&db)
            .await;
        }
    }
}

/// Wakes idle workers when any process enqueues a job (`pg_notify('docuchat_ingest')`).
async fn listen(db: PgPool, wakeup: Arc<Notify>, shutdown: Arc<ShutdownFlag>) {
    while !shutdown.is_set() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&db).await {
            Ok(l) => l,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if listener.listen("docuchat_ingest").await.is_err() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(_) => wakeup.notify_waiters(),
                    Err(_) => break,
                },
                () = shutdown.wait() => return,
            }
        }
    }
}

/// A flag that is set once and can be awaited.
#[derive(Default)]
pub struct ShutdownFlag {
    set: AtomicBool,
    notify: Notify,
}

impl ShutdownFlag {
    pub fn trigger(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    pub async fn wait(&self) {
        let notified = self.notify.notified();
        if self.is_set() {
            return;
        }
        notified.await;
    }
}
