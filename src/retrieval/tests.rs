//! Retrieval: the text query and snippets, and the hybrid statement against a real database (its
//! fusion, its similarity floor, its tenant and status filters).

use sqlx::PgPool;
use uuid::Uuid;

use super::{Arm, Params, STOP_WORDS, Space, literal, search, search_in, snippet, text_candidates, text_query};
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
fn the_exact_scan_budget_is_in_dimensions_read() {
    assert_eq!(super::exact_scan_max_chunks(384), 2_000);
    assert_eq!(super::exact_scan_max_chunks(1536), 500);
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

/// A document of the tenant with `status`, as an upload leaves it; its id.
async fn insert_document(db: &PgPool, tenant: Uuid, filename: &str, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("insert into documents (id, tenant_id, filename, sha256, bytes, pages_total, status) values ($1, $2, $3, $4, 1, 1, $5)")
        .bind(id)
        .bind(tenant)
        .bind(filename)
        .bind(id.as_bytes().repeat(2))
        .bind(status)
        .execute(db)
        .await
        .unwrap();
    id
}

/// A chunk of three tokens on page `ordinal + 1`.
fn chunk(ordinal: i32, text: &str) -> Chunk {
    Chunk { ordinal, page_from: ordinal + 1, page_to: ordinal + 1, text: text.to_owned(), token_count: 3 }
}

/// A small linear congruential generator: the same numbers every run (the upper 31 bits of each
/// state).
fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    }
}

#[sqlx::test]
async fn hybrid_search_fuses_both_lists_in_the_database(db: PgPool) {
    let email = Email::parse("boss@acme.example").unwrap();
    let tenant = tenants::create(&db, "Acme", "acme", &email).await.unwrap().id;
    let ready = insert_document(&db, tenant, "ready.pdf", "ready").await;
    let failed = insert_document(&db, tenant, "failed.pdf", "failed").await;
    // a: nearest by vector only; b: near, and the only full-text match that passes; c: farther;
    // d: a full-text match under the similarity floor (longer, so ranked under b); e: nearest of
    // all but of a failed document
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
    insert_chunks(&mut tx, tenant, failed, "t", &[chunk(0, "zebra everywhere")], &[at_angle(1.0)]).await.unwrap();
    tx.commit().await.unwrap();

    let params = Params { k: 3, candidates: 30, min_similarity: 0.25, vector_weight: 1.0, text_weight: 0.5 };
    let space = Space { model: "t", dims: 3 };
    // searches run in a transaction of their tenant (the full-text half reads its tenant from it)
    let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
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
    let mut tx = crate::db::for_retrieval(&db, other).await.unwrap();
    assert!(search(&mut *tx, other, space, &at_angle(0.0), "zebra", &params).await.unwrap().is_empty());
}

/// A document queued or processing again (a model switch's re-embedding, a retry) keeps its
/// earlier chunks until the worker replaces them in one transaction: it stays searchable.
#[sqlx::test]
async fn documents_being_re_embedded_are_found_by_their_earlier_chunks(db: PgPool) {
    let email = Email::parse("boss@acme.example").unwrap();
    let tenant = tenants::create(&db, "Acme", "acme", &email).await.unwrap().id;
    let params = Params { k: 3, candidates: 30, min_similarity: 0.25, vector_weight: 1.0, text_weight: 0.5 };
    let space = Space { model: "t", dims: 3 };
    let mut found = Vec::new();
    for status in ["ready", "queued", "processing", "failed"] {
        let id = insert_document(&db, tenant, &format!("{status}.pdf"), status).await;
        let chunk = Chunk { ordinal: 0, page_from: 1, page_to: 1, text: format!("zebra {status}"), token_count: 2 };
        let mut tx = db.begin().await.unwrap();
        insert_chunks(&mut tx, tenant, id, "t", &[chunk], &[at_angle(10.0)]).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
        let sources = search(&mut *tx, tenant, space, &at_angle(10.0), "zebra", &params).await.unwrap();
        found.push((status, sources.iter().any(|s| s.document_id == id)));
        drop(tx);
    }
    assert_eq!(found, [("ready", true), ("queued", true), ("processing", true), ("failed", false)]);
    // the full-text half alone says the same
    let mut tx = crate::db::for_tenant(&db, tenant).await.unwrap();
    assert_eq!(text_candidates(&mut *tx, tenant, "t", "zebra", 10).await.unwrap().len(), 3);
}

