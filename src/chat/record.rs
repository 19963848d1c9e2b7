//! Saving answers: the message, its session (when new), its ledger rows and the release of its
//! quota hold, written together.
//!
//! Answers that end at about the same time are written together — one transaction, one commit,
//! one run of the ledger's rollup trigger for all of them — by a few writer tasks that
//! each take whatever has queued up while the previous write ran. A lone answer is written at
//! once; under load the batches grow by themselves, with no timer. If a batch fails (a session
//! deleted while its answer ran), its answers are written one by one, so one failure fails only
//! its own answer.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::usage::ledger::{self, AnswerCharge};

/// Most answers written together.
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

/// Writes answers in one transaction of two statements: new sessions, the messages and the time
/// of the sessions they continue; then their ledger rows (the embedding of the question, the
/// prompt and the completion), which settle their holds.
pub async fn insert(db: &PgPool, records: &[&Record]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    super::store::insert_messages(&mut tx, records).await?;
    let charges: Vec<AnswerCharge<'_>> = records
        .iter()
        .map(|r| AnswerCharge {
            tenant: r.tenant,
            user: r.user,
            message: r.message_id,
            embedding_model: &r.embedding_model,
            embedding_tokens: r.embedding_tokens,
            model: &r.model,
            prompt_tokens: i64::from(r.prompt_tokens),
            completion_tokens: i64::from(r.completion_tokens),
            hold: r.hold,
        })
        .collect();
    ledger::charge_answers(&mut tx, &charges).await?;
    tx.commit().await
}
