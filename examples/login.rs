//! Logs in to a running DocuChat with an e-mail code and prints the current user.
//!
//!     cargo run --example login -- http://127.0.0.1:8000 demo admin@demo.example
//!
//! It asks for the code (from the e-mail, or from the server log when no SMTP is configured).

use std::io::{BufRead, Write};

use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, tenant, email] = args.as_slice() else {
        eprintln!("usage: login <base-url> <tenant id or slug> <email>");
        std::process::exit(2);
    };
    let client = reqwest::Client::new();

    let resp = client
        .post(format!("{base}/v1/auth/request-code"))
        .header("X-Tenant-ID", tenant)
        .json(&json!({ "email": email }))
        .send()
        .await?;
    println!("request-code: {} {}", resp.status(), resp.text().await?);

    print!("code: ");
    std::io::stdout().flush()?;
    let mut code = String::new();
    std::io::stdin().lock().read_line(&mut code)?;

    let resp = client
        .post(format!("{base}/v1/auth/verify-code"))
        .header("X-Tenant-ID", tenant)
        .json(&json!({ "email": email, "code": code.trim() }))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        eprintln!("verify-code: {status} {body}");
        std::process::exit(1);
    }
    let token = body["access_token"].as_str().unwrap_or_default();
    let me: Value = client
        .get(format!("{base}/v1/me"))
        .header("X-Tenant-ID", tenant)
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    println!("{}", serde_json::to_string_pretty(&me)?);
    println!("access token: {token}");
    Ok(())
}
