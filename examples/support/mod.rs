//! What the benchmark programs share: a scratch database, percentiles, a `docuchat serve`
//! process of the release build, real PDFs read and embedded as ingestion would, and CPU times. Included with `#[path = "support/mod.rs"] mod support;`.
#![allow(dead_code)]

use std::{
    future::Future,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The value at fraction `p` of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The URL of database `name` on the server of `DATABASE_URL`.
pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| docuchat::config::DEFAULT_DATABASE_URL.into());
    format!("{}/{name}", base.rsplit_once('/').map_or(base.as_str(), |(head, _)| head))
}

/// Runs `bench` against a database of its own, created on the server of `DATABASE_URL` and dropped
/// afterwards (kept, and named, when `KEEP_DB` is set).
pub async fn with_scratch_database<F, Fut>(bench: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| docuchat::config::DEFAULT_DATABASE_URL.into());
    let name = format!("docuchat_bench_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut admin).await?;
    let result = bench(database_url(&name)).await;
    if std::env::var_os("KEEP_DB").is_some() {
        println!("kept database {name}");
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!("drop database {name} with (force)"))).execute(&mut admin).await?;
    }
    result
}

/// A `docuchat serve` process (`cargo build --release --bin docuchat` first), killed on drop.
pub struct Server {
    pub port: u16,
    child: Child,
}

impl Server {
    /// Starts the server on a free port with `env` on top of quiet logs and a private Redis
    /// key prefix, and waits until it accepts connections.
    pub async fn start(env: &[(&str, String)]) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // `BENCH_SERVER`: another build of the server, to measure before and after a change
        let program = std::env::var("BENCH_SERVER")
            .unwrap_or_else(|_| format!("{}/target/release/docuchat", env!("CARGO_MANIFEST_DIR")));
        let mut command = Command::new(program);
        command
            .arg("serve")
            // a port of its own for the metrics: processes run side by side
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("INGEST_WORKERS", "0")
            .env("REDIS_KEY_PREFIX", format!("bench:{}:", Uuid::new_v4()))
            .env("RUST_LOG", "error")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let server = Server { port, child: command.spawn()? };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("docuchat serve did not start listening")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PDF as ingestion stores it: its chunks and their vectors.
pub struct Document {
    pub filename: String,
    pub chunks: Vec<docuchat::ingestion::chunk::Chunk>,
    pub vectors: Vec<Vec<f32>>,
}

/// Every PDF of `dir` the service can read, extracted, chunked and embedded in this process with
/// the configuration's chunker, limits and embedder (those it cannot read are listed and left out).
pub async fn read_pdfs(
    dir: &str,
    config: &docuchat::config::Config,
    embedder: &dyn docuchat::embed::Embedder,
) -> anyhow::Result<Vec<Document>> {
    use docuchat::ingestion::{
        chunk::{Chunker, SecondaryLimit},
        pdf::{Limits, extract},
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    names.sort();
    let mut chunker = Chunker::new(config.ingestion.chunk_tokens, config.ingestion.chunk_overlap);
    chunker.secondary = embedder.input_limit().map(|(count, max)| SecondaryLimit { count, max });
    let limits = Limits { max_pages: config.ingestion.max_pages, ..Limits::default() };
    let mut docs = Vec::new();
    let started = std::time::Instant::now();
    for path in names {
        let filename = path.file_name().unwrap().to_string_lossy().into_owned();
        let pages = match extract(&std::fs::read(&path)?, &limits, |_| {}) {
            Ok(pages) => pages,
            Err(e) => {
                println!("  {filename}: left out ({e})");
                continue;
            }
        };
        let chunks = chunker.chunk(&pages);
        if chunks.is_empty() {
            println!("  {filename}: left out (no text)");
            continue;
        }
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(256) {
            vectors.extend(embedder.embed(batch).await.map_err(|e| anyhow::anyhow!("{e}"))?.vectors);
        }
        println!("  {filename}: {} pages, {} chunks", pages.len(), chunks.len());
        docs.push(Document { filename, chunks, vectors });
    }
    let total: usize = docs.iter().map(|d| d.chunks.len()).sum();
    println!("{} documents, {total} chunks, read and embedded in {:.0} s", docs.len(), started.elapsed().as_secs_f64());
    Ok(docs)
}

/// Writes `docs` as ready documents of `tenant` with their chunks (chunks through `service`, in
/// a tenant transaction, as ingestion writes them). Copies keep the file's name at the end,
/// under a name of their own.
pub async fn store_documents(
    owner: &sqlx::PgPool,
    service: &sqlx::PgPool,
    tenant: Uuid,
    docs: &[&Document],
    model: &str,
) -> anyhow::Result<()> {
    for (i, doc) in docs.iter().enumerate() {
        let id = Uuid::now_v7();
        let filename = if docs[..i].iter().any(|d| d.filename == doc.filename) {
            format!("copy-{i}-{}", doc.filename)
        } else {
            doc.filename.clone()
        };
        // `embedding_model` as `lifecycle::mark_ready` writes it: the service reads a tenant's
        // models from it (`retrieval::TenantModels`)
        sqlx::query(
            "insert into documents (id, tenant_id, filename, sha256, bytes, pages_total, status, embedding_model,
                                    chunk_count)
             values ($1, $2, $3, $4, 1, 1, 'ready', $5, $6)",
        )
        .bind(id)
        .bind(tenant)
        .bind(&filename)
        .bind(id.as_bytes().repeat(2))
        .bind(model)
        .bind(doc.chunks.len() as i32)
        .execute(owner)
        .await?;
        let mut tx = docuchat::db::for_tenant(service, tenant).await?;
        docuchat::ingestion::store::insert_chunks(&mut tx, tenant, id, model, &doc.chunks, &doc.vectors).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// A question of a QA file (JSON lines naming a document `doc`, a `question` and the answer's
/// pages `page_start`, `page_end`).
pub struct Question {
    pub doc: String,
    pub text: String,
    pub pages: (i32, i32),
}

pub fn read_questions(path: &str) -> anyhow::Result<Vec<Question>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(Question {
                doc: v["doc"].as_str().unwrap_or_default().to_owned(),
                text: v["question"].as_str().unwrap_or_default().to_owned(),
                pages: (v["page_start"].as_i64().unwrap_or(0) as i32, v["page_end"].as_i64().unwrap_or(0) as i32),
            })
        })
        .collect()
}

