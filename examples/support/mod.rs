//! What the benchmark programs share: a scratch database, percentiles, and a `docuchat serve`
//! process of the release build. Included with `#[path = "support/mod.rs"] mod support;`.
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
