//! Retrieval latency and recall over a shared index: N chunks of 384 dimensions spread over 100
//! tenants of very different sizes (sizes ∝ 1/rank), each tenant's vectors around 20 topics of
//! its own (`support/vectors.rs`: `VECTORS=manifold`, the default, shaped like real embeddings;
//! `VECTORS=isotropic`, the hardest case).
//!
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example bench_retrieval -- [chunks] [queries]
//!
//! Prints p50/p99 of the HNSW top-10 (the production path; `EF_SEARCH=40,400` adds search widths
//! beside the service's default), of the full hybrid search (vector +
//! full text + fusion), and recall@10 of the HNSW path against exact search, for all tenants and
//! for the small ones. Works in a database of its own, created and dropped here; `KEEP_DB=1` keeps
//! it, and `REUSE_DB=<name>` measures again in a kept one (same arguments) without loading it.

#[path = "support/mod.rs"]
mod support;
#[path = "support/vectors.rs"]
mod vectors;

use std::time::Instant;

use support::percentile;

use docuchat::{
    config::DEFAULT_EF_SEARCH,
    ingestion::{chunk::Chunk, store::insert_chunks},
    retrieval::{self, Params},
};
use uuid::Uuid;
use vectors::{Model, Rng, TOPICS, Tenant};

const DIMS: usize = 384;
const TENANTS: usize = 100;
const MODEL: &str = "all-MiniLM-L6-v2";
const SPACE: retrieval::Space<'static> = retrieval::Space { model: MODEL, dims: DIMS };

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let queries: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    if let Ok(name) = std::env::var("REUSE_DB") {
        return run(&support::database_url(&name), total, queries, true).await;
    }
    support::with_scratch_database(|url| async move { run(&url, total, queries, false).await }).await
}