/// The QA document and the smallest other documents, up to `max_chunks` chunks in all: a tenant
/// of real text of about that size that the QA questions can be asked of.
pub fn tenant_of_about<'a>(docs: &'a [Document], qa_doc: &str, max_chunks: usize) -> Vec<&'a Document> {
    let mut by_size: Vec<&Document> = docs.iter().filter(|d| d.filename != qa_doc).collect();
    by_size.sort_by_key(|d| d.chunks.len());
    let mut picked: Vec<&Document> = docs.iter().filter(|d| d.filename == qa_doc).collect();
    for d in by_size {
        if picked.iter().map(|d| d.chunks.len()).sum::<usize>() + d.chunks.len() <= max_chunks {
            picked.push(d);
        }
    }
    picked
}

/// CPU time (user + system, ms) of a process so far.
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command's closing parenthesis: utime and stime are the 12th and 13th
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks * 10.0 // USER_HZ is 100 on Linux
}

/// CPU time (ms) of every `postgres` process so far (the server and its backends; backends that
/// exited meanwhile are not counted, so keep connections open across a measurement).
pub fn postgres_cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_ms)
        .sum()
}

/// Questions' vectors as the service embeds them (the query form of models that have one), all
/// asked at once.
pub async fn embed_questions(
    embedder: &dyn docuchat::embed::Embedder,
    questions: &[String],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let asked = questions.iter().map(|q| embedder.embed_query(q));
    futures_util::future::join_all(asked)
        .await
        .into_iter()
        .map(|r| r.map(|mut e| e.vectors.remove(0)).map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

/// A new tenant `slug` holding `docs` (ready), written as ingestion writes them.
pub async fn tenant_with_documents(
    owner: &sqlx::PgPool,
    service: &sqlx::PgPool,
    slug: &str,
    docs: &[&Document],
    model: &str,
) -> anyhow::Result<Uuid> {
    let tenant = Uuid::now_v7();
    sqlx::query("insert into tenants (id, name, slug, admin_email) values ($1, $2, $2, 'admin@bench.example')")
        .bind(tenant)
        .bind(slug)
        .execute(owner)
        .await?;
    store_documents(owner, service, tenant, docs, model).await?;
    Ok(tenant)
}

/// Gives every ready document of `tenant` its second vectors by `cross` and its script, as the
/// `cross_vectors` job does (the stored chunks read back, embedded, written to `chunk_vectors`).
/// Returns the chunks embedded.
pub async fn add_cross_vectors(
    owner: &sqlx::PgPool,
    service: &sqlx::PgPool,
    tenant: Uuid,
    cross: &dyn docuchat::embed::Embedder,
) -> anyhow::Result<usize> {
    let documents: Vec<Uuid> = sqlx::query_scalar("select id from documents where tenant_id = $1 and status = 'ready'")
        .bind(tenant)
        .fetch_all(owner)
        .await?;
    let mut total = 0;
    for id in documents {
        let chunks: Vec<(i32, String)> =
            sqlx::query_as("select ordinal, text from chunks where document_id = $1 order by ordinal")
                .bind(id)
                .fetch_all(owner)
                .await?;
        let (ordinals, texts): (Vec<i32>, Vec<String>) = chunks.into_iter().unzip();
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(256) {
            vectors.extend(cross.embed(batch).await.map_err(|e| anyhow::anyhow!("{e}"))?.vectors);
        }
        let script = docuchat::embed::document_script(texts.iter().map(String::as_str));
        let mut tx = docuchat::db::for_tenant(service, tenant).await?;
        docuchat::ingestion::store::insert_cross_vectors(&mut tx, tenant, id, cross.model(), &ordinals, &vectors)
            .await?;
        docuchat::documents::lifecycle::set_scripts(&mut *tx, tenant, id, script, Some(cross.model())).await?;
        tx.commit().await?;
        total += texts.len();
    }
    Ok(total)
}
