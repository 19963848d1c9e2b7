//! Retrieval latency and recall over a shared index: N chunks of 384 dimensions spread over 100
//! tenants of very different sizes (sizes ∝ 1/rank), clustered like real embeddings.
//!
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example bench_retrieval -- [chunks] [queries]
//!
//! Prints p50/p99 of the HNSW top-10 (the production path), of the full hybrid search (vector +
//! full text + fusion), and recall@10 of the HNSW path against exact search, for all tenants and
//! for the small ones. Works in a database of its own, created and dropped here.

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use support::percentile;

use docuchat::{
    ingestion::{chunk::Chunk, store::insert_chunks},
    retrieval::{self, Params},
};
use uuid::Uuid;

const DIMS: usize = 384;
const TENANTS: usize = 100;
const MODEL: &str = "all-MiniLM-L6-v2";
const SPACE: retrieval::Space<'static> = retrieval::Space { model: MODEL, dims: DIMS };

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn gaussian(&mut self) -> f32 {
        (0..6).map(|_| self.next()).sum::<f32>()
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    docuchat::embed::normalize(&mut v);
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let queries: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    support::with_scratch_database(|url| async move { run(&url, total, queries).await }).await
}

async fn run(url: &str, total: usize, queries: usize) -> anyhow::Result<()> {
    let pool = docuchat::db::pool_options().max_connections(8).connect(url).await?;
    docuchat::db::migrate(&pool).await?;
    let mut rng = Rng(42);

    // tenant sizes ∝ 1/rank; each tenant's vectors around 20 topic centres of its own
    let weights: Vec<f64> = (0..TENANTS).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let sum: f64 = weights.iter().sum();
    let sizes: Vec<usize> = weights.iter().map(|w| ((w / sum) * total as f64).max(20.0) as usize).collect();
    let mut tenants = Vec::new();
    let load = Instant::now();
    // load without the vector index, then build it (far faster than inserting into it)
    sqlx::query("drop index chunks_embedding_minilm").execute(&pool).await?;
    for (t, &size) in sizes.iter().enumerate() {
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
        let centres: Vec<Vec<f32>> = (0..20).map(|_| unit((0..DIMS).map(|_| rng.gaussian()).collect())).collect();
        let mut vectors = Vec::with_capacity(size);
        let mut chunks = Vec::with_capacity(size);
        for i in 0..size {
            let c = &centres[i % centres.len()];
            vectors.push(unit(c.iter().map(|x| x + 0.08 * rng.gaussian()).collect()));
            chunks.push(Chunk {
                ordinal: i as i32,
                page_from: 1,
                page_to: 1,
                text: format!("topic{} passage {i} of tenant {t} about retrieval and documents", i % 20),
                token_count: 12,
            });
        }
        let mut conn = pool.acquire().await?;
        insert_chunks(&mut conn, tenant, doc, MODEL, &chunks, &vectors).await?;
        tenants.push((tenant, size, centres));
    }
    let loaded = load.elapsed().as_secs_f64();
    let t = Instant::now();
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
        let (tenant, _, centres) = &tenants[ti];
        let c = &centres[(rng.next().abs() * 20.0) as usize % 20];
        (*tenant, unit(c.iter().map(|x| x + 0.08 * rng.gaussian()).collect::<Vec<f32>>()))
    };
    let all: Vec<(Uuid, Vec<f32>)> = (0..queries)
        .map(|_| {
            let ti = (rng.next().abs() * 2.0 * TENANTS as f32) as usize % TENANTS;
            pick(&mut rng, ti)
        })
        .collect();
    let small: Vec<(Uuid, Vec<f32>)> = (0..queries / 3).map(|i| pick(&mut rng, TENANTS - 1 - (i % 20))).collect();

    // exact answers first (they also warm the caches), then timed passes over the HNSW index
    let widths: Vec<u32> = std::iter::once(100)
        .chain(std::env::var("EF_SEARCH").unwrap_or_default().split(',').filter_map(|v| v.trim().parse().ok()))
        .collect();
    for (label, picks) in [("random tenants", &all), ("the 20 smallest tenants", &small)] {
        let mut exact = Vec::with_capacity(picks.len());
        for (tenant, q) in picks.iter() {
            exact.push(retrieval::nearest(&pool, *tenant, SPACE, q, 10, 100, true).await?);
        }
        for &ef in &widths {
            let (mut hnsw_ms, mut recall_sum) = (Vec::new(), 0.0);
            for ((tenant, q), exact) in picks.iter().zip(&exact) {
                let t = Instant::now();
                let approx = retrieval::nearest(&pool, *tenant, SPACE, q, 10, ef, false).await?;
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
            retrieval::search(&pool, *tenant, SPACE, q, "retrieval documents topic3", &Params::default()).await?;
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
        let (tenant, _, centres) = &tenants[0];
        let sql = format!("explain analyze {}", retrieval::text_query_sql(MODEL, DIMS));
        let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(pgvector::Vector::from(centres[0].clone()))
            .bind(*tenant)
            .bind(30i64)
            .bind("retrieval documents topic3")
            .fetch_all(&pool)
            .await?;
        for (line,) in plan {
            println!("{line}");
        }
    }
    Ok(())
}
