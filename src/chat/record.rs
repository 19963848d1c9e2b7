//! Saving answers: the message, its session (when new), its ledger rows and the release of its
//! quota hold, written together.
//!
//! Answers that end at about the same time are written together — one transaction, one commit,
//! one run of the ledger's rollup trigger for all of them — by a few writer tasks that
//! each take whatever has queued up while the previous write ran. A lone answer is written at
//! once; under load the batches grow by themselves, with no timer. If a batch fails (a session
//! deleted while its answer ran), its answers are written one by one, so one failure fails only
//! its own answer — and an answer that cannot be kept is charged all the same: its ledger rows are
//! written on their own (pointing at a message that does not exist), since what it cost was spent.

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

/// What became of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// the message, its ledger rows and the settling of its hold
    Message,
    /// only the ledger rows (and the hold settled): the message could not be kept — its session,
    /// or its user, was deleted while it was answered
    ChargedOnly,
}

type Job = (Record, oneshot::Sender<Result<Saved, String>>);

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

    /// Saves one answer; returns once it is committed. An error means that not even its charge
    /// could be written (the database is out of reach).
    pub async fn save(&self, record: Record) -> anyhow::Result<Saved> {
        let (done, result) = oneshot::channel();
        self.tx.send((record, done)).await.map_err(|_| anyhow::anyhow!("the message writer has stopped"))?;
        match result.await {
            Ok(Ok(saved)) => Ok(saved),
            Ok(Err(e)) => Err(anyhow::anyhow!("saving the message: {e}")),
            Err(_) => Err(anyhow::anyhow!("the message writer has stopped")),
        }
    }
}

/// The tokens of answers written to the ledger, for the metrics.
fn count_metered(record: &Record) {
    crate::metrics::metered("embedding", record.embedding_tokens);
    crate::metrics::metered("prompt", i64::from(record.prompt_tokens));
    crate::metrics::metered("completion", i64::from(record.completion_tokens));
}

async fn write(db: &PgPool, batch: Vec<Job>) {
    let records: Vec<&Record> = batch.iter().map(|(r, _)| r).collect();
    if insert(db, &records).await.is_ok() {
        for (record, done) in batch {
            count_metered(&record);
            let _ = done.send(Ok(Saved::Message));
        }
        return;
    }
    // one at a time: only the answers that cannot be written fail, and they are charged anyway
    for (record, done) in batch {
        let saved = match insert(db, &[&record]).await {
            Ok(()) => {
                count_metered(&record);
                Ok(Saved::Message)
            }
            Err(kept) => match charge(db, &[&record]).await {
                Ok(()) => {
                    count_metered(&record);
                    tracing::info!(message_id = %record.message_id, error = %kept, "an answer could not be kept; it is charged");
                    Ok(Saved::ChargedOnly)
                }
                Err(e) => {
                    tracing::error!(message_id = %record.message_id, error = %e, "an answer could not be charged");
                    Err(e.to_string())
                }
            },
        };
        let _ = done.send(saved);
    }
}

fn charges<'a>(records: &[&'a Record]) -> Vec<AnswerCharge<'a>> {
    records
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
        .collect()
}

/// Writes only the answers' ledger rows (settling their holds): for answers whose messages cannot
/// be kept.
pub async fn charge(db: &PgPool, records: &[&Record]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    for group in by_tenant(records) {
        crate::db::switch_tenant(&mut tx, group[0].tenant).await?;
        ledger::charge_answers(&mut tx, &charges(&group)).await?;
    }
    tx.commit().await
}