#[sqlx::test]
async fn the_stop_words_are_the_migrations(db: PgPool) {
    let in_sql: Vec<String> = sqlx::query_scalar("select unnest(docuchat_stop_words())").fetch_all(&db).await.unwrap();
    assert_eq!(in_sql, STOP_WORDS);
}

/// Exhaustive BM25, computed here from the texts (words split at spaces, as the `simple`
/// configuration splits these): the reference the full-text half must agree with.
fn bm25_top(texts: &[String], query: &[&str], k: usize) -> Vec<(usize, f64)> {
    let docs: Vec<Vec<&str>> = texts.iter().map(|t| t.split(' ').collect()).collect();
    let n = docs.len() as f64;
    let mut scores: Vec<(usize, f64)> = docs
        .iter()
        .enumerate()
        .map(|(i, words)| {
            let dl = words.len() as f64;
            let score = query
                .iter()
                .map(|q| {
                    let df = docs.iter().filter(|d| d.contains(q)).count() as f64;
                    let tf = words.iter().filter(|w| *w == q).count() as f64;
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / 300.0))
                })
                .sum::<f64>();
            (i, score)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scores.truncate(k);
    scores
}

/// A tenant of 3,000 chunks where the question's words are common (one in nine chunks in ten),
/// middling and rare, and where the chunks that rank best are written last — the ones a scan in
/// table order, cut at some number of matches, would never reach. The candidates handed to
/// fusion must be exhaustive BM25's best, in its order.
#[sqlx::test]
async fn full_text_candidates_are_the_best_by_bm25_in_a_big_tenant(db: PgPool) {
    let email = Email::parse("boss@acme.example").unwrap();
    let tenant = tenants::create(&db, "Acme", "acme", &email).await.unwrap().id;
    let doc = insert_document(&db, tenant, "big.pdf", "ready").await;
    // the same tenant every run
    let mut random = lcg(0x2545_f491_4f6c_dd1d);
    let mut next = move |m: u64| random() % m;
    fn put(words: &mut [String], next: &mut impl FnMut(u64) -> u64, word: &str, times: u64) {
        for _ in 0..times {
            let at = next(words.len() as u64) as usize;
            words[at] = word.to_owned();
        }
    }
    let total = 3000;
    let mut texts: Vec<String> = Vec::with_capacity(total);
    for i in 0..total {
        let len = 40 + next(80) as usize;
        let mut words: Vec<String> = (0..len).map(|_| format!("w{}", next(400) * next(400) / 400)).collect();
        if next(10) < 9 {
            let times = 1 + next(4);
            put(&mut words, &mut next, "alpha", times);
        }
        if next(5) == 0 {
            let times = 1 + next(3);
            put(&mut words, &mut next, "beta", times);
        }
        if next(100) == 0 {
            let times = 1 + next(2);
            put(&mut words, &mut next, "gamma", times);
        }
        // the best matches go last
        if i >= total - 40 {
            put(&mut words, &mut next, "gamma", 1);
            let times = 3 + next(3);
            put(&mut words, &mut next, "alpha", times);
            let times = 1 + next(2);
            put(&mut words, &mut next, "beta", times);
        }
        texts.push(words.join(" "));
    }
    let chunks: Vec<Chunk> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Chunk { ordinal: i as i32, page_from: 1, page_to: 1, text: t.clone(), token_count: 100 })
        .collect();
    let vectors = vec![at_angle(10.0); chunks.len()];
    let mut tx = db.begin().await.unwrap();
    insert_chunks(&mut tx, tenant, doc, "t", &chunks, &vectors).await.unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("select id from chunks where document_id = $1 order by ordinal")
        .bind(doc)
        .fetch_all(&db)
        .await
        .unwrap();

    let want = bm25_top(&texts, &["alpha", "beta", "gamma"], 30);
    let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
    let got = text_candidates(&mut *tx, tenant, "t", "alpha, beta or gamma?", 30).await.unwrap();
    let got_ordinals: Vec<usize> = got.iter().map(|(id, _)| ids.iter().position(|i| i == id).unwrap()).collect();
    let want_ordinals: Vec<usize> = want.iter().map(|(i, _)| *i).collect();
    assert_eq!(got_ordinals, want_ordinals);
    for ((_, got), (_, want)) in got.iter().zip(&want) {
        assert!((*got as f64 - want).abs() < 1e-3 * want, "{got} vs {want}");
    }
    // the best are among the last written, and alpha alone matches most of the tenant
    assert!(want_ordinals.iter().filter(|i| **i >= total - 40).count() >= 10, "{want_ordinals:?}");
    let alpha: i64 = sqlx::query_scalar("select df from text_df where tenant_id = $1 and term = 'alpha'")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(alpha > 2500, "{alpha}");

    // deleting the chunks takes their postings and frequencies with them
    drop(tx);
    let mut tx = db.begin().await.unwrap();
    crate::ingestion::store::delete_chunks(&mut tx, tenant, doc).await.unwrap();
    tx.commit().await.unwrap();
    let left: (i64, i64) =
        sqlx::query_as("select (select count(*) from text_postings), (select count(*) from text_df)")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(left, (0, 0));
}

