//! Chat sessions and messages: the only module that reads or writes `chat_sessions` and
//! `messages`. A user sees only their own sessions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::record::Record;

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub question: String,
    pub answer: String,
    #[schema(value_type = Vec<crate::retrieval::Source>)]
    pub sources: sqlx::types::Json<Value>,
    pub model: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub status: String,
    pub error_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The session if it is this user's.
pub async fn find_session(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    user: Uuid,
    id: Uuid,
) -> Result<Option<Session>, sqlx::Error> {
    sqlx::query_as(
        "select id, title, created_at, updated_at from chat_sessions where tenant_id = $1 and user_id = $2 and id = $3",
    )
    .bind(tenant)
    .bind(user)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The user's sessions, most recently used first (at most 100).
pub async fn list_sessions(db: impl PgExecutor<'_>, tenant: Uuid, user: Uuid) -> Result<Vec<Session>, sqlx::Error> {
    sqlx::query_as(
        "select id, title, created_at, updated_at from chat_sessions where tenant_id = $1 and user_id = $2
         order by updated_at desc limit 100",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(db)
    .await
}

/// Deletes one of the user's sessions with its messages (by cascade); false when there is none.
pub async fn delete_session(db: impl PgExecutor<'_>, tenant: Uuid, user: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("delete from chat_sessions where tenant_id = $1 and user_id = $2 and id = $3")
        .bind(tenant)
        .bind(user)
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A session's messages, oldest first.
pub async fn messages(db: impl PgExecutor<'_>, tenant: Uuid, session: Uuid) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as(
        "select id, question, answer, sources, model, prompt_tokens, completion_tokens, status, error_code, created_at
           from messages where tenant_id = $1 and session_id = $2 order by created_at, id",
    )
    .bind(tenant)
    .bind(session)
    .fetch_all(db)
    .await
}

/// Completed (question, answer) turns of a session, oldest first.
pub async fn history(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    session: Uuid,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut rows: Vec<(String, String)> = sqlx::query_as(
        "select question, answer from messages where tenant_id = $1 and session_id = $2 and status = 'complete'
         order by created_at desc, id desc limit $3",
    )
    .bind(tenant)
    .bind(session)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// Writes answers in one statement: the sessions they start, the messages, and the time of the
/// sessions they continue.
pub async fn insert_messages(conn: &mut PgConnection, records: &[&Record]) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($f:expr) => {
            records.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "with input as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                                  $7::text[], $8::jsonb[], $9::text[], $10::int[], $11::int[], $12::text[],
                                  $13::text[])
                 as t(id, tenant_id, user_id, session_id, title, question, answer, sources, model,
                      prompt_tokens, completion_tokens, status, error_code)
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
         )
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
    .execute(conn)
    .await?;
    Ok(())
}
