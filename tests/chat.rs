//! The chat socket end to end, and its turns without a socket: real Postgres, the local embedder,
//! the offline model; sockets driven by a tokio-tungstenite client.

mod common;

use common::{
    ADMIN, TestApp, error_of, fixture,
    ws::{ask, connect, next_json},
};
use docuchat::chat::turn::{Frame, FrameSink, Turn};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn setup(db: PgPool) -> (TestApp, String) {
    let app = TestApp::spawn(db).await;
    let admin = app.acme_with_document().await;
    (app, admin)
}

#[sqlx::test]
async fn a_question_is_answered_with_sources_and_saved(db: PgPool) {
    let (app, token) = setup(db).await;
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, "What are the standard and recommended packages supplied with R?").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "start");
    assert_eq!(kinds[1], "sources");
    assert!(kinds[2..kinds.len() - 1].iter().all(|k| *k == "token"), "{kinds:?}");
    assert_eq!(*kinds.last().unwrap(), "done", "{frames:?}");

    let session_id = frames[0]["session_id"].as_str().unwrap().to_owned();
    let message_id = frames[0]["message_id"].as_str().unwrap().to_owned();
    let sources = frames[1]["sources"].as_array().unwrap();
    assert!(!sources.is_empty());
    for s in sources {
        assert_eq!(s["filename"], "r-intro.pdf");
        assert!(s["page"].as_i64().unwrap() >= 1);
        assert!(s["score"].as_f64().unwrap() > 0.0);
        assert!(!s["snippet"].as_str().unwrap().is_empty());
        Uuid::try_parse(s["document_id"].as_str().unwrap()).unwrap();
    }
    let answer: String =
        frames.iter().filter(|f| f["type"] == "token").map(|f| f["content"].as_str().unwrap()).collect();
    assert!(answer.contains("[1]"), "{answer}");
    assert!(answer.to_lowercase().contains("packages"), "{answer}");
    let done = frames.last().unwrap();
    assert_eq!(done["model"], "offline-extractive");
    assert_eq!(done["status"], "complete");
    let usage = &done["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);

    // history over HTTP
    let sessions: Value = app.get_as("/v1/chat/sessions", "acme", &token).await.json().await.unwrap();
    assert_eq!(sessions["sessions"][0]["id"], session_id);
    let messages: Value =
        app.get_as(&format!("/v1/chat/sessions/{session_id}/messages"), "acme", &token).await.json().await.unwrap();
    let m = &messages["messages"][0];
    assert_eq!(m["id"], message_id);
    assert_eq!(m["answer"].as_str().unwrap(), answer);
    assert_eq!(m["status"], "complete");
    assert_eq!(m["sources"].as_array().unwrap().len(), sources.len());

    // the ledger equals the usage in the done frame
    let (prompt, completion): (i64, i64) = sqlx::query_as(
        "select coalesce(sum(tokens) filter (where kind = 'prompt'), 0)::bigint, coalesce(sum(tokens) filter (where kind = 'completion'), 0)::bigint
           from usage_events where message_id = $1",
    )
    .bind(Uuid::parse_str(&message_id).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(prompt as u64, usage["prompt_tokens"].as_u64().unwrap());
    assert_eq!(completion as u64, usage["completion_tokens"].as_u64().unwrap());

    // a follow-up in the same session
    let frames = ask(&mut ws, Some(&session_id), "And where are they available from?").await;
    assert_eq!(frames[0]["session_id"], session_id);
    assert_eq!(frames.last().unwrap()["type"], "done");
    let messages: Value =
        app.get_as(&format!("/v1/chat/sessions/{session_id}/messages"), "acme", &token).await.json().await.unwrap();
    assert_eq!(messages["messages"].as_array().unwrap().len(), 2);
}

#[sqlx::test]
async fn nothing_relevant_is_said_plainly(db: PgPool) {
    let (app, token) = setup(db).await;
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, "Quelle est la recette de la tarte tatin aux pommes caramélisées ?").await;
    assert_eq!(frames[1]["sources"].as_array().unwrap().len(), 0, "{frames:?}");
    let answer: String =
        frames.iter().filter(|f| f["type"] == "token").map(|f| f["content"].as_str().unwrap()).collect();
    assert!(answer.contains("could not find"), "{answer}");
    let done = frames.last().unwrap();
    assert_eq!(done["model"], "none");
    assert_eq!(done["usage"]["total_tokens"], 0);
}

