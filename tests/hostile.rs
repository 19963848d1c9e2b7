//! Hostile PDFs against a running `docuchat serve` process: each ends with a named error (or, where
//! the reader can fall back, a ready document), the server stays small and keeps answering
//! questions, and it stops within seconds of SIGTERM while a hostile extraction runs.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{database_url_of, free_port, pdfgen, ws::ask};
use docuchat::{
    auth::{
        email::Email,
        jwt::{JwtKeys, Role},
        users,
    },
    config::Secret,
    ingestion::{
        pdf::{ExtractError, Limits},
        sandbox::{Sandbox, SandboxConfig, SandboxError},
    },
    tenants,
};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "hostile-test-secret-that-is-long-enough-0123";
/// The server's peak resident memory stays under this, whatever the files (documented in the
/// README's limits): 400 MiB for the server with all-MiniLM-L6-v2, and 240 MiB more for the
/// weights of multilingual-e5-small (228 MiB resident, docs/BENCHMARKS.md), which the default
/// configuration loads too as its cross-language model.
const SERVER_PEAK_MIB: u64 = 400 + 240;

/// A `docuchat serve` process on a port of its own over the test's database; killed on drop.
struct Server {
    child: Child,
    base: String,
    addr: String,
    client: reqwest::Client,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(db: &PgPool, vars: &[(&str, &str)]) -> Server {
    docuchat::install_crypto_provider();
    let email = Email::parse("boss@acme.example").unwrap();
    let tenant = tenants::create(db, "Acme", "acme", &email).await.unwrap();
    let user = users::upsert_on_login(db, tenant.id, &email, Role::Admin).await.unwrap();
    let token = JwtKeys::new(&Secret::new(SECRET), Duration::from_secs(3600)).issue(user.id, tenant.id, Role::Admin, 0);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docuchat"));
    cmd.current_dir(std::env::temp_dir())
        .arg("serve")
        // a port of its own for the metrics: processes run side by side
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", database_url_of(db))
        .env("REDIS_URL", std::env::var("REDIS_URL").unwrap())
        .env("REDIS_KEY_PREFIX", format!("test:{}:", Uuid::new_v4()))
        .env("LOCAL_MODEL_DIR", std::env::var("LOCAL_MODEL_DIR").unwrap_or_default())
        .env("JWT_SECRET", SECRET)
        .env("BIND_ADDR", &addr)
        .env("INGEST_WORKERS", "1")
        .env("RATE_LIMIT_UPLOAD_PER_MINUTE", "0")
        .env("RATE_LIMIT_CHAT_PER_MINUTE", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let server = Server {
        child: cmd.spawn().unwrap(),
        base: format!("http://{addr}"),
        addr,
        client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        token: token.unwrap(),
    };
    for _ in 0..200 {
        if let Ok(r) = server.client.get(format!("{}/healthz", server.base)).send().await
            && r.status() == StatusCode::OK
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("docuchat serve did not come up on {}", server.addr);
}

impl Server {
    /// Uploads; `Ok(document id)` when accepted, `Err((status, code))` when refused.
    async fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<Uuid, (StatusCode, String)> {
        let part =
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()).mime_str("application/pdf").unwrap();
        let resp = self
            .client
            .post(format!("{}/v1/files", self.base))
            .header("X-Tenant-ID", "acme")
            .bearer_auth(&self.token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        if status == StatusCode::ACCEPTED {
            Ok(body["document_id"].as_str().unwrap().parse().unwrap())
        } else {
            Err((status, body["error"]["code"].as_str().unwrap_or("").to_owned()))
        }
    }

    async fn document(&self, id: Uuid) -> Value {
        let resp = self
            .client
            .get(format!("{}/v1/documents/{id}", self.base))
            .header("X-Tenant-ID", "acme")
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    async fn wait_until_settled(&self, id: Uuid, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let doc = self.document(id).await;
            if doc["status"] == "ready" || doc["status"] == "failed" || Instant::now() > until {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A process's peak resident memory, in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

/// The `pdf-child` processes of a parent.
fn pdf_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // the fields after the command's closing parenthesis: state, ppid, …
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.windows(9).any(|w| w == b"pdf-child") {
            found.push(pid);
        }
    }
    found
}

/// What may become of each file: refused at upload with one of these codes, or failed with one of
/// them, or (`"ready"`) read by a fallback.
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static [&'static str])> {
    vec![
        ("cmap-ranges.pdf", pdfgen::cmap_ranges(), &["no_extractable_text"]),
        ("cmap-bomb.pdf", pdfgen::cmap_bomb(), &["no_extractable_text"]),
        ("content-bomb.pdf", pdfgen::content_bomb(), &["pdf_too_complex"]),
        ("form-bomb.pdf", pdfgen::form_bomb(), &["no_extractable_text"]),
        ("huge-string.pdf", pdfgen::huge_string(), &["pdf_too_complex"]),
        ("deep-arrays.pdf", pdfgen::deep_arrays(), &["invalid_pdf", "pdf_too_complex"]),
        (
            "deep-dictionaries.pdf",
            pdfgen::deep_dictionaries(),
            &["invalid_pdf", "pdf_too_complex", "no_extractable_text"],
        ),
        ("self-pages.pdf", pdfgen::self_referencing_pages(), &["invalid_pdf"]),
        ("self-form.pdf", pdfgen::self_drawing_form(), &["no_extractable_text"]),
        ("object-streams.pdf", pdfgen::many_object_streams(), &["no_extractable_text", "extraction_timeout"]),
        ("broken-xref.pdf", pdfgen::broken_xref(), &["ready", "invalid_pdf"]),
        ("truncated.pdf", pdfgen::truncated(), &["invalid_pdf", "no_extractable_text"]),
        ("widths.pdf", pdfgen::absurd_widths(), &["no_extractable_text"]),
        ("width-ranges.pdf", pdfgen::repeated_width_ranges(), &["no_extractable_text"]),
        ("glyph-count.pdf", pdfgen::absurd_glyph_count(), &["ready"]),
        // 500 pages of 200,000 operators each, against a 3 s budget
        ("slow.pdf", pdfgen::slow(), &["extraction_timeout"]),
    ]
}

#[sqlx::test]
async fn hostile_pdfs_end_with_named_errors_while_the_server_stays_small_and_answers(db: PgPool) {
    common::init_test_log();
    let server = serve(&db, &[("EXTRACT_TIMEOUT_SECONDS", "3")]).await;
    let plain = server.upload("plain.pdf", pdfgen::plain()).await.unwrap();
    assert_eq!(server.wait_until_settled(plain, Duration::from_secs(60)).await["status"], "ready");

    let mut accepted = Vec::new();
    for (name, bytes, expected) in corpus() {
        match server.upload(name, bytes).await {
            Ok(id) => accepted.push((name, id, expected)),
            Err((status, code)) => {
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {code}");
                assert!(expected.contains(&code.as_str()), "{name} refused with {code}, expected one of {expected:?}");
            }
        }
    }
    // questions are answered while the worker reads the hostile files
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat?token={}", server.addr, server.token))
        .await
        .expect("the chat socket opens");
    let mut answered = 0;
    for (name, id, expected) in accepted {
        let frames = ask(&mut ws, None, "What is this plain page about?").await;
        assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
        answered += 1;
        let doc = server.wait_until_settled(id, Duration::from_secs(60)).await;
        let outcome = match doc["status"].as_str().unwrap() {
            "ready" => "ready".to_owned(),
            "failed" => doc["error"]["code"].as_str().unwrap().to_owned(),
            other => panic!("{name} is still {other}: {doc}"),
        };
        assert!(expected.contains(&outcome.as_str()), "{name} ended {outcome}, expected one of {expected:?}: {doc}");
    }
    assert!(answered > 0);
    let peak = peak_mib(server.pid());
    eprintln!("server peak resident memory: {peak} MiB");
    assert!(peak < SERVER_PEAK_MIB, "the server reached {peak} MiB");
    assert!(pdf_children(server.pid()).is_empty(), "a reader outlived its job");
}

/// The children's hard limits, on their own: memory, the deadline, a program that is not there.
#[tokio::test]
async fn the_child_s_hard_limits_end_it_with_named_errors() {
    let sandbox = |memory_mb: u64| {
        Sandbox::new(SandboxConfig {
            program: env!("CARGO_BIN_EXE_docuchat").into(),
            memory_bytes: memory_mb << 20,
            max_text_bytes: 1 << 20,
            inspect_timeout: Duration::from_secs(20),
            inspections: 1,
        })
    };
    let limits = |secs: u64| Limits { time_budget: Duration::from_secs(secs), ..Limits::default() };
    let never = CancellationToken::new();
    // within every cap of the reader, but over 128 MB of address space: the child is stopped
    let heavy = pdfgen::heavy();
    let started = Instant::now();
    match sandbox(128).extract(&heavy, &limits(60), &never, |_| {}).await {
        Err(SandboxError::Pdf(ExtractError::TooComplex(why))) => assert!(why.contains("memory"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // and with room, the same file reads (no text: it draws nothing)
    let roomy = sandbox(2048).extract(&heavy, &limits(60), &never, |_| {}).await;
    assert!(matches!(roomy, Err(SandboxError::Pdf(ExtractError::NoText))), "{roomy:?}");
    // the deadline: the reader's own budget, or the parent's clock a second later
    let started = Instant::now();
    let slow = sandbox(1024).extract(&pdfgen::slow(), &limits(1), &never, |_| {}).await;
    assert!(matches!(slow, Err(SandboxError::Pdf(ExtractError::Timeout))), "{slow:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    // more text than allowed
    let mut pages = Vec::new();
    for i in 0..40 {
        pages.push(format!("BT /F1 12 Tf 72 700 Td ({}) Tj ET", format!("word{i} ").repeat(8000)));
    }
    let wordy = pdfgen::pages(&pages);
    match sandbox(1024).extract(&wordy, &limits(60), &never, |_| {}).await {
        Err(SandboxError::Pdf(ExtractError::TooComplex(why))) => assert!(why.contains("text"), "{why}"),
        other => panic!("{other:?}"),
    }
    // a reader that cannot be started is the operator's problem, not the file's
    let missing = Sandbox::new(SandboxConfig {
        program: "/nonexistent/docuchat".into(),
        memory_bytes: 1 << 30,
        max_text_bytes: 1 << 20,
        inspect_timeout: Duration::from_secs(5),
        inspections: 1,
    });
    assert!(matches!(missing.inspect(&pdfgen::plain(), 500).await, Err(SandboxError::Unavailable(_))));
    // stopping kills the reader at once
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    let started = Instant::now();
    let stopped = sandbox(1024).extract(&pdfgen::slow(), &limits(60), &stop, |_| {}).await;
    assert!(matches!(stopped, Err(SandboxError::Interrupted)), "{stopped:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[sqlx::test]
async fn an_upload_is_held_no_longer_than_the_inspection_deadline(db: PgPool) {
    let server = serve(&db, &[("INSPECT_TIMEOUT_SECONDS", "1")]).await;
    let started = Instant::now();
    let refused = server.upload("slow-to-open.pdf", pdfgen::object_streams(2000)).await;
    let took = started.elapsed();
    assert_eq!(refused, Err((StatusCode::UNPROCESSABLE_ENTITY, "extraction_timeout".to_owned())));
    // the deadline, the parent's second of grace, and the upload itself
    assert!(took < Duration::from_secs(4), "the upload took {took:?}");
    assert!(pdf_children(server.pid()).is_empty());
}

#[sqlx::test]
async fn a_file_that_broke_a_limit_stays_failed(db: PgPool) {
    let server = serve(&db, &[]).await;
    let id = server.upload("bomb.pdf", pdfgen::content_bomb()).await.unwrap();
    let doc = server.wait_until_settled(id, Duration::from_secs(60)).await;
    assert_eq!(doc["error"]["code"], "pdf_too_complex", "{doc}");
    let attempts: Option<i32> = sqlx::query_scalar("select attempts from ingestion_jobs where document_id = $1")
        .bind(id)
        .fetch_optional(&db)
        .await
        .unwrap();
    assert_eq!(attempts, None, "no job is left to retry it");
    // the same bytes again: the failed document with its error, not a new attempt
    assert_eq!(server.upload("again.pdf", pdfgen::content_bomb()).await.unwrap(), id);
    let again = server.document(id).await;
    assert_eq!((again["status"].as_str(), again["error"]["code"].as_str()), (Some("failed"), Some("pdf_too_complex")));
    let jobs: i64 = sqlx::query_scalar("select count(*) from ingestion_jobs").fetch_one(&db).await.unwrap();
    assert_eq!(jobs, 0);
    // and a reindex leaves it alone
    let n = docuchat::documents::requeue_for_model(&db, "another-model", None, None, 5).await.unwrap();
    assert_eq!(n, 0);
}

#[sqlx::test]
async fn serve_stops_within_seconds_of_sigterm_while_a_hostile_extraction_runs(db: PgPool) {
    let mut server = serve(&db, &[("EXTRACT_TIMEOUT_SECONDS", "120")]).await;
    let id = server.upload("slow.pdf", pdfgen::slow()).await.unwrap();
    let mut reader = Vec::new();
    for _ in 0..200 {
        reader = pdf_children(server.pid());
        if !reader.is_empty() && server.document(id).await["status"] == "processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!reader.is_empty(), "no reader started");
    // the reader runs under its limits — which it sets itself first thing after it starts, so
    // they are read once it has (a child caught in its first microseconds has not yet)
    // (its OOM score is the last thing it sets)
    for _ in 0..100 {
        let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", reader[0])).unwrap();
        if adj.trim() == "1000" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", reader[0])).unwrap();
    let line = |name: &str| {
        limits.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert!(line("Max address space").contains(&(1024u64 << 20).to_string()), "{limits}");
    assert!(line("Max cpu time").contains("121"), "{limits}");
    assert!(line("Max core file size").contains(" 0 0 "), "{limits}");
    assert!(line("Max file size").contains(" 0 0 "), "{limits}");
    let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", reader[0])).unwrap();
    assert_eq!(adj.trim(), "1000");
    // SAFETY: kill(2) on our own child's pid
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "serve still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    eprintln!("serve stopped {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "serve took {took:?} to stop");
    for pid in reader {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the reader {pid} outlived the server");
    }
    // the job was given back, without using up an attempt, to run again later
    let (status, attempts): (String, i32) = sqlx::query_as(
        "select d.status, j.attempts from documents d join ingestion_jobs j on j.document_id = d.id where d.id = $1",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("queued", 0));
}
