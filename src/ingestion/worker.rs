//! The worker runtime: claims jobs from the queue, keeps their leases, publishes progress, wakes
//! on notifications and stops on a cancellation token. What a job does is the
//! [`Pipeline`]'s; this module decides what becomes of a job when it ends (stored, failed,
//! retried later, or waiting for a quota).
//!
//! Running a job twice never duplicates chunks: the chunks, the ledger row and the `ready` status
//! are written in one transaction that also removes the job (or, with a cross-language model,
//! turns it into the document's `cross_vectors` job), and only if the job is still this worker's.
//! A `cross_vectors` job's vectors, ledger row and model are written the same way.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    pipeline::{JobError, Pipeline, Tracker},
    queue::{self, Job, JobKind},
};
use crate::{
    db,
    documents::lifecycle::{self, Uploader},
};

/// How a job ended, for logs and tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ready {
        chunks: usize,
    },
    /// a ready document's chunks got their cross-language vectors
    Vectors {
        chunks: usize,
    },
    /// the document failed; a `cross_vectors` job that gives up leaves its document `ready`,
    /// searched by its own model (a later `docuchat reindex` queues it again)
    Failed {
        code: &'static str,
    },
    Retry,
    /// the job was deleted or taken over while this worker ran it
    Lost,
}

const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a stopping process waits for the jobs in progress.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub struct Workers {
    pipeline: Pipeline,
    /// notified when a job is enqueued by this process or (through `LISTEN`) by any other
    wakeup: Arc<Notify>,
}