async fn run(url: &str, total: usize, queries: usize, reuse: bool) -> anyhow::Result<()> {
    // loaded as the owner; searched as the service is, under row-level security
    let owner = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(url).await?;
    docuchat::db::migrate(&owner).await?;
    let service = docuchat::db::pool_options(DEFAULT_EF_SEARCH).max_connections(8).connect(url).await?;
    let pool = owner;
    let mut rng = Rng(42);
    let model = Model::from_env();
    println!("vectors: {} model", model.name());

    // tenant sizes ∝ 1/rank
    let weights: Vec<f64> = (0..TENANTS).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let sum: f64 = weights.iter().sum();
    let sizes: Vec<usize> = weights.iter().map(|w| ((w / sum) * total as f64).max(20.0) as usize).collect();
    let mut tenants = Vec::new();
    let load = Instant::now();
    // load without the vector index, then build it (far faster than inserting into it)
    if !reuse {
        sqlx::query("drop index chunks_embedding_minilm").execute(&pool).await?;
    }
    for (t, &size) in sizes.iter().enumerate() {
        // the same sequence on every run, so a reused database holds exactly these vectors
        let topics = Tenant::new(&mut rng, model, DIMS);
        let vectors: Vec<Vec<f32>> = (0..size).map(|i| topics.sample(&mut rng, i)).collect();
        let tenant = if reuse {
            let (id,): (Uuid,) =
                sqlx::query_as("select id from tenants where slug = $1").bind(format!("t{t}")).fetch_one(&pool).await?;
            id
        } else {
            let tenant = Uuid::now_v7();
            sqlx::query("insert into tenants (id, name, slug, admin_email) values ($1, $2, $3, 'a@b.example')")
                .bind(tenant)
                .bind(format!("Tenant {t}"))
                .bind(format!("t{t}"))
                .execute(&pool)
                .await?;
            let doc = Uuid::now_v7();
            sqlx::query("insert into documents (id, tenant_id, filename, sha256, bytes, pages_total, status) values ($1, $2, 'd.pdf', $3, 1, 1, 'ready')")
                .bind(doc)
                .bind(tenant)
                .bind(doc.as_bytes().repeat(2))
                .execute(&pool)
                .await?;
            let chunks: Vec<Chunk> = (0..size)
                .map(|i| Chunk {
                    ordinal: i as i32,
                    page_from: 1,
                    page_to: 1,
                    text: format!("topic{} passage {i} of tenant {t} about retrieval and documents", i % 20),
                    token_count: 12,
                })
                .collect();
            let mut tx = pool.begin().await?;
            insert_chunks(&mut tx, tenant, doc, MODEL, &chunks, &vectors).await?;
            tx.commit().await?;
            tenant
        };
        tenants.push((tenant, size, topics));
    }
    let loaded = load.elapsed().as_secs_f64();
    let t = Instant::now();
    if !reuse {
        // on one connection: the settings must apply to the build (the graph fits in memory)
        let mut conn = pool.acquire().await?;
        sqlx::query("set maintenance_work_mem = '8GB'").execute(&mut *conn).await?;
        sqlx::query("set max_parallel_maintenance_workers = 1").execute(&mut *conn).await?;
        sqlx::query(
            "create index chunks_embedding_minilm on chunks using hnsw ((embedding::vector(384)) vector_cosine_ops)
             where embedding_model = 'all-MiniLM-L6-v2'",
        )
        .execute(&mut *conn)
        .await?;
        drop(conn);
        sqlx::query("analyze").execute(&pool).await?;
    }
    let built = t.elapsed().as_secs_f64();
    let real_total: usize = sizes.iter().sum();
    println!(
        "{real_total} chunks over {TENANTS} tenants (largest {}, smallest {}): loaded in {loaded:.1} s, HNSW built in {built:.1} s",
        sizes[0],
        sizes[TENANTS - 1]
    );

    // the queries: a point of one of the tenant's topics, as a question about it would be
    let mut rng = Rng(99);
    let pick = |rng: &mut Rng, ti: usize| {
        let (tenant, _, topics) = &tenants[ti];
        let topic = (rng.next().abs() * TOPICS as f32) as usize % TOPICS;
        (*tenant, topics.sample(rng, topic))
    };
    let all: Vec<(Uuid, Vec<f32>)> = (0..queries)
        .map(|_| {
            let ti = (rng.next().abs() * 2.0 * TENANTS as f32) as usize % TENANTS;
            pick(&mut rng, ti)
        })
        .collect();
    let small: Vec<(Uuid, Vec<f32>)> = (0..queries / 3).map(|i| pick(&mut rng, TENANTS - 1 - (i % 20))).collect();

    // exact answers first (they also warm the caches), then timed passes over the HNSW index
    let widths: Vec<u32> = std::iter::once(DEFAULT_EF_SEARCH)
        .chain(std::env::var("EF_SEARCH").unwrap_or_default().split(',').filter_map(|v| v.trim().parse().ok()))
        .collect();
    for (label, picks) in [("random tenants", &all), ("the 20 smallest tenants", &small)] {
        let mut exact = Vec::with_capacity(picks.len());
        for (tenant, q) in picks.iter() {
            exact.push(retrieval::nearest(&service, *tenant, SPACE, q, 10, 100, true).await?);
        }
        // an untimed pass brings the index into memory, as it is in a running service
        for (tenant, q) in picks.iter() {
            retrieval::nearest(&service, *tenant, SPACE, q, 10, DEFAULT_EF_SEARCH, false).await?;
        }
        for &ef in &widths {
            let (mut hnsw_ms, mut recall_sum) = (Vec::new(), 0.0);
            for ((tenant, q), exact) in picks.iter().zip(&exact) {
                let t = Instant::now();
                let approx = retrieval::nearest(&service, *tenant, SPACE, q, 10, ef, false).await?;
                hnsw_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                let found = exact.iter().filter(|(id, _)| approx.iter().any(|(a, _)| a == id)).count();
                recall_sum += found as f64 / exact.len().max(1) as f64;
            }
            hnsw_ms.sort_by(f64::total_cmp);
            println!(
                "{label} ({} queries), hnsw.ef_search {ef}: HNSW top-10 p50 {:.2} ms p99 {:.2} ms, recall@10 {:.3}",
                picks.len(),
                percentile(&hnsw_ms, 0.5),
                percentile(&hnsw_ms, 0.99),
                recall_sum / picks.len() as f64
            );
        }
        let mut hybrid_ms = Vec::new();
        for (tenant, q) in picks.iter() {
            let t = Instant::now();
            let mut tx = docuchat::db::for_retrieval(&service, *tenant).await?;
            retrieval::search(&mut *tx, *tenant, SPACE, q, "retrieval documents topic3", &Params::default()).await?;
            drop(tx);
            hybrid_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        hybrid_ms.sort_by(f64::total_cmp);
        println!(
            "{label}: hybrid search (the service's path) p50 {:.2} ms p99 {:.2} ms",
            percentile(&hybrid_ms, 0.5),
            percentile(&hybrid_ms, 0.99)
        );
    }
    if std::env::var_os("EXPLAIN").is_some() {
        let (tenant, _, topics) = &tenants[0];
        let sql = format!("explain (analyze, costs off) {}", retrieval::hybrid_sql(MODEL, DIMS));
        let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(pgvector::Vector::from(topics.sample(&mut Rng(1), 0)))
            .bind(*tenant)
            .bind(30i64)
            .bind("retrieval documents topic3")
            .bind(1.0f32)
            .bind(0.5f32)
            .bind(0.25f32)
            .bind(6i64)
            .fetch_all(&pool)
            .await?;
        for (line,) in plan {
            println!("{line}");
        }
    }
    Ok(())
}
