//! The chat socket with the `openai` model against a server speaking OpenAI's streaming protocol
//! (SSE `data:` chunks, a usage chunk, `[DONE]`), started by the test.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use common::{
    TestApp, fixture,
    openai::{CHAT_PROMPT_TOKENS, EmbeddingServer, chat_token},
    ws::{Socket, ask, connect, next_json, send},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const QUESTION: &str = "What are the standard and recommended packages supplied with R?";

async fn setup_with(db: PgPool, extra: &[(&str, &str)]) -> (TestApp, EmbeddingServer, String) {
    let server = EmbeddingServer::start().await;
    let app = TestApp::builder().vars(server.chat_vars()).vars(extra.iter().copied()).spawn(db).await;
    let token = app.acme_with_document().await;
    (app, server, token)
}

fn answer_of(frames: &[Value]) -> String {
    frames.iter().filter(|f| f["type"] == "token").map(|f| f["content"].as_str().unwrap()).collect()
}

async fn ledger(app: &TestApp, message: &str) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce(sum(tokens) filter (where kind = 'prompt'), 0)::bigint,
                coalesce(sum(tokens) filter (where kind = 'completion'), 0)::bigint
           from usage_events where message_id = $1",
    )
    .bind(Uuid::parse_str(message).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[sqlx::test]
async fn answers_stream_from_the_model_server(db: PgPool) {
    let (app, server, token) = setup_with(db, &[]).await;
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, QUESTION).await;
    let expected: String = (0..8).map(chat_token).collect();
    assert_eq!(answer_of(&frames), expected);
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{frames:?}");
    assert_eq!(done["model"], "test-chat");
    // usage as the server's usage chunk reported it
    assert_eq!(done["usage"]["prompt_tokens"], CHAT_PROMPT_TOKENS);
    assert_eq!(done["usage"]["completion_tokens"], 8);
    let message = frames[0]["message_id"].as_str().unwrap();
    assert_eq!(ledger(&app, message).await, (CHAT_PROMPT_TOKENS as i64, 8));

    // what the server was sent: the configured model, the English prompt, numbered passages
    let sent = server.control.chat_last.lock().unwrap().clone().unwrap();
    assert_eq!(sent["model"], "test-chat");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"].as_str().unwrap().starts_with("You answer"));
    let user = messages.last().unwrap()["content"].as_str().unwrap();
    assert!(user.contains("[1] (r-intro.pdf, p. "), "{user}");
    assert!(user.ends_with(QUESTION));

    // a model from the allow-list may be named; others are refused
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION, "model": "other-chat"})).await;
    loop {
        let f = next_json(&mut ws).await;
        if f["type"] == "done" {
            assert_eq!(f["model"], "other-chat");
            break;
        }
    }
    assert_eq!(server.control.chat_last.lock().unwrap().as_ref().unwrap()["model"], "other-chat");
}

#[sqlx::test]
async fn persian_questions_send_the_persian_prompt(db: PgPool) {
    let (app, server, token) = setup_with(db, &[]).await;
    let resp = app.upload("acme", &token, "persian.pdf", fixture("persian.pdf")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    app.drain().await;
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, "ساختار فایل های ورودی لاتک چگونه است؟").await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    assert!(!frames[1]["sources"].as_array().unwrap().is_empty());
    let sent = server.control.chat_last.lock().unwrap().clone().unwrap();
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("شما فقط"), "{system}");
}

#[sqlx::test]
async fn upstream_errors_become_error_frames(db: PgPool) {
    let (app, server, token) = setup_with(db, &[("CHAT_TIMEOUT_MS", "3000")]).await;
    let mut ws = connect(&app, &token).await;
    for (status, code) in [(500, "upstream_unavailable"), (429, "upstream_rate_limited")] {
        server.control.chat_status.store(status, Ordering::SeqCst);
        let frames = ask(&mut ws, None, QUESTION).await;
        let last = frames.last().unwrap();
        assert_eq!(last["type"], "error", "{frames:?}");
        assert_eq!(last["code"], code);
        assert!(!last["message"].as_str().unwrap().contains("upstream says no"), "no upstream text leaks");
    }
    server.control.chat_status.store(0, Ordering::SeqCst);
    server.control.chat_hang.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let frames = ask(&mut ws, None, QUESTION).await;
    assert_eq!(frames.last().unwrap()["code"], "upstream_unavailable");
    assert!(started.elapsed() < Duration::from_secs(10));
    server.control.chat_hang.store(false, Ordering::SeqCst);
    // failed answers are saved as such, and the socket still works
    let failed: i64 =
        sqlx::query_scalar("select count(*) from messages where status = 'failed'").fetch_one(&app.db).await.unwrap();
    assert_eq!(failed, 3);
    assert_eq!(ask(&mut ws, None, QUESTION).await.last().unwrap()["type"], "done");
}