#[sqlx::test]
async fn malformed_frames_get_errors_and_the_socket_stays_usable(db: PgPool) {
    let (app, token) = setup(db).await;
    let mut ws = connect(&app, &token).await;
    for (frame, code) in [
        (Message::Text("not json".into()), "malformed_frame"),
        (Message::Text(json!({"type": "dance"}).to_string().into()), "unknown_type"),
        (Message::Text(json!({"type": "ask"}).to_string().into()), "malformed_frame"),
        (Message::Text(json!({"type": "ask", "content": "  "}).to_string().into()), "empty_question"),
        (Message::Text(json!({"type": "ask", "content": "\u{0}\u{7} \u{0}"}).to_string().into()), "empty_question"),
        (Message::Text(json!({"type": "ask", "content": "x".repeat(5000)}).to_string().into()), "question_too_long"),
        (
            Message::Text(json!({"type": "ask", "content": "hi", "model": "gpt-nope"}).to_string().into()),
            "model_not_allowed",
        ),
        (
            Message::Text(json!({"type": "ask", "content": "hi", "session_id": Uuid::new_v4()}).to_string().into()),
            "session_not_found",
        ),
        (Message::Binary(vec![1, 2, 3].into()), "unsupported_frame"),
        (Message::Text("x".repeat(70_000).into()), "frame_too_large"),
    ] {
        ws.send(frame).await.unwrap();
        let mut f = next_json(&mut ws).await;
        if f["type"] == "start" {
            // session_not_found comes after the session lookup
            f = next_json(&mut ws).await;
        }
        assert_eq!(f["type"], "error", "{f}");
        assert_eq!(f["code"], code, "{f}");
        assert!(!f["message"].as_str().unwrap().is_empty());
    }
    let frames = ask(&mut ws, None, "What is R?").await;
    assert_eq!(frames.last().unwrap()["type"], "done");
    // control characters (NUL cannot be stored) are left out, not an internal error
    let frames = ask(&mut ws, None, "What\u{0} is\u{1b} R?").await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");

    // one frame past the frame limit (256 KiB) ends that socket, not the server
    let mut big = connect(&app, &token).await;
    let _ = big.send(Message::Binary(vec![0u8; 1 << 20].into())).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            match big.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(ended, "a 1 MiB frame was accepted");
    let frames = ask(&mut ws, None, "What is R?").await;
    assert_eq!(frames.last().unwrap()["type"], "done");
}

#[sqlx::test]
async fn the_socket_needs_a_valid_token_of_the_tenant(db: PgPool) {
    let (app, token) = setup(db).await;
    app.create_tenant("other", "eve@other.example").await;
    let url = format!("ws://{}/ws/chat", app.addr);
    // no token, a bad token: 401 without an upgrade
    for candidate in [url.clone(), format!("{url}?token=garbage")] {
        match connect_async(candidate).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
    }
    // a token with another tenant's X-Tenant-ID
    let mut req = format!("{url}?token={token}").into_client_request().unwrap();
    req.headers_mut().insert("X-Tenant-ID", HeaderValue::from_static("other"));
    match connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // the Authorization header works too, with a matching tenant header
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    req.headers_mut().insert("X-Tenant-ID", HeaderValue::from_static("acme"));
    assert!(connect_async(req).await.is_ok());
    // a plain GET is not a socket
    let (status, code, _) =
        error_of(app.client.get(format!("http://{}/ws/chat?token={token}", app.addr)).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "websocket_required"));
}

#[sqlx::test]
async fn tenants_never_see_each_other_s_sources(db: PgPool) {
    let (app, acme_token) = setup(db).await;
    // the other tenant has a nearly identical document of its own
    app.create_tenant("other", "eve@other.example").await;
    let eve = app.login("other", "eve@other.example").await;
    let resp = app.upload("other", &eve, "theirs.pdf", fixture("english-2page.pdf")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    app.drain().await;
    let acme_docs: Vec<Uuid> =
        sqlx::query_scalar("select d.id from documents d join tenants t on t.id = d.tenant_id where t.slug = 'acme'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    for (token, own) in [(&acme_token, true), (&eve, false)] {
        let mut ws = connect(&app, token).await;
        let frames = ask(&mut ws, None, "What are the standard and recommended packages supplied with R?").await;
        let sources = frames[1]["sources"].as_array().unwrap();
        assert!(!sources.is_empty());
        for s in sources {
            let doc = Uuid::parse_str(s["document_id"].as_str().unwrap()).unwrap();
            assert_eq!(acme_docs.contains(&doc), own, "a source crossed tenants: {s}");
        }
    }
    // and the other tenant's user cannot read acme's sessions
    let sessions: Value = app.get_as("/v1/chat/sessions", "acme", &acme_token).await.json().await.unwrap();
    let id = sessions["sessions"][0]["id"].as_str().unwrap();
    let (status, code, _) =
        error_of(app.get_as(&format!("/v1/chat/sessions/{id}/messages"), "other", &eve).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "session_not_found"));
}

