//! Hybrid search on real text: tenants built from real PDFs, asked the questions people ask.
//!
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example bench_hybrid -- <directory of PDFs> <QA file (JSON lines)> [copies]
//!
//! e.g. with the evaluation corpus beside the project: `../shared/data/pdfs
//! ../shared/data/qa/faq-r.qa.jsonl 5`. Every PDF the service can read is extracted, chunked and
//! embedded in this process, as ingestion would (the local embedder of the configuration). The
//! QA file's lines name a document (`doc`), a `question` and the answer's pages (`page_start`,
//! `page_end`). Tenants:
//! - `qa`: the QA set's own document alone;
//! - `mid`: the QA document and the smallest others, up to 1,000 chunks;
//! - `corpus`: every readable PDF of the directory;
//! - `big`: the corpus `copies` times over under other names (the same chunks and vectors again).
//!
//! All are written before any is measured, so that the small ones are asked inside the big
//! shared HNSW index, as in a service of many tenants.
//!
//! For each tenant it prints, as the service runs it (its role, under row-level security, one
//! tenant transaction, the prepared statement warm): the hybrid statement's latency p50/p99 over
//! the QA questions and over short questions of common words (which match most chunks in full
//! text), the full-text side alone, and answer-page recall@5 (a top-5 source of the QA document, or
//! of one of its copies, on the answer's pages). Works in a database of its own, created and dropped here
//! (`KEEP_DB=1` keeps it and prints its name). `BENCH_DB=<that name>` measures a kept database's
//! tenants again without building them (the PDFs are not read; the questions are embedded again),
//! so that two builds of the statement can be measured in turns on the same data.

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use docuchat::{
    config::Config,
    db,
    retrieval::{self, Params, Space},
};
use sqlx::postgres::PgPoolOptions;
use support::{Document, percentile};

/// Short questions of common words: each matches a large share of a big tenant's chunks.
const COMMON: &[&str] = &[
    "How do I install a package?",
    "How can I read data from a file?",
    "What is the default value?",
    "How do I use this function?",
    "How do I change the size of the text?",
    "Where are the files?",
    "How do I make a plot?",
    "What does this error mean?",
    "How do I set the font size of the plot title?",
    "Which version is used?",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    docuchat::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 2, "usage: bench_hybrid <directory of PDFs> <QA file> [copies]");
    let copies: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let (dir, qa) = (args[0].clone(), args[1].clone());
    if let Ok(name) = std::env::var("BENCH_DB") {
        return run(&support::database_url(&name), &dir, &qa, copies).await;
    }
    support::with_scratch_database(|url| async move { run(&url, &dir, &qa, copies).await }).await
}

async fn run(url: &str, dir: &str, qa: &str, copies: usize) -> anyhow::Result<()> {
    let owner = PgPoolOptions::new().max_connections(4).connect(url).await?;
    db::migrate(&owner).await?;
    let config = Config::from_env()?;
    let service = db::pool_options(config.chat.ef_search).max_connections(4).connect(url).await?;
    let embedder = docuchat::embed::from_config(&config)?;
    let space = Space { model: embedder.model(), dims: embedder.dimensions() };

    let questions = support::read_questions(qa)?;
    let qa_doc = questions.first().map(|q| q.doc.clone()).unwrap_or_default();
    let qa_texts: Vec<String> = questions.iter().map(|q| q.text.clone()).collect();
    let common_texts: Vec<String> = COMMON.iter().map(|q| q.to_string()).collect();
    let qa_vectors = support::embed_questions(embedder.as_ref(), &qa_texts).await?;
    let common_vectors = support::embed_questions(embedder.as_ref(), &common_texts).await?;

    let loaded = if std::env::var_os("BENCH_DB").is_some() {
        kept_tenants(&owner).await?
    } else {
        // read, chunk and embed every PDF the service can read
        let docs = support::read_pdfs(dir, &config, embedder.as_ref()).await?;
        let tenants: [(&str, Vec<&Document>); 4] = [
            ("qa", docs.iter().filter(|d| d.filename == qa_doc).collect()),
            ("mid", support::tenant_of_about(&docs, &qa_doc, 1_000)),
            ("corpus", docs.iter().collect()),
            ("big", (0..copies).flat_map(|_| docs.iter()).collect()),
        ];
        // every tenant is written before any is measured: a small tenant is asked inside the big
        // shared index, as in a service with many tenants
        let mut loaded = Vec::new();
        for (slug, members) in &tenants {
            let chunks: usize = members.iter().map(|d| d.chunks.len()).sum();
            loaded.push((
                slug.to_string(),
                support::tenant_with_documents(&owner, &service, slug, members, space.model).await?,
                chunks,
            ));
        }
        sqlx::query("vacuum analyze").execute(&owner).await?;
        loaded
    };
    println!(
        "\n{:<7} {:>7}  {:<22} {:>9} {:>9} {:>17} {:>9}",
        "tenant", "chunks", "questions", "p50 ms", "p99 ms", "full text p50/p99", "recall@5"
    );
    for (slug, tenant, chunks) in loaded {
        for (label, texts, vectors, with_pages) in
            [("QA questions", &qa_texts, &qa_vectors, true), ("common words", &common_texts, &common_vectors, false)]
        {
            let mut times = Vec::new();
            let mut text_times = Vec::new();
            let mut found = 0usize;
            // a warm-up pass (and the generic plans), then three measured
            for pass in 0..4 {
                for (i, (text, vector)) in texts.iter().zip(vectors).enumerate() {
                    let mut tx = db::for_retrieval(&service, tenant).await?;
                    let t = Instant::now();
                    let sources = retrieval::search(&mut *tx, tenant, space, vector, text, &Params::default()).await?;
                    let elapsed = t.elapsed().as_secs_f64() * 1000.0;
                    let t = Instant::now();
                    retrieval::text_candidates(&mut *tx, tenant, space.model, text, Params::default().candidates)
                        .await?;
                    let text_elapsed = t.elapsed().as_secs_f64() * 1000.0;
                    tx.commit().await?;
                    if pass == 0 {
                        continue;
                    }
                    times.push(elapsed);
                    text_times.push(text_elapsed);
                    if pass == 1 && with_pages {
                        let q = &questions[i];
                        if sources
                            .iter()
                            .take(5)
                            .any(|s| s.filename.ends_with(&q.doc) && s.page <= q.pages.1 && s.page_to >= q.pages.0)
                        {
                            found += 1;
                        }
                    }
                }
            }
            times.sort_by(f64::total_cmp);
            text_times.sort_by(f64::total_cmp);
            let recall =
                if with_pages { format!("{:.3}", found as f64 / questions.len() as f64) } else { "-".to_owned() };
            println!(
                "{slug:<7} {chunks:>7}  {label:<22} {:>9.2} {:>9.2} {:>8.2}/{:<8.2} {recall:>9}",
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                percentile(&text_times, 0.5),
                percentile(&text_times, 0.99),
            );
        }
    }
    Ok(())
}

/// A kept database's tenants (slug, id, chunks), smallest first.
async fn kept_tenants(owner: &sqlx::PgPool) -> anyhow::Result<Vec<(String, uuid::Uuid, usize)>> {
    let rows: Vec<(String, uuid::Uuid, i64)> = sqlx::query_as(
        "select t.slug, t.id, count(c.id) from tenants t join chunks c on c.tenant_id = t.id
          group by t.slug, t.id order by 3",
    )
    .fetch_all(owner)
    .await?;
    Ok(rows.into_iter().map(|(slug, id, n)| (slug, id, n as usize)).collect())
}
