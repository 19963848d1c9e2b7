//! A DocuChat client to copy from: logs in with the e-mail code (typed at the terminal), uploads a
//! PDF with a progress bar that follows its ingestion until it is ready, then asks questions over
//! the chat socket, printing the answer's tokens as they stream and its sources with their pages.
//!
//!     infra/dev.sh run        # in another terminal: the server, with the `demo` tenant
//!     cargo run --example client -- --tenant demo --email admin@demo.example \
//!         --upload tests/fixtures/english-2page.pdf --ask "What is this document about?"
//!
//! Without `--ask` it reads questions from the terminal, one per line, until end of input. The
//! code is in the e-mail, or in the server's log when no SMTP_URL is configured.

mod client;

#[tokio::main]
async fn main() {
    use clap::Parser;
    let options = client::Options::parse();
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    if let Err(e) = client::run(options, input, std::io::stdout()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
