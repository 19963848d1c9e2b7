//! Prints the text DocuChat extracts from a PDF, page by page.
//!
//!     cargo run --release --example extract_text -- file.pdf

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: extract_text <file.pdf>");
        std::process::exit(2);
    };
    let bytes = std::fs::read(&path).expect("read the file");
    let limits = docuchat::ingestion::pdf::Limits { max_pages: 100_000, ..Default::default() };
    match docuchat::ingestion::pdf::extract(&bytes, &limits, |_| {}) {
        Ok(pages) => {
            for p in pages {
                println!("=== page {} ===\n{}", p.number, p.text);
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", e.code());
            std::process::exit(1);
        }
    }
}
