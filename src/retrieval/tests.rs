//! Retrieval: the text query and snippets, and the hybrid statement against a real database (its
//! fusion, its similarity floor, its tenant and status filters).

use sqlx::PgPool;
use uuid::Uuid;

use super::{Params, Space, literal, search, snippet, text_query};
use crate::{
    auth::email::Email,
    ingestion::{chunk::Chunk, store::insert_chunks},
    tenants,
};

#[test]
fn stop_words_are_left_out_of_the_text_query() {
    assert_eq!(text_query("What are the standard packages supplied with R?"), "standard packages supplied R");
    assert_eq!(text_query("مدل‌های زبانی در این سند چیست؟"), "مدل‌های زبانی سند");
    // nothing but stop words: keep them rather than search for nothing
    assert_eq!(text_query("What is it?"), "What is it");
}

#[test]
fn snippets_cut_at_words() {
    assert_eq!(snippet("short  text\nhere", 50), "short text here");
    let s = snippet(&"word ".repeat(100), 23);
    assert_eq!(s, "word word word word…");
}

#[test]
fn literals_are_quoted() {
    assert_eq!(literal("it's"), "'it''s'");
}

/// A unit vector at `degrees` from the x axis, in the x-y plane (3 dimensions): its cosine
/// similarity to the x axis is cos(degrees).
fn at_angle(degrees: f32) -> Vec<f32> {
    let r = degrees.to_radians();
    vec![r.cos(), r.sin(), 0.0]
}

#[sqlx::test]
async fn hybrid_search_fuses_both_lists_in_the_database(db: PgPool) {
    let email = Email::parse("boss@acme.example").unwrap();
    let tenant = tenants::create(&db, "Acme", "acme", &email).await.unwrap().id;
    let document = |status: &'static str| {
        let id = Uuid::now_v7();
        let db = db.clone();
        async move {
            sqlx::query("insert into documents (id, tenant_id, filename, sha256, bytes, pages_total, status) values ($1, $2, $3, $4, 1, 1, $5)")
                .bind(id)
                .bind(tenant)
                .bind(format!("{status}.pdf"))
                .bind(id.as_bytes().repeat(2))
                .bind(status)
                .execute(&db)
                .await
                .unwrap();
            id
        }
    };
    let (ready, processing) = (document("ready").await, document("processing").await);
    let chunk = |ordinal: i32, text: &str| Chunk {
        ordinal,
        page_from: ordinal + 1,
        page_to: ordinal + 1,
        text: text.to_owned(),
        token_count: 3,
    };
    // a: nearest by vector only; b: near, and the only full-text match that passes; c: farther;
    // d: a full-text match under the similarity floor (longer, so ranked under b); e: nearest of
    // all but not ready
    let chunks = [
        chunk(0, "alpha text"),
        chunk(1, "the zebra text"),
        chunk(2, "gamma text"),
        chunk(3, "a zebra far away in the long grass of another land"),
    ];
    let vectors = [at_angle(5.0), at_angle(20.0), at_angle(40.0), at_angle(85.0)];
    // chunks are written in a transaction (the worker's)
    let mut tx = db.begin().await.unwrap();
    insert_chunks(&mut tx, tenant, ready, "t", &chunks, &vectors).await.unwrap();
    insert_chunks(&mut tx, tenant, processing, "t", &[chunk(0, "zebra everywhere")], &[at_angle(1.0)]).await.unwrap();
    tx.commit().await.unwrap();

    let params = Params { k: 3, candidates: 30, min_similarity: 0.25, vector_weight: 1.0, text_weight: 0.5 };
    let space = Space { model: "t", dims: 3 };
    // searches run in a transaction of their tenant (the full-text half reads its tenant from it)
    let mut tx = crate::db::for_tenant(&db, tenant).await.unwrap();
    let found = search(&mut *tx, tenant, space, &at_angle(0.0), "where is the zebra?", &params).await.unwrap();
    drop(tx);
    let texts: Vec<&str> = found.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["the zebra text", "alpha text", "gamma text"]);
    // reciprocal rank fusion: b is second by vector (1/62) and first by text (0.5/61)
    let expected = [1.0 / 62.0 + 0.5 / 61.0, 1.0 / 61.0, 1.0 / 63.0];
    for (s, e) in found.iter().zip(expected) {
        assert!((s.score - e).abs() < 1e-6, "{} vs {e}", s.score);
        assert!(s.similarity >= 0.25);
        assert_eq!(s.document_id, ready);
        assert!(!s.snippet.is_empty());
    }
    assert!((found[1].similarity - 5f32.to_radians().cos()).abs() < 1e-5);
    assert_eq!(found[0].page, 2);
    // another tenant's search sees none of it
    let other = tenants::create(&db, "Other", "other", &Email::parse("boss@other.example").unwrap()).await.unwrap().id;
    let mut tx = crate::db::for_tenant(&db, other).await.unwrap();
    assert!(search(&mut *tx, other, space, &at_angle(0.0), "zebra", &params).await.unwrap().is_empty());
}
