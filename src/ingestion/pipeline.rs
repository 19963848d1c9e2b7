//! The pipeline: one claimed job's document turned into stored chunks — extract (PDF, in a child
//! process: [`super::sandbox`]) → chunk →
//! admit against the quota → embed, then store the chunks, the ledger row and the `ready` status
//! in the caller's transaction. It knows nothing of leases, listening or shutdown (see
//! [`super::worker`]), and its errors say which failures are worth another attempt.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use tokio_util::sync::CancellationToken;

use super::{
    chunk::{Chunk, Chunker, SecondaryLimit},
    pdf::{self, ExtractError, Limits},
    queue::Job,
    sandbox::{Sandbox, SandboxError},
};
use crate::{
    config::IngestionConfig,
    documents::lifecycle::{self, Uploader},
    embed::{EmbedError, Embedder},
    usage::{
        ledger::{self, DocumentCharge},
        quota,
    },
};

pub struct Pipeline {
    pub db: PgPool,
    pub embedder: Arc<dyn Embedder>,
    /// the multilingual model that also embeds every chunk, for questions in another script
    /// (`CROSS_LANGUAGE_MODEL`; see migration 0019)
    pub cross: Option<Arc<dyn Embedder>>,
    /// where PDF bytes are read: a child process with hard limits
    pub sandbox: Arc<Sandbox>,
    pub config: IngestionConfig,
}

/// Why a job did not produce a document.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// the file itself: trying again gives the same answer
    #[error(transparent)]
    Pdf(#[from] ExtractError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// not the document's fault: it waits for the quota's reset
    #[error("{}", .0.message())]
    Quota(quota::Exceeded),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// the service is stopping, or cannot read PDFs now: the job runs again later, through no
    /// fault of the document
    #[error("{0}")]
    NotNow(String),
}

impl From<SandboxError> for JobError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Pdf(e) => JobError::Pdf(e),
            other => JobError::NotNow(other.to_string()),
        }
    }
}

impl From<quota::AdmitError> for JobError {
    fn from(e: quota::AdmitError) -> Self {
        match e {
            quota::AdmitError::Exceeded(e) => JobError::Quota(e),
            quota::AdmitError::Database(e) => JobError::Database(e),
        }
    }
}

impl JobError {
    /// Whether another attempt, later, may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Embed(EmbedError::Unavailable(_)) | JobError::Database(_) | JobError::NotNow(_) => true,
            JobError::Embed(EmbedError::Failed(_)) | JobError::Pdf(_) | JobError::Quota(_) => false,
        }
    }

    /// The sentence a failed document shows: the reader's own words for the file, never the
    /// text of an upstream or database error (it can name hosts and URLs); that goes to the log.
    pub fn public_message(&self) -> String {
        match self {
            JobError::Pdf(e) => e.to_string(),
            JobError::Quota(e) => e.message(),
            JobError::Embed(_) => "the embedding service could not embed this document".to_owned(),
            JobError::Database(_) | JobError::NotNow(_) => "the document could not be processed".to_owned(),
        }
    }

    /// The code a failed document shows.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Pdf(e) => e.code(),
            JobError::Embed(_) => "embedding_failed",
            JobError::Quota(_) => "quota_exceeded",
            JobError::Database(_) | JobError::NotNow(_) => "ingestion_failed",
        }
    }
}

/// How far a job is: written by the pipeline as it goes, published by the worker's heartbeat.
#[derive(Debug, Default)]
pub struct Tracker {
    /// 0 extracting, 1 embedding, 2 storing
    stage: AtomicU8,
    pages: AtomicUsize,
    chunks_total: AtomicUsize,
    chunks_embedded: AtomicUsize,
}

impl Tracker {
    pub fn step(&self) -> lifecycle::Step {
        let count = |n: &AtomicUsize| i32::try_from(n.load(Ordering::Relaxed)).unwrap_or(i32::MAX);
        lifecycle::Step {
            stage: match self.stage.load(Ordering::Relaxed) {
                0 => "extracting",
                1 => "embedding",
                _ => "storing",
            },
            pages_done: count(&self.pages),
            chunks_total: count(&self.chunks_total),
            chunks_embedded: count(&self.chunks_embedded),
        }
    }

