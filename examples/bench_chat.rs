//! Chat socket benchmarks against a `docuchat serve` process (release build):
//! (b) server-added time to first token — from the `ask` frame to the first `token` frame, with
//!     the question's embedding and the answer served by a zero-latency OpenAI-protocol server in
//!     this process, so the figure is the service's own overhead — at several concurrencies;
//! (c) the server's resident memory with many idle authenticated sockets.
//!
//!     cargo build --release --bin docuchat
//!     eval "$(infra/dev.sh env)"; ulimit -n 65536
//!     cargo run --release --example bench_chat -- [idle sockets] [phases]
//!
//! `phases` picks the time-to-first-token runs, comma-separated: `1`, `100`, `1000` (asking again
//! at once), `100p`, `1000p` (pausing 1–3 s between questions) and `100b`, `1000b` (every session
//! asking at the same instant, the next burst when all are answered); all but the bursts by
//! default. Each
//! run prints questions per second and the CPU time per question of the server and of Postgres.
//! A run asks about 1,000 questions (at least three a session); `BENCH_QUESTIONS=<n>` asks about
//! `n`, for runs long enough to profile.
//!
//! The tenant holds 200 short synthetic passages under a constant embedding, unless
//! `BENCH_PDFS=<directory of PDFs>` and `BENCH_QA=<QA file>` are set: then it holds real text — the
//! QA file's document and the directory's smallest other readable PDFs, up to 1,000 chunks
//! (`BENCH_TENANT_CHUNKS`; beyond the directory's size, the directory again under other names),
//! extracted, chunked and embedded here as ingestion would — and the service runs as by default,
//! questions embedded in-process by the local embedder (`LOCAL_MODEL_DIR`); the questions are the
//! QA file's, in turn. Answers still come from the zero-latency server; with `BENCH_EMBED=remote`
//! the questions' vectors do too (computed here beforehand by the same local model), so that the
//! figures are the rest of the service's. With `BENCH_CROSS=1` (real text, questions embedded
//! in-process) the tenant's documents also get their second vectors by the cross-language model
//! (`CROSS_LANGUAGE_MODEL`, multilingual-e5-small by default) and their scripts, as the
//! `cross_vectors` job writes them: a question is then searched by each model on its side of the
//! script line, when the tenant has documents on both.
//!
//! Works in a database of its own, created and dropped here.

