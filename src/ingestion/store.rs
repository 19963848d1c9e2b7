//! Writing chunks: `UNNEST` batches (one statement per 500 rows), the fastest path short of
//! binary COPY that still runs inside the caller's transaction.

use pgvector::Vector;
use sqlx::PgConnection;
use uuid::Uuid;

use super::chunk::Chunk;

const BATCH: usize = 500;

pub async fn insert_chunks(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    model: &str,
    chunks: &[Chunk],
    vectors: &[Vec<f32>],
) -> Result<(), sqlx::Error> {
    assert_eq!(chunks.len(), vectors.len(), "one vector per chunk");
    for (batch_chunks, batch_vectors) in chunks.chunks(BATCH).zip(vectors.chunks(BATCH)) {
        sqlx::query(
            "insert into chunks (tenant_id, document_id, ordinal, page_from, page_to, text, token_count, embedding, embedding_model)
             select $1, $2, u.o, u.pf, u.pt, u.t, u.tc, u.e, $3
               from unnest($4::int[], $5::int[], $6::int[], $7::text[], $8::int[], $9::vector[]) as u(o, pf, pt, t, tc, e)",
        )
        .bind(tenant_id)
        .bind(document_id)
        .bind(model)
        .bind(batch_chunks.iter().map(|c| c.ordinal).collect::<Vec<_>>())
        .bind(batch_chunks.iter().map(|c| c.page_from).collect::<Vec<_>>())
        .bind(batch_chunks.iter().map(|c| c.page_to).collect::<Vec<_>>())
        .bind(batch_chunks.iter().map(|c| c.text.as_str()).collect::<Vec<_>>())
        .bind(batch_chunks.iter().map(|c| c.token_count).collect::<Vec<_>>())
        .bind(batch_vectors.iter().map(|v| Vector::from(v.clone())).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
