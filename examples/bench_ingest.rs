//! Ingestion benchmarks against the real local Postgres and Redis:
//! (b) a PDF from upload to `ready` (p50/p95), with the share the embedder takes, and, with a
//! cross-language model (`CROSS_LANGUAGE_MODEL`, on by default with the local MiniLM), to its
//! second vectors, which a job of their own writes after `ready`;
//! (d) chunk inserts per second through binary `COPY` (the production path) and through `UNNEST`
//! batches, into the HNSW-indexed model and into a model without an index.
//!
//!     cargo build --release --bin docuchat
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example bench_ingest -- tests/fixtures/english-2page.pdf [uploads] [insert rows]
//!
//! It works in a database of its own, created and dropped here.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use docuchat::{
    app::{self, AppState},
    auth::{email::Email, jwt::Role, users},
    config::Config,
    db,
    ingestion::{
        chunk::{Chunk, Chunker, SecondaryLimit},
        pdf::{Limits, extract},
        store::{insert_chunks, insert_chunks_unnest},
    },
    tenants,
};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use support::percentile;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    docuchat::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pdf_path = args.first().map(String::as_str).unwrap_or("tests/fixtures/english-2page.pdf");
    let uploads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let insert_rows: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let pdf = std::fs::read(pdf_path)?;

    support::with_scratch_database(|url| async move { run(&url, &pdf, uploads, insert_rows).await }).await
}