/// The vector list's two arms: a small tenant's vectors are all compared (the HNSW index is not
/// read), a tenant over [`super::exact_scan_max_chunks`] is searched through the index (its
/// vectors are not all compared) — by one plan, made once for every tenant, among many tenants
/// (where a plan made for a tenant of average size would sort). Both find the chunk the question
/// was made from.
#[sqlx::test]
async fn small_tenants_are_scanned_exactly_and_big_ones_through_the_index(db: PgPool) {
    const MODEL: &str = "all-MiniLM-L6-v2";
    let mut bits = lcg(0x9e37_79b9_7f4a_7c15);
    let mut random = move || ((bits() >> 7) as f32 / (1u64 << 24) as f32) - 0.5;
    let mut unit = move || {
        let v: Vec<f32> = (0..384).map(|_| random()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    // a tenant with `n` chunks of random directions in one ready document
    let mut tenant = async |slug: &str, n: usize| {
        let email = Email::parse(&format!("boss@{slug}.example")).unwrap();
        let tenant = tenants::create(&db, slug, slug, &email).await.unwrap().id;
        let doc = insert_document(&db, tenant, "d.pdf", "ready").await;
        let chunks: Vec<Chunk> = (0..n)
            .map(|i| Chunk {
                ordinal: i as i32,
                page_from: i as i32 + 1,
                page_to: i as i32 + 1,
                text: format!("passage {i}"),
                token_count: 2,
            })
            .collect();
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| unit()).collect();
        let mut tx = db.begin().await.unwrap();
        insert_chunks(&mut tx, tenant, doc, MODEL, &chunks, &vectors).await.unwrap();
        tx.commit().await.unwrap();
        (tenant, vectors)
    };
    let (small, small_vectors) = tenant("small", 300).await;
    let (big, big_vectors) = tenant("big", super::exact_scan_max_chunks(384) + 200).await;
    for i in 0..40 {
        tenant(&format!("other{i}"), 10).await;
    }
    sqlx::query("analyze").execute(&db).await.unwrap();

    let space = Space { model: MODEL, dims: 384 };
    let sql = super::hybrid_sql(MODEL, 384);
    for (tenant, vectors, exact) in [(small, &small_vectors, true), (big, &big_vectors, false)] {
        // the question: near one of the tenant's chunks (page 101)
        let question: Vec<f32> = vectors[100].iter().zip(&vectors[7]).map(|(a, b)| a + 0.1 * b).collect();
        let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
        let found = search(&mut *tx, tenant, space, &question, "zzz", &Params::default()).await.unwrap();
        assert_eq!(found.first().map(|s| s.page), Some(101), "exact: {exact}");
        // the plan the service runs (planned generically, as for every tenant), as executed
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            // a name per tenant: the pool may hand both iterations the same connection
            "prepare hybrid_{exact}(vector, uuid, bigint, text, real, real, real, bigint) as {sql}"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "explain (analyze, buffers off, costs off, timing off, summary off) execute hybrid_{exact}('{:?}', '{tenant}', 30, 'zzz', 1, 0.5, 0.25, 6)",
            question
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let plan = plan.join("\n");
        let executed = |needle: &str| {
            let lines: Vec<&str> = plan.lines().collect();
            let at = lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle} in\n{plan}"));
            // a node's own line, or that of the node under a one-time filter (run only if it passed)
            let node = if lines[at].trim_start().starts_with("One-Time Filter") { lines[at + 1] } else { lines[at] };
            !node.contains("never executed")
        };
        let threshold = super::exact_scan_max_chunks(384);
        assert_eq!(executed(&format!("<= {threshold})")), exact, "{plan}");
        assert_eq!(executed(&format!("> {threshold})")), !exact, "{plan}");
        assert_eq!(executed("Index Scan using chunks_embedding_minilm"), !exact, "{plan}");
        // the question's terms are looked up one by one, not read with all the tenant's terms
        assert!(!plan.contains("Bitmap Heap Scan on text_df"), "{plan}");
    }
}

