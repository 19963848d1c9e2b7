//! Saving answers: the message, its session (when new), its ledger rows and the release of its
//! quota hold, written together.
//!
//! Answers that end at about the same time are written in one statement — one transaction, one
//! commit, one run of the ledger's rollup trigger for all of them — by a few writer tasks that
//! each take whatever has queued up while the previous write ran. A lone answer is written at
//! once; under load the batches grow by themselves, with no timer. If a batch fails (a session
//! deleted while its answer ran), its answers are written one by one, so one failure fails only
//! its own answer.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

/// Most answers written in one statement.
const MAX_BATCH: usize = 64;
/// Statements in flight at once.
const WRITERS: usize = 4;

/// One answer to save.
#[derive(Clone, Debug)]
pub struct Record {
    pub message_id: Uuid,
    pub tenant: Uuid,
    pub user: Uuid,
    pub session: Uuid,
    /// the title of a session that this answer starts; `None` for an existing session
    pub title: Option<String>,
    pub question: String,
    pub answer: String,
    pub sources: serde_json::Value,
    pub model: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub status: &'static str,
    pub error_code: Option<&'static str>,
    pub embedding_model: String,
    pub embedding_tokens: i64,
    /// the quota hold that the ledger rows replace
    pub hold: Option<Uuid>,
}

type Job = (Record, oneshot::Sender<Result<(), String>>);

/// The queue to the writer tasks.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
}

impl Recorder {
    /// Starts the writers (on the current Tokio runtime).
    pub fn start(db: PgPool) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(WRITERS));
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch = Vec::with_capacity(MAX_BATCH);
                if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return;
                }
                let db = db.clone();
                tokio::spawn(async move {
                    write(&db, batch).await;
                    drop(slot);
                });
            }
        });
        Recorder { tx }
    }

    /// Saves one answer; returns once it is committed.
    pub async fn save(&self, record: Record) -> anyhow::Result<()> {
        let (done, result) = oneshot::channel();
        self.tx.send((record, done)).await.map_err(|_| anyhow::anyhow!("the message writer has stopped"))?;
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("saving the message: {e}")),
            Err(_) => Err(anyhow::anyhow!("the message writer has stopped")),
        }
    }
}

async fn write(db: &PgPool, batch: Vec<Job>) {
    let records: Vec<&Record> = batch.iter().map(|(r, _)| r).collect();
    match insert(db, &records).await {
        Ok(()) => {
            for (_, done) in batch {
                let _ = done.send(Ok(()));
            }
        }
        Err(e) if batch.len() == 1 => {
            let (_, done) = batch.into_iter().next().expect("one");
            let _ = done.send(Err(e.to_string()));
        }
        Err(_) => {
            // one at a time: only the answers that cannot be written fail
            for (record, done) in batch {
                let _ = done.send(insert(db, &[&record]).await.map_err(|e| e.to_string()));
            }
        }
    }
}

/// Writes answers in one statement: new sessions, the messages, their ledger rows (the
/// embedding of the question, the prompt and the completion; rows of zero tokens are left
/// out), the release of their holds, and the time of the sessions they continue.
pub async fn insert(db: &PgPool, records: &[&Record]) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($f:expr) => {
            records.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "with input as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                                  $7::text[], $8::jsonb[], $9::text[], $10::int[], $11::int[], $12::text[],
                                  $13::text[], $14::text[], $15::bigint[], $16::uuid[])
                 as t(id, tenant_id, user_id, session_id, title, question, answer, sources, model,
                      prompt_tokens, completion_tokens, status, error_code, embedding_model,
                      embedding_tokens, hold)
         ),
         s as (
             insert into chat_sessions (id, tenant_id, user_id, title)
             select session_id, tenant_id, user_id, title from input where title is not null
             on conflict (id) do nothing
         ),
         m as (
             insert into messages (id, tenant_id, session_id, question, answer, sources, model, prompt_tokens,
                                   completion_tokens, status, error_code)
             select id, tenant_id, session_id, question, answer, sources, model, prompt_tokens,
                    completion_tokens, status, error_code
               from input
         ),
         u as (
             insert into usage_events (tenant_id, user_id, kind, model, tokens, message_id)
             select i.tenant_id, i.user_id, k.kind, k.model, k.tokens, i.id
               from input i
              cross join lateral (values ('embedding', i.embedding_model, i.embedding_tokens),
                                         ('prompt', i.model, i.prompt_tokens::bigint),
                                         ('completion', i.model, i.completion_tokens::bigint))
                    as k(kind, model, tokens)
              where k.tokens > 0
         ),
         h as (delete from quota_holds where id in (select hold from input where hold is not null))
         update chat_sessions c set updated_at = now()
           from (select distinct tenant_id, session_id from input where title is null) i
          where c.tenant_id = i.tenant_id and c.id = i.session_id",
    )
    .bind(column!(|r| r.message_id))
    .bind(column!(|r| r.tenant))
    .bind(column!(|r| r.user))
    .bind(column!(|r| r.session))
    .bind(column!(|r| r.title.clone()))
    .bind(column!(|r| r.question.clone()))
    .bind(column!(|r| r.answer.clone()))
    .bind(column!(|r| r.sources.clone()))
    .bind(column!(|r| r.model.clone()))
    .bind(column!(|r| r.prompt_tokens))
    .bind(column!(|r| r.completion_tokens))
    .bind(column!(|r| r.status))
    .bind(column!(|r| r.error_code))
    .bind(column!(|r| r.embedding_model.clone()))
    .bind(column!(|r| r.embedding_tokens))
    .bind(column!(|r| r.hold))
    .execute(db)
    .await?;
    Ok(())
}
