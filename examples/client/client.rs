//! The client's work, apart from the terminal: the test of the example drives it with its own
//! input and output.

use std::{io::Write, path::PathBuf, time::Duration};

use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::Parser, Debug)]
#[command(about = "Log in to DocuChat, upload a PDF, and ask questions about it")]
pub struct Options {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The tenant's id or slug (`X-Tenant-ID`).
    #[arg(long)]
    pub tenant: String,
    /// The address the login code goes to.
    #[arg(long)]
    pub email: String,
    /// A PDF to upload first (tenant admins, or an API key's holder, may upload).
    #[arg(long)]
    pub upload: Option<PathBuf>,
    /// A question to ask (repeat for more); without any, questions are read from the input.
    #[arg(long)]
    pub ask: Vec<String>,
}

/// An error in the API's envelope, as a sentence.
async fn failure(resp: reqwest::Response) -> Error {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("?");
    let message = body["error"]["message"].as_str().unwrap_or("");
    format!("{status} {code}: {message}").into()
}

pub async fn run(options: Options, mut input: impl AsyncBufRead + Unpin, mut out: impl Write) -> Result<(), Error> {
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let base = options.url.trim_end_matches('/').to_owned();
    let tenant = options.tenant.as_str();

    // 1. log in: the code arrives by e-mail
    let resp = http
        .post(format!("{base}/v1/auth/request-code"))
        .header("X-Tenant-ID", tenant)
        .json(&json!({ "email": options.email }))
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    write!(out, "a code was sent to {}; code: ", options.email)?;
    out.flush()?;
    let mut code = String::new();
    input.read_line(&mut code).await?;
    let resp = http
        .post(format!("{base}/v1/auth/verify-code"))
        .header("X-Tenant-ID", tenant)
        .json(&json!({ "email": options.email, "code": code.trim() }))
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    let token = resp.json::<Value>().await?["access_token"].as_str().ok_or("no access_token")?.to_owned();
    writeln!(out, "logged in")?;

    // 2. upload, and follow the ingestion until the document is ready
    if let Some(path) = &options.upload {
        let bytes = tokio::fs::read(path).await?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("document.pdf").to_owned();
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name).mime_str("application/pdf")?;
        let resp = http
            .post(format!("{base}/v1/files"))
            .header("X-Tenant-ID", tenant)
            .bearer_auth(&token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let uploaded: Value = resp.json().await?;
        let id = uploaded["document_id"].as_str().ok_or("no document_id")?.to_owned();
        writeln!(out, "uploaded {} ({} pages)", uploaded["filename"], uploaded["pages"])?;
        let doc = follow(&http, &base, tenant, &token, &id).await?;
        if doc["status"] != "ready" {
            return Err(format!("the document failed: {}", doc["error"]).into());
        }
        writeln!(out, "ready: {} chunks", doc["chunk_count"])?;
    }

    // 3. questions over the socket
    let ws_url = format!("{}/ws/chat?token={token}", base.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;
    let mut session: Option<String> = None;
    let mut questions = options.ask.clone().into_iter();
    loop {
        let question = match questions.next() {
            Some(q) => q,
            None if !options.ask.is_empty() => break,
            None => {
                write!(out, "\n> ")?;
                out.flush()?;
                let mut line = String::new();
                if input.read_line(&mut line).await? == 0 {
                    break;
                }
                line.trim().to_owned()
            }
        };
        if question.is_empty() {
            continue;
        }
        // the session carries on: later questions see the earlier turns
        let ask = json!({ "type": "ask", "session_id": session, "content": question });
        socket.send(Message::Text(ask.to_string().into())).await?;
        let mut sources = Vec::new();
        while let Some(frame) = socket.next().await {
            let Message::Text(text) = frame? else { continue };
            let frame: Value = serde_json::from_str(&text)?;
            match frame["type"].as_str() {
                Some("start") => session = frame["session_id"].as_str().map(str::to_owned),
                Some("sources") => sources = frame["sources"].as_array().cloned().unwrap_or_default(),
                Some("token") => {
                    write!(out, "{}", frame["content"].as_str().unwrap_or(""))?;
                    out.flush()?;
                }
                Some("done") => {
                    writeln!(out)?;
                    if !sources.is_empty() {
                        writeln!(out, "sources:")?;
                    }
                    for (i, s) in sources.iter().enumerate() {
                        let (from, to) = (s["page"].as_i64().unwrap_or(0), s["page_to"].as_i64().unwrap_or(0));
                        let pages = if to > from { format!("pages {from}-{to}") } else { format!("page {from}") };
                        writeln!(out, "  [{}] {}, {pages}", i + 1, s["filename"].as_str().unwrap_or("?"))?;
                    }
                    let usage = &frame["usage"];
                    writeln!(out, "({} tokens, model {})", usage["total_tokens"], frame["model"])?;
                    break;
                }
                Some("error") => {
                    writeln!(out, "\nerror {}: {}", frame["code"], frame["message"])?;
                    break;
                }
                _ => {}
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// Follows `GET /v1/documents/{id}/events` with a progress bar until the document is ready or
/// failed; returns it as it ended. A stream that ends early (the server restarting, its
/// ten-minute limit) is opened again.
async fn follow(http: &reqwest::Client, base: &str, tenant: &str, token: &str, id: &str) -> Result<Value, Error> {
    let bar = ProgressBar::new(1);
    bar.set_style(ProgressStyle::with_template("{spinner} {msg:>12} [{bar:40}] {pos}/{len}")?.progress_chars("=> "));
    loop {
        let mut resp = http
            .get(format!("{base}/v1/documents/{id}/events"))
            .header("X-Tenant-ID", tenant)
            .bearer_auth(token)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let mut pending = String::new();
        while let Some(chunk) = resp.chunk().await? {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            // events end with a blank line
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                let doc: Value = serde_json::from_str(data)?;
                if event.lines().any(|l| l == "event: error") {
                    bar.abandon();
                    return Err(format!("{}: {}", doc["code"], doc["message"]).into());
                }
                let p = &doc["progress"];
                let stage = p["stage"].as_str().unwrap_or("");
                // pages while extracting, chunks from then on
                let (done, total) = if stage == "extracting" || stage == "queued" {
                    (p["pages_done"].as_u64(), p["pages_total"].as_u64())
                } else {
                    (p["chunks_embedded"].as_u64(), p["chunks_total"].as_u64())
                };
                bar.set_message(stage.to_owned());
                bar.set_length(total.unwrap_or(1).max(1));
                bar.set_position(done.unwrap_or(0));
                if stage == "ready" || stage == "failed" {
                    bar.finish();
                    return Ok(doc);
                }
            }
        }
    }
}