#[sqlx::test]
async fn a_deleted_document_is_never_cited(db: PgPool) {
    let (app, token) = setup(db).await;
    let doc: Uuid = sqlx::query_scalar("select id from documents").fetch_one(&app.db).await.unwrap();
    assert_eq!(app.delete_as(&format!("/v1/documents/{doc}"), "acme", &token).await.status(), StatusCode::NO_CONTENT);
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, "What are the standard and recommended packages supplied with R?").await;
    assert_eq!(frames[1]["sources"].as_array().unwrap().len(), 0);
}

#[sqlx::test]
async fn persian_questions_get_the_persian_prompt(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let token = app.login("acme", "boss@acme.example").await;
    let resp = app.upload("acme", &token, "persian.pdf", fixture("persian.pdf")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    app.drain().await;
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, "ساختار فایل های ورودی لاتک چگونه است؟").await;
    let answer: String =
        frames.iter().filter(|f| f["type"] == "token").map(|f| f["content"].as_str().unwrap()).collect();
    assert!(!frames[1]["sources"].as_array().unwrap().is_empty(), "{frames:?}");
    assert!(answer.starts_with("بر اساس اسناد شما"), "{answer}");
    // all-MiniLM-L6-v2 cannot read Persian: the question is searched by its words alone, so it is
    // not embedded, and no embedding is charged for it (the answer's own tokens are)
    let sources = frames[1]["sources"].as_array().unwrap();
    assert!(sources.iter().all(|s| s["similarity"] == 0.0), "{sources:?}");
    let charged: Vec<String> =
        sqlx::query_scalar("select e.kind from usage_events e where e.message_id is not null order by e.kind")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(charged, ["completion", "prompt"]);
    // an English question is embedded and charged, as always
    ask(&mut ws, None, "How is a LaTeX input file structured?").await;
    let embedded: i64 =
        sqlx::query_scalar("select count(*) from usage_events where kind = 'embedding' and message_id is not null")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(embedded, 1);
}

#[sqlx::test]
async fn sessions_are_deleted_with_their_messages(db: PgPool) {
    let (app, token) = setup(db).await;
    let mut ws = connect(&app, &token).await;
    let frames = ask(&mut ws, None, "What is R?").await;
    let id = frames[0]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.delete_as(&format!("/v1/chat/sessions/{id}"), "acme", &token).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.delete_as(&format!("/v1/chat/sessions/{id}"), "acme", &token).await.status(), StatusCode::NOT_FOUND);
    let left: i64 = sqlx::query_scalar("select count(*) from messages").fetch_one(&app.db).await.unwrap();
    assert_eq!(left, 0);
    // the ledger keeps what was spent
    let spent: i64 = sqlx::query_scalar("select count(*) from usage_events where message_id is not null")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(spent >= 2);
}

#[sqlx::test]
async fn an_idle_socket_is_closed(db: PgPool) {
    let app = TestApp::builder().var("WS_IDLE_SECONDS", "5").spawn(db).await;
    app.create_tenant("acme", "boss@acme.example").await;
    let token = app.login("acme", "boss@acme.example").await;
    let mut ws = connect(&app, &token).await;
    let started = std::time::Instant::now();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], "idle_timeout");
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    // then the server closes the socket
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await.expect("closed in time") {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue,
        }
    }
}

