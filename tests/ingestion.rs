//! Uploads and the ingestion pipeline, end to end: real Postgres with pgvector, embeddings from
//! a server speaking OpenAI's protocol, and the committed fixture PDFs.

mod common;

use std::{
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use common::{ADMIN, TestApp, error_of, fixture, openai::EmbeddingServer};
use docuchat::ingestion::worker::Outcome;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

struct Setup {
    app: TestApp,
    embeddings: EmbeddingServer,
    admin: String,
}

async fn setup_with(db: PgPool, tweak: impl FnOnce(&mut docuchat::config::Config) + Send + 'static) -> Setup {
    let embeddings = EmbeddingServer::start().await;
    let app = TestApp::builder().vars(embeddings.vars()).config(tweak).spawn(db).await;
    let admin = app.tenant_with_admin("acme", ADMIN).await;
    Setup { app, embeddings, admin }
}

async fn setup(db: PgPool) -> Setup {
    setup_with(db, |_| {}).await
}

async fn upload_ok(s: &Setup, name: &str) -> Uuid {
    let resp = s.app.upload("acme", &s.admin, name, fixture(name)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    body["document_id"].as_str().unwrap().parse().unwrap()
}

/// Rows in `chunks` for a document.
async fn chunk_rows(s: &Setup, id: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from chunks where document_id = $1")
        .bind(id)
        .fetch_one(&s.app.db)
        .await
        .unwrap()
}

async fn document(s: &Setup, id: Uuid) -> Value {
    let resp = s.app.get_as(&format!("/v1/documents/{id}"), "acme", &s.admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[sqlx::test]
async fn a_pdf_becomes_searchable_chunks(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "english-2page.pdf").await;
    let doc = document(&s, id).await;
    assert_eq!(doc["status"], "queued");
    assert_eq!(doc["pages_total"], 2);
    assert_eq!(doc["filename"], "english-2page.pdf");

    let outcomes = s.app.drain().await;
    assert_eq!(outcomes.len(), 1);
    assert!(matches!(outcomes[0].1, Outcome::Ready { .. }), "{outcomes:?}");

    let doc = document(&s, id).await;
    assert_eq!(doc["status"], "ready");
    assert_eq!(doc["progress"]["pages_done"], 2);
    assert_eq!(doc["progress"]["pages_total"], 2);
    assert_eq!(doc["embedding_model"], common::openai::MODEL);
    assert!(doc["error"].is_null());
    let chunk_count = doc["chunk_count"].as_i64().unwrap();
    assert!(chunk_count >= 2, "{doc}");

    let rows: Vec<(i32, i32, i32, String, i32, i32)> = sqlx::query_as(
        "select ordinal, page_from, page_to, text, token_count, vector_dims(embedding) from chunks
          where document_id = $1 order by ordinal",
    )
    .bind(id)
    .fetch_all(&s.app.db)
    .await
    .unwrap();
    assert_eq!(rows.len() as i64, chunk_count);
    for (i, (ordinal, from, to, text, tokens, dims)) in rows.iter().enumerate() {
        assert_eq!(*ordinal, i as i32);
        assert!((1..=2).contains(from) && from <= to && *to <= 2);
        assert!(*tokens > 0 && *tokens <= 400, "{tokens}");
        assert_eq!(*dims as usize, common::openai::DIMS);
        assert!(!text.trim().is_empty());
    }
    assert_eq!(rows[0].1, 1);
    assert_eq!(rows.last().unwrap().2, 2);
    let all: String = rows.iter().map(|r| r.3.as_str()).collect::<Vec<_>>().join(" ");
    assert!(all.contains("Most classical statistics"), "{all}");

    // full-text search works on the stored chunks: a chunk has postings for both words
    let hits: i64 = sqlx::query_scalar(
        "select count(*) from chunks c where c.document_id = $1
            and (select count(*) from text_postings p where p.chunk_id = c.id and p.term in ('classical', 'statistics')) = 2",
    )
    .bind(id)
    .fetch_one(&s.app.db)
    .await
    .unwrap();
    assert!(hits >= 1);

    // the embedding tokens are in the ledger, as the embedding server counted them
    let (kind, model, tokens): (String, String, i64) =
        sqlx::query_as("select kind, model, tokens from usage_events where document_id = $1")
            .bind(id)
            .fetch_one(&s.app.db)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), model.as_str()), ("embedding", common::openai::MODEL));
    assert_eq!(tokens as u64, s.embeddings.control.tokens.load(Ordering::SeqCst));
    assert!(tokens > 0);
}

