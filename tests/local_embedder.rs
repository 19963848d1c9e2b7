//! The offline embedder (all-MiniLM-L6-v2 in-process) against reference vectors computed once
//! by an independent forward pass of the same weights, and in the ingestion pipeline.

mod common;

use std::path::PathBuf;

use common::{TestApp, cosine};
use docuchat::embed::{
    Embedder,
    bert::{Kernel, best_kernel},
    local::{DIMENSIONS, LocalEmbedder, LocalModel, MAX_WORD_PIECES, MODEL_NAME},
};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

fn model_dir() -> PathBuf {
    let root =
        PathBuf::from(std::env::var("LOCAL_MODEL_DIR").expect("LOCAL_MODEL_DIR (infra/dev.sh up installs the model)"));
    LocalModel::MiniLm.dir_in(&root)
}

fn reference() -> Vec<(String, usize, Vec<f32>)> {
    let path = format!("{}/tests/fixtures/minilm-reference-vectors.json", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["text"].as_str().unwrap().to_owned(),
                i["word_pieces"].as_u64().unwrap() as usize,
                i["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect()
}

fn check_kernel(kernel: Kernel) {
    let embedder = LocalEmbedder::load(&model_dir(), kernel, 2).unwrap();
    let items = reference();
    let texts: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    let out = embedder.embed_blocking(&texts);
    assert_eq!(out.vectors.len(), items.len());
    for ((text, pieces, want), got) in items.iter().zip(&out.vectors) {
        assert_eq!(got.len(), DIMENSIONS);
        assert_eq!(embedder.tokenizer().count(text), *pieces, "word pieces of {text:?}");
        let c = cosine(got, want);
        assert!(c >= 0.999, "{}: cosine {c} for {text:?}", embedder.kernel().name());
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert_eq!(out.tokens as usize, items.iter().map(|i| i.1).sum::<usize>());
    // batching does not change a vector
    let alone = embedder.embed_blocking(&texts[..1]);
    assert!(cosine(&alone.vectors[0], &out.vectors[0]) > 0.99999);
}

#[test]
fn f32_kernel_matches_the_reference_vectors() {
    check_kernel(Kernel::F32);
}

#[test]
fn the_best_kernel_here_matches_the_reference_vectors() {
    eprintln!("best kernel on this machine: {}", best_kernel().name());
    check_kernel(best_kernel());
}

/// Questions are embedded by the question lane, many at once in one pass when
/// they arrive together: each gets its own vector — the one it has alone — and its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_asked_together_get_the_vectors_they_get_alone() {
    let embedder = std::sync::Arc::new(LocalEmbedder::load(&model_dir(), best_kernel(), 2).unwrap());
    let mut questions: Vec<String> = reference().into_iter().map(|i| i.0).collect();
    questions.extend((0..40).map(|i| format!("How do I plot {i} series of data with a legend?")));
    questions.push("چگونه بسته‌ها را نصب کنم؟".to_owned());
    let alone: Vec<Vec<f32>> =
        questions.iter().map(|q| embedder.embed_blocking(std::slice::from_ref(q)).vectors.remove(0)).collect();
    let counter = embedder.clone();
    common::lane_gives_each_question_its_own_vector(embedder, &questions, &alone, |q| counter.tokenizer().count(q))
        .await;
}

#[test]
fn long_texts_are_cut_at_the_model_length() {
    let embedder = LocalEmbedder::load(&model_dir(), best_kernel(), 2).unwrap();
    let long = "retrieval ".repeat(1000);
    assert_eq!(embedder.tokenizer().encode(&long, MAX_WORD_PIECES).len(), MAX_WORD_PIECES);
    let (count, max) = embedder.input_limit().unwrap();
    assert_eq!(max, MAX_WORD_PIECES);
    assert_eq!(count(&long), 1002);
    assert_eq!(embedder.model(), MODEL_NAME);
}

#[sqlx::test]
async fn the_offline_default_ingests_with_the_local_model(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let admin = app.login("acme", "boss@acme.example").await;
    let pdf = std::fs::read(format!("{}/tests/fixtures/english-2page.pdf", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let resp = app.upload("acme", &admin, "intro.pdf", pdf).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id: uuid::Uuid = resp.json::<Value>().await.unwrap()["document_id"].as_str().unwrap().parse().unwrap();
    app.drain().await;
    let doc: Value = app.get_as(&format!("/v1/documents/{id}"), "acme", &admin).await.json().await.unwrap();
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["embedding_model"], MODEL_NAME);

    let rows: Vec<(String, i32)> =
        sqlx::query_as("select text, vector_dims(embedding) from chunks where document_id = $1")
            .bind(id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(!rows.is_empty());
    let embedder = LocalEmbedder::load(&model_dir(), Kernel::F32, 1).unwrap();
    for (text, dims) in &rows {
        assert_eq!(*dims as usize, DIMENSIONS);
        // no chunk is longer than the model reads
        assert!(
            embedder.tokenizer().count(text) <= MAX_WORD_PIECES,
            "{} word pieces",
            embedder.tokenizer().count(text)
        );
    }
    // the partial HNSW index of the model serves a nearest-neighbour query
    let question = embedder.embed_blocking(&["What are the standard and recommended packages of R?".to_owned()]);
    let vector = pgvector::Vector::from(question.vectors[0].clone());
    let best: String = sqlx::query_scalar(
        "select text from chunks where tenant_id = (select id from tenants where slug = 'acme')
           and embedding_model = 'all-MiniLM-L6-v2'
         order by embedding::vector(384) <=> $1::vector(384) limit 1",
    )
    .bind(vector)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(best.contains("packages"), "{best}");
    let tokens: i64 = sqlx::query_scalar("select tokens from usage_events where document_id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(tokens > 0);
}