    /// The chunks are embedded; what is left is writing them.
    pub fn storing(&self) {
        self.stage.store(2, Ordering::Relaxed);
    }
}

/// A document's chunks with their vectors, the tokens the embedder reported, and the quota hold
/// that the ledger row settles.
pub struct Embedded {
    pub chunks: Vec<Chunk>,
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
    /// the cross-language model's vectors and tokens, when one is configured
    pub cross: Option<(Vec<Vec<f32>>, u64)>,
    pub hold: Option<Uuid>,
}

impl Pipeline {
    /// Extracts, chunks, admits and embeds; writes nothing but the quota hold. `progress` counts
    /// the pages extracted, then the chunks embedded; `stop` interrupts the extraction (not the
    /// embedding, whose tokens are spent as it goes and must be charged).
    pub async fn prepare(
        &self,
        job: &Job,
        data: &[u8],
        by: Uploader,
        progress: &Tracker,
        stop: &CancellationToken,
    ) -> Result<Embedded, JobError> {
        let pages = self.extract(data, &progress.pages, stop).await?;
        let (chunks, most_tokens) = self.chunk(pages).await?;
        progress.chunks_total.store(chunks.len(), Ordering::Relaxed);
        progress.stage.store(1, Ordering::Relaxed);

        // the tenant's (and the uploader's) quota, checked now that the cost is known
        let hold_for = self.config.lease * 4 + Duration::from_secs(600);
        let hold = quota::admit(&self.db, job.tenant_id, by.user, most_tokens as i64, hold_for).await?;

        let (vectors, tokens, mut failure) = embed(&*self.embedder, &chunks, &progress.chunks_embedded).await;
        let mut cross = None;
        if failure.is_none()
            && let Some(embedder) = &self.cross
        {
            // counted again from zero: the progress shows the second pass
            progress.chunks_embedded.store(0, Ordering::Relaxed);
            let (v, t, f) = embed(&**embedder, &chunks, &progress.chunks_embedded).await;
            cross = Some((v, t));
            failure = f;
        }
        let Some(e) = failure else {
            return Ok(Embedded { chunks, vectors, tokens, cross, hold });
        };
        // the batches embedded before the failure were spent: charged, the rest released
        let mut tx = crate::db::for_tenant(&self.db, job.tenant_id).await?;
        if tokens > 0 {
            self.charge(&mut tx, job, by, self.embedder.model(), tokens, hold).await?;
        } else if let Some(hold) = hold {
            quota::release(&mut *tx, job.tenant_id, hold).await?;
        }
        if let (Some(embedder), Some((_, t))) = (&self.cross, &cross)
            && *t > 0
        {
            self.charge(&mut tx, job, by, embedder.model(), *t, None).await?;
        }
        tx.commit().await?;
        crate::metrics::metered("embedding", (tokens + cross.map_or(0, |c| c.1)) as i64);
        Err(e.into())
    }

    async fn extract(
        &self,
        data: &[u8],
        progress: &AtomicUsize,
        stop: &CancellationToken,
    ) -> Result<Vec<pdf::PageText>, JobError> {
        let limits =
            Limits { max_pages: self.config.max_pages, time_budget: self.config.extract_budget, ..Limits::default() };
        let pages = self.sandbox.extract(data, &limits, stop, |done| progress.store(done, Ordering::Relaxed)).await?;
        Ok(pages)
    }

