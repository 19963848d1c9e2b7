//! The ingestion queue, in Postgres. A job is claimed with `FOR UPDATE SKIP LOCKED` and leased
//! for a while; its worker renews the lease as it goes. A job whose lease ran out (its worker
//! died) is claimed again. Attempts are counted at claim time, so a job that kills its worker
//! every time still runs out of attempts.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub document_id: Uuid,
    pub tenant_id: Uuid,
    pub attempts: i32,
    pub max_attempts: i32,
    #[sqlx(try_from = "String")]
    pub kind: JobKind,
}

/// What a job does to its document (migration 0020).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// extract, chunk, embed with the configured model, store: the document becomes `ready`
    Ingest,
    /// embed a `ready` document's stored chunks with the cross-language model (`chunk_vectors`);
    /// the document stays `ready` throughout
    CrossVectors,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Ingest => "ingest",
            JobKind::CrossVectors => "cross_vectors",
        }
    }
}

impl TryFrom<String> for JobKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "ingest" => Ok(JobKind::Ingest),
            "cross_vectors" => Ok(JobKind::CrossVectors),
            _ => Err(format!("unknown job kind `{s}`")),
        }
    }
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

/// Queues a document's job of `kind` (again: a job that exists starts over with no attempts used;
/// an ingestion already queued stays one, since it is followed by the second vectors anyway) and
/// wakes idle workers of every process at once (they poll anyway).
pub async fn enqueue(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    kind: JobKind,
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into ingestion_jobs (document_id, tenant_id, max_attempts, kind) values ($1, $2, $3, $4)
         on conflict (document_id) do update
             set attempts = 0, run_at = now(), locked_by = null, locked_until = null, last_error = null,
                 kind = case when ingestion_jobs.kind = 'ingest' then 'ingest' else excluded.kind end",
    )
    .bind(document_id)
    .bind(tenant_id)
    .bind(max_attempts)
    .bind(kind.as_str())
    .execute(&mut *conn)
    .await?;
    notify(conn).await
}

async fn notify(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify('docuchat_ingest', '')").execute(conn).await.map(|_| ())
}

/// Ends `worker`'s job by turning it into a job of `next` for the same document, due now with no
/// attempts used; false when the job was no longer this worker's.
pub async fn follow_with(conn: &mut PgConnection, job: i64, worker: &str, next: JobKind) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "update ingestion_jobs
            set kind = $3, attempts = 0, run_at = now(), locked_by = null, locked_until = null, last_error = null
          where id = $1 and locked_by = $2",
    )
    .bind(job)
    .bind(worker)
    .bind(next.as_str())
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    notify(conn).await?;
    Ok(true)
}

/// Claims the next due job (or one whose lease expired) for `worker`, of any tenant: through the
/// security-definer function `docuchat_claim_job` (migration 0011), since the service's own role
/// sees one tenant's rows at a time.
pub async fn claim(db: &PgPool, worker: &str, lease: Duration) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(
        "select job_id as id, job_document as document_id, job_tenant as tenant_id, job_attempts as attempts,
                job_max_attempts as max_attempts, job_kind as kind
           from docuchat_claim_job($1, $2::interval)",
    )
    .bind(worker)
    .bind(interval(lease))
    .fetch_optional(db)
    .await
}

/// Extends the lease; false when the job is no longer this worker's (deleted, or taken over).
pub async fn renew(db: impl PgExecutor<'_>, job: i64, worker: &str, lease: Duration) -> Result<bool, sqlx::Error> {
    let r =
        sqlx::query("update ingestion_jobs set locked_until = now() + $3::interval where id = $1 and locked_by = $2")
            .bind(job)
            .bind(worker)
            .bind(interval(lease))
            .execute(db)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes a finished job; false when it was no longer this worker's.
pub async fn finish(db: impl PgExecutor<'_>, job: i64, worker: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("delete from ingestion_jobs where id = $1 and locked_by = $2")
        .bind(job)
        .bind(worker)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Releases the job to run again after `delay`, keeping the error.
pub async fn retry_later(
    db: impl PgExecutor<'_>,
    job: i64,
    worker: &str,
    delay: Duration,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update ingestion_jobs
            set locked_by = null, locked_until = null, run_at = now() + $3::interval, last_error = $4
          where id = $1 and locked_by = $2",
    )
    .bind(job)
    .bind(worker)
    .bind(interval(delay))
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// Releases the job to run again after `delay` without using up an attempt (it waits for
/// something that is not the document's fault, such as a quota's reset).
pub async fn postpone(
    db: impl PgExecutor<'_>,
    job: i64,
    worker: &str,
    delay: Duration,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update ingestion_jobs
            set locked_by = null, locked_until = null, run_at = now() + $3::interval, last_error = $4,
                attempts = greatest(attempts - 1, 0)
          where id = $1 and locked_by = $2",
    )
    .bind(job)
    .bind(worker)
    .bind(interval(delay))
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

/// The error the job's last attempt ended with.
pub async fn last_error(db: impl PgExecutor<'_>, job: i64) -> Result<Option<String>, sqlx::Error> {
    Ok(sqlx::query_scalar("select last_error from ingestion_jobs where id = $1")
        .bind(job)
        .fetch_optional(db)
        .await?
        .flatten())
}

/// Backoff before the next attempt: 5 s, 10 s, 20 s, … capped at 10 minutes.
pub fn backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 8) as u32 - 1;
    Duration::from_secs((5u64 << exp).min(600))
}

/// Jobs waiting and jobs being worked on, every tenant's (for the metrics).
pub async fn depth(db: impl sqlx::PgExecutor<'_>) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("select queued, running from docuchat_queue_depth()").fetch_one(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(50), Duration::from_secs(600));
    }
}