/// The records in groups of one tenant each: each group is written in that tenant's context
/// (row-level security), all of them in one transaction.
fn by_tenant<'a>(records: &[&'a Record]) -> Vec<Vec<&'a Record>> {
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|g| g[0].tenant == r.tenant) {
            Some(group) => group.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// Writes answers in one transaction of two statements: new sessions, the messages and the time
/// of the sessions they continue; then their ledger rows (the embedding of the question, the
/// prompt and the completion), which settle their holds.
pub async fn insert(db: &PgPool, records: &[&Record]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    for group in by_tenant(records) {
        crate::db::switch_tenant(&mut tx, group[0].tenant).await?;
        super::store::insert_messages(&mut tx, &group).await?;
        ledger::charge_answers(&mut tx, &charges(&group)).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sqlx::PgPool;
    use uuid::Uuid;

    use super::{Record, Recorder, Saved, insert};
    use crate::{
        auth::{email::Email, jwt::Role, users},
        tenants,
    };

    fn record(tenant: Uuid, user: Uuid, session: Uuid, title: Option<&str>, hold: Option<Uuid>, n: i32) -> Record {
        Record {
            message_id: Uuid::now_v7(),
            tenant,
            user,
            session,
            title: title.map(str::to_owned),
            question: format!("question {n} «چرا؟» with 'quotes' and \\ backslash"),
            answer: format!("answer {n}"),
            sources: json!([{ "n": n }]),
            model: "m".to_owned(),
            prompt_tokens: 100 + n,
            // a cancelled answer before any token: no completion row
            completion_tokens: if n % 3 == 0 { 0 } else { 10 + n },
            status: if n % 3 == 0 { "cancelled" } else { "complete" },
            error_code: None,
            embedding_model: "e".to_owned(),
            embedding_tokens: 5,
            hold,
        }
    }

    #[sqlx::test]
    async fn answers_written_together_are_each_saved_whole_and_one_that_cannot_be_kept_is_still_charged(db: PgPool) {
        let email = Email::parse("boss@acme.example").unwrap();
        let tenant = tenants::create(&db, "Acme", "acme", &email).await.unwrap();
        let user = users::upsert_on_login(&db, tenant.id, &email, Role::Admin).await.unwrap();
        let (tenant, user) = (tenant.id, user.id);
        let hold = |id: Uuid| {
            sqlx::query("insert into quota_holds (id, tenant_id, user_id, tokens, expires_at) values ($1, $2, $3, 1000, now() + interval '1 hour')")
                .bind(id)
                .bind(tenant)
                .bind(user)
                .execute(&db)
        };
        // an existing session, continued by two answers; three answers starting sessions of their own
        let existing = Uuid::now_v7();
        sqlx::query("insert into chat_sessions (id, tenant_id, user_id, title, updated_at) values ($1, $2, $3, 'old', now() - interval '1 day')")
            .bind(existing)
            .bind(tenant)
            .bind(user)
            .execute(&db)
            .await
            .unwrap();
        let holds: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for h in &holds {
            hold(*h).await.unwrap();
        }
        let records: Vec<Record> = (0..5)
            .map(|n| {
                let (session, title) = if n < 2 { (existing, None) } else { (Uuid::now_v7(), Some("new")) };
                record(tenant, user, session, title, Some(holds[n as usize]), n)
            })
            .collect();
        insert(&db, &records.iter().collect::<Vec<_>>()).await.unwrap();

        for r in &records {
            let (question, answer, status, sources): (String, String, String, Value) =
                sqlx::query_as("select question, answer, status, sources from messages where id = $1")
                    .bind(r.message_id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            assert_eq!(
                (question.as_str(), answer.as_str(), status.as_str()),
                (r.question.as_str(), r.answer.as_str(), r.status)
            );
            assert_eq!(sources, r.sources);
            let mut rows: Vec<(String, String, i64)> =
                sqlx::query_as("select kind, model, tokens from usage_events where message_id = $1 order by kind")
                    .bind(r.message_id)
                    .fetch_all(&db)
                    .await
                    .unwrap();
            rows.sort();
            let mut expected = vec![
                ("embedding".to_owned(), "e".to_owned(), 5),
                ("prompt".to_owned(), "m".to_owned(), r.prompt_tokens as i64),
            ];
            if r.completion_tokens > 0 {
                expected.push(("completion".to_owned(), "m".to_owned(), r.completion_tokens as i64));
            }
            expected.sort();
            assert_eq!(rows, expected);
        }
        let sessions: i64 = sqlx::query_scalar("select count(*) from chat_sessions where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(sessions, 4);
        let fresh: bool =
            sqlx::query_scalar("select updated_at > now() - interval '1 minute' from chat_sessions where id = $1")
                .bind(existing)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(fresh, "a continued session's time moves");
        let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&db).await.unwrap();
        assert_eq!(held, 0, "each answer's hold goes with its ledger rows");

        // an answer whose session is gone (deleted while it ran) cannot be written: in one statement
        // with good answers nothing is written ...
        let good = record(tenant, user, existing, None, None, 10);
        let orphan = record(tenant, user, Uuid::now_v7(), None, None, 11);
        assert!(insert(&db, &[&good, &orphan]).await.is_err());
        let written: i64 = sqlx::query_scalar("select count(*) from messages where id = any($1)")
            .bind(vec![good.message_id, orphan.message_id])
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(written, 0);
        // ... and through the writer, which batches answers that arrive together, only it is not
        // kept — and it is charged all the same, its hold settled
        let recorder = Recorder::start(db.clone());
        let orphan_hold = Uuid::now_v7();
        hold(orphan_hold).await.unwrap();
        let batch: Vec<Record> = (20..40)
            .map(|n| {
                if n == 30 {
                    record(tenant, user, Uuid::now_v7(), None, Some(orphan_hold), n)
                } else {
                    record(tenant, user, existing, None, None, n)
                }
            })
            .collect();
        let results = futures_util::future::join_all(batch.iter().map(|r| recorder.save(r.clone()))).await;
        for (r, result) in batch.iter().zip(&results) {
            let saved: i64 = sqlx::query_scalar("select count(*) from messages where id = $1")
                .bind(r.message_id)
                .fetch_one(&db)
                .await
                .unwrap();
            let charged: i64 =
                sqlx::query_scalar("select coalesce(sum(tokens), 0)::bigint from usage_events where message_id = $1")
                    .bind(r.message_id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            assert_eq!(charged, 5 + i64::from(r.prompt_tokens) + i64::from(r.completion_tokens));
            if r.prompt_tokens == 130 {
                assert_eq!(result.as_ref().unwrap(), &Saved::ChargedOnly);
                assert_eq!(saved, 0);
            } else {
                assert_eq!(result.as_ref().unwrap(), &Saved::Message);
                assert_eq!(saved, 1);
            }
        }
        let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&db).await.unwrap();
        assert_eq!(held, 0, "the hold of the answer that was not kept is settled by its charge");
    }
}
