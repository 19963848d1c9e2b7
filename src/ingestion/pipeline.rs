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
    /// (`CROSS_LANGUAGE_MODEL`; see migrations 0019 and 0020): by a job of its own once the
    /// document is ready ([`Pipeline::prepare_cross`])
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
    pub hold: Option<Uuid>,
}

/// A ready document's chunks (by ordinal) with their vectors by the cross-language model, the
/// tokens spent, the quota hold and the script of their text.
pub struct CrossVectors {
    pub ordinals: Vec<i32>,
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
    pub hold: Option<Uuid>,
    pub script: &'static str,
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
        let hold = self.admit(job, by, most_tokens).await?;

        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let (vectors, tokens, failure) = embed(&*self.embedder, &texts, &progress.chunks_embedded).await;
        drop(texts);
        let Some(e) = failure else {
            return Ok(Embedded { chunks, vectors, tokens, hold });
        };
        self.settle_failure(job, by, self.embedder.model(), tokens, hold).await?;
        Err(e.into())
    }

    /// Admits the job's embedding of at most `tokens` against the quotas, holding them for a
    /// few leases.
    async fn admit(&self, job: &Job, by: Uploader, tokens: usize) -> Result<Option<Uuid>, JobError> {
        let hold_for = self.config.lease * 4 + Duration::from_secs(600);
        Ok(quota::admit(&self.db, job.tenant_id, by.user, tokens as i64, hold_for).await?)
    }

    /// After an embedder failed part-way: the batches embedded before the failure were spent, so
    /// they are charged (settling the hold); with nothing spent the hold is released.
    async fn settle_failure(
        &self,
        job: &Job,
        by: Uploader,
        model: &str,
        tokens: u64,
        hold: Option<Uuid>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = crate::db::for_tenant(&self.db, job.tenant_id).await?;
        if tokens > 0 {
            self.charge(&mut tx, job, by, model, tokens, hold).await?;
        } else if let Some(hold) = hold {
            quota::release(&mut *tx, job.tenant_id, hold).await?;
        }
        tx.commit().await?;
        crate::metrics::metered("embedding", tokens as i64);
        Ok(())
    }

    /// A ready document's stored chunks embedded by the cross-language model: read (no
    /// extraction), admitted against the quota, embedded; writes nothing but the quota hold.
    /// `None` when the document has no chunks (deleted, or its ingestion queued again).
    pub async fn prepare_cross(&self, job: &Job, by: Uploader) -> Result<Option<CrossVectors>, JobError> {
        let Some(embedder) = &self.cross else { return Ok(None) };
        let mut tx = crate::db::for_tenant(&self.db, job.tenant_id).await?;
        let chunks: Vec<(i32, String)> = sqlx::query_as(
            "select ordinal, text from chunks where tenant_id = $1 and document_id = $2 order by ordinal",
        )
        .bind(job.tenant_id)
        .bind(job.document_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if chunks.is_empty() {
            return Ok(None);
        }
        let (ordinals, texts): (Vec<i32>, Vec<String>) = chunks.into_iter().unzip();
        let script = crate::embed::document_script(texts.iter().map(String::as_str));
        // the most its tokenizer can make of the chunks (the quota's hold)
        let most: usize = match embedder.input_limit() {
            Some((count, _)) => texts.iter().map(|t| count(t)).sum(),
            None => texts.iter().map(|t| t.len()).sum(),
        };
        let hold = self.admit(job, by, most).await?;
        let (vectors, tokens, failure) = embed(&**embedder, &texts, &AtomicUsize::new(0)).await;
        let Some(e) = failure else {
            return Ok(Some(CrossVectors { ordinals, vectors, tokens, hold, script }));
        };
        self.settle_failure(job, by, embedder.model(), tokens, hold).await?;
        Err(e.into())
    }

    /// Replaces the document's second vectors with `cross`'s, charges them to its uploader
    /// (settling the hold) and records the model and the script, in the caller's transaction.
    /// Returns the number of vectors.
    pub async fn store_cross(
        &self,
        conn: &mut PgConnection,
        job: &Job,
        by: Uploader,
        cross: CrossVectors,
    ) -> Result<usize, sqlx::Error> {
        let Some(embedder) = &self.cross else { return Ok(0) };
        let model = embedder.model();
        sqlx::query("delete from chunk_vectors where tenant_id = $1 and document_id = $2")
            .bind(job.tenant_id)
            .bind(job.document_id)
            .execute(&mut *conn)
            .await?;
        super::store::insert_cross_vectors(
            &mut *conn,
            job.tenant_id,
            job.document_id,
            model,
            &cross.ordinals,
            &cross.vectors,
        )
        .await?;
        self.charge(&mut *conn, job, by, model, cross.tokens, cross.hold).await?;
        lifecycle::set_scripts(conn, job.tenant_id, job.document_id, cross.script, Some(model)).await?;
        Ok(cross.vectors.len())
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

    /// The chunks, and what embedding them may cost by either tokenizer (the quota's hold).
    async fn chunk(&self, pages: Vec<pdf::PageText>) -> Result<(Vec<Chunk>, usize), JobError> {
        let embedder = self.embedder.clone();
        let (max_tokens, overlap) = (self.config.chunk_tokens, self.config.chunk_overlap);
        let (chunks, most) = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(max_tokens, overlap);
            let limit = embedder.input_limit();
            chunker.secondary = limit.map(|(count, max)| SecondaryLimit { count, max });
            let chunks = chunker.chunk(&pages);
            let most =
                chunks.iter().map(|c| (c.token_count as usize).max(limit.map_or(0, |(count, _)| count(&c.text)))).sum();
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
    /// and marks it `ready`, in the caller's transaction; its second vectors went with its former
    /// chunks (a `cross_vectors` job writes the new ones). Returns the number of chunks.
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
        let script = crate::embed::document_script(embedded.chunks.iter().map(|c| c.text.as_str()));
        lifecycle::mark_ready(&mut *conn, job.tenant_id, job.document_id, embedded.chunks.len() as i32, model).await?;
        lifecycle::set_scripts(conn, job.tenant_id, job.document_id, script, None).await?;
        Ok(embedded.chunks.len())
    }

    /// Charges what `embedded` spent when its chunks are not kept; returns the tokens.
    pub async fn charge_unkept(
        &self,
        conn: &mut PgConnection,
        job: &Job,
        by: Uploader,
        embedded: &Embedded,
    ) -> Result<u64, sqlx::Error> {
        self.charge(conn, job, by, self.embedder.model(), embedded.tokens, embedded.hold).await?;
        Ok(embedded.tokens)
    }

    /// Charges what `cross` spent when its vectors are not kept; returns the tokens.
    pub async fn charge_unkept_cross(
        &self,
        conn: &mut PgConnection,
        job: &Job,
        by: Uploader,
        cross: &CrossVectors,
    ) -> Result<u64, sqlx::Error> {
        let Some(embedder) = &self.cross else { return Ok(0) };
        self.charge(conn, job, by, embedder.model(), cross.tokens, cross.hold).await?;
        Ok(cross.tokens)
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
    texts: &[String],
    embedded: &AtomicUsize,
) -> (Vec<Vec<f32>>, u64, Option<EmbedError>) {
    let mut vectors = Vec::with_capacity(texts.len());
    let mut tokens = 0;
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