#[sqlx::test]
async fn every_pooled_connection_searches_with_the_configured_breadth(db: PgPool) {
    let pool =
        docuchat::db::pool_options(37).max_connections(3).connect_with((*db.connect_options()).clone()).await.unwrap();
    // several connections at once, so that each is set up, not just the first
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in conns.iter_mut() {
        let (ef, scan): (String, String) =
            sqlx::query_as("select current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
        assert_eq!((ef.as_str(), scan.as_str()), ("37", "relaxed_order"));
    }
}

/// A turn's frames, as JSON, into a channel: a transport that is not a socket.
struct Collect(tokio::sync::mpsc::UnboundedSender<Value>);

impl FrameSink for Collect {
    async fn send(&self, frame: Frame<'_>) {
        let _ = self.0.send(serde_json::to_value(&frame).unwrap());
    }
}

#[sqlx::test]
async fn a_turn_runs_without_a_socket_and_a_cancelled_one_is_saved_and_metered(db: PgPool) {
    let (app, _) = setup(db).await;
    let state = &app.state;
    let tenant: Uuid =
        sqlx::query_scalar("select id from tenants where slug = 'acme'").fetch_one(&app.db).await.unwrap();
    let user: Uuid =
        sqlx::query_scalar("select id from users where email = $1").bind(ADMIN).fetch_one(&app.db).await.unwrap();
    let turn = |sink| {
        let (model, model_name) = state.models.select(None).unwrap();
        Turn { services: state.turn_services(), model, model_name, tenant, user, sink }
    };
    let question = "What are the standard and recommended packages supplied with R?";

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    turn(Collect(tx)).run(None, question.to_owned(), CancellationToken::new()).await;
    let mut frames = Vec::new();
    while let Ok(f) = rx.try_recv() {
        frames.push(f);
    }
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["start", "sources"], "{frames:?}");
    assert!(kinds[2..kinds.len() - 1].iter().all(|k| *k == "token"), "{kinds:?}");
    assert_eq!(frames.last().unwrap()["type"], "done");
    assert_eq!(frames.last().unwrap()["status"], "complete");
    let session: Uuid = frames[0]["session_id"].as_str().unwrap().parse().unwrap();
    let answer: String =
        frames.iter().filter(|f| f["type"] == "token").map(|f| f["content"].as_str().unwrap()).collect();
    let saved: String = sqlx::query_scalar("select answer from messages where session_id = $1")
        .bind(session)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(saved, answer);

    // cancelled before the model's first token: the answer ends `cancelled`, and what was spent on
    // it (the question's embedding, the prompt) is saved and charged all the same
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    cancel.cancel();
    turn(Collect(tx)).run(Some(session), question.to_owned(), cancel).await;
    let mut frames = Vec::new();
    while let Ok(f) = rx.try_recv() {
        frames.push(f);
    }
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start", "sources", "done"], "{frames:?}");
    let done = frames.last().unwrap();
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["usage"]["completion_tokens"], 0);
    let message: Uuid = done["message_id"].as_str().unwrap().parse().unwrap();
    let status: String =
        sqlx::query_scalar("select status from messages where id = $1").bind(message).fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "cancelled");
    let charged: Vec<(String, i64)> =
        sqlx::query_as("select kind, tokens from usage_events where message_id = $1 order by kind")
            .bind(message)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(charged.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["embedding", "prompt"]);
    assert_eq!(charged[1].1, done["usage"]["prompt_tokens"].as_i64().unwrap());
    assert!(charged.iter().all(|(_, t)| *t > 0));
}

#[sqlx::test]
async fn open_sockets_are_capped_per_user_and_per_tenant(db: PgPool) {
    let app = TestApp::builder()
        .config(|c| {
            c.sockets_per_user = 2;
            c.sockets_per_tenant = 3;
        })
        .spawn(db)
        .await;
    let admin = app.acme_with_document().await;
    let ann = app.login("acme", "ann@acme.example").await;
    let refused = |token: String| {
        let url = format!("ws://{}/ws/chat?token={token}", app.addr);
        async move {
            match connect_async(url).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Ok(_) => 101,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let first = connect(&app, &admin).await;
    let _second = connect(&app, &admin).await;
    assert_eq!(refused(admin.clone()).await, 429, "a third socket of one user");
    let _third = connect(&app, &ann).await;
    assert_eq!(refused(ann.clone()).await, 429, "a fourth socket of the tenant");
    // closing a socket gives its place back
    drop(first);
    let mut reopened = false;
    for _ in 0..100 {
        if let Ok((ws, _)) = connect_async(format!("ws://{}/ws/chat?token={admin}", app.addr)).await {
            drop(ws);
            reopened = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reopened, "the closed socket's place was not given back");
}

#[sqlx::test]
async fn a_question_moves_the_chat_metrics(db: PgPool) {
    let (app, token) = setup(db).await;
    let before = app.metrics().await;
    let mut ws = connect(&app, &token).await;
    let open = app.metrics().await;
    assert!(common::sample(&open, "docuchat_websockets_open", &[]) >= 1.0, "{open}");
    let frames = ask(&mut ws, None, "What are the standard and recommended packages supplied with R?").await;
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{frames:?}");
    let after = app.metrics().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        common::sample(&after, name, labels) - common::sample(&before, name, labels)
    };
    assert!(moved("docuchat_chat_questions_total", &[]) >= 1.0);
    assert!(moved("docuchat_chat_answers_total", &[("status", "complete")]) >= 1.0);
    assert!(moved("docuchat_chat_time_to_first_token_seconds_count", &[]) >= 1.0);
    let usage = &done["usage"];
    assert!(moved("docuchat_tokens_metered_total", &[("kind", "prompt")]) >= usage["prompt_tokens"].as_f64().unwrap());
    assert!(
        moved("docuchat_tokens_metered_total", &[("kind", "completion")])
            >= usage["completion_tokens"].as_f64().unwrap()
    );
    assert!(moved("docuchat_embedder_batches_total", &[]) >= 1.0, "the question was embedded");
    let upgrades = [("route", "/ws/chat"), ("method", "GET")];
    assert!(moved("docuchat_http_requests_total", &upgrades) >= 1.0);
    // the metrics are not on the public listener
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}