    /// The chunks, and what embedding them may cost by either tokenizer (the quota's hold), with
    /// the cross-language model too when there is one.
    async fn chunk(&self, pages: Vec<pdf::PageText>) -> Result<(Vec<Chunk>, usize), JobError> {
        let embedder = self.embedder.clone();
        let cross = self.cross.clone();
        let (max_tokens, overlap) = (self.config.chunk_tokens, self.config.chunk_overlap);
        let (chunks, most) = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(max_tokens, overlap);
            let limit = embedder.input_limit();
            chunker.secondary = limit.map(|(count, max)| SecondaryLimit { count, max });
            let chunks = chunker.chunk(&pages);
            let most_by = |limit: Option<(&crate::embed::TokenCounter, usize)>| -> usize {
                chunks.iter().map(|c| (c.token_count as usize).max(limit.map_or(0, |(count, _)| count(&c.text)))).sum()
            };
            let most = most_by(limit) + cross.as_ref().map_or(0, |c| most_by(c.input_limit()));
            (chunks, most)
        })
        .await
        .map_err(|_| ExtractError::Invalid)?;
        if chunks.is_empty() {
            return Err(ExtractError::NoText.into());
        }
        Ok((chunks, most))
    }

    /// Replaces the document's chunks, charges the embedding to its uploader (settling the hold)
    /// and marks it `ready`, in the caller's transaction. Returns the number of chunks.
    pub async fn store(
        &self,
        conn: &mut PgConnection,
        job: &Job,
        by: Uploader,
        embedded: Embedded,
    ) -> Result<usize, sqlx::Error> {
        let model = self.embedder.model();
        super::store::delete_chunks(&mut *conn, job.tenant_id, job.document_id).await?;
        super::store::insert_chunks(
            &mut *conn,
            job.tenant_id,
            job.document_id,
            model,
            &embedded.chunks,
            &embedded.vectors,
        )
        .await?;
        self.charge(&mut *conn, job, by, model, embedded.tokens, embedded.hold).await?;
        let mut cross_model = None;
        if let (Some(embedder), Some((vectors, tokens))) = (&self.cross, &embedded.cross) {
            let cross = embedder.model();
            super::store::insert_cross_vectors(
                &mut *conn,
                job.tenant_id,
                job.document_id,
                cross,
                &embedded.chunks,
                vectors,
            )
            .await?;
            self.charge(&mut *conn, job, by, cross, *tokens, None).await?;
            cross_model = Some(cross);
        }
        let script = crate::embed::document_script(embedded.chunks.iter().map(|c| c.text.as_str()));
        lifecycle::mark_ready(&mut *conn, job.tenant_id, job.document_id, embedded.chunks.len() as i32, model).await?;
        lifecycle::set_scripts(conn, job.tenant_id, job.document_id, script, cross_model).await?;
        Ok(embedded.chunks.len())
    }

    /// Charges everything `embedded` spent (each model's tokens its own row) when its chunks are
    /// not kept; returns the tokens.
    pub async fn charge_unkept(
        &self,
        conn: &mut PgConnection,
        job: &Job,
        by: Uploader,
        embedded: &Embedded,
    ) -> Result<u64, sqlx::Error> {
        self.charge(conn, job, by, self.embedder.model(), embedded.tokens, embedded.hold).await?;
        let mut tokens = embedded.tokens;
        if let (Some(embedder), Some((_, t))) = (&self.cross, &embedded.cross) {
            self.charge(conn, job, by, embedder.model(), *t, None).await?;
            tokens += t;
        }
        Ok(tokens)
    }

    /// Charges embedding tokens spent on the job's document to its uploader, settling the hold:
    /// with the stored chunks, and also when none are kept (the document was deleted or the job
    /// taken over while it was embedded, or the embedder failed half-way) — whatever was spent is
    /// charged.
    pub async fn charge(
        &self,
        conn: &mut PgConnection,
        job: &Job,
        by: Uploader,
        model: &str,
        tokens: u64,
        hold: Option<Uuid>,
    ) -> Result<(), sqlx::Error> {
        let charge = DocumentCharge {
            tenant: job.tenant_id,
            user: by.user,
            api_key: by.api_key,
            document: job.document_id,
            model,
            tokens: tokens as i64,
            hold,
        };
        ledger::charge_document(conn, &charge).await
    }
}

/// The chunks' vectors by `embedder` and the tokens spent, batch by batch; on a failure, what was
/// spent until then and the error.
async fn embed(
    embedder: &dyn Embedder,
    chunks: &[Chunk],
    embedded: &AtomicUsize,
) -> (Vec<Vec<f32>>, u64, Option<EmbedError>) {
    let mut vectors = Vec::with_capacity(chunks.len());
    let mut tokens = 0;
    let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    for batch in texts.chunks(embedder.batch_size().max(1)) {
        match embedder.embed(batch).await {
            Ok(out) => {
                tokens += out.tokens;
                vectors.extend(out.vectors);
                embedded.fetch_add(batch.len(), Ordering::Relaxed);
            }
            Err(e) => return (vectors, tokens, Some(e)),
        }
    }
    (vectors, tokens, None)
}
