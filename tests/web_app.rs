//! The web app at `/app`: how the server serves it (policy, caching, size), and a person using it
//! in a real browser (headless Chromium over WebDriver) against a real server with Postgres,
//! Redis, the local embedder, an SMTP receiver and an OpenAI-protocol model server.
//! Screenshots go to `target/screenshots/`.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use common::{ADMIN, TestApp, fixture, metering::put_quota, openai::EmbeddingServer, webdriver::Browser};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test]
async fn the_app_is_served_with_a_strict_policy_and_lasting_caches(db: PgPool) {
    let app = TestApp::builder().without_mail().spawn(db).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // linked from the root, and /app goes to /app/ with its query
    let root: Value = client.get(app.url("/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(root["links"]["app"], "/app/");
    let resp = client.get(app.url("/app?tenant=acme")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers()[header::LOCATION], "/app/?tenant=acme");

    let resp = client.get(app.url("/app/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in
        ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{csp}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    // the page is revalidated each time, cheaply
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    let html = resp.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");
    let again = client.get(app.url("/app/")).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());

    // its files are named by their content's hash and cached for good under that name
    let mut transferred = html.len();
    for (name, kind) in [("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")] {
        let start = html.find(&format!("{name}?v=")).unwrap_or_else(|| panic!("{name} is not linked"));
        let url = &html[start..html[start..].find('"').unwrap() + start];
        let resp = client.get(app.url(&format!("/app/{url}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{url}");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable", "{url}");
        assert!(resp.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        transferred += resp.bytes().await.unwrap().len();
        // an old or made-up version is not cached for good
        let stale = client.get(app.url(&format!("/app/{name}?v=0123"))).send().await.unwrap();
        assert_eq!(stale.headers()[header::CACHE_CONTROL], "no-cache");
    }
    // a first view, uncompressed, is well under 100 KB
    assert!(transferred < 100 * 1024, "{transferred} bytes");
    let sizes: usize = docuchat::web::sizes().iter().map(|(_, n)| n).sum();
    assert_eq!(sizes, transferred);
    println!("first view: {transferred} bytes, {:?}", docuchat::web::sizes());

    let (status, code, _) = common::error_of(client.get(app.url("/app/../Cargo.toml")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (status, code, _) = common::error_of(client.get(app.url("/app/secret.js")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
}

#[sqlx::test]
async fn a_document_is_shown_to_its_own_tenant_only(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let admin = app.acme_with_document().await;
    let docs: Value = app.get_as("/v1/documents", "acme", &admin).await.json().await.unwrap();
    let id = docs["documents"][0]["id"].as_str().unwrap().to_owned();

    let resp = app.get_as(&format!("/v1/documents/{id}/file?inline=true"), "acme", &admin).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(h[header::CONTENT_DISPOSITION], "inline; filename*=UTF-8''r-intro.pdf");
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], "sandbox");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::CONTENT_LENGTH], fixture("english-2page.pdf").len().to_string().as_str());
    assert_eq!(resp.bytes().await.unwrap().as_ref(), fixture("english-2page.pdf").as_slice());
    let resp = app.get_as(&format!("/v1/documents/{id}/file"), "acme", &admin).await;
    assert!(resp.headers()[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("attachment;"));
    // many at once: a few files are held at a time, the others wait their turn, and every one
    // arrives whole (a slot that was not given back would leave the later ones waiting for good)
    let sizes = downloads_at_once(&app, &format!("/v1/documents/{id}/file"), &admin, 24).await;
    assert!(sizes.iter().all(|s| *s == (StatusCode::OK, fixture("english-2page.pdf").len())), "{sizes:?}");

    // a member reads it too; another tenant's admin does not learn it exists
    let member = app.login("acme", "ann@acme.example").await;
    assert_eq!(app.get_as(&format!("/v1/documents/{id}/file"), "acme", &member).await.status(), StatusCode::OK);
    let other = app.tenant_with_admin("globex", "boss@globex.example").await;
    let (status, code, _) =
        common::error_of(app.get_as(&format!("/v1/documents/{id}/file"), "globex", &other).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "document_not_found"));
    let (status, code, _) = common::error_of(app.get_as("/v1/documents/nope/file", "acme", &admin).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "document_not_found"));
    let (status, code, _) =
        common::error_of(app.get_as(&format!("/v1/documents/{id}/file?inline=maybe"), "acme", &admin).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_query"));

    // a name that is not plain ASCII is percent-encoded, never sent raw in the header
    let resp = app.upload("acme", &admin, "گزارش \"1\"; x=y.pdf", fixture("persian.pdf")).await;
    let up: Value = resp.json().await.unwrap();
    assert_eq!(up["filename"], "گزارش \"1\"; x=y.pdf");
    let resp = app.get_as(&format!("/v1/documents/{}/file", up["document_id"].as_str().unwrap()), "acme", &admin).await;
    let disposition = resp.headers()[header::CONTENT_DISPOSITION].to_str().unwrap().to_owned();
    assert_eq!(disposition, "attachment; filename*=UTF-8''%DA%AF%D8%B2%D8%A7%D8%B1%D8%B4%20%221%22%3B%20x%3Dy.pdf");
}

/// `n` downloads of acme's `path` asked at once: each one's status and the bytes it got.
async fn downloads_at_once(app: &TestApp, path: &str, token: &str, n: usize) -> Vec<(StatusCode, usize)> {
    futures_util::future::join_all((0..n).map(|_| async {
        let resp = app.get_as(path, "acme", token).await;
        (resp.status(), resp.bytes().await.unwrap().len())
    }))
    .await
}

/// The answers the model server streams, a token every `TOKEN_MS`.
const TOKEN_MS: u64 = 60;

fn english_answer() -> Vec<String> {
    let words = "When you quit R you are asked whether to save the data of your session [1]. \
        Answer yes, no or cancel; the saved workspace is loaded again at the next start.";
    words.split_inclusive(' ').map(str::to_owned).collect()
}

fn persian_answer() -> Vec<String> {
    let words = "بر اساس اسناد شما، یک فایل لاتک با \\documentclass آغاز می‌شود و متن میان \
        \\begin{document} و \\end{document} می‌آید [1].";
    words.split_inclusive(' ').map(str::to_owned).collect()
}

/// What the answer being shown looks like: its state, its text, its sources.
const LAST_ANSWER: &str = "const all = document.querySelectorAll('[data-testid=answer]'); \
    const a = all[all.length - 1]; if (!a) return null; \
    return { state: a.dataset.state, text: a.querySelector('.answer-text').textContent, \
             sources: [...a.querySelectorAll('[data-testid=source]')].map(s => ({ \
                 document: s.dataset.documentId, page: Number(s.dataset.page), page_to: Number(s.dataset.pageTo) })), \
             citations: a.querySelectorAll('[data-testid=citation]').length, \
             status: a.querySelector('.status').textContent };";

/// Asks `question` in the page and follows the answer until it is done; returns the answer's
/// last view and whether text was seen while it was still streaming.
async fn ask(browser: &Browser, question: &str) -> (Value, bool) {
    let before = browser.eval("return document.querySelectorAll('[data-testid=answer]').length;", json!([])).await;
    let q = browser.wait_for("[data-testid=question]", 5).await;
    browser.type_into(&q, question).await;
    browser.click(&browser.wait_for("[data-testid=ask]", 5).await).await;
    browser
        .wait_until(
            "a new answer appears",
            "return document.querySelectorAll('[data-testid=answer]').length > arguments[0];",
            json!([before]),
            10,
        )
        .await;
    let mut streamed = false;
    let started = std::time::Instant::now();
    loop {
        let a = browser.eval(LAST_ANSWER, json!([])).await;
        match a["state"].as_str() {
            Some("streaming") => {
                if !a["text"].as_str().unwrap_or_default().is_empty() {
                    streamed = true;
                }
            }
            Some("done") => return (a, streamed),
            other => panic!("the answer ended as {other:?}: {a}"),
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no answer: {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test]
async fn a_person_logs_in_uploads_asks_and_reads_in_english_and_persian(db: PgPool) {
    let model = EmbeddingServer::start().await;
    model.control.chat_token_delay_ms.store(TOKEN_MS, Ordering::SeqCst);
    *model.control.chat_text.lock().unwrap() = Some(english_answer());
    let app = TestApp::builder()
        .vars(model.chat_vars())
        // ingestion runs in the background, as in service
        .var("INGEST_WORKERS", "1")
        .spawn(db)
        .await;
    app.create_tenant("acme", ADMIN).await;
    let browser = Browser::start(1360, 860).await;

    // log in with the code from the e-mail
    browser.goto(&app.url("/app/?tenant=acme")).await;
    assert_eq!(browser.prop(&browser.wait_for("[data-testid=tenant]", 10).await, "value").await, "acme");
    browser.type_into(&browser.wait_for("[data-testid=email]", 5).await, ADMIN).await;
    browser.click(&browser.wait_for("[data-testid=request-code]", 5).await).await;
    let mail = app.mail.as_ref().unwrap().next_to(ADMIN, Duration::from_secs(15)).await.expect("no e-mail");
    let code = mail.code().expect("no code in the e-mail");
    // a wrong code first: its sentence is shown, and the right one still works
    let code_field = browser.wait_for("[data-testid=code]", 5).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    browser.type_into(&code_field, wrong).await;
    browser.click(&browser.wait_for("[data-testid=verify-code]", 5).await).await;
    let error = browser.wait_for("#login-error", 10).await;
    assert!(browser.text(&error).await.contains("wrong"), "{}", browser.text(&error).await);
    browser.clear(&code_field).await;
    browser.type_into(&code_field, &code).await;
    browser.click(&browser.wait_for("[data-testid=verify-code]", 5).await).await;
    browser.wait_for("[data-testid=logout]", 10).await;
    browser.screenshot("01-logged-in-en").await;

    // upload a PDF and see it become ready; an encrypted one fails with its sentence
    let dir = env!("CARGO_MANIFEST_DIR");
    let input = browser.all("[data-testid=file-input]").await.remove(0);
    browser.type_into(&input, &format!("{dir}/tests/fixtures/english-2page.pdf")).await;
    let row = browser.wait_for("[data-testid=document-row]", 20).await;
    let id = browser.attr(&row, "data-id").await.unwrap();
    browser
        .wait_until(
            "the document is ready",
            "return document.querySelector('[data-testid=document-row]').dataset.status === 'ready';",
            json!([]),
            90,
        )
        .await;
    let input = browser.all("[data-testid=file-input]").await.remove(0);
    browser.type_into(&input, &format!("{dir}/tests/fixtures/encrypted.pdf")).await;
    let failure = browser
        .wait_until(
            "the encrypted file's failure is shown",
            "const e = document.querySelector('[data-testid=upload-row] .doc-error'); return e && e.textContent;",
            json!([]),
            20,
        )
        .await;
    assert!(failure.as_str().unwrap().contains("password-protected"), "{failure}");
    let usage_before = browser.text(&browser.wait_for("[data-testid=usage]", 5).await).await;
    browser.screenshot("02-documents-en").await;

    // ask: tokens arrive before the answer is done, with a source on the right page
    let (answer, streamed) = ask(&browser, "Will R ask me whether to save the data when I quit?").await;
    assert!(streamed, "no text was shown before the answer was done");
    assert_eq!(answer["text"], english_answer().concat());
    assert_eq!(answer["citations"], 1, "{answer}");
    let sources = answer["sources"].as_array().unwrap();
    assert!(!sources.is_empty(), "{answer}");
    assert_eq!(sources[0]["document"], id.as_str());
    let (from, to) = (sources[0]["page"].as_i64().unwrap(), sources[0]["page_to"].as_i64().unwrap());
    assert!(from <= 2 && 2 <= to, "the first source is not on page 2: {answer}");
    // a citation shows its passage
    browser.click(&browser.wait_for("[data-testid=citation]", 5).await).await;
    browser.wait_for(".source.open .snippet", 5).await;
    // and its page opens in a window of its own: the PDF, read with the token, at that page
    let app_window = browser.window().await;
    browser.click(&browser.wait_for(".source.open [data-testid=open-page]", 5).await).await;
    let started = std::time::Instant::now();
    let viewer = loop {
        let windows = browser.windows().await;
        if let Some(w) = windows.into_iter().find(|w| *w != app_window) {
            break w;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no window opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    browser.switch_to(&viewer).await;
    let want = format!("#page={from}");
    let started = std::time::Instant::now();
    let opened = loop {
        let url = browser.url().await;
        if url.starts_with(&format!("blob:{}", app.url(""))) && url.ends_with(&want) {
            break url;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the page did not open: {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // what the window shows is a PDF (the browser's viewer)
    let shown = browser.eval("return document.contentType;", json!([])).await;
    assert_eq!(shown, "application/pdf", "{opened}");
    browser.close_window().await;
    browser.switch_to(&app_window).await;
    // the admin's usage moved with the answer
    browser
        .wait_until(
            "usage shows the answer",
            "return document.querySelector('[data-testid=usage]').textContent !== arguments[0];",
            json!([usage_before]),
            10,
        )
        .await;
    browser.screenshot("03-answer-en").await;

    // stop an answer half-way
    model.control.chat_token_delay_ms.store(200, Ordering::SeqCst);
    browser
        .type_into(
            &browser.wait_for("[data-testid=question]", 5).await,
            "Does R save the data of my session when I quit?",
        )
        .await;
    browser.click(&browser.wait_for("[data-testid=ask]", 5).await).await;
    browser
        .wait_until(
            "the second answer streams",
            "const all = document.querySelectorAll('[data-testid=answer]'); const a = all[all.length - 1]; \
             return all.length === 2 && a.dataset.state === 'streaming' && a.querySelector('.answer-text').textContent.length > 0;",
            json!([]),
            20,
        )
        .await;
    browser.click(&browser.wait_for("[data-testid=cancel]", 5).await).await;
    let stopped = browser
        .wait_until(
            "the answer stops",
            "const all = document.querySelectorAll('[data-testid=answer]'); const a = all[all.length - 1]; \
             return a.dataset.state === 'done' && a.querySelector('.status').textContent;",
            json!([]),
            10,
        )
        .await;
    assert_eq!(stopped, "Stopped.");
    model.control.chat_token_delay_ms.store(TOKEN_MS, Ordering::SeqCst);

    // a reload keeps the person logged in; the conversation is in the sidebar and reopens
    browser.refresh().await;
    let session = browser.wait_for("[data-testid=session] button.open", 15).await;
    assert_eq!(browser.all("[data-testid=session]").await.len(), 1);
    browser.click(&session).await;
    browser
        .wait_until(
            "the conversation reopens",
            "return document.querySelectorAll('[data-testid=answer][data-state=done]').length === 2;",
            json!([]),
            10,
        )
        .await;

    // Persian: the layout turns right-to-left, the interface speaks Persian, answers read right
    browser.click(&browser.wait_for("[data-testid=new-session]", 5).await).await;
    let language = browser.wait_for("[data-testid=language]", 5).await;
    browser.click(&language).await;
    browser.click(&browser.wait_for("[data-testid=language] option[value=fa]", 5).await).await;
    let dir = browser.eval("return document.documentElement.dir;", json!([])).await;
    assert_eq!(dir, "rtl");
    assert_eq!(browser.eval("return document.documentElement.lang;", json!([])).await, "fa");
    assert_eq!(browser.text(&browser.wait_for("[data-testid=ask]", 5).await).await, "بپرس");
    let input = browser.all("[data-testid=file-input]").await.remove(0);
    browser.type_into(&input, &format!("{dir_}/tests/fixtures/persian.pdf", dir_ = env!("CARGO_MANIFEST_DIR"))).await;
    browser
        .wait_until(
            "the Persian document is ready",
            "const rows = document.querySelectorAll('[data-testid=document-row]'); \
             return rows.length === 2 && [...rows].every(r => r.dataset.status === 'ready');",
            json!([]),
            90,
        )
        .await;
    *model.control.chat_text.lock().unwrap() = Some(persian_answer());
    let (answer, streamed) = ask(&browser, "ساختار فایل های ورودی لاتک چگونه است؟").await;
    assert!(streamed);
    assert_eq!(answer["text"], persian_answer().concat());
    assert!(!answer["sources"].as_array().unwrap().is_empty(), "{answer}");
    let answer_dir = browser
        .eval(
            "const all = document.querySelectorAll('[data-testid=answer] .answer-text'); \
             const a = all[all.length - 1]; return [a.getAttribute('dir'), getComputedStyle(a).direction];",
            json!([]),
        )
        .await;
    assert_eq!(answer_dir, json!(["auto", "rtl"]));
    browser.screenshot("04-answer-fa").await;

    // log out: the token is revoked, and a reload stays logged out
    let token = browser.eval("return JSON.parse(localStorage.getItem('docuchat.auth')).token;", json!([])).await;
    let token = token.as_str().unwrap().to_owned();
    assert_eq!(app.get_as("/v1/me", "acme", &token).await.status(), StatusCode::OK);
    browser.click(&browser.wait_for("[data-testid=logout]", 5).await).await;
    browser.wait_for("[data-testid=request-code]", 10).await;
    assert_eq!(app.get_as("/v1/me", "acme", &token).await.status(), StatusCode::UNAUTHORIZED);
    browser.refresh().await;
    browser.wait_for("[data-testid=request-code]", 10).await;
    assert_eq!(browser.eval("return localStorage.getItem('docuchat.auth');", json!([])).await, Value::Null);
    browser.screenshot("05-logged-out-fa").await;
    browser.quit();
}

/// Opens the app already logged in as `email` with `token`, as a reload after a login does.
async fn enter(browser: &Browser, app: &TestApp, token: &str, email: &str) {
    browser.goto(&app.url("/app/?tenant=acme")).await;
    browser.wait_until("the page loads", "return document.readyState === 'complete';", json!([]), 10).await;
    browser
        .eval(
            "localStorage.setItem('docuchat.auth', JSON.stringify({ tenant: 'acme', token: arguments[0], email: arguments[1] }));",
            json!([token, email]),
        )
        .await;
    browser.refresh().await;
    browser.wait_for("[data-testid=logout]", 10).await;
}

/// What the answer being shown says when it failed: its sentence.
async fn failed_answer(browser: &Browser, question: &str) -> String {
    let (state, status) = finished_answer(browser, question).await;
    assert_eq!(state, "error", "{status}");
    status
}

/// Asks and waits for the answer to end: its state (`done` or `error`) and its status line.
async fn finished_answer(browser: &Browser, question: &str) -> (String, String) {
    let before = browser.eval("return document.querySelectorAll('[data-testid=answer]').length;", json!([])).await;
    browser.type_into(&browser.wait_for("[data-testid=question]", 5).await, question).await;
    browser.click(&browser.wait_for("[data-testid=ask]", 5).await).await;
    let status = browser
        .wait_until(
            "the answer fails",
            "const all = document.querySelectorAll('[data-testid=answer]'); const a = all[all.length - 1]; \
             return all.length > arguments[0] && a.dataset.state !== 'streaming' && [a.dataset.state, a.querySelector('.status').textContent];",
            json!([before]),
            20,
        )
        .await;
    (status[0].as_str().unwrap().to_owned(), status[1].as_str().unwrap().to_owned())
}

#[sqlx::test]
async fn admins_drop_files_and_delete_them_and_everyone_sees_why_an_answer_failed(db: PgPool) {
    use base64::Engine as _;
    const MEMBER: &str = "member@acme.example";
    let model = EmbeddingServer::start().await;
    *model.control.chat_text.lock().unwrap() = Some(english_answer());
    let app = TestApp::builder()
        .vars(model.chat_vars())
        .var("INGEST_WORKERS", "1")
        // two questions a minute per user (in fixed windows: questions in a row may straddle a
        // minute, so the member below asks until refused, at most twice the limit)
        .config(|c| {
            c.rate_limits.chat_per_minute = 2;
            // small enough for a test to drop a file over it
            c.ingestion.max_upload_bytes = 2 * 1024 * 1024;
        })
        .spawn(db)
        .await;
    app.create_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    let browser = Browser::start(1360, 860).await;
    enter(&browser, &app, &admin, ADMIN).await;

    // several files dropped at once: the PDFs are uploaded one after the other and ingested;
    // a file that is not a PDF by its name is refused here, one that only pretends by the server
    let b64 = |name: &str| base64::engine::general_purpose::STANDARD.encode(fixture(name));
    let files = json!([
        ["english-2page.pdf", b64("english-2page.pdf")],
        ["notes.txt", base64::engine::general_purpose::STANDARD.encode("not a pdf")],
        ["persian.pdf", b64("persian.pdf")],
        ["report.pdf", b64("not-a-pdf.zip")],
        ["scanned.pdf", b64("scanned.pdf")],
    ]);
    browser
        .eval(
            "const dt = new DataTransfer(); \
             for (const [name, b64] of arguments[0]) { \
                 const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)); \
                 dt.items.add(new File([bytes], name, { type: name.endsWith('.pdf') ? 'application/pdf' : 'text/plain' })); \
             } \
             const big = new Uint8Array(3 * 1024 * 1024); big.set([37, 80, 68, 70, 45]); \
             dt.items.add(new File([big], 'big.pdf', { type: 'application/pdf' })); \
             const zone = document.getElementById('upload'); \
             zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true })); \
             zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));",
            json!([files]),
        )
        .await;
    let refused = browser
        .wait_until(
            "the refusals are shown",
            "const e = [...document.querySelectorAll('[data-testid=upload-row] .doc-error')].map((e) => e.textContent); \
             return e.length === 3 && e;",
            json!([]),
            20,
        )
        .await;
    let refused: Vec<&str> = refused.as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(
        refused.iter().any(|e| e.starts_with("notes.txt") && e.contains("Only PDF files can be uploaded")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|e| e.starts_with("report.pdf") && e.contains("Only PDF files are accepted")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|e| e.starts_with("big.pdf") && e.contains("larger than the limit of 2 MB")),
        "{refused:?}"
    );
    browser
        .wait_until(
            "two PDFs are ready and the scanned one has failed",
            "const rows = [...document.querySelectorAll('[data-testid=document-row]')]; \
             return rows.length === 3 && rows.filter((r) => r.dataset.status === 'ready').length === 2 \
                 && rows.filter((r) => r.dataset.status === 'failed').length === 1;",
            json!([]),
            90,
        )
        .await;
    let scanned = browser
        .eval("return document.querySelector('[data-testid=document-row][data-status=failed]').textContent;", json!([]))
        .await;
    let scanned = scanned.as_str().unwrap();
    assert!(scanned.contains("scanned.pdf") && scanned.contains("no extractable text"), "{scanned}");
    let listed: Value = app.get_as("/v1/documents", "acme", &admin).await.json().await.unwrap();
    assert_eq!(listed["documents"].as_array().unwrap().len(), 3, "only the three PDFs reached the server: {listed}");

    // an admin deletes a document, after saying yes
    let persian = browser
        .eval(
            "const r = [...document.querySelectorAll('[data-testid=document-row]')] \
                 .find((r) => r.textContent.includes('persian.pdf')); return r.dataset.id;",
            json!([]),
        )
        .await;
    let persian = persian.as_str().unwrap().to_owned();
    let delete = browser
        .wait_for(&format!("[data-testid=document-row][data-id='{persian}'] [data-testid=delete-document]"), 5)
        .await;
    browser.click(&delete).await;
    assert!(browser.accept_dialog(5).await.contains("persian.pdf"));
    browser
        .wait_until(
            "the row goes",
            "return document.querySelectorAll('[data-testid=document-row]').length === 2;",
            json!([]),
            10,
        )
        .await;
    assert_eq!(app.get_as(&format!("/v1/documents/{persian}"), "acme", &admin).await.status(), StatusCode::NOT_FOUND);

    // usage by day for a range: the day's embedding tokens are there
    browser.click(&browser.wait_for("#usage-by-day", 5).await).await;
    let days = browser
        .wait_until(
            "the days are shown",
            "const t = document.getElementById('usage-days'); return !t.hidden && t.querySelectorAll('tbody tr').length > 0 \
                 && [...t.querySelectorAll('tbody tr')].map((r) => r.textContent);",
            json!([]),
            10,
        )
        .await;
    assert!(days.to_string().chars().any(|c| c.is_ascii_digit() && c != '0'), "{days}");

    // the model server fails: the answer says so, and the socket goes on working
    model.control.chat_status.store(500, Ordering::SeqCst);
    let said = failed_answer(&browser, "Will R ask me whether to save the data when I quit?").await;
    assert!(said.contains("model"), "{said}");
    model.control.chat_status.store(0, Ordering::SeqCst);
    // what it spent (the prompt) is metered, and the range shown is read again with it
    browser
        .wait_until(
            "the days show the prompt",
            "const rows = [...document.querySelectorAll('#usage-days tbody tr')].map((r) => r.textContent); \
             return JSON.stringify(rows) !== JSON.stringify(arguments[0]);",
            json!([days]),
            10,
        )
        .await;

    // over the tenant's quota: the sentence says when it resets
    let resp = put_quota(&app, &admin, json!({ "scope": "tenant", "period": "day", "token_limit": 1 })).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let said = failed_answer(&browser, "Does R save the data of my session when I quit?").await;
    assert!(said.contains("quota") && said.contains("It resets"), "{said}");
    browser.screenshot("06-quota-en").await;
    let resp = put_quota(&app, &admin, json!({ "scope": "tenant", "period": "day", "token_limit": null })).await;
    assert!(resp.status().is_success(), "{}", resp.status());

    // a conversation is deleted from the sidebar, after saying yes
    let delete = browser.wait_for("[data-testid=session] button.delete", 10).await;
    browser.click(&delete).await;
    browser.accept_dialog(5).await;
    browser
        .wait_until(
            "the conversation goes",
            "return document.querySelectorAll('[data-testid=session]').length === 0;",
            json!([]),
            10,
        )
        .await;
    let sessions: Value = app.get_as("/v1/chat/sessions", "acme", &admin).await.json().await.unwrap();
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(0), "{sessions}");

    // a member sees the documents but cannot upload or delete, and has no usage panel; past the
    // rate limit, the sentence says how long to wait
    let resp = app
        .client
        .post(app.url("/v1/members"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(&admin)
        .json(&json!({ "email": MEMBER }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let member = app.login("acme", MEMBER).await;
    enter(&browser, &app, &member, MEMBER).await;
    browser
        .wait_until(
            "the member sees the document",
            "return document.querySelectorAll('[data-testid=document-row][data-status=ready]').length === 1;",
            json!([]),
            10,
        )
        .await;
    let hidden = browser
        .eval(
            "return [document.getElementById('upload').hidden, document.getElementById('usage-section').hidden, \
                     document.querySelectorAll('[data-testid=delete-document]').length];",
            json!([]),
        )
        .await;
    assert_eq!(hidden, json!([true, true, 0]));
    let (answer, _) = ask(&browser, "Will R ask me whether to save the data when I quit?").await;
    assert_eq!(answer["text"], english_answer().concat());
    let mut refused = None;
    for _ in 0..4 {
        let (state, said) = finished_answer(&browser, "Will R ask me whether to save the data when I quit?").await;
        if state == "error" {
            refused = Some(said);
            break;
        }
    }
    let said = refused.expect("five questions in a row were all answered");
    assert!(said.starts_with("Too many") && said.contains("Try again in"), "{said}");
    browser.screenshot("07-rate-limited-member-en").await;
    browser.quit();
}

/// Tenant `acme` with its document's file replaced by 24 MB, more than the kernel buffers for a
/// connection nobody reads: the admin's token, the document's id and the file's bytes.
async fn acme_with_a_big_file(app: &TestApp) -> (String, String, Vec<u8>) {
    let admin = app.acme_with_document().await;
    let docs: Value = app.get_as("/v1/documents", "acme", &admin).await.json().await.unwrap();
    let id = docs["documents"][0]["id"].as_str().unwrap().to_owned();
    let big: Vec<u8> = (0..24_000_000u32).map(|i| (i % 251) as u8).collect();
    sqlx::query("update document_files set data = $1 where document_id = $2::uuid")
        .bind(&big)
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    (admin, id, big)
}

/// A raw connection that has asked for acme's file `id` and read nothing yet; its receive buffer
/// is small, so that the kernel does not take the whole file in for it.
async fn ask_for_file(app: &TestApp, id: &str, admin: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut tcp = socket.connect(app.addr).await.unwrap();
    let head = format!(
        "GET /v1/documents/{id}/file HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\nAuthorization: Bearer {admin}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

/// Clients that ask for files and stop reading them do not keep the download slots: a write that
/// waits `HTTP_WRITE_STALL_SECONDS` for its client closes the connection, the response's bytes
/// and slot go, and the next download is served. (Without the deadline every slot stays taken
/// for as long as those clients like, and this download waits for good.)
#[sqlx::test]
async fn downloads_that_stop_being_read_give_their_slots_back(db: PgPool) {
    let app = TestApp::builder().var("HTTP_WRITE_STALL_SECONDS", "1").spawn(db).await;
    let (admin, id, big) = acme_with_a_big_file(&app).await;
    // as many requests as there are slots, whose answers are never read
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(ask_for_file(&app, &id, &admin).await);
    }
    // time for all eight to take their slots
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = tokio::time::timeout(Duration::from_secs(20), async {
        let resp = app.get_as(&format!("/v1/documents/{id}/file"), "acme", &admin).await;
        (resp.status(), resp.bytes().await.unwrap())
    })
    .await
    .expect("a download waited behind clients that do not read");
    assert_eq!(resp.0, StatusCode::OK);
    assert!(resp.1.as_ref() == big.as_slice(), "{} bytes", resp.1.len());
    // the server closed the stalled connections: what they can still read ends short of the file
    // (after a wait longer than the deadline, since a request may have had its slot only now)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for tcp in stalled {
        let (got, closed) = read_until_closed(tcp, Duration::from_secs(10)).await;
        assert!(closed, "a stalled connection stayed open ({got} bytes read)");
        assert!(got < big.len(), "{got}");
    }
}

/// Reads a connection at full speed until the server closes it or `wait` runs out: the bytes read,
/// and whether it was closed.
async fn read_until_closed(mut tcp: tokio::net::TcpStream, wait: Duration) -> (usize, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let read = tokio::time::timeout(wait, async {
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            got += n;
        }
    })
    .await;
    (got, read.is_ok())
}

#[sqlx::test]
async fn downloads_read_a_trickle_at_a_time_give_their_slots_back(db: PgPool) {
    use tokio::io::AsyncReadExt;
    // writes may wait 5 s at a time, and 5 s plus a second per 8 MiB sent in all
    let app = TestApp::builder()
        .var("HTTP_WRITE_STALL_SECONDS", "5")
        .var("HTTP_MIN_SEND_RATE", (8 << 20).to_string())
        .spawn(db)
        .await;
    let (admin, id, big) = acme_with_a_big_file(&app).await;
    // as many downloads as the tenant's share of the slots (half of eight: its next download
    // waits for one of these), each read 64 KiB every 64 ms (about 1 MB/s): the kernel's send
    // buffer (a few MB) has room again every second or two, so no write waits 5 s and only the
    // total the writes have waited can close them (at 1 MB/s the file would hold its slot for
    // 24 s)
    let mut tricklers = Vec::new();
    for _ in 0..4 {
        let mut tcp = ask_for_file(&app, &id, &admin).await;
        tricklers.push(tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let started = std::time::Instant::now();
            // until the server closes the connection (or two minutes, far longer than its credit)
            while started.elapsed() < Duration::from_secs(120) {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return (got, true),
                    Ok(n) => got += n,
                }
                tokio::time::sleep(Duration::from_millis(64)).await;
            }
            (got, false)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // a fifth download arrives whole, read at full speed
    let resp = tokio::time::timeout(Duration::from_secs(15), async {
        let resp = app.get_as(&format!("/v1/documents/{id}/file"), "acme", &admin).await;
        (resp.status(), resp.bytes().await.unwrap())
    })
    .await
    .expect("a download waited behind clients that read a trickle");
    assert_eq!(resp.0, StatusCode::OK);
    assert!(resp.1.as_ref() == big.as_slice(), "{} bytes", resp.1.len());
    for trickler in tricklers {
        let (got, closed) = trickler.await.unwrap();
        assert!(closed, "a trickling connection stayed open ({got} bytes read)");
        assert!(got < big.len(), "{got}");
    }
}

/// One tenant's downloads take at most half the process's slots, however slowly they are read:
/// another tenant's download does not wait behind them. (Without the share, the eight unread
/// downloads below hold every slot for the stall deadline, a minute, and the other tenant's
/// download waits that long.)
#[sqlx::test]
async fn one_tenants_downloads_leave_slots_for_the_others(db: PgPool) {
    let app = TestApp::builder().var("HTTP_WRITE_STALL_SECONDS", "60").spawn(db).await;
    let (admin, id, _) = acme_with_a_big_file(&app).await;
    let other = app.tenant_with_admin("globex", "boss@globex.example").await;
    let theirs = app.upload_ready("globex", &other, "r-intro.pdf", "english-2page.pdf").await;
    // acme asks for as many files as there are slots, and reads none of them
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(ask_for_file(&app, &id, &admin).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // globex's file comes at once
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = app.get_as(&format!("/v1/documents/{theirs}/file"), "globex", &other).await;
        (resp.status(), resp.bytes().await.unwrap())
    })
    .await
    .expect("a tenant's download waited behind another tenant's");
    assert_eq!(resp.0, StatusCode::OK);
    assert!(resp.1.starts_with(b"%PDF"), "{} bytes", resp.1.len());
    // and acme's own next download waits behind acme's (its share is taken)
    let waiting =
        tokio::time::timeout(Duration::from_secs(3), app.get_as(&format!("/v1/documents/{id}/file"), "acme", &admin))
            .await;
    assert!(waiting.is_err(), "a ninth acme download did not wait for acme's share");
    drop(stalled);
}

/// A file is read from the database a slice at a time while it is sent, not held whole in the
/// server: when its document is deleted halfway through, the download ends short of its
/// `Content-Length` (the connection is closed, so the client knows it is not the whole file),
/// and its slot is given back. (A file read whole before sending would arrive whole.)
#[sqlx::test]
async fn a_file_deleted_while_it_is_sent_ends_its_download_short(db: PgPool) {
    use tokio::io::AsyncReadExt;
    let app = TestApp::spawn(db).await;
    let (admin, id, big) = acme_with_a_big_file(&app).await;
    let mut tcp = ask_for_file(&app, &id, &admin).await;
    let mut buf = vec![0u8; 64 * 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains(&format!("content-length: {}", big.len())), "{head}");
    // the kernel's buffers hold a few MB of the 24 MB file; the rest is read as they drain
    let resp = app.delete_as(&format!("/v1/documents/{id}"), "acme", &admin).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (rest, closed) = read_until_closed(tcp, Duration::from_secs(20)).await;
    let got = n + rest;
    assert!(closed, "the download of a deleted file stayed open ({got} bytes read)");
    assert!(got < big.len(), "the whole file was sent after its document was deleted ({got} bytes)");
    // the slot was given back: the tenant's share (4) of downloads of another file all arrive
    let theirs = app.upload_ready("acme", &admin, "r-intro.pdf", "english-2page.pdf").await;
    let sizes = tokio::time::timeout(
        Duration::from_secs(10),
        downloads_at_once(&app, &format!("/v1/documents/{theirs}/file"), &admin, 4),
    )
    .await
    .expect("a download waited for a slot a deleted file's download kept");
    assert!(sizes.iter().all(|s| *s == (StatusCode::OK, fixture("english-2page.pdf").len())), "{sizes:?}");
}

#[sqlx::test]
async fn a_document_shows_its_progress_while_it_is_ingested(db: PgPool) {
    // an embedding server that takes its time, so that the stages can be watched
    let model = EmbeddingServer::start().await;
    model.control.delay_ms.store(2500, Ordering::SeqCst);
    let app = TestApp::builder().vars(model.vars()).var("INGEST_WORKERS", "1").spawn(db).await;
    app.create_tenant("acme", ADMIN).await;
    let admin = app.login("acme", ADMIN).await;
    let browser = Browser::start(1360, 860).await;
    enter(&browser, &app, &admin, ADMIN).await;
    let input = browser.all("[data-testid=file-input]").await.remove(0);
    browser.type_into(&input, &format!("{}/tests/fixtures/english-2page.pdf", env!("CARGO_MANIFEST_DIR"))).await;
    // read again every second while it is on its way: the stage, with its counts
    let shown = browser
        .wait_until(
            "the embedding stage is shown",
            "const r = document.querySelector('[data-testid=document-row]'); \
             return r && r.dataset.status === 'processing' && /Embedding chunks 0 of [1-9]/.test(r.textContent) && r.textContent;",
            json!([]),
            20,
        )
        .await;
    browser.screenshot("08-progress-en").await;
    let done = browser
        .wait_until(
            "the document is ready",
            "const r = document.querySelector('[data-testid=document-row]'); \
             return r.dataset.status === 'ready' && r.textContent;",
            json!([]),
            30,
        )
        .await;
    assert!(done.as_str().unwrap().contains("2 pages"), "{done} (was {shown})");
    browser.quit();
}