async fn run(url: &str, pdf: &[u8], uploads: usize, insert_rows: usize) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(10).connect(url).await?;
    db::migrate(&pool).await?;
    let mut config = Config::from_env()?;
    config.ingestion.workers = 1;
    // the server runs in this process: its PDF readers are the release `docuchat` binary
    config.ingestion.extract_program = Some(format!("{}/target/release/docuchat", env!("CARGO_MANIFEST_DIR")).into());
    config.redis_key_prefix = format!("bench:{}:", uuid::Uuid::new_v4());
    // one upload after another, as fast as they go: not a client to rate-limit
    config.rate_limits.upload_per_minute = 0;
    // the service's pool works as the service's role (row-level security), as in production
    let service = db::pool_options(config.chat.ef_search).max_connections(10).connect(url).await?;
    let state = AppState::with_pool(config, service.clone()).await?;
    let embedder = state.embedder()?;
    println!("embedder: {} ({} dimensions)", embedder.model(), embedder.dimensions());

    let email = Email::parse("bench@bench.example").unwrap();
    let tenant = tenants::create(&pool, "Bench", "bench", &email).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let user = users::upsert_on_login(&pool, tenant.id, &email, Role::Admin).await?;
    let token = state.jwt.issue(user.id, tenant.id, Role::Admin, 0)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();

    // (b) upload → ready (→ second vectors), one document at a time
    let cross = state.cross_embedder();
    let (mut latencies, mut cross_latencies) = (Vec::new(), Vec::new());
    for i in 0..uploads + 1 {
        // distinct bytes each time (a trailing comment), so nothing is deduplicated
        let mut bytes = pdf.to_vec();
        bytes.extend_from_slice(format!("\n%bench {i}\n").as_bytes());
        let part = reqwest::multipart::Part::bytes(bytes).file_name("bench.pdf");
        let start = Instant::now();
        let resp = client
            .post(format!("http://{addr}/v1/files"))
            .header("X-Tenant-ID", "bench")
            .bearer_auth(&token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 202, "upload failed: {}", resp.text().await?);
        let id = resp.json::<Value>().await?["document_id"].as_str().unwrap().to_owned();
        loop {
            let doc: Value = client
                .get(format!("http://{addr}/v1/documents/{id}"))
                .header("X-Tenant-ID", "bench")
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            match doc["status"].as_str() {
                Some("ready") => break,
                Some("failed") => anyhow::bail!("ingestion failed: {doc}"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        let ready = start.elapsed().as_secs_f64() * 1000.0;
        // the second vectors: the document's own job, run after `ready` (owner's connection: the
        // API does not show them)
        if cross.is_some() {
            let id: uuid::Uuid = id.parse()?;
            while sqlx::query_scalar::<_, Option<String>>("select cross_model from documents where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await?
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if i > 0 {
            // the first one warms up the model and the connections
            latencies.push(ready);
            cross_latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    cross_latencies.sort_by(f64::total_cmp);

    // where the time goes, for the same file, in this process
    let limits = Limits::default();
    let t = Instant::now();
    let pages = extract(pdf, &limits, |_| {})?;
    let extract_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let mut chunker = Chunker::new(400, 40);
    chunker.secondary = embedder.input_limit().map(|(count, max)| SecondaryLimit { count, max });
    let chunks = chunker.chunk(&pages);
    let chunk_ms = t.elapsed().as_secs_f64() * 1000.0;
    let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    let t = Instant::now();
    embedder.embed(&texts).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let embed_ms = t.elapsed().as_secs_f64() * 1000.0;
    // the same reading through the service's children (the median of 20 of each)
    let never = tokio_util::sync::CancellationToken::new();
    let (mut inspects, mut extracts) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        state.sandbox.inspect(pdf, limits.max_pages).await?;
        inspects.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        state.sandbox.extract(pdf, &limits, &never, |_| {}).await?;
        extracts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    inspects.sort_by(f64::total_cmp);
    extracts.sort_by(f64::total_cmp);
    let p50 = percentile(&latencies, 0.5);
    println!(
        "\n(b) upload → ready, {} uploads of a {}-page PDF ({} chunks): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        latencies.len(),
        pages.len(),
        chunks.len(),
        p50,
        percentile(&latencies, 0.95),
        latencies.last().unwrap()
    );
    println!(
        "    in-process: extract {extract_ms:.1} ms, chunk {chunk_ms:.1} ms, embed {embed_ms:.1} ms ({:.0}% of p50)",
        100.0 * embed_ms / p50
    );
    if let Some(cross) = &cross {
        let t = Instant::now();
        cross.embed(&texts).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "    upload → second vectors by {} (after ready, a job of their own): p50 {:.0} ms, p95 {:.0} ms; \
             in-process {} embeds the chunks in {:.1} ms",
            cross.model(),
            percentile(&cross_latencies, 0.5),
            percentile(&cross_latencies, 0.95),
            cross.model(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    println!(
        "    in the child process: inspect {:.1} ms, extract {:.1} ms (medians; {:.1} ms more than in-process for both)",
        percentile(&inspects, 0.5),
        percentile(&extracts, 0.5),
        percentile(&inspects, 0.5) + percentile(&extracts, 0.5) - extract_ms
    );

    // (d) chunk inserts
    let dims = embedder.dimensions();
    let vectors: Vec<Vec<f32>> = (0..insert_rows)
        .map(|i| {
            let mut v: Vec<f32> = (0..dims).map(|d| (((i * 31 + d * 17) % 97) as f32 / 97.0) - 0.5).collect();
            docuchat::embed::to_unit_length(&mut v);
            v
        })
        .collect();
    let chunks: Vec<Chunk> = (0..insert_rows)
        .map(|i| Chunk {
            ordinal: i as i32,
            page_from: 1,
            page_to: 1,
            text: format!("chunk {i} of the insert benchmark, a few words long like a short paragraph of text"),
            token_count: 20,
        })
        .collect();
    println!("\n(d) chunk inserts, {insert_rows} rows of {dims} dimensions, one transaction:");
    for copy in [false, true] {
        for model in [embedder.model().to_owned(), "bench-without-index".to_owned()] {
            let doc = uuid::Uuid::now_v7();
            sqlx::query("insert into documents (id, tenant_id, filename, sha256, bytes, pages_total) values ($1, $2, 'x.pdf', $3, 1, 1)")
                .bind(doc)
                .bind(tenant.id)
                .bind(doc.as_bytes().repeat(2))
                .execute(&pool)
                .await?;
            let mut tx = db::for_tenant(&service, tenant.id).await?;
            let t = Instant::now();
            if copy {
                insert_chunks(&mut tx, tenant.id, doc, &model, &chunks, &vectors).await?;
            } else {
                insert_chunks_unnest(&mut tx, tenant.id, doc, &model, &chunks, &vectors).await?;
            }
            tx.commit().await?;
            let secs = t.elapsed().as_secs_f64();
            let indexed = if model == embedder.model() { "with its HNSW index" } else { "no vector index" };
            let path = if copy { "binary COPY" } else { "UNNEST batches of 500" };
            println!("    {path}, {model} ({indexed}): {:.0} rows/s ({secs:.2} s)", insert_rows as f64 / secs);
        }
    }

    let _ = tx.send(());
    server.await??;
    Ok(())
}