impl Workers {
    pub fn new(pipeline: Pipeline, wakeup: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self { pipeline, wakeup })
    }

    fn db(&self) -> &PgPool {
        &self.pipeline.db
    }

    /// Runs `n` workers until `shutdown` is cancelled, then waits for their jobs to finish (a
    /// job still running after the grace period is taken again when its lease runs out).
    pub async fn run(self: Arc<Self>, n: usize, shutdown: CancellationToken) {
        let handles = self.spawn(n, shutdown.clone());
        shutdown.cancelled().await;
        if tokio::time::timeout(STOP_GRACE, join_all(handles)).await.is_err() {
            tracing::warn!(
                "ingestion workers did not stop within {STOP_GRACE:?}; their jobs will be taken again after the lease"
            );
        }
    }

    /// Starts `n` workers (and the listener that wakes them) that run until `shutdown` is
    /// cancelled; each finishes its current job first.
    pub fn spawn(self: &Arc<Self>, n: usize, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        if n == 0 {
            return handles;
        }
        handles.push(tokio::spawn(listen(self.db().clone(), self.wakeup.clone(), shutdown.clone())));
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        for i in 0..n {
            let me = self.clone();
            let name = format!("{host}:{}:{i}:{}", std::process::id(), &Uuid::new_v4().simple().to_string()[..8]);
            let shutdown = shutdown.clone();
            handles.push(tokio::spawn(async move { me.worker_loop(name, shutdown).await }));
        }
        handles
    }

    async fn worker_loop(self: Arc<Self>, name: String, shutdown: CancellationToken) {
        tracing::info!(worker = %name, "ingestion worker started");
        while !shutdown.is_cancelled() {
            match queue::claim(self.db(), &name, self.pipeline.config.lease).await {
                Ok(Some(job)) => {
                    let outcome = self.run_job(&job, &name, &shutdown).await;
                    tracing::info!(worker = %name, document_id = %job.document_id, attempt = job.attempts, ?outcome, "ingestion job done");
                }
                Ok(None) => {
                    tokio::select! {
                        () = self.wakeup.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        () = shutdown.cancelled() => {}
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
        let never = CancellationToken::new();
        while let Some(job) = queue::claim(self.db(), name, self.pipeline.config.lease).await? {
            let outcome = self.run_job(&job, name, &never).await;
            done.push((job.document_id, outcome));
        }
        Ok(done)
    }

    /// Runs one claimed job; `stop` (the service stopping) interrupts its extraction, and the job
    /// is then given back to run again at once.
    pub async fn run_job(&self, job: &Job, worker: &str, stop: &CancellationToken) -> Outcome {
        let started = std::time::Instant::now();
        let outcome = self.run_counted(job, worker, stop).await;
        let label = match &outcome {
            Outcome::Ready { chunks } => {
                crate::metrics::get().chunks.inc_by(*chunks as u64);
                "ready"
            }
            Outcome::Vectors { .. } => "vectors",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry => "retry",
            Outcome::Lost => "lost",
        };
        crate::metrics::job(label, started.elapsed());
        outcome
    }

    async fn run_counted(&self, job: &Job, worker: &str, stop: &CancellationToken) -> Outcome {
        match self.try_run(job, worker, stop).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // database trouble: try again later
                let delay = queue::backoff(job.attempts);
                tracing::warn!(document_id = %job.document_id, error = %e, "ingestion failed, retrying in {delay:?}");
                let retried = async {
                    let mut tx = db::for_tenant(self.db(), job.tenant_id).await?;
                    queue::retry_later(&mut *tx, job.id, worker, delay, &e.to_string()).await?;
                    tx.commit().await
                };
                let _ = retried.await;
                Outcome::Retry
            }
        }
    }

    async fn try_run(&self, job: &Job, worker: &str, stop: &CancellationToken) -> Result<Outcome, sqlx::Error> {
        if job.kind == JobKind::CrossVectors {
            return self.try_cross(job, worker).await;
        }
        let db = self.db();
        // every step works in the job's tenant (row-level security), each in a transaction
        let tenant = || db::for_tenant(db, job.tenant_id);
        if job.attempts > job.max_attempts {
            // the last error is for the log only: it may be an upstream's or the database's text
            let last = queue::last_error(&mut *tenant().await?, job.id).await?;
            tracing::warn!(document_id = %job.document_id, last_error = ?last, "ingestion gave up");
            let message = format!("ingestion failed after {} attempts", job.max_attempts);
            return self.fail(job, worker, "ingestion_failed", &message).await;
        }
        let mut tx = tenant().await?;
        let upload = if lifecycle::start_processing(&mut *tx, job.tenant_id, job.document_id).await? {
            lifecycle::upload(&mut *tx, job.tenant_id, job.document_id).await?
        } else {
            None
        };
        let Some(upload) = upload else {
            // the document was deleted
            queue::finish(&mut *tx, job.id, worker).await?;
            tx.commit().await?;
            return Ok(Outcome::Lost);
        };
        tx.commit().await?;

        // keep the lease and publish progress while the work runs
        let progress = Arc::new(Tracker::default());
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            db.clone(),
            job.clone(),
            worker.to_owned(),
            self.pipeline.config.lease,
            Some(progress.clone()),
            lost.clone(),
        ));
        let by = upload.by;
        let result = self.pipeline.prepare(job, &upload.data, by, &progress, stop).await;
        heartbeat.abort();
        if lost.load(Ordering::SeqCst) {
            // taken over or deleted meanwhile: what was embedded is charged, nothing is stored
            if let Ok(embedded) = &result {
                let mut tx = tenant().await?;
                let tokens = self.pipeline.charge_unkept(&mut tx, job, by, embedded).await?;
                tx.commit().await?;
                crate::metrics::metered("embedding", tokens as i64);
            }
            return Ok(Outcome::Lost);
        }

        match result {
            Ok(embedded) => {
                // seen by followers while the chunks are written
                progress.storing();
                let mut tx = tenant().await?;
                lifecycle::set_progress(&mut *tx, job.tenant_id, job.document_id, progress.step()).await?;
                tx.commit().await?;
                let outcome = self.store(job, worker, by, embedded).await?;
                if matches!(outcome, Outcome::Ready { .. }) {
                    crate::metrics::get().pages.inc_by(progress.step().pages_done.max(0) as u64);
                }
                Ok(outcome)
            }
            Err(JobError::Database(e)) => Err(e),
            // not the document's fault: it waits, queued, until the quota resets
            Err(JobError::Quota(exceeded)) => self.wait_for_quota(job, worker, &exceeded).await,
            Err(JobError::NotNow(reason)) if stop.is_cancelled() => {
                // the service is stopping: the job runs again at once elsewhere, or after restart
                let mut tx = tenant().await?;
                queue::postpone(&mut *tx, job.id, worker, Duration::ZERO, &reason).await?;
                lifecycle::requeue(&mut *tx, job.tenant_id, job.document_id, None).await?;
                tx.commit().await?;
                Ok(Outcome::Retry)
            }
            Err(e) if e.is_retryable() && job.attempts < job.max_attempts => self.retry(job, worker, &e).await,
            Err(e) => {
                tracing::warn!(document_id = %job.document_id, error = %e, "ingestion failed");
                self.fail(job, worker, e.code(), &e.public_message()).await
            }
        }
    }

    /// Stores the document if the job is still this worker's, in the transaction that ends it.
    async fn store(
        &self,
        job: &Job,
        worker: &str,
        by: Uploader,
        embedded: super::pipeline::Embedded,
    ) -> Result<Outcome, sqlx::Error> {
        let mut tx = db::for_tenant(self.db(), job.tenant_id).await?;
        // with a cross-language model the job goes on as the document's `cross_vectors` job: the
        // document is ready, and searched by its own model, before the second pass
        let ended = match self.pipeline.cross {
            Some(_) => queue::follow_with(&mut tx, job.id, worker, JobKind::CrossVectors).await?,
            None => queue::finish(&mut *tx, job.id, worker).await?,
        };
        if !ended {
            // deleted (or taken over) while it was embedded: the chunks are not kept, the tokens
            // spent on them are charged all the same
            let tokens = self.pipeline.charge_unkept(&mut tx, job, by, &embedded).await?;
            tx.commit().await?;
            crate::metrics::metered("embedding", tokens as i64);
            return Ok(Outcome::Lost);
        }
        let tokens = embedded.tokens as i64;
        let chunks = self.pipeline.store(&mut tx, job, by, embedded).await?;
        tx.commit().await?;
        crate::metrics::metered("embedding", tokens);
        Ok(Outcome::Ready { chunks })
    }

    /// Runs a `cross_vectors` job: the ready document's stored chunks embedded by the
    /// cross-language model, stored in the transaction that ends the job. The document stays
    /// `ready` whatever happens.
    async fn try_cross(&self, job: &Job, worker: &str) -> Result<Outcome, sqlx::Error> {
        let db = self.db();
        let tenant = || db::for_tenant(db, job.tenant_id);
        let give_up = |code: &'static str| async move {
            let mut tx = tenant().await?;
            let ended = queue::finish(&mut *tx, job.id, worker).await?;
            tx.commit().await?;
            Ok(if ended { Outcome::Failed { code } } else { Outcome::Lost })
        };
        if self.pipeline.cross.is_none() {
            // queued by a process with a cross-language model, claimed by one without (turned
            // off since): nothing to do here; a reindex with the model on queues it again
            tracing::info!(document_id = %job.document_id, "no cross-language model here: second vectors skipped");
            return give_up("cross_language_model_off").await;
        }
        if job.attempts > job.max_attempts {
            let last = queue::last_error(&mut *tenant().await?, job.id).await?;
            tracing::warn!(document_id = %job.document_id, last_error = ?last, "second vectors gave up");
            return give_up("embedding_failed").await;
        }
        let Some(by) = lifecycle::uploader(&mut *tenant().await?, job.tenant_id, job.document_id).await? else {
            return give_up("not_found").await.map(|_| Outcome::Lost);
        };
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            db.clone(),
            job.clone(),
            worker.to_owned(),
            self.pipeline.config.lease,
            None,
            lost.clone(),
        ));
        let result = self.pipeline.prepare_cross(job, by).await;
        heartbeat.abort();
        if lost.load(Ordering::SeqCst) {
            if let Ok(Some(cross)) = &result {
                let mut tx = tenant().await?;
                let tokens = self.pipeline.charge_unkept_cross(&mut tx, job, by, cross).await?;
                tx.commit().await?;
                crate::metrics::metered("embedding", tokens as i64);
            }
            return Ok(Outcome::Lost);
        }
        match result {
            // no chunks: the document was deleted, or its ingestion queued again
            Ok(None) => give_up("not_found").await.map(|_| Outcome::Lost),
            Ok(Some(cross)) => {
                let mut tx = tenant().await?;
                if !queue::finish(&mut *tx, job.id, worker).await? {
                    let tokens = self.pipeline.charge_unkept_cross(&mut tx, job, by, &cross).await?;
                    tx.commit().await?;
                    crate::metrics::metered("embedding", tokens as i64);
                    return Ok(Outcome::Lost);
                }
                let tokens = cross.tokens as i64;
                let chunks = self.pipeline.store_cross(&mut tx, job, by, cross).await?;
                tx.commit().await?;
                crate::metrics::metered("embedding", tokens);
                Ok(Outcome::Vectors { chunks })
            }
            Err(JobError::Database(e)) => Err(e),
            Err(JobError::Quota(exceeded)) => self.wait_for_quota(job, worker, &exceeded).await,
            Err(e) if e.is_retryable() && job.attempts < job.max_attempts => self.retry(job, worker, &e).await,
            Err(e) => {
                tracing::warn!(document_id = %job.document_id, error = %e, "second vectors failed");
                give_up(e.code()).await
            }
        }
    }

    /// Gives the job back until the tenant's quota resets, without using up an attempt; an
    /// ingestion's document shows that it waits (queued, `quota_exceeded`).
    async fn wait_for_quota(
        &self,
        job: &Job,
        worker: &str,
        exceeded: &crate::usage::quota::Exceeded,
    ) -> Result<Outcome, sqlx::Error> {
        let message = format!("waiting for the token quota: {}", exceeded.message());
        tracing::info!(document_id = %job.document_id, kind = job.kind.as_str(), "{message}");
        let mut tx = db::for_tenant(self.db(), job.tenant_id).await?;
        queue::postpone(&mut *tx, job.id, worker, exceeded.retry_after(), &message).await?;
        if job.kind == JobKind::Ingest {
            lifecycle::requeue(&mut *tx, job.tenant_id, job.document_id, Some(("quota_exceeded", &message))).await?;
        }
        tx.commit().await?;
        Ok(Outcome::Retry)
    }

    /// Gives the job back to run again after its backoff; an ingestion's document shows `queued`.
    async fn retry(&self, job: &Job, worker: &str, e: &JobError) -> Result<Outcome, sqlx::Error> {
        let delay = queue::backoff(job.attempts);
        tracing::warn!(document_id = %job.document_id, kind = job.kind.as_str(), error = %e, "job attempt failed, retrying in {delay:?}");
        let mut tx = db::for_tenant(self.db(), job.tenant_id).await?;
        queue::retry_later(&mut *tx, job.id, worker, delay, &e.to_string()).await?;
        if job.kind == JobKind::Ingest {
            lifecycle::requeue(&mut *tx, job.tenant_id, job.document_id, None).await?;
        }
        tx.commit().await?;
        Ok(Outcome::Retry)
    }

    async fn fail(&self, job: &Job, worker: &str, code: &'static str, message: &str) -> Result<Outcome, sqlx::Error> {
        let mut tx = db::for_tenant(self.db(), job.tenant_id).await?;
        if !queue::finish(&mut *tx, job.id, worker).await? {
            return Ok(Outcome::Lost);
        }
        lifecycle::mark_failed(&mut *tx, job.tenant_id, job.document_id, code, message).await?;
        tx.commit().await?;
        Ok(Outcome::Failed { code })
    }
}

async fn heartbeat(
    db: PgPool,
    job: Job,
    worker: String,
    lease: Duration,
    progress: Option<Arc<Tracker>>,
    lost: Arc<AtomicBool>,
) {
    let mut last = progress.as_ref().map(|p| p.step());
    loop {
        tokio::time::sleep((lease / 3).min(Duration::from_secs(1))).await;
        let beat = async {
            let mut tx = db::for_tenant(&db, job.tenant_id).await?;
            if !queue::renew(&mut *tx, job.id, &worker, lease).await? {
                return Ok(false);
            }
            if let Some(progress) = &progress {
                let step = progress.step();
                if Some(step) != last {
                    last = Some(step);
                    lifecycle::set_progress(&mut *tx, job.tenant_id, job.document_id, step).await?;
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        };
        if let Ok(false) = beat.await {
            lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// Wakes idle workers when any process enqueues a job (`pg_notify('docuchat_ingest')`).
async fn listen(db: PgPool, wakeup: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
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
                () = shutdown.cancelled() => return,
            }
        }
    }
}