/// A candidate's exact score reads the cut terms it was not found for by its own postings, through
/// the (chunk, term) index: a lookup of a few of one chunk's postings. Read through the (tenant,
/// term, impact, chunk) index instead, each lookup scanned every posting of each cut term (on a
/// 960-chunk tenant of real text, a question with four cut terms took 5.4 ms instead of 1.8).
#[sqlx::test]
async fn cut_terms_are_looked_up_by_chunk(db: PgPool) {
    // a tenant of passages of 40–120 words from a skewed vocabulary, where "alpha" and "beta" are
    // in more chunks than a term's postings read, so their lists are cut and candidates found
    // without one of them are looked up; and twenty small tenants beside it, as in a shared
    // table (with one or two tenants the planner took the right index without the fix, too)
    let mut random = lcg(0x5851_f42d_4c95_7f2d);
    let mut next = move |m: u64| random() % m;
    let mut tenants = Vec::new();
    let others: Vec<(String, i32)> = (0..20).map(|i| (format!("other{i}"), 50)).collect();
    for (slug, n) in std::iter::once(("cut".to_owned(), 1000)).chain(others) {
        let email = Email::parse(&format!("boss@{slug}.example")).unwrap();
        let tenant = tenants::create(&db, &slug, &slug, &email).await.unwrap().id;
        let doc = insert_document(&db, tenant, "d.pdf", "ready").await;
        let chunks: Vec<Chunk> = (0..n)
            .map(|i| {
                let len = 40 + next(80) as usize;
                let mut words: Vec<String> = (0..len).map(|_| format!("w{}", next(400) * next(400) / 400)).collect();
                if next(10) < 6 {
                    words.push("alpha".to_owned());
                }
                if next(10) < 3 {
                    words.push("beta".to_owned());
                }
                if next(50) == 0 {
                    words.push("gamma".to_owned());
                }
                chunk(i, &words.join(" "))
            })
            .collect();
        let vectors: Vec<Vec<f32>> = (0..n).map(|i| at_angle((i % 90) as f32)).collect();
        let mut tx = db.begin().await.unwrap();
        insert_chunks(&mut tx, tenant, doc, "t", &chunks, &vectors).await.unwrap();
        tx.commit().await.unwrap();
        tenants.push(tenant);
    }
    sqlx::query("vacuum analyze").execute(&db).await.unwrap();
    let tenant = tenants[0];
    let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
    let cut: Vec<String> =
        sqlx::query_scalar("select term from text_df where tenant_id = $1 and term <> '' and df > $2 order by term")
            .bind(tenant)
            .bind(super::TERM_POSTINGS as i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert!(["alpha", "beta"].iter().all(|t| cut.iter().any(|c| c == t)), "{cut:?}");
    assert!(!cut.iter().any(|c| c == "gamma"), "{cut:?}");
    let sql = super::hybrid_sql("t", 3);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "prepare hybrid(vector, uuid, bigint, text, real, real, real, bigint) as {sql}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "explain (analyze, buffers off, costs off, timing off, summary off) execute hybrid('{:?}', '{tenant}', 30, 'alpha beta gamma', 1, 1, 0.25, 6)",
        at_angle(3.0)
    )))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let lines: Vec<&str> = plan.iter().map(String::as_str).collect();
    let plan = plan.join("\n");
    // the scans that look a candidate's postings up (their condition names the candidate's chunk)
    let lookups: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[1].contains("Index Cond") && w[1].contains("chunk_id = p.chunk_id"))
        .map(|w| w[0])
        .collect();
    assert!(!lookups.is_empty(), "{plan}");
    for node in lookups {
        assert!(node.contains("using text_postings_chunk on text_postings"), "{plan}");
        assert!(!node.contains("never executed"), "{plan}");
    }
}

