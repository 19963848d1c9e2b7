//! Documents: the rows, their original bytes, and their status. This module is the only one that
//! writes `documents` and `document_files`; the ingestion worker moves a document through its
//! states with the functions of [`lifecycle`].

pub mod lifecycle;
pub mod routes;
pub mod watch;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{error::ErrorBody, ingestion::queue};

/// Where a document is in the pipeline. `queued` → `processing` → `ready` | `failed`; a document
/// may go back to `queued` (a retry, a quota wait, a re-upload of a failed file, a reindex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum DocumentStatus {
    Queued,
    Processing,
    Ready,
    Failed,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Document {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub filename: String,
    pub sha256: Vec<u8>,
    pub bytes: i64,
    pub pages_total: i32,
    pub pages_done: i32,
    pub status: DocumentStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub chunk_count: i32,
    pub embedding_model: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// while `processing`: `extracting`, `embedding` or `storing`
    pub stage: String,
    pub chunks_total: i32,
    pub chunks_embedded: i32,
}

macro_rules! columns {
    () => {
        "id, tenant_id, filename, sha256, bytes, pages_total, pages_done, status, error_code, error_message, \
         chunk_count, embedding_model, created_at, updated_at, stage, chunks_total, chunks_embedded"
    };
}

/// A document as clients see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    pub id: Uuid,
    pub filename: String,
    pub status: DocumentStatus,
    pub progress: Progress,
    pub pages_total: i32,
    /// the chunks stored (searchable) once `ready`
    pub chunk_count: i32,
    pub bytes: i64,
    /// of the uploaded bytes, hex
    pub sha256: String,
    pub embedding_model: Option<String>,
    /// why it failed (`failed`), or what it waits for (`queued` behind a used-up quota)
    pub error: Option<ErrorBody>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How far ingestion is: pages extracted of the PDF's pages, then chunks embedded of the chunks
/// made (`chunks_total` is 0 until the text is cut), then storing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// `queued`, `extracting`, `embedding`, `storing` (these three while `processing`), `ready` or `failed`
    #[schema(example = "embedding")]
    pub stage: &'static str,
    pub pages_done: i32,
    pub pages_total: i32,
    pub chunks_embedded: i32,
    pub chunks_total: i32,
}

impl Progress {
    pub fn of(d: &Document) -> Self {
        let stage = match d.status {
            DocumentStatus::Queued => "queued",
            DocumentStatus::Ready => "ready",
            DocumentStatus::Failed => "failed",
            DocumentStatus::Processing => match d.stage.as_str() {
                "embedding" => "embedding",
                "storing" => "storing",
                _ => "extracting",
            },
        };
        Self {
            stage,
            pages_done: d.pages_done,
            pages_total: d.pages_total,
            chunks_embedded: d.chunks_embedded,
            chunks_total: d.chunks_total,
        }
    }
}

impl From<Document> for DocumentView {
    fn from(d: Document) -> Self {
        let progress = Progress::of(&d);
        let error = d.error_code.map(|code| ErrorBody::new(code, d.error_message.unwrap_or_default()));
        Self {
            id: d.id,
            filename: d.filename,
            status: d.status,
            progress,
            pages_total: d.pages_total,
            chunk_count: d.chunk_count,
            bytes: d.bytes,
            sha256: hex::encode(&d.sha256),
            embedding_model: d.embedding_model,
            error,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

pub struct NewDocument<'a> {
    pub tenant_id: Uuid,
    pub uploaded_by: Option<Uuid>,
    pub uploaded_by_key: Option<Uuid>,
    pub filename: &'a str,
    pub sha256: &'a [u8],
    pub data: &'a [u8],
    pub pages: i32,
    pub max_attempts: i32,
}

/// Stores a document, its bytes and its job in one transaction (the caller's). When the tenant
/// already has these bytes, returns the existing document instead (`false`); a failed one is
/// queued again.
pub async fn create_with_job(conn: &mut PgConnection, new: NewDocument<'_>) -> Result<(Document, bool), sqlx::Error> {
    let id = Uuid::now_v7();
    let inserted: Option<Document> = sqlx::query_as(concat!(
        "insert into documents (id, tenant_id, uploaded_by, filename, sha256, bytes, pages_total, uploaded_by_key)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (tenant_id, sha256) do nothing
         returning ",
        columns!()
    ))
    .bind(id)
    .bind(new.tenant_id)
    .bind(new.uploaded_by)
    .bind(new.filename)
    .bind(new.sha256)
    .bind(new.data.len() as i64)
    .bind(new.pages)
    .bind(new.uploaded_by_key)
    .fetch_optional(&mut *conn)
    .await?;

    if let Some(doc) = inserted {
        sqlx::query("insert into document_files (document_id, tenant_id, data) values ($1, $2, $3)")
            .bind(doc.id)
            .bind(doc.tenant_id)
            .bind(new.data)
            .execute(&mut *conn)
            .await?;
        queue::enqueue(conn, doc.tenant_id, doc.id, queue::JobKind::Ingest, new.max_attempts).await?;
        return Ok((doc, true));
    }

    let existing: Document = sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from documents where tenant_id = $1 and sha256 = $2 for update"
    ))
    .bind(new.tenant_id)
    .bind(new.sha256)
    .fetch_one(&mut *conn)
    .await?;
    if existing.status == DocumentStatus::Failed && !is_poisoned(existing.error_code.as_deref()) {
        // uploading the same file again is asking to try again; a file that broke a hard limit
        // stays failed, with its error
        let requeued: Document = sqlx::query_as(concat!(
            "update documents set status = 'queued', error_code = null, error_message = null, pages_done = 0,
                 updated_at = now()
             where tenant_id = $1 and id = $2 returning ",
            columns!()
        ))
        .bind(existing.tenant_id)
        .bind(existing.id)
        .fetch_one(&mut *conn)
        .await?;
        queue::enqueue(conn, requeued.tenant_id, requeued.id, queue::JobKind::Ingest, new.max_attempts).await?;
        return Ok((requeued, false));
    }
    Ok((existing, false))
}

