//! Test harness: a real server on 127.0.0.1:0 over a per-test database (`#[sqlx::test]`), a
//! per-test Redis key prefix, and real peers started by the tests (an SMTP receiver, a private
//! Redis server).
#![allow(dead_code)]

pub mod metering;
pub mod openai;
pub mod pdfgen;
pub mod smtp;
pub mod tcp_proxy;
pub mod webdriver;
pub mod ws;

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener as StdListener},
    process::{Child, Command, Stdio},
    time::Duration,
};

use docuchat::{
    app::{self, AppState},
    auth::email::Email,
    config::Config,
    tenants::{self, Tenant},
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;

pub use smtp::MailServer;
use uuid::Uuid;

/// The admin of tenant `acme` in most tests.
pub const ADMIN: &str = "boss@acme.example";

/// A committed test PDF.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

pub fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        docuchat::telemetry::init(docuchat::config::LogFormat::Text);
    }
}

/// The settings every test starts from: the Redis of the test environment, a fresh key prefix.
pub fn test_vars() -> HashMap<String, String> {
    let redis =
        std::env::var("REDIS_URL").expect("REDIS_URL must point at a Redis (run the tests with infra/dev.sh test)");
    HashMap::from([
        ("REDIS_URL".to_owned(), redis),
        ("REDIS_KEY_PREFIX".to_owned(), format!("test:{}:", Uuid::new_v4())),
        ("JWT_SECRET".to_owned(), "test-secret-that-is-long-enough-0123456789".to_owned()),
        ("INGEST_WORKERS".to_owned(), "0".to_owned()),
        // the server runs inside the test binary: its PDF-reading children are the real binary
        ("EXTRACT_PROGRAM".to_owned(), env!("CARGO_BIN_EXE_docuchat").to_owned()),
        ("LOCAL_MODEL_DIR".to_owned(), std::env::var("LOCAL_MODEL_DIR").unwrap_or_default()),
        // one model per test unless the test is about the second one (the cross-language tests and
        // the row-security tests turn it on): the ledger figures the tests check are one model's
        ("CROSS_LANGUAGE_MODEL".to_owned(), "none".to_owned()),
    ])
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    /// `GET /metrics`, on its own listener
    pub metrics_url: String,
    pub client: reqwest::Client,
    pub db: PgPool,
    pub state: AppState,
    pub mail: Option<MailServer>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

type ConfigTweak = Box<dyn FnOnce(&mut Config) + Send>;

pub struct Builder {
    vars: HashMap<String, String>,
    tweak: Option<ConfigTweak>,
    with_mail: bool,
}

impl Builder {
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    pub fn vars<K: AsRef<str>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        for (name, value) in vars {
            self.vars.insert(name.as_ref().to_owned(), value.into());
        }
        self
    }

    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Some(Box::new(f));
        self
    }

    /// Starts without an SMTP receiver: codes go to the log.
    pub fn without_mail(mut self) -> Self {
        self.with_mail = false;
        self
    }

    pub async fn spawn(mut self, db: PgPool) -> TestApp {
        init_test_log();
        docuchat::install_crypto_provider();
        let mail = if self.with_mail {
            let server = MailServer::start().await;
            self.vars.insert("SMTP_URL".into(), format!("smtp://{}", server.addr));
            Some(server)
        } else {
            None
        };
        let vars = self.vars;
        let mut config = Config::from_lookup(|k| vars.get(k).cloned()).expect("test config");
        // loose limits by default; tests that exercise a limit set it
        config.auth.resend_cooldown = Duration::ZERO;
        config.auth.codes_per_email_per_hour = 1000;
        config.auth.codes_per_ip_per_hour = 1000;
        config.auth.verifies_per_ip_per_hour = 1000;
        config.rate_limits = docuchat::config::RateLimits {
            auth_per_minute: 100_000,
            chat_per_minute: 100_000,
            upload_per_minute: 100_000,
        };
        if let Some(tweak) = self.tweak {
            tweak(&mut config);
        }
        // the service's own pool works as the service's role, under row-level security; `db`
        // (the test's) is the owner's, for fixtures and for looking behind the service's back
        let service_db = docuchat::db::pool_options(config.chat.ef_search)
            .max_connections(config.database_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with((*db.connect_options()).clone())
            .await
            .expect("the service's pool");
        let state = AppState::with_pool(config, service_db).await.expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_url = format!("http://{}/metrics", metrics.local_addr().unwrap());
        // ends with the test's runtime
        tokio::spawn(app::serve_metrics(metrics, state.clone(), std::future::pending()));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            metrics_url,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            db,
            state,
            mail,
            shutdown: Some(tx),
            server: Some(server),
        }
    }
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder { vars: test_vars(), tweak: None, with_mail: true }
    }

    pub async fn spawn(db: PgPool) -> TestApp {
        Self::builder().spawn(db).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A tenant that anyone may log in to (`open`): the suites about other capabilities log in
    /// members freely; the login policy itself is tested with `invite_tenant`.
    pub async fn create_tenant(&self, slug: &str, admin_email: &str) -> Tenant {
        let tenant = self.invite_tenant(slug, admin_email).await;
        tenants::set_access(&self.db, tenant.id, tenants::Signup::Open, &[]).await.expect("open tenant");
        tenant
    }

    /// A tenant as the command line creates it by default: only its admin address and the
    /// members its admins add may log in.
    pub async fn invite_tenant(&self, slug: &str, admin_email: &str) -> Tenant {
        tenants::create(&self.db, &format!("Tenant {slug}"), slug, &Email::parse(admin_email).unwrap())
            .await
            .expect("create tenant")
    }

    pub async fn request_code(&self, tenant: &str, email: &str) -> Response {
        self.client
            .post(self.url("/v1/auth/request-code"))
            .header("X-Tenant-ID", tenant)
            .json(&json!({ "email": email }))
            .send()
            .await
            .unwrap()
    }

    pub async fn verify_code(&self, tenant: &str, email: &str, code: &str) -> Response {
        self.client
            .post(self.url("/v1/auth/verify-code"))
            .header("X-Tenant-ID", tenant)
            .json(&json!({ "email": email, "code": code }))
            .send()
            .await
            .unwrap()
    }

    /// Requests a code and reads it from the e-mail the SMTP receiver got.
    pub async fn code_by_mail(&self, tenant: &str, email: &str) -> String {
        let resp = self.request_code(tenant, email).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{}", resp.text().await.unwrap());
        let mail = self.mail.as_ref().expect("this app has no SMTP receiver");
        let message = mail.next_to(email, Duration::from_secs(10)).await.expect("no e-mail arrived");
        message.code().expect("no code in the e-mail")
    }

    /// Logs in through the real flow (code by e-mail) and returns the access token.
    pub async fn login(&self, tenant: &str, email: &str) -> String {
        let code = self.code_by_mail(tenant, email).await;
        let resp = self.verify_code(tenant, email, &code).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Uploads a file as multipart field `file`.
    pub async fn upload(&self, tenant: &str, token: &str, filename: &str, bytes: Vec<u8>) -> Response {
        let part =
            reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned()).mime_str("application/pdf").unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        self.client
            .post(self.url("/v1/files"))
            .header("X-Tenant-ID", tenant)
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Creates tenant `slug` whose admin is `admin_email` and logs the admin in; returns the
    /// admin's token.
    pub async fn tenant_with_admin(&self, slug: &str, admin_email: &str) -> String {
        self.create_tenant(slug, admin_email).await;
        self.login(slug, admin_email).await
    }

    /// Uploads the committed fixture `fixture_name` as `filename`, runs the queue, and checks that
    /// the document is ready; returns its id.
    pub async fn upload_ready(&self, tenant: &str, token: &str, filename: &str, fixture_name: &str) -> Uuid {
        let resp = self.upload(tenant, token, filename, fixture(fixture_name)).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{}", resp.text().await.unwrap());
        let id: Uuid = resp.json::<Value>().await.unwrap()["document_id"].as_str().unwrap().parse().unwrap();
        self.drain().await;
        let doc: Value = self.get_as(&format!("/v1/documents/{id}"), tenant, token).await.json().await.unwrap();
        assert_eq!(doc["status"], "ready", "{doc}");
        id
    }

    /// Where most tests start: tenant `acme`, its admin `ADMIN` logged in, and the two-page English
    /// fixture ready as `r-intro.pdf`. Returns the admin's token.
    pub async fn acme_with_document(&self) -> String {
        let admin = self.tenant_with_admin("acme", ADMIN).await;
        self.upload_ready("acme", &admin, "r-intro.pdf", "english-2page.pdf").await;
        admin
    }

    /// Runs the ingestion queue dry in this task.
    pub async fn drain(&self) -> Vec<(Uuid, docuchat::ingestion::worker::Outcome)> {
        let workers = self.state.workers().expect("ingestion workers");
        workers.drain("test-drain").await.expect("drain")
    }

    pub async fn get_as(&self, path: &str, tenant: &str, token: &str) -> Response {
        self.client.get(self.url(path)).header("X-Tenant-ID", tenant).bearer_auth(token).send().await.unwrap()
    }

    pub async fn delete_as(&self, path: &str, tenant: &str, token: &str) -> Response {
        self.client.delete(self.url(path)).header("X-Tenant-ID", tenant).bearer_auth(token).send().await.unwrap()
    }

    /// The metrics as Prometheus scrapes them.
    pub async fn metrics(&self) -> String {
        let resp = self.client.get(&self.metrics_url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let kind = resp.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        let text = resp.text().await.unwrap();
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        text
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// The sum of the samples of `name` whose labels include `labels` (`name{a="x",b="y"} 3`).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let found = rest.trim_end_matches('}');
            let has = |(k, v): &(&str, &str)| found.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
            labels.iter().all(has).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads an error envelope, asserting its shape, and returns (code, message).
pub async fn error_of(resp: Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    let error = body.get("error").unwrap_or_else(|| panic!("no error envelope in {body}"));
    let code = error["code"].as_str().unwrap_or_else(|| panic!("no code in {body}")).to_owned();
    let message = error["message"].as_str().unwrap_or_else(|| panic!("no message in {body}")).to_owned();
    assert!(!message.is_empty());
    (status, code, message)
}

/// The URL of the per-test database behind `db` (for child processes).
pub fn database_url_of(db: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let name = db.connect_options().get_database().expect("test database name").to_owned();
    let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL has a database name");
    format!("{prefix}/{name}")
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private Redis server, killed on drop.
pub struct RedisProcess {
    pub port: u16,
    child: Child,
}

impl RedisProcess {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (infra/dev.sh up installs it)");
        // from here on Drop kills and reaps the child
        let server = Self { port, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

/// Asks all `questions` of a local embedder's question lane at once, and checks that each gets the
/// vector it gets alone (`alone`) and its own token count (`tokens`).
pub async fn lane_gives_each_question_its_own_vector(
    embedder: std::sync::Arc<docuchat::embed::local::LocalEmbedder>,
    questions: &[String],
    alone: &[Vec<f32>],
    tokens: impl Fn(&str) -> usize,
) {
    use docuchat::embed::Embedder;
    let asked = questions.iter().map(|q| {
        let embedder = embedder.clone();
        let q = q.clone();
        tokio::spawn(async move { embedder.embed_query(&q).await })
    });
    let together = futures_util::future::join_all(asked).await;
    for ((q, alone), got) in questions.iter().zip(alone).zip(together) {
        let got = got.unwrap().unwrap();
        assert_eq!(got.vectors.len(), 1);
        assert!(cosine(&got.vectors[0], alone) > 0.99999, "{q:?}");
        assert_eq!(got.tokens as usize, tokens(q), "{q:?}");
    }
}
