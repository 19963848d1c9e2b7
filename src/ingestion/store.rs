//! Writing chunks, inside the caller's transaction (the only writer of `chunks`; retrieval reads
//! them): binary `COPY` into a temporary table, moved by one `INSERT … SELECT` (the default: the
//! rows are encoded here, Postgres parses nothing; `COPY` itself cannot write a table under
//! row-level security), or
//! `UNNEST` batches of 500 rows (one statement each). `bench_ingest` measures both.

use pgvector::Vector;
use sqlx::PgConnection;
use uuid::Uuid;

use super::chunk::Chunk;

const BATCH: usize = 500;

/// Deletes a document's chunks (before its new ones are written).
pub async fn delete_chunks(conn: &mut PgConnection, tenant_id: Uuid, document_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from chunks where tenant_id = $1 and document_id = $2")
        .bind(tenant_id)
        .bind(document_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes the chunks of one document with their vectors (binary `COPY`).
pub async fn insert_chunks(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    model: &str,
    chunks: &[Chunk],
    vectors: &[Vec<f32>],
) -> Result<(), sqlx::Error> {
    assert_eq!(chunks.len(), vectors.len(), "one vector per chunk");
    // `COPY` cannot write a table under row-level security: the rows go to a temporary table of
    // this transaction, and one `INSERT … SELECT` moves them, checked by the tenant policy
    sqlx::raw_sql(
        "create temp table if not exists chunk_copy (
             tenant_id uuid, document_id uuid, ordinal int, page_from int, page_to int, text text,
             token_count int, embedding vector, embedding_model text
         ) on commit drop;
         truncate chunk_copy",
    )
    .execute(&mut *conn)
    .await?;
    copy_binary(
        &mut *conn,
        "copy chunk_copy (tenant_id, document_id, ordinal, page_from, page_to, text, token_count, embedding, embedding_model)
         from stdin (format binary)",
        chunks.iter().zip(vectors),
        |buf, (chunk, vector)| encode_row(buf, tenant_id, document_id, model, chunk, vector),
    )
    .await?;
    sqlx::query(
        "insert into chunks (tenant_id, document_id, ordinal, page_from, page_to, text, token_count, embedding, embedding_model)
         select tenant_id, document_id, ordinal, page_from, page_to, text, token_count, embedding, embedding_model
           from chunk_copy",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One row of `COPY … (format binary)`: a field count, then each field's length and bytes.
fn encode_row(buf: &mut Vec<u8>, tenant_id: Uuid, document_id: Uuid, model: &str, chunk: &Chunk, vector: &[f32]) {
    fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        buf.extend_from_slice(bytes);
    }
    buf.extend_from_slice(&9i16.to_be_bytes());
    field(buf, tenant_id.as_bytes());
    field(buf, document_id.as_bytes());
    field(buf, &chunk.ordinal.to_be_bytes());
    field(buf, &chunk.page_from.to_be_bytes());
    field(buf, &chunk.page_to.to_be_bytes());
    field(buf, chunk.text.as_bytes());
    field(buf, &chunk.token_count.to_be_bytes());
    encode_vector(buf, vector);
    field(buf, model.as_bytes());
}

/// Writes a second model's vectors of a document's chunks (matched by their ordinals) into
/// `chunk_vectors` (binary `COPY`, as the chunks).
pub async fn insert_cross_vectors(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    model: &str,
    ordinals: &[i32],
    vectors: &[Vec<f32>],
) -> Result<(), sqlx::Error> {
    assert_eq!(ordinals.len(), vectors.len(), "one vector per chunk");
    sqlx::raw_sql(
        "create temp table if not exists vector_copy (ordinal int, embedding vector) on commit drop;
         truncate vector_copy",
    )
    .execute(&mut *conn)
    .await?;
    copy_binary(
        &mut *conn,
        "copy vector_copy (ordinal, embedding) from stdin (format binary)",
        ordinals.iter().zip(vectors),
        |buf, (ordinal, vector)| {
            buf.extend_from_slice(&2i16.to_be_bytes());
            buf.extend_from_slice(&4i32.to_be_bytes());
            buf.extend_from_slice(&ordinal.to_be_bytes());
            encode_vector(buf, vector);
        },
    )
    .await?;
    sqlx::query(
        "insert into chunk_vectors (id, tenant_id, document_id, embedding_model, embedding)
         select c.id, c.tenant_id, c.document_id, $3, v.embedding
           from vector_copy v join chunks c on c.document_id = $2 and c.ordinal = v.ordinal
          where c.tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(document_id)
    .bind(model)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sends `rows` through `COPY … (format binary)` (`statement`), each encoded by `encode`, in
/// writes of about 1 MiB: the header, the rows, the trailer; aborted on a failed write.
async fn copy_binary<T>(
    conn: &mut PgConnection,
    statement: &str,
    rows: impl Iterator<Item = T>,
    mut encode: impl FnMut(&mut Vec<u8>, T),
) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = Vec::with_capacity(1 << 20);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
    for row in rows {
        encode(&mut buf, row);
        if buf.len() >= 1 << 20
            && let Err(e) = copy.send(std::mem::take(&mut buf)).await
        {
            let _ = copy.abort("a write failed").await;
            return Err(e);
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes()); // trailer
    if let Err(e) = copy.send(buf).await {
        let _ = copy.abort("a write failed").await;
        return Err(e);
    }
    copy.finish().await?;
    Ok(())
}

/// pgvector's binary form as one `COPY` field: its length, the dimensions (int16), an unused
/// int16, then the float4s.
fn encode_vector(buf: &mut Vec<u8>, vector: &[f32]) {
    buf.extend_from_slice(&((4 + 4 * vector.len()) as i32).to_be_bytes());
    buf.extend_from_slice(&(vector.len() as i16).to_be_bytes());
    buf.extend_from_slice(&0i16.to_be_bytes());
    for x in vector {
        buf.extend_from_slice(&x.to_be_bytes());
    }
}

/// The same rows through `UNNEST` batches (kept to compare with in `bench_ingest`).
pub async fn insert_chunks_unnest(
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