/// Errors that the same bytes will meet again: the file went over a hard limit of its reader (memory,
/// time, text) or crashed it. Such a document is not retried, and uploading it again answers with
/// the failed document.
pub fn is_poisoned(error_code: Option<&str>) -> bool {
    error_code.is_some_and(|code| POISONED.contains(&code))
}

const POISONED: [&str; 2] = ["pdf_too_complex", "extraction_timeout"];

/// The tenant's document made of these bytes, if any.
pub async fn find_by_sha256(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    sha256: &[u8],
) -> Result<Option<Document>, sqlx::Error> {
    sqlx::query_as(concat!("select ", columns!(), " from documents where tenant_id = $1 and sha256 = $2"))
        .bind(tenant_id)
        .bind(sha256)
        .fetch_optional(db)
        .await
}

pub async fn get(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, sqlx::Error> {
    sqlx::query_as(concat!("select ", columns!(), " from documents where tenant_id = $1 and id = $2"))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first; `after` continues a listing after that document.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Document>, sqlx::Error> {
    sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from documents where tenant_id = $1 and ($2::uuid is null or id < $2) order by id desc limit $3"
    ))
    .bind(tenant_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Deletes a document; its bytes, chunks and second vectors go with it (by cascade).
///
/// Its job goes first, in a statement of its own: a worker ending a job locks the job's row, then
/// the document's (the chunks it inserts, the status it sets), and a delete locking the document
/// before the cascade reaches the job would wait on the worker while the worker waits on it — a
/// deadlock, which Postgres ends by failing one of the two. Taking the job first, the delete waits
/// for the worker's transaction to end and then removes whatever it stored.
pub async fn delete(conn: &mut PgConnection, tenant_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query("delete from ingestion_jobs where tenant_id = $1 and document_id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("delete from documents where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Brings every document (of one tenant, or all) in line with the configured models, in the
/// background; returns how many documents were queued.
/// - Chunks not embedded with `model`, or a failure not for good ([`is_poisoned`]): the document
///   is queued for ingestion again (the worker replaces its chunks, then fills its second vectors).
/// - Chunks of `model` whose second vectors (migration 0019) are not of `cross`: a
///   `cross_vectors` job embeds the stored chunks again with `cross` (no extraction), the document
///   staying `ready`.
/// - With no cross-language model, second vectors left from one are removed at once.
pub async fn requeue_for_model(
    db: &sqlx::PgPool,
    model: &str,
    cross: Option<&str>,
    tenant: Option<Uuid>,
    max_attempts: i32,
) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    // every tenant's documents when no tenant is named: an operator's command, not a request
    let ingest: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "update documents set status = 'queued', updated_at = now()
          where ($2::uuid is null or tenant_id = $2)
            and status in ('ready', 'failed')
            and (embedding_model is distinct from $1 or status = 'failed')
            and not (status = 'failed' and error_code = any($3))
          returning tenant_id, id",
    )
    .bind(model)
    .bind(tenant)
    .bind(&POISONED[..])
    .fetch_all(&mut *tx)
    .await?;
    for (tenant_id, id) in &ingest {
        queue::enqueue(&mut tx, *tenant_id, *id, queue::JobKind::Ingest, max_attempts).await?;
    }
    let Some(cross) = cross else {
        sqlx::query(
            "with dropped as (
                 update documents set cross_model = null
                  where ($1::uuid is null or tenant_id = $1) and cross_model is not null
                  returning tenant_id, id
             )
             delete from chunk_vectors v using dropped d where v.tenant_id = d.tenant_id and v.document_id = d.id",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(ingest.len() as u64);
    };
    let fill: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "select tenant_id, id from documents
          where ($2::uuid is null or tenant_id = $2)
            and status = 'ready' and embedding_model = $1 and cross_model is distinct from $3
          for update",
    )
    .bind(model)
    .bind(tenant)
    .bind(cross)
    .fetch_all(&mut *tx)
    .await?;
    for (tenant_id, id) in &fill {
        queue::enqueue(&mut tx, *tenant_id, *id, queue::JobKind::CrossVectors, max_attempts).await?;
    }
    tx.commit().await?;
    Ok((ingest.len() + fill.len()) as u64)
}