#[sqlx::test]
async fn the_same_bytes_twice_return_the_same_document(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "two-column.pdf").await;
    s.app.drain().await;
    let resp = s.app.upload("acme", &s.admin, "renamed.pdf", fixture("two-column.pdf")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["document_id"], id.to_string());
    assert_eq!(body["duplicate"], true);
    assert_eq!(body["status"], "ready");
    assert!(s.app.drain().await.is_empty(), "nothing new to ingest");
    let docs: i64 = sqlx::query_scalar("select count(*) from documents").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(docs, 1);
}

#[sqlx::test]
async fn uploads_are_for_admins(db: PgPool) {
    let s = setup(db).await;
    let member = s.app.login("acme", "someone@acme.example").await;
    let (status, code, _) = error_of(s.app.upload("acme", &member, "a.pdf", fixture("english-2page.pdf")).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    // but members can read the tenant's documents
    let id = upload_ok(&s, "english-2page.pdf").await;
    assert_eq!(s.app.get_as(&format!("/v1/documents/{id}"), "acme", &member).await.status(), StatusCode::OK);
    let resp = s.app.delete_as(&format!("/v1/documents/{id}"), "acme", &member).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test]
async fn bad_uploads_get_clear_errors(db: PgPool) {
    let s = setup_with(db, |c| {
        c.ingestion.max_upload_bytes = 100_000;
        c.ingestion.max_pages = 1;
    })
    .await;
    let cases = [
        ("english-2page.pdf", StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"), // 119 kB > 100 kB
        ("not-a-pdf.zip", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("encrypted.pdf", StatusCode::UNPROCESSABLE_ENTITY, "encrypted_pdf"),
        ("two-column.pdf", StatusCode::ACCEPTED, ""),
    ];
    for (name, status, code) in cases {
        let resp = s.app.upload("acme", &s.admin, name, fixture(name)).await;
        if status == StatusCode::ACCEPTED {
            assert_eq!(resp.status(), status, "{name}");
            continue;
        }
        let (got, got_code, _) = error_of(resp).await;
        assert_eq!((got, got_code.as_str()), (status, code), "{name}");
    }
    // a PDF over the one-page limit (the truncated file still declares its two pages)
    let resp = s.app.upload("acme", &s.admin, "truncated.pdf", fixture("truncated.pdf")).await;
    let (got, code, message) = error_of(resp).await;
    assert_eq!((got, code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "too_many_pages"), "{message}");
    assert!(message.contains("2 pages"));

    // no file field, an empty file, not multipart at all
    let form = reqwest::multipart::Form::new().text("other", "x");
    let resp = s
        .app
        .client
        .post(s.app.url("/v1/files"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(&s.admin)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.1, "file_required");
    let resp = s.app.upload("acme", &s.admin, "empty.pdf", Vec::new()).await;
    assert_eq!(error_of(resp).await.1, "empty_file");
    let resp = s
        .app
        .client
        .post(s.app.url("/v1/files"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(&s.admin)
        .json(&serde_json::json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
}

#[sqlx::test]
async fn a_large_upload_is_refused_while_streaming(db: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup_with(db, |c| c.ingestion.max_upload_bytes = 1024 * 1024).await;
    // 8 MB sent chunked, with no Content-Length: refused once the first megabyte is passed
    let mut stream = tokio::net::TcpStream::connect(s.app.addr).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=XYZ\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let send = |data: Vec<u8>| {
        let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
        framed.extend_from_slice(&data);
        framed.extend_from_slice(b"\r\n");
        framed
    };
    let preamble =
        b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n\r\n%PDF-1.7\n".to_vec();
    stream.write_all(&send(preamble)).await.unwrap();
    let mut sent = 0;
    for _ in 0..128 {
        if stream.write_all(&send(vec![b'0'; 64 * 1024])).await.is_err() {
            break;
        }
        sent += 64 * 1024;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "sent {sent} bytes, got: {response}");
    assert!(response.contains("file_too_large"));
    let docs: i64 = sqlx::query_scalar("select count(*) from documents").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(docs, 0);
}

#[sqlx::test]
async fn scanned_and_damaged_pdfs_fail_with_a_reason(db: PgPool) {
    let s = setup(db).await;
    let scanned = upload_ok(&s, "scanned.pdf").await;
    let truncated = upload_ok(&s, "truncated.pdf").await;
    s.app.drain().await;
    for id in [scanned, truncated] {
        let doc = document(&s, id).await;
        assert_eq!(doc["status"], "failed", "{doc}");
        assert_eq!(doc["error"]["code"], "no_extractable_text");
        assert!(doc["error"]["message"].as_str().unwrap().contains("OCR"));
        assert_eq!(doc["chunk_count"], 0);
    }
}

#[sqlx::test]
async fn persian_documents_keep_their_text(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "persian.pdf").await;
    s.app.drain().await;
    assert_eq!(document(&s, id).await["status"], "ready");
    let text: String =
        sqlx::query_scalar("select string_agg(text, ' ' order by ordinal) from chunks where document_id = $1")
            .bind(id)
            .fetch_one(&s.app.db)
            .await
            .unwrap();
    // base letters in logical order (no presentation forms, no bidi marks)
    assert!(text.contains("ساختار فایل"), "{text}");
    assert!(!text.chars().any(|c| ('\u{FB50}'..='\u{FEFF}').contains(&c)));
    assert!(!text.chars().any(|c| matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}')));
}

#[sqlx::test]
async fn embedding_server_errors_are_retried(db: PgPool) {
    let s = setup(db).await;
    s.embeddings.control.fail_next.store(2, Ordering::SeqCst);
    let id = upload_ok(&s, "two-column.pdf").await;
    s.app.drain().await;
    assert_eq!(document(&s, id).await["status"], "ready");
    assert!(s.embeddings.control.requests.load(Ordering::SeqCst) >= 3);
}

#[sqlx::test]
async fn an_embedding_request_that_cannot_succeed_fails_the_document_at_once(db: PgPool) {
    let s = setup(db).await;
    s.embeddings.control.reject_next.store(1, Ordering::SeqCst);
    let id = upload_ok(&s, "two-column.pdf").await;
    let outcomes = s.app.drain().await;
    assert_eq!(outcomes, vec![(id, Outcome::Failed { code: "embedding_failed" })]);
    // no second attempt, neither by the embedder's client nor by the queue
    assert_eq!(s.embeddings.control.requests.load(Ordering::SeqCst), 1);
    let doc = document(&s, id).await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"]["code"], "embedding_failed");
    // a sentence of ours, not the upstream's answer or address
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(!message.contains("HTTP") && !message.contains("127.0.0.1") && !message.contains("bad input"), "{message}");
    let jobs: i64 = sqlx::query_scalar("select count(*) from ingestion_jobs").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(jobs, 0);
}

#[sqlx::test]
async fn a_document_deleted_while_it_is_embedded_is_still_charged(db: PgPool) {
    use docuchat::usage::quota::{self, Period, QuotaScope};
    let s = setup(db).await;
    let tenant: Uuid = sqlx::query_scalar("select id from tenants").fetch_one(&s.app.db).await.unwrap();
    // a quota, so that the embedding is admitted with a hold
    quota::set(&s.app.db, tenant, QuotaScope::Tenant, None, Period::Day, Some(10_000_000), quota::SetBy::Admin)
        .await
        .unwrap();
    s.app.state.quotas.forget();
    s.embeddings.control.delay_ms.store(1500, Ordering::SeqCst);
    let id = upload_ok(&s, "two-column.pdf").await;
    let delete = async {
        while s.embeddings.control.requests.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let resp = s.app.delete_as(&format!("/v1/documents/{id}"), "acme", &s.admin).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    };
    let (outcomes, ()) = tokio::join!(s.app.drain(), delete);
    assert_eq!(outcomes, vec![(id, Outcome::Lost)]);
    assert_eq!(chunk_rows(&s, id).await, 0);
    // the tokens the embedding server counted are in the ledger, charged to the uploader
    let spent = s.embeddings.control.tokens.load(Ordering::SeqCst) as i64;
    assert!(spent > 0);
    let (tokens, user): (i64, Option<Uuid>) =
        sqlx::query_as("select tokens, user_id from usage_events where document_id = $1 and kind = 'embedding'")
            .bind(id)
            .fetch_one(&s.app.db)
            .await
            .unwrap();
    assert_eq!(tokens, spent);
    assert!(user.is_some());
    // and the hold was settled by that row, not left to expire
    let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(held, 0);
}

/// A worker ends a job by locking the job's row and then the document's; a delete arriving in
/// between waits for it and then removes the document (it used to lock the document first and
/// deadlock with the worker, which Postgres ended by failing one of them: a 500 for the client).
#[sqlx::test]
async fn a_document_deleted_while_its_job_ends_waits_and_is_deleted(db: PgPool) {
    use docuchat::{documents::lifecycle, ingestion::queue};
    let s = setup(db).await;
    let id = upload_ok(&s, "english-2page.pdf").await;
    let job = queue::claim(&s.app.db, "w1", Duration::from_secs(60)).await.unwrap().expect("the upload's job");
    assert_eq!(job.document_id, id);
    // the worker's transaction, in the worker's order: the job, then the document
    let mut worker = s.app.db.begin().await.unwrap();
    assert!(queue::finish(&mut *worker, job.id, "w1").await.unwrap());
    let path = format!("/v1/documents/{id}");
    let delete = tokio::spawn({
        let (client, url, token) = (s.app.client.clone(), s.app.url(&path), s.admin.clone());
        async move { client.delete(url).header("X-Tenant-ID", "acme").bearer_auth(token).send().await.unwrap().status() }
    });
    // until the delete waits on a lock the worker holds
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                  where datname = current_database() and wait_event_type = 'Lock' and query ilike 'delete from%'",
            )
            .fetch_one(&s.app.db)
            .await
            .unwrap();
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the delete waits for the worker");
    lifecycle::set_scripts(&mut *worker, job.tenant_id, id, "latin", None).await.unwrap();
    worker.commit().await.unwrap();
    assert_eq!(delete.await.unwrap(), StatusCode::NO_CONTENT);
    let left: i64 =
        sqlx::query_scalar("select count(*) from documents where id = $1").bind(id).fetch_one(&s.app.db).await.unwrap();
    assert_eq!(left, 0);
}

#[sqlx::test]
async fn documents_are_listed_newest_first_and_paginated(db: PgPool) {
    let s = setup(db).await;
    let a = upload_ok(&s, "english-2page.pdf").await;
    let b = upload_ok(&s, "two-column.pdf").await;
    let c = upload_ok(&s, "persian.pdf").await;
    let page1: Value = s.app.get_as("/v1/documents?limit=2", "acme", &s.admin).await.json().await.unwrap();
    let ids: Vec<&str> = page1["documents"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![c.to_string(), b.to_string()]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value =
        s.app.get_as(&format!("/v1/documents?limit=2&after={cursor}"), "acme", &s.admin).await.json().await.unwrap();
    let ids: Vec<&str> = page2["documents"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a.to_string()]);
    assert!(page2["next_cursor"].is_null());
    let (status, code, _) = error_of(s.app.get_as("/v1/documents?limit=1000", "acme", &s.admin).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_limit"));
}

#[sqlx::test]
async fn deleting_removes_chunks_and_other_tenants_see_nothing(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "two-column.pdf").await;
    s.app.drain().await;

    s.app.create_tenant("other", "eve@other.example").await;
    let eve = s.app.login("other", "eve@other.example").await;
    for path in [format!("/v1/documents/{id}"), "/v1/documents/not-a-uuid".to_string()] {
        let (status, code, _) = error_of(s.app.get_as(&path, "other", &eve).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "document_not_found"));
    }
    let listed: Value = s.app.get_as("/v1/documents", "other", &eve).await.json().await.unwrap();
    assert_eq!(listed["documents"].as_array().unwrap().len(), 0);
    let resp = s.app.delete_as(&format!("/v1/documents/{id}"), "other", &eve).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let path = format!("/v1/documents/{id}");
    let delete = || s.app.delete_as(&path, "acme", &s.admin);
    assert_eq!(delete().await.status(), StatusCode::NO_CONTENT);
    assert_eq!(delete().await.status(), StatusCode::NOT_FOUND);
    let chunks: i64 = chunk_rows(&s, id).await;
    assert_eq!(chunks, 0);
    let files: i64 = sqlx::query_scalar("select count(*) from document_files where document_id = $1")
        .bind(id)
        .fetch_one(&s.app.db)
        .await
        .unwrap();
    assert_eq!(files, 0);
    assert_eq!(s.app.get_as(&format!("/v1/documents/{id}"), "acme", &s.admin).await.status(), StatusCode::NOT_FOUND);
    // the ledger keeps what was spent
    let spent: i64 = sqlx::query_scalar("select count(*) from usage_events where document_id = $1")
        .bind(id)
        .fetch_one(&s.app.db)
        .await
        .unwrap();
    assert_eq!(spent, 1);
}

#[sqlx::test]
async fn running_a_job_twice_does_not_duplicate_chunks(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "english-2page.pdf").await;
    s.app.drain().await;
    let first: i64 = chunk_rows(&s, id).await;
    // queue it again, as a retry after a crash between storing and acknowledging would
    sqlx::query(
        "insert into ingestion_jobs (document_id, tenant_id) select id, tenant_id from documents where id = $1",
    )
    .bind(id)
    .execute(&s.app.db)
    .await
    .unwrap();
    s.app.drain().await;
    let second: i64 = chunk_rows(&s, id).await;
    assert_eq!(first, second);
    assert_eq!(document(&s, id).await["chunk_count"].as_i64().unwrap(), second);
}

#[sqlx::test]
async fn a_killed_worker_s_job_is_taken_again(db: PgPool) {
    let s = setup(db.clone()).await;
    // slow embeddings keep the job in flight long enough to kill the worker mid-job
    s.embeddings.control.delay_ms.store(1500, Ordering::SeqCst);
    let id = upload_ok(&s, "english-2page.pdf").await;

    let url = common::database_url_of(&db);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docuchat"));
    cmd.current_dir(std::env::temp_dir())
        .args(["worker", "--concurrency", "1"])
        // a port of its own for the metrics: processes run side by side
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", url)
        .env("REDIS_URL", std::env::var("REDIS_URL").unwrap())
        .env("INGEST_LEASE_SECONDS", "5")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in s.embeddings.vars() {
        cmd.env(k, v);
    }
    let mut worker = cmd.spawn().unwrap();
    let mut processing = false;
    for _ in 0..100 {
        if document(&s, id).await["status"] == "processing" && s.embeddings.control.requests.load(Ordering::SeqCst) > 0
        {
            processing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(processing, "the worker never started the job");
    worker.kill().unwrap(); // SIGKILL: no clean-up
    worker.wait().unwrap();
    assert_eq!(document(&s, id).await["status"], "processing");

    // another worker takes the job once the lease runs out
    s.embeddings.control.delay_ms.store(0, Ordering::SeqCst);
    let mut ready = false;
    for _ in 0..40 {
        s.app.drain().await;
        if document(&s, id).await["status"] == "ready" {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ready, "the job was not resumed after the lease expired");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct ordinal) from chunks where document_id = $1")
            .bind(id)
            .fetch_one(&s.app.db)
            .await
            .unwrap();
    assert_eq!(rows, distinct);
    assert_eq!(document(&s, id).await["chunk_count"].as_i64().unwrap(), rows);
    let attempts: Option<i32> = sqlx::query_scalar("select attempts from ingestion_jobs where document_id = $1")
        .bind(id)
        .fetch_optional(&s.app.db)
        .await
        .unwrap();
    assert!(attempts.is_none(), "the job is done");
}

#[sqlx::test]
async fn reindex_re_embeds_documents_of_another_model(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "two-column.pdf").await;
    s.app.drain().await;
    let before: i64 = chunk_rows(&s, id).await;

    // nothing to do while the model is the configured one
    let n = docuchat::documents::requeue_for_model(&s.app.db, common::openai::MODEL, None, None, 5).await.unwrap();
    assert_eq!(n, 0);

    // pretend the chunks came from an older model
    sqlx::query("update documents set embedding_model = 'old-model' where id = $1")
        .bind(id)
        .execute(&s.app.db)
        .await
        .unwrap();
    sqlx::query("update chunks set embedding_model = 'old-model' where document_id = $1")
        .bind(id)
        .execute(&s.app.db)
        .await
        .unwrap();
    let n = docuchat::documents::requeue_for_model(&s.app.db, common::openai::MODEL, None, None, 5).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(document(&s, id).await["status"], "queued");
    s.app.drain().await;
    let doc = document(&s, id).await;
    assert_eq!(doc["status"], "ready");
    assert_eq!(doc["embedding_model"], common::openai::MODEL);
    let (after, old): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where embedding_model = 'old-model') from chunks where document_id = $1",
    )
    .bind(id)
    .fetch_one(&s.app.db)
    .await
    .unwrap();
    assert_eq!((after, old), (before, 0));
}

#[sqlx::test]
async fn binary_copy_writes_the_same_rows_as_parameterised_inserts(db: PgPool) {
    use docuchat::ingestion::{
        chunk::Chunk,
        store::{insert_chunks, insert_chunks_unnest},
    };
    let tenant = Uuid::now_v7();
    sqlx::query("insert into tenants (id, name, slug, admin_email) values ($1, 'T', 't', 'a@t.example')")
        .bind(tenant)
        .execute(&db)
        .await
        .unwrap();
    let chunks: Vec<Chunk> = (0..1200)
        .map(|i| Chunk {
            ordinal: i,
            page_from: i / 7 + 1,
            page_to: i / 7 + 1 + i % 2,
            // Persian, quotes, backslashes and tabs: nothing may be escaped or lost
            text: format!(
                "چانک {i}: «متن» with \\backslash, 'quotes' and\ttabs; ünïcödé {}",
                "x".repeat(i as usize % 50)
            ),
            token_count: 10 + i,
        })
        .collect();
    let vectors: Vec<Vec<f32>> =
        (0..chunks.len()).map(|i| (0..384).map(|d| ((i * 13 + d * 7) % 101) as f32 / 101.0 - 0.5).collect()).collect();
    let mut documents = Vec::new();
    for copy in [true, false] {
        let doc = Uuid::now_v7();
        sqlx::query("insert into documents (id, tenant_id, filename, sha256, bytes, pages_total) values ($1, $2, 'd.pdf', $3, 1, 1)")
            .bind(doc)
            .bind(tenant)
            .bind(doc.as_bytes().repeat(2))
            .execute(&db)
            .await
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        if copy {
            insert_chunks(&mut tx, tenant, doc, "all-MiniLM-L6-v2", &chunks, &vectors).await.unwrap();
        } else {
            insert_chunks_unnest(&mut tx, tenant, doc, "all-MiniLM-L6-v2", &chunks, &vectors).await.unwrap();
        }
        tx.commit().await.unwrap();
        documents.push(doc);
    }
    let rows = |doc: Uuid| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, (i32, i32, i32, String, i32, String, String, String)>(
                "select ordinal, page_from, page_to, text, token_count, embedding::text, embedding_model,
                        coalesce((select string_agg(p.term || ':' || p.impact, ' ' order by p.term)
                                    from text_postings p where p.chunk_id = c.id), '')
                   from chunks c where document_id = $1 order by ordinal",
            )
            .bind(doc)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    let (copied, inserted) = (rows(documents[0]).await, rows(documents[1]).await);
    assert_eq!(copied.len(), chunks.len());
    assert_eq!(copied, inserted);
    assert_eq!(copied[5].3, chunks[5].text);
    // a copy that fails leaves the transaction usable for a clean rollback, and writes nothing
    let mut tx = db.begin().await.unwrap();
    let err = insert_chunks(&mut tx, tenant, Uuid::now_v7(), "all-MiniLM-L6-v2", &chunks[..1], &vectors[..1]).await;
    assert!(err.is_err(), "a chunk of an unknown document is refused");
    tx.rollback().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("select count(*) from chunks").fetch_one(&db).await.unwrap();
    assert_eq!(n, 2 * chunks.len() as i64);
}

/// The events of a document's stream, as (event, data), until the server ends it.
async fn follow(s: &Setup, id: Uuid) -> Vec<(String, Value)> {
    let mut resp = s
        .app
        .client
        .get(s.app.url(&format!("/v1/documents/{id}/events")))
        .header("x-tenant-id", "acme")
        .bearer_auth(&s.admin)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(d).unwrap());
                }
            }
            Some((event?, data?))
        })
        .collect()
}