#[path = "support/mod.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, routing::post};
use docuchat::{
    auth::{
        email::Email,
        jwt::{JwtKeys, Role},
        users,
    },
    config::Secret,
    ingestion::{chunk::Chunk, store::insert_chunks},
    tenants,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use support::percentile;
use tokio_tungstenite::{connect_async, tungstenite::Message};
use uuid::Uuid;

const DIMS: usize = 8;
const SECRET: &str = "bench-secret-that-is-long-enough-0123456789";

fn unit() -> Vec<f32> {
    vec![(1.0 / DIMS as f32).sqrt(); DIMS]
}

/// The response bodies of the real-text questions' embeddings (`BENCH_EMBED=remote`), by question.
static QUESTION_VECTORS: std::sync::OnceLock<std::collections::HashMap<String, axum::body::Bytes>> =
    std::sync::OnceLock::new();

/// Zero-latency OpenAI protocol: a constant embedding, and a 20-token streamed answer. The
/// bodies are made once: this server shares the machine with the service, and the figure is meant
/// to be the service's own cost.
async fn fake_openai() -> std::net::SocketAddr {
    fn embeddings_body(n: usize) -> String {
        let data: Vec<Value> =
            (0..n).map(|i| json!({"object": "embedding", "index": i, "embedding": unit()})).collect();
        json!({"object": "list", "model": "bench-embed", "data": data, "usage": {"prompt_tokens": 5, "total_tokens": 5}})
            .to_string()
    }
    static ONE_EMBEDDING: std::sync::LazyLock<axum::body::Bytes> =
        std::sync::LazyLock::new(|| embeddings_body(1).into());
    static ANSWER: std::sync::LazyLock<axum::body::Bytes> = std::sync::LazyLock::new(|| {
        let mut out = String::new();
        for i in 0..20 {
            let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench-chat",
                "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}]});
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        let usage = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench-chat", "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}});
        out.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
        out.into()
    });
    fn response(content_type: &'static str, body: axum::body::Bytes) -> axum::response::Response {
        axum::response::Response::builder()
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .expect("static response")
    }
    async fn embeddings(body: axum::body::Bytes) -> axum::response::Response {
        // a question of the real-text run: its own vector, computed beforehand
        if let Some(known) = QUESTION_VECTORS.get() {
            let input = serde_json::from_slice::<Value>(&body).ok();
            let question = input.as_ref().and_then(|v| v["input"][0].as_str().or_else(|| v["input"].as_str()));
            if let Some(body) = question.and_then(|q| known.get(q)) {
                return response("application/json", body.clone());
            }
        }
        // the service embeds one question at a time; anything else is answered in full
        let n = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["input"].as_array().map(Vec::len));
        match n {
            None | Some(1) => response("application/json", ONE_EMBEDDING.clone()),
            Some(n) => response("application/json", embeddings_body(n).into()),
        }
    }
    async fn chat() -> axum::response::Response {
        response("text/event-stream", ANSWER.clone())
    }
    let app = Router::new().route("/v1/embeddings", post(embeddings)).route("/v1/chat/completions", post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A server frame's type (the rest of the frame is not read).
#[derive(serde::Deserialize)]
struct FrameType<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    docuchat::install_crypto_provider();
    let idle: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let phases = std::env::args().nth(2).unwrap_or_else(|| "1,100,1000,100p,1000p".to_owned());
    let questions: usize = std::env::var("BENCH_QUESTIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let phases: Vec<(usize, usize, Pace)> = phases
        .split(',')
        .filter_map(|p| {
            let (n, pace) = if let Some(n) = p.strip_suffix('p') {
                (n, Pace::Pausing)
            } else if let Some(n) = p.strip_suffix('b') {
                (n, Pace::Bursts)
            } else {
                (p, Pace::Closed)
            };
            let sessions: usize = n.parse().ok()?;
            // about a thousand questions at small concurrency, three a session at large
            Some((sessions, (questions / sessions.max(1)).clamp(3, (questions / 5).max(200)), pace))
        })
        .collect();
    support::with_scratch_database(|url| async move { run(&url, idle, &phases).await }).await
}

/// How a run's sessions ask: again as soon as an answer is done; after a pause of 1–3 s; or all at
/// the same instant, the next burst when every answer of the last is done.
#[derive(Clone, Copy, PartialEq)]
enum Pace {
    Closed,
    Pausing,
    Bursts,
}

async fn run(url: &str, idle: usize, phases: &[(usize, usize, Pace)]) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
    docuchat::db::migrate(&pool).await?;
    let email = Email::parse("bench@bench.example").unwrap();
    let tenant = tenants::create(&pool, "Bench", "bench", &email).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let user = users::upsert_on_login(&pool, tenant.id, &email, Role::Admin).await?;
    let real = match (std::env::var("BENCH_PDFS"), std::env::var("BENCH_QA")) {
        (Ok(pdfs), Ok(qa)) => Some((pdfs, qa)),
        _ => None,
    };
    // `BENCH_EMBED=remote`: the real-text questions' vectors come from the zero-latency server
    // (computed here beforehand by the same model), so that the run measures the rest of the service
    let remote_embeddings = std::env::var("BENCH_EMBED").is_ok_and(|v| v == "remote");
    let questions: Vec<String> = if let Some((pdfs, qa)) = &real {
        let config = docuchat::config::Config::from_env()?;
        let embedder = docuchat::embed::from_config(&config)?;
        let docs = support::read_pdfs(pdfs, &config, embedder.as_ref()).await?;
        let questions = support::read_questions(qa)?;
        let qa_doc = questions.first().map(|q| q.doc.clone()).unwrap_or_default();
        // `BENCH_TENANT_CHUNKS` (1,000 by default): the tenant's size; beyond the directory's
        // chunks, the whole directory again under other names
        let want: usize = std::env::var("BENCH_TENANT_CHUNKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
        let total: usize = docs.iter().map(|d| d.chunks.len()).sum();
        let picked: Vec<&support::Document> = if want <= total {
            support::tenant_of_about(&docs, &qa_doc, want)
        } else {
            (0..want.div_ceil(total)).flat_map(|_| docs.iter()).collect()
        };
        let chunks: usize = picked.iter().map(|d| d.chunks.len()).sum();
        println!("tenant: {} documents, {chunks} chunks of real text; {} questions", picked.len(), questions.len());
        support::store_documents(&pool, &pool, tenant.id, &picked, embedder.model()).await?;
        if std::env::var("BENCH_CROSS").is_ok_and(|v| v == "1") {
            let previous = docuchat::embed::Previous::from_config(&config);
            let cross =
                config.cross_language_model.as_deref().and_then(|m| previous.get(m)).ok_or_else(|| {
                    anyhow::anyhow!("BENCH_CROSS=1 needs CROSS_LANGUAGE_MODEL and the local embedder")
                })?;
            let n = support::add_cross_vectors(&pool, &pool, tenant.id, cross.as_ref()).await?;
            let scripts: Vec<(String, i64)> =
                sqlx::query_as("select script, count(*) from documents where tenant_id = $1 group by 1 order by 1")
                    .bind(tenant.id)
                    .fetch_all(&pool)
                    .await?;
            println!("second vectors by {}: {n} chunks; documents by script: {scripts:?}", cross.model());
        }
        let texts: Vec<String> = questions.into_iter().map(|q| q.text).collect();
        if remote_embeddings {
            let vectors = embedder.embed(&texts).await.map_err(|e| anyhow::anyhow!("{e}"))?.vectors;
            let bodies = texts
                .iter()
                .zip(vectors)
                .map(|(t, v)| {
                    let body = json!({"object": "list", "model": embedder.model(),
                        "data": [{"object": "embedding", "index": 0, "embedding": v}],
                        "usage": {"prompt_tokens": 12, "total_tokens": 12}});
                    (t.clone(), axum::body::Bytes::from(body.to_string()))
                })
                .collect();
            QUESTION_VECTORS.set(bodies).ok();
        }
        texts
    } else {
        let doc = Uuid::now_v7();
        sqlx::query("insert into documents (id, tenant_id, filename, sha256, bytes, pages_total, status) values ($1, $2, 'd.pdf', $3, 1, 1, 'ready')")
            .bind(doc)
            .bind(tenant.id)
            .bind(doc.as_bytes().repeat(2))
            .execute(&pool)
            .await?;
        let chunks: Vec<Chunk> = (0..200)
            .map(|i| Chunk {
                ordinal: i,
                page_from: 1,
                page_to: 1,
                text: format!("passage {i} about the bench topic. It says something."),
                token_count: 10,
            })
            .collect();
        let vectors = vec![unit(); chunks.len()];
        let mut tx = pool.begin().await?;
        insert_chunks(&mut tx, tenant.id, doc, "bench-embed", &chunks, &vectors).await?;
        tx.commit().await?;
        vec!["What does the bench topic say?".to_owned()]
    };
    sqlx::query("vacuum analyze").execute(&pool).await?;
    let questions = Arc::new(questions);
    let token =
        JwtKeys::new(&Secret::new(SECRET), Duration::from_secs(3600)).issue(user.id, tenant.id, Role::Admin, 0)?;

    let upstream = fake_openai().await;
    let embedding: Vec<(&str, String)> = if real.is_some() && !remote_embeddings {
        vec![("EMBEDDING_PROVIDER", "local".to_owned())]
    } else if real.is_some() {
        vec![
            ("EMBEDDING_PROVIDER", "openai".to_owned()),
            ("EMBEDDING_MODEL", "all-MiniLM-L6-v2".to_owned()),
            ("EMBEDDING_DIMENSIONS", "384".to_owned()),
        ]
    } else {
        vec![
            ("EMBEDDING_PROVIDER", "openai".to_owned()),
            ("EMBEDDING_MODEL", "bench-embed".to_owned()),
            ("EMBEDDING_DIMENSIONS", DIMS.to_string()),
        ]
    };
    let mut env = vec![
        ("DATABASE_URL", url.to_owned()),
        ("JWT_SECRET", SECRET.to_owned()),
        ("OPENAI_BASE_URL", format!("http://{upstream}/v1")),
        ("OPENAI_API_KEY", "bench".to_owned()),
        ("CHAT_MODEL", "bench-chat".to_owned()),
        // one user asks thousands of questions a minute here: no rate limit
        ("RATE_LIMIT_CHAT_PER_MINUTE", "0".to_owned()),
        // and one user holds every socket
        ("WS_MAX_PER_USER", "10000000".to_owned()),
        ("WS_MAX_PER_TENANT", "10000000".to_owned()),
    ];
    env.extend(embedding);
    let server = support::Server::start(&env).await?;
    let (port, pid) = (server.port, server.pid());
    let ws_url = format!("ws://127.0.0.1:{port}/ws/chat?token={token}");
    println!("server pid {pid}, RSS at start {} MiB", rss_kib(pid) / 1024);

    // (b) time to first token
    // closed loop (each session asks again as soon as its answer is done: the machine saturates),
    // then people: a pause of 1–3 s between a session's questions
    // an untimed burst first fills the server's connection pool, as in a running service
    for (run, &(sessions, asks, pace)) in std::iter::once(&(100, 3, Pace::Closed)).chain(phases).enumerate() {
        let ws_url = Arc::new(ws_url.clone());
        let burst = Arc::new(tokio::sync::Barrier::new(sessions));
        let (server_cpu, postgres_cpu) = (support::cpu_ms(pid), support::postgres_cpu_ms());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for session in 0..sessions {
            let ws_url = ws_url.clone();
            let questions = questions.clone();
            let burst = burst.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = connect_async(ws_url.as_str()).await?;
                let (mut ttft, mut refused) = (Vec::new(), 0usize);
                for q in 0..asks {
                    match pace {
                        Pace::Pausing => {
                            // spread over 1–3 s, the same for every run
                            let pause = 1000 + (session * 7919 + q * 104_729) as u64 % 2000;
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        Pace::Bursts => {
                            burst.wait().await;
                        }
                        Pace::Closed => {}
                    }
                    let sent = Instant::now();
                    ws.send(Message::Text(
                        json!({"type": "ask", "session_id": null,
                               "content": questions[(session * 31 + q) % questions.len()]})
                        .to_string()
                        .into(),
                    ))
                    .await?;
                    let mut first = None;
                    loop {
                        let Some(msg) = ws.next().await else { anyhow::bail!("closed") };
                        let Message::Text(t) = msg? else { continue };
                        let kind: FrameType = serde_json::from_str(t.as_str())?;
                        match kind.kind {
                            "token" if first.is_none() => first = Some(sent.elapsed()),
                            "done" => break,
                            // an overloaded service says so (`service_unavailable`, after its
                            // pool's wait): counted, not timed
                            "error" if t.as_str().contains("service_unavailable") => {
                                first = None;
                                refused += 1;
                                break;
                            }
                            "error" => anyhow::bail!("error frame {}", t.as_str()),
                            _ => {}
                        }
                    }
                    if let Some(first) = first {
                        ttft.push(first.as_secs_f64() * 1000.0);
                    }
                }
                anyhow::Ok((ttft, refused))
            }));
        }
        let (mut all, mut refused) = (Vec::new(), 0);
        for t in tasks {
            let (times, n) = t.await??;
            all.extend(times);
            refused += n;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let (n, asked) = (all.len() as f64, (all.len() + refused) as f64);
        let (server_cpu, postgres_cpu) =
            ((support::cpu_ms(pid) - server_cpu) / asked, (support::postgres_cpu_ms() - postgres_cpu) / asked);
        all.sort_by(f64::total_cmp);
        if run == 0 {
            continue;
        }
        println!(
            "(b) {sessions:>4} concurrent sessions{}, {} questions in {elapsed:.1} s ({:.0}/s): time to first token \
             p50 {:.1} ms, p99 {:.1} ms; CPU per question: server {server_cpu:.2} ms, Postgres {postgres_cpu:.2} ms{}",
            match pace {
                Pace::Pausing => " pausing 1–3 s",
                Pace::Bursts => " in bursts",
                Pace::Closed => "",
            },
            all.len(),
            n / elapsed,
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            if refused > 0 { format!("; {refused} refused as overloaded") } else { String::new() }
        );
    }

    // (c) idle authenticated sockets
    let before = rss_kib(pid);
    let mut sockets = Vec::with_capacity(idle);
    for i in 0..idle {
        match connect_async(ws_url.as_str()).await {
            Ok((ws, _)) => sockets.push(ws),
            Err(e) => {
                println!("(c) stopped at {i} sockets: {e} (raise `ulimit -n`)");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "(c) {} idle authenticated sockets: server RSS {} MiB (was {} MiB before them; {:.1} KiB per socket)",
        sockets.len(),
        after / 1024,
        before / 1024,
        (after.saturating_sub(before)) as f64 / sockets.len().max(1) as f64
    );
    drop(sockets);
    Ok(())
}
