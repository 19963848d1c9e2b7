//! The example client (`cargo run --example client`), run without a terminal against a real
//! server: login with the code from the e-mail, an upload followed to `ready`, two questions.

mod common;

#[path = "../examples/client/client.rs"]
mod client;

use std::time::Duration;

use common::{ADMIN, TestApp};
use sqlx::PgPool;
use tokio::io::{AsyncWriteExt, BufReader};

#[sqlx::test]
async fn the_example_client_logs_in_uploads_and_asks(db: PgPool) {
    // the service's own workers ingest, as in a deployment
    let app = TestApp::builder().var("INGEST_WORKERS", "1").spawn(db).await;
    app.create_tenant("acme", ADMIN).await;
    let pdf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/english-2page.pdf");
    let options = client::Options {
        url: app.base.clone(),
        tenant: "acme".into(),
        email: ADMIN.into(),
        upload: Some(pdf),
        ask: vec!["How many packages are supplied with R?".into(), "How do I start the R program?".into()],
    };
    // the terminal: the code is typed once the e-mail has come
    let (mut keyboard, terminal) = tokio::io::duplex(64);
    let mail = app.mail.as_ref().unwrap();
    let typing = async {
        let message = mail.next_to(ADMIN, Duration::from_secs(20)).await.expect("no e-mail arrived");
        keyboard.write_all(format!("{}\n", message.code().unwrap()).as_bytes()).await.unwrap();
    };
    let mut screen = Vec::new();
    let running =
        tokio::time::timeout(Duration::from_secs(120), client::run(options, BufReader::new(terminal), &mut screen));
    let ((), result) = tokio::join!(typing, running);
    let screen = String::from_utf8(screen).unwrap();
    result.expect("the client finished in time").unwrap_or_else(|e| panic!("{e}\n{screen}"));

    assert!(screen.contains("logged in"), "{screen}");
    assert!(screen.contains("uploaded \"english-2page.pdf\" (2 pages)"), "{screen}");
    assert!(screen.contains("ready: "), "{screen}");
    // two answers, each with its sources and pages, in one session
    assert_eq!(screen.matches("sources:").count(), 2, "{screen}");
    assert!(screen.contains("[1] english-2page.pdf, page"), "{screen}");
    assert_eq!(screen.matches("tokens, model \"offline-extractive\")").count(), 2, "{screen}");
    let sessions: serde_json::Value = app
        .client
        .get(app.url("/v1/chat/sessions"))
        .header("X-Tenant-ID", "acme")
        .bearer_auth(app.login("acme", ADMIN).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1, "{sessions}");
    app.stop().await;
}