#[sqlx::test]
async fn progress_is_followed_through_every_stage_and_counted(db: PgPool) {
    let s = setup(db).await;
    let before = s.app.metrics().await;
    // some hundred chunks in two batches, each embedded slowly: the embedding stage lasts a few
    // of the worker's heartbeats
    let pages: Vec<String> = (0..40)
        .map(|p| {
            let words: Vec<String> = (0..400).map(|w| format!("term{p}x{w}")).collect();
            format!("BT /F1 9 Tf 72 700 Td ({}) Tj ET", words.join(" "))
        })
        .collect();
    let resp = s.app.upload("acme", &s.admin, "many-chunks.pdf", common::pdfgen::pages(&pages)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id: Uuid = resp.json::<Value>().await.unwrap()["document_id"].as_str().unwrap().parse().unwrap();
    s.embeddings.control.delay_ms.store(1500, Ordering::SeqCst);

    let following = {
        let s = &s;
        async move { follow(s, id).await }
    };
    let draining = async {
        // the stream is open before the work starts
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.app.drain().await
    };
    let (events, outcomes) = tokio::join!(following, draining);
    assert!(matches!(outcomes[0].1, Outcome::Ready { .. }), "{outcomes:?}");

    let stages: Vec<&str> = events.iter().map(|(_, d)| d["progress"]["stage"].as_str().unwrap()).collect();
    assert!(events.iter().all(|(e, _)| e == "progress"), "{events:?}");
    assert_eq!(stages[0], "queued", "{stages:?}");
    assert_eq!(*stages.last().unwrap(), "ready", "{stages:?}");
    let order = ["queued", "extracting", "embedding", "storing", "ready"];
    let ranks: Vec<usize> = stages.iter().map(|s| order.iter().position(|o| o == s).unwrap()).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "stages go forward: {stages:?}");
    // half-way through the embedding: some chunks of all of them
    let partway = events.iter().map(|(_, d)| &d["progress"]).find(|p| {
        p["stage"] == "embedding"
            && p["chunks_embedded"].as_i64().unwrap() > 0
            && p["chunks_embedded"].as_i64().unwrap() < p["chunks_total"].as_i64().unwrap()
    });
    assert!(partway.is_some(), "no event during the embedding: {events:?}");
    let partway = partway.unwrap();
    assert_eq!(partway["pages_done"], 40, "the pages are all extracted by then");
    let last = &events.last().unwrap().1;
    let chunks = last["chunk_count"].as_i64().unwrap();
    assert!(chunks > 64, "two batches at least: {chunks}");
    assert_eq!(last["progress"]["chunks_embedded"], chunks);
    assert_eq!(last["progress"]["chunks_total"], chunks);

    // the counters moved (the registry is the process's: other tests may move them too)
    let after = s.app.metrics().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        common::sample(&after, name, labels) - common::sample(&before, name, labels)
    };
    assert!(moved("docuchat_ingestion_jobs_total", &[("outcome", "ready")]) >= 1.0);
    assert!(moved("docuchat_ingestion_job_duration_seconds_count", &[("outcome", "ready")]) >= 1.0);
    assert!(moved("docuchat_ingestion_pages_total", &[]) >= 40.0);
    assert!(moved("docuchat_ingestion_chunks_total", &[]) >= chunks as f64);
    assert!(moved("docuchat_embedder_batches_total", &[]) >= 2.0);
    assert!(moved("docuchat_tokens_metered_total", &[("kind", "embedding")]) >= 1.0);
    let uploads = [("route", "/v1/files"), ("method", "POST"), ("status", "202")];
    assert!(moved("docuchat_http_requests_total", &uploads) >= 1.0);
    assert!(moved("docuchat_http_request_duration_seconds_count", &[("route", "/v1/files")]) >= 1.0);
    for family in ["docuchat_ingestion_jobs_in_queue", "docuchat_db_pool_connections", "docuchat_event_streams_open"] {
        assert!(after.contains(&format!("# TYPE {family} gauge")), "{family}");
    }

    // a deleted document ends its stream with an error event
    let resp = s.app.delete_as(&format!("/v1/documents/{id}"), "acme", &s.admin).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = s.app.get_as(&format!("/v1/documents/{id}/events"), "acme", &s.admin).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn a_stream_ends_when_its_document_is_deleted(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "english-2page.pdf").await;
    let deleting = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = s.app.delete_as(&format!("/v1/documents/{id}"), "acme", &s.admin).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    };
    let (events, ()) = tokio::join!(follow(&s, id), deleting);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].1["progress"]["stage"], "queued");
    assert_eq!(events[1].0, "error");
    assert_eq!(events[1].1["code"], "document_not_found");
}

#[sqlx::test]
async fn a_stopping_server_ends_its_streams(db: PgPool) {
    let s = setup(db).await;
    let id = upload_ok(&s, "english-2page.pdf").await;
    let mut resp = s
        .app
        .client
        .get(s.app.url(&format!("/v1/documents/{id}/events")))
        .header("x-tenant-id", "acme")
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("\"queued\""));
    // the server finishes the requests in flight, and a stream is one that would never end
    let started = std::time::Instant::now();
    let Setup { app, .. } = s;
    let stopping = tokio::spawn(app.stop());
    let mut rest = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.contains("event: error") && rest.contains("shutting_down"), "{rest}");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the server stopped").unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
}