async fn read_tokens(ws: &mut Socket, n: usize) -> (String, String) {
    let mut message = String::new();
    let mut got = String::new();
    let mut tokens = 0;
    while tokens < n {
        let f = next_json(ws).await;
        match f["type"].as_str().unwrap() {
            "start" => message = f["message_id"].as_str().unwrap().to_owned(),
            "token" => {
                got.push_str(f["content"].as_str().unwrap());
                tokens += 1;
            }
            _ => {}
        }
    }
    (message, got)
}

#[sqlx::test]
async fn cancel_stops_the_upstream_and_keeps_what_was_said(db: PgPool) {
    let (app, server, token) = setup_with(db, &[]).await;
    server.control.chat_tokens.store(200, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(20, Ordering::SeqCst);
    let mut ws = connect(&app, &token).await;
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    let (message, mut got) = read_tokens(&mut ws, 3).await;
    send(&mut ws, json!({"type": "cancel"})).await;
    let done = loop {
        let f = next_json(&mut ws).await;
        match f["type"].as_str().unwrap() {
            "token" => got.push_str(f["content"].as_str().unwrap()),
            "done" => break f,
            other => panic!("unexpected {other}: {f}"),
        }
    };
    assert_eq!(done["status"], "cancelled");
    // the stream to the model server stopped: far fewer than 200 tokens were produced
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = server.control.chat_sent.load(Ordering::SeqCst);
    assert!(sent < 100, "the upstream kept streaming ({sent} tokens)");
    let (status, answer, completion): (String, String, i32) =
        sqlx::query_as("select status, answer, completion_tokens from messages where id = $1")
            .bind(Uuid::parse_str(&message).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "cancelled");
    assert_eq!(answer, got);
    assert!(completion > 0);
    assert_eq!(ledger(&app, &message).await.1, completion as i64);
    assert_eq!(done["usage"]["completion_tokens"].as_i64().unwrap(), completion as i64);
    // the socket is still usable
    server.control.chat_tokens.store(4, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(ask(&mut ws, None, QUESTION).await.last().unwrap()["status"], "complete");
}

#[sqlx::test]
async fn a_disconnect_saves_the_partial_answer(db: PgPool) {
    let (app, server, token) = setup_with(db, &[]).await;
    server.control.chat_tokens.store(200, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(20, Ordering::SeqCst);
    let mut ws = connect(&app, &token).await;
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    let (message, _) = read_tokens(&mut ws, 2).await;
    drop(ws);
    let id = Uuid::parse_str(&message).unwrap();
    let mut saved = None;
    for _ in 0..50 {
        saved = sqlx::query_as::<_, (String, String)>("select status, answer from messages where id = $1")
            .bind(id)
            .fetch_optional(&app.db)
            .await
            .unwrap();
        if saved.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = saved.expect("the partial answer was saved");
    assert_eq!(status, "cancelled");
    assert!(answer.starts_with(&chat_token(0)));
    assert!(server.control.chat_sent.load(Ordering::SeqCst) < 100);
    // charged for what was said before the client went away
    let completion = ledger(&app, &message).await.1;
    assert_eq!(completion, docuchat::ingestion::chunk::count_tokens(&answer) as i64);
}

#[sqlx::test]
async fn a_client_that_does_not_read_holds_up_only_itself(db: PgPool) {
    let (app, server, token) = setup_with(db, &[]).await;
    // a long answer to a client that never reads: its queue and socket buffers fill up
    server.control.chat_tokens.store(5000, Ordering::SeqCst);
    let mut stalled = connect(&app, &token).await;
    send(&mut stalled, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // another session is served meanwhile
    server.control.chat_tokens.store(5, Ordering::SeqCst);
    let mut other = connect(&app, &token).await;
    let started = std::time::Instant::now();
    let frames =
        tokio::time::timeout(Duration::from_secs(20), ask(&mut other, None, QUESTION)).await.expect("not held up");
    assert_eq!(frames.last().unwrap()["type"], "done");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(stalled);
}

/// A client that stops reading is disconnected after the write timeout: its answer ends
/// `cancelled`, what was produced is metered, and the upstream stream stops.
#[sqlx::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_answer_metered(db: PgPool) {
    let (app, server, token) = setup_with(db, &[("WS_WRITE_TIMEOUT_SECONDS", "1")]).await;
    // more than every buffer on the way can hold
    const TOKENS: usize = 400_000;
    server.control.chat_tokens.store(TOKENS, Ordering::SeqCst);
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(app.addr).await.unwrap();
    let url = format!("ws://{}/ws/chat?token={token}", app.addr);
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    // from here on the client reads nothing
    let mut saved = None;
    for _ in 0..300 {
        saved = sqlx::query_as::<_, (Uuid, String, i32)>("select id, status, completion_tokens from messages")
            .fetch_optional(&app.db)
            .await
            .unwrap();
        if saved.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (message, status, completion) = saved.expect("the answer was saved once the client was cut off");
    assert_eq!(status, "cancelled");
    assert!(completion > 0);
    assert_eq!(ledger(&app, &message.to_string()).await.1, completion as i64);
    let sent = server.control.chat_sent.load(Ordering::SeqCst);
    assert!(sent < TOKENS, "the upstream streamed the whole answer to nobody ({sent})");
    drop(ws);
}

/// The ledger rows of one message, by kind: (embedding, prompt, completion).
async fn charged(app: &TestApp, message: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "select coalesce(sum(tokens) filter (where kind = 'embedding'), 0)::bigint,
                coalesce(sum(tokens) filter (where kind = 'prompt'), 0)::bigint,
                coalesce(sum(tokens) filter (where kind = 'completion'), 0)::bigint
           from usage_events where message_id = $1",
    )
    .bind(Uuid::parse_str(message).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn holds(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&app.db).await.unwrap()
}

async fn messages_with_id(app: &TestApp, message: &str) -> i64 {
    sqlx::query_scalar("select count(*) from messages where id = $1")
        .bind(Uuid::parse_str(message).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Reads frames until the socket's last one for this answer (`done` or `error`), or its close.
async fn read_to_end(ws: &mut Socket, got: &mut String) -> Option<Value> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(ws)).await.unwrap();
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = next else { return None };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        match f["type"].as_str().unwrap() {
            "token" => got.push_str(f["content"].as_str().unwrap()),
            "done" | "error" => return Some(f),
            _ => {}
        }
    }
}

/// A quota on the tenant, so that every answer holds tokens until its charge settles them.
async fn with_a_quota(app: &TestApp) {
    let tenant: Uuid =
        sqlx::query_scalar("select id from tenants where slug = 'acme'").fetch_one(&app.db).await.unwrap();
    docuchat::usage::quota::set(
        &app.db,
        tenant,
        docuchat::usage::quota::QuotaScope::Tenant,
        None,
        docuchat::usage::quota::Period::Month,
        Some(100_000_000),
        docuchat::usage::quota::SetBy::Operator,
    )
    .await
    .unwrap();
}

/// An answer whose session is deleted while it streams is charged in full — the embedding of the
/// question, the prompt as the model reported it and every completion token — and its hold is
/// settled; the message itself has nowhere to go, and the last frame says so.
#[sqlx::test]
async fn an_answer_whose_session_is_deleted_meanwhile_is_charged_in_full(db: PgPool) {
    let (app, server, token) = setup_with(db, &[]).await;
    with_a_quota(&app).await;
    let mut ws = connect(&app, &token).await;
    let first = ask(&mut ws, None, QUESTION).await;
    let session = first[0]["session_id"].as_str().unwrap().to_owned();

    const TOKENS: usize = 60;
    server.control.chat_tokens.store(TOKENS, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(20, Ordering::SeqCst);
    send(&mut ws, json!({"type": "ask", "session_id": session, "content": QUESTION})).await;
    let (message, mut got) = read_tokens(&mut ws, 3).await;
    let deleted = app.delete_as(&format!("/v1/chat/sessions/{session}"), "acme", &token).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let last = read_to_end(&mut ws, &mut got).await.expect("a last frame");
    assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("error"), Some("session_not_found")), "{last}");

    let expected: String = (0..TOKENS).map(chat_token).collect();
    assert_eq!(got, expected, "the whole answer was streamed");
    assert_eq!(messages_with_id(&app, &message).await, 0);
    let (embedding, prompt, completion) = charged(&app, &message).await;
    assert!(embedding > 0);
    assert_eq!((prompt, completion), (CHAT_PROMPT_TOKENS as i64, TOKENS as i64));
    assert_eq!(holds(&app).await, 0);
}

/// A member removed while an answer streams: the socket is closed, the answer cut, and what was
/// produced is charged (to the user who is gone; the ledger keeps no key a removal can break).
#[sqlx::test]
async fn an_answer_of_a_member_removed_meanwhile_is_charged(db: PgPool) {
    let (app, server, admin) = setup_with(db, &[]).await;
    with_a_quota(&app).await;
    let member = app.login("acme", "ann@acme.example").await;
    server.control.chat_tokens.store(400, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(20, Ordering::SeqCst);
    let mut ws = connect(&app, &member).await;
    ask(&mut ws, None, QUESTION).await;
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    let (message, mut got) = read_tokens(&mut ws, 3).await;
    let ann: String = sqlx::query_scalar("select id::text from users where email = 'ann@acme.example'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let removed = app.delete_as(&format!("/v1/members/{ann}"), "acme", &admin).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let last = read_to_end(&mut ws, &mut got).await;
    assert_eq!(last.as_ref().and_then(|f| f["code"].as_str()), Some("access_revoked"), "{last:?}");

    let mut charge = (0, 0, 0);
    for _ in 0..100 {
        charge = charged(&app, &message).await;
        if charge.2 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (embedding, prompt, completion) = charge;
    assert!(embedding > 0 && prompt > 0);
    // what the client got, at least, and no more than the model server produced
    let produced: String = (0..server.control.chat_sent.load(Ordering::SeqCst)).map(chat_token).collect();
    let count = |s: &str| docuchat::ingestion::chunk::count_tokens(s) as i64;
    assert!(
        count(&got) <= completion && completion <= count(&produced),
        "{} ≤ {completion} ≤ {}",
        count(&got),
        count(&produced)
    );
    assert!(completion < count(&(0..400).map(chat_token).collect::<String>()), "the answer was cut");
    assert_eq!(messages_with_id(&app, &message).await, 0);
    assert_eq!(holds(&app).await, 0);
    let charged_to: Option<Uuid> =
        sqlx::query_scalar("select distinct user_id from usage_events where message_id = $1")
            .bind(Uuid::parse_str(&message).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(charged_to.map(|u| u.to_string()), Some(ann));
}

/// A server that stops lets an answer in flight finish within SHUTDOWN_GRACE_SECONDS and charges it;
/// the socket then gets `shutting_down`.
#[sqlx::test]
async fn a_stopping_server_finishes_the_answers_in_flight_and_charges_them(db: PgPool) {
    let (app, server, token) = setup_with(db, &[("SHUTDOWN_GRACE_SECONDS", "30")]).await;
    with_a_quota(&app).await;
    const TOKENS: usize = 50;
    server.control.chat_tokens.store(TOKENS, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(20, Ordering::SeqCst);
    let mut ws = connect(&app, &token).await;
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    let (message, mut got) = read_tokens(&mut ws, 3).await;
    let db = app.db.clone();
    let stopped = tokio::spawn(app.stop());
    let last = read_to_end(&mut ws, &mut got).await.expect("the answer's last frame");
    assert_eq!(last["type"], "done", "{last}");
    assert_eq!(last["status"], "complete");
    let after = read_to_end(&mut ws, &mut String::new()).await;
    assert_eq!(after.as_ref().and_then(|f| f["code"].as_str()), Some("shutting_down"), "{after:?}");
    tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("the server stopped").unwrap();

    let expected: String = (0..TOKENS).map(chat_token).collect();
    assert_eq!(got, expected);
    let id = Uuid::parse_str(&message).unwrap();
    let (status, completion): (String, i32) =
        sqlx::query_as("select status, completion_tokens from messages where id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), completion), ("complete", TOKENS as i32));
    let charged: i64 = sqlx::query_scalar(
        "select coalesce(sum(tokens), 0)::bigint from usage_events where message_id = $1 and kind = 'completion'",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(charged, TOKENS as i64);
    let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&db).await.unwrap();
    assert_eq!(held, 0);
}

/// Past the grace period an answer in flight is cut, saved `cancelled` and charged for what was
/// produced, before the process exits.
#[sqlx::test]
async fn a_stopping_server_cuts_a_long_answer_and_charges_it(db: PgPool) {
    let (app, server, token) = setup_with(db, &[("SHUTDOWN_GRACE_SECONDS", "1")]).await;
    with_a_quota(&app).await;
    server.control.chat_tokens.store(2000, Ordering::SeqCst);
    server.control.chat_token_delay_ms.store(20, Ordering::SeqCst);
    let mut ws = connect(&app, &token).await;
    send(&mut ws, json!({"type": "ask", "session_id": null, "content": QUESTION})).await;
    let (message, mut got) = read_tokens(&mut ws, 3).await;
    let db = app.db.clone();
    let stopped = tokio::spawn(app.stop());
    let last = read_to_end(&mut ws, &mut got).await.expect("the answer's last frame");
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("done"), Some("cancelled")), "{last}");
    tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("the server stopped").unwrap();

    let id = Uuid::parse_str(&message).unwrap();
    let (status, answer, completion): (String, String, i32) =
        sqlx::query_as("select status, answer, completion_tokens from messages where id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(status, "cancelled");
    assert_eq!(answer, got, "the client got all that was saved");
    let charged: i64 = sqlx::query_scalar(
        "select coalesce(sum(tokens), 0)::bigint from usage_events where message_id = $1 and kind = 'completion'",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(charged, i64::from(completion));
    assert_eq!(charged, docuchat::ingestion::chunk::count_tokens(&got) as i64);
    let held: i64 = sqlx::query_scalar("select count(*) from quota_holds").fetch_one(&db).await.unwrap();
    assert_eq!(held, 0);
}
