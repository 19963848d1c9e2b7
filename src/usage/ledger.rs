//! The usage ledger, `usage_events`: append-only (a trigger refuses updates and deletes), and
//! written only here. Every charge is written in the caller's transaction together with what it
//! pays for, and settles the quota hold that stood for it in the same statement, so a quota never
//! counts a request twice nor loses it.

use sqlx::PgConnection;
use uuid::Uuid;

/// The embedding of a document's chunks, charged to whoever uploaded it (a user or an API key).
pub struct DocumentCharge<'a> {
    pub tenant: Uuid,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub document: Uuid,
    pub model: &'a str,
    pub tokens: i64,
    pub hold: Option<Uuid>,
}

/// Charges a document's embedding (one row, even of zero tokens) and settles its hold.
pub async fn charge_document(conn: &mut PgConnection, c: &DocumentCharge<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with h as (delete from quota_holds where id = $7)
         insert into usage_events (tenant_id, user_id, api_key_id, kind, model, tokens, document_id)
         values ($1, $2, $3, 'embedding', $4, $5, $6)",
    )
    .bind(c.tenant)
    .bind(c.user)
    .bind(c.api_key)
    .bind(c.model)
    .bind(c.tokens)
    .bind(c.document)
    .bind(c.hold)
    .execute(conn)
    .await?;
    Ok(())
}

/// What one chat answer spent: the question's embedding, the prompt and the completion.
pub struct AnswerCharge<'a> {
    pub tenant: Uuid,
    pub user: Uuid,
    pub message: Uuid,
    pub embedding_model: &'a str,
    pub embedding_tokens: i64,
    /// the chat model (`none` when no model was asked)
    pub model: &'a str,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub hold: Option<Uuid>,
}

/// Charges answers in one statement (rows of zero tokens are left out) and settles their holds.
pub async fn charge_answers(conn: &mut PgConnection, charges: &[AnswerCharge<'_>]) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($f:expr) => {
            charges.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "with input as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[],
                                  $7::bigint[], $8::bigint[], $9::uuid[])
                 as t(tenant_id, user_id, message_id, embedding_model, embedding_tokens, model, prompt_tokens,
                      completion_tokens, hold)
         ),
         h as (delete from quota_holds where id in (select hold from input where hold is not null))
         insert into usage_events (tenant_id, user_id, kind, model, tokens, message_id)
         select i.tenant_id, i.user_id, k.kind, k.model, k.tokens, i.message_id
           from input i
          cross join lateral (values ('embedding', i.embedding_model, i.embedding_tokens),
                                     ('prompt', i.model, i.prompt_tokens),
                                     ('completion', i.model, i.completion_tokens))
                as k(kind, model, tokens)
          where k.tokens > 0",
    )
    .bind(column!(|c| c.tenant))
    .bind(column!(|c| c.user))
    .bind(column!(|c| c.message))
    .bind(column!(|c| c.embedding_model))
    .bind(column!(|c| c.embedding_tokens))
    .bind(column!(|c| c.model))
    .bind(column!(|c| c.prompt_tokens))
    .bind(column!(|c| c.completion_tokens))
    .bind(column!(|c| c.hold))
    .execute(conn)
    .await?;
    Ok(())
}