/// all-MiniLM-L6-v2 cannot read Persian: a Persian question is searched by its words alone with
/// that model (its vector's nearest chunk is noise, its similarity no floor), and by both lists
/// with a model that reads every script.
#[sqlx::test]
async fn a_question_the_model_cannot_read_is_searched_by_its_words(db: PgPool) {
    let email = Email::parse("boss@acme.example").unwrap();
    let tenant = tenants::create(&db, "Acme", "acme", &email).await.unwrap().id;
    let params = Params { k: 3, candidates: 30, min_similarity: 0.25, vector_weight: 1.0, text_weight: 1.0 };
    // the words' chunk is far from the question's vector (under the floor); the other is nearest
    let chunks = [chunk(0, "مدل زبانی بزرگ متن را می‌خواند"), chunk(1, "جدول و شکل در صفحه")];
    // 384 dimensions, as the model's index wants
    let wide = |mut v: Vec<f32>| {
        v.resize(384, 0.0);
        v
    };
    let vectors = [wide(at_angle(85.0)), wide(at_angle(0.0))];
    for model in [crate::embed::local::MODEL_NAME, "t"] {
        let doc = insert_document(&db, tenant, &format!("{model}.pdf"), "ready").await;
        let mut tx = db.begin().await.unwrap();
        insert_chunks(&mut tx, tenant, doc, model, &chunks, &vectors).await.unwrap();
        tx.commit().await.unwrap();
    }
    let found = |model: &'static str, question: &'static str| {
        let db = db.clone();
        let params = params.clone();
        let question_vector = wide(at_angle(0.0));
        async move {
            let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
            let space = Space { model, dims: 384 };
            let found = search(&mut *tx, tenant, space, &question_vector, question, &params).await.unwrap();
            found.into_iter().map(|s| s.text).collect::<Vec<_>>()
        }
    };
    let persian = "مدل زبانی چیست؟";
    assert_eq!(found(crate::embed::local::MODEL_NAME, persian).await, [chunks[0].text.clone()]);
    // the same without a vector (the chat does not embed a question its model cannot read):
    // nothing is compared, so no similarity either
    let mut tx = crate::db::for_retrieval(&db, tenant).await.unwrap();
    let space = Space { model: crate::embed::local::MODEL_NAME, dims: 384 };
    let by_words = search_in(&mut *tx, tenant, space, Arm::All, None, persian, &params).await.unwrap();
    drop(tx);
    assert_eq!(
        by_words.iter().map(|s| (s.text.as_str(), s.similarity)).collect::<Vec<_>>(),
        [(chunks[0].text.as_str(), 0.0)]
    );
    assert!(by_words[0].score > 0.0);
    // a model that reads it: both lists, and the floor
    assert_eq!(found("t", persian).await, [chunks[1].text.clone()]);
    // an English question with MiniLM: both lists, and the floor, as always
    assert_eq!(found(crate::embed::local::MODEL_NAME, "what is in the table?").await, [chunks[1].text.clone()]);
}
