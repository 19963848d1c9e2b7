//! The status transitions the ingestion worker makes, each on one document of one tenant.
//! Functions take any executor, so the worker passes its transaction where a transition must
//! commit together with the job's end (`ready`, `failed`).

use sqlx::PgExecutor;
use uuid::Uuid;

/// A document's stored bytes and who uploaded them.
pub struct Upload {
    pub data: Vec<u8>,
    pub by: Uploader,
}

/// Who uploaded a document: the user or the API key charged for its embedding.
#[derive(Clone, Copy, Debug)]
pub struct Uploader {
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
}

/// `processing`, from the first page; false when the document is gone.
pub async fn start_processing(db: impl PgExecutor<'_>, tenant: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update documents set status = 'processing', stage = 'extracting', pages_done = 0, chunks_total = 0,
                chunks_embedded = 0, updated_at = now()
          where tenant_id = $1 and id = $2",
    )
    .bind(tenant)
    .bind(id)
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The uploaded bytes, with their uploader.
pub async fn upload(db: impl PgExecutor<'_>, tenant: Uuid, id: Uuid) -> Result<Option<Upload>, sqlx::Error> {
    let row: Option<(Vec<u8>, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "select f.data, d.uploaded_by, d.uploaded_by_key
           from document_files f join documents d on d.tenant_id = f.tenant_id and d.id = f.document_id
          where f.tenant_id = $1 and f.document_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(data, user, api_key)| Upload { data, by: Uploader { user, api_key } }))
}

/// Who uploaded a document (`None`: the document is gone).
pub async fn uploader(db: impl PgExecutor<'_>, tenant: Uuid, id: Uuid) -> Result<Option<Uploader>, sqlx::Error> {
    let row: Option<(Option<Uuid>, Option<Uuid>)> =
        sqlx::query_as("select uploaded_by, uploaded_by_key from documents where tenant_id = $1 and id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(user, api_key)| Uploader { user, api_key }))
}

/// The length in bytes of a document's uploaded file, if it has one (read from the value's
/// header: the bytes stay where they are).
pub async fn file_size(db: impl PgExecutor<'_>, tenant: Uuid, id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("select length(data)::int8 from document_files where tenant_id = $1 and document_id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// `len` bytes of a document's uploaded file from `offset` (fewer at its end; `None` when the file
/// is gone). The file is stored uncompressed out of line (migration 0002), so Postgres reads only
/// the slice's part of it.
pub async fn file_slice(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    id: Uuid,
    offset: i64,
    len: i64,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "select substring(data from $3::int4 + 1 for $4::int4) from document_files where tenant_id = $1 and document_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(offset)
    .bind(len)
    .fetch_optional(db)
    .await
}

/// How far a `processing` document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub stage: &'static str,
    pub pages_done: i32,
    pub chunks_total: i32,
    pub chunks_embedded: i32,
}

/// Where a `processing` document is now.
pub async fn set_progress(db: impl PgExecutor<'_>, tenant: Uuid, id: Uuid, step: Step) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update documents set stage = $3, pages_done = $4, chunks_total = $5, chunks_embedded = $6, updated_at = now()
          where tenant_id = $1 and id = $2 and status = 'processing'",
    )
    .bind(tenant)
    .bind(id)
    .bind(step.stage)
    .bind(step.pages_done)
    .bind(step.chunks_total)
    .bind(step.chunks_embedded)
    .execute(db)
    .await?;
    Ok(())
}

/// `ready` with its chunks embedded by `model`; a former error is cleared.
pub async fn mark_ready(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    id: Uuid,
    chunk_count: i32,
    model: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update documents set status = 'ready', chunk_count = $3, embedding_model = $4, pages_done = pages_total,
                chunks_total = $3, chunks_embedded = $3,
                error_code = null, error_message = null, updated_at = now()
          where tenant_id = $1 and id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(chunk_count)
    .bind(model)
    .execute(db)
    .await?;
    Ok(())
}

/// The script of a ready document's text and the model of its chunks' second vectors, if any
/// (migration 0019).
pub async fn set_scripts(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    id: Uuid,
    script: &str,
    cross_model: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("update documents set script = $3, cross_model = $4 where tenant_id = $1 and id = $2")
        .bind(tenant)
        .bind(id)
        .bind(script)
        .bind(cross_model)
        .execute(db)
        .await?;
    Ok(())
}

/// `failed`, with the error a client is shown.
pub async fn mark_failed(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update documents set status = 'failed', error_code = $3, error_message = $4, updated_at = now()
          where tenant_id = $1 and id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(code)
    .bind(message)
    .execute(db)
    .await?;
    Ok(())
}

/// Back to `queued` (its job runs again later). `reason`, when given, is shown as the document's
/// error meanwhile (a quota it waits for); without one the error fields stay as they are.
pub async fn requeue(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    id: Uuid,
    reason: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update documents set status = 'queued', error_code = coalesce($3, error_code),
                error_message = coalesce($4, error_message), updated_at = now()
          where tenant_id = $1 and id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(reason.map(|r| r.0))
    .bind(reason.map(|r| r.1))
    .execute(db)
    .await?;
    Ok(())
}
