//! Extraction + chunking throughput, side by side with poppler's `pdftotext` on the same files.
//!
//!     cargo build --release --bin docuchat
//!     cargo run --release --example bench_extract -- <pdf dir> [rounds]
//!
//! Prints pages per second for DocuChat in this process (extract, normalise, chunk at 400/40
//! tokens), for DocuChat through the service's child process (`docuchat pdf-child`, with the
//! default limits; its text is checked to equal the in-process text), and for `pdftotext` (a
//! process per file, output to /dev/null), and the ratios. Files that DocuChat refuses
//! (encrypted, no text) are skipped for all.

use std::{path::Path, process::Command, time::Instant};

use docuchat::ingestion::{
    chunk::Chunker,
    pdf::{Limits, extract},
    sandbox::{Sandbox, SandboxConfig},
};
use tokio_util::sync::CancellationToken;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: bench_extract <pdf dir> [rounds]");
        std::process::exit(2);
    };
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("pdf dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    files.sort();
    let limits = Limits { max_pages: 100_000, ..Limits::default() };
    let chunker = Chunker::new(400, 40);
    let has_pdftotext = Command::new("pdftotext").arg("-v").output().is_ok();
    let program = std::path::PathBuf::from(format!("{}/target/release/docuchat", env!("CARGO_MANIFEST_DIR")));
    let sandbox = Sandbox::new(SandboxConfig {
        program,
        memory_bytes: 1024 << 20,
        max_text_bytes: 256 << 20,
        inspect_timeout: std::time::Duration::from_secs(20),
        inspections: 1,
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let never = CancellationToken::new();
    let in_child = |bytes: &[u8]| runtime.block_on(sandbox.extract(bytes, &limits, &never, |_| {}));

    println!(
        "| file | pages | chunks | in process pages/s | in the child pages/s | child / in process | pdftotext pages/s | pdftotext / in process |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let (mut total_pages, mut ours_total, mut child_total, mut theirs_total) = (0usize, 0f64, 0f64, 0f64);
    for path in &files {
        let bytes = std::fs::read(path).expect("read");
        let Ok(pages) = extract(&bytes, &limits, |_| {}) else { continue };
        let n = pages.len();
        let chunks = chunker.chunk(&pages).len();
        let mut best_ours = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            let pages = extract(&bytes, &limits, |_| {}).expect("extract");
            std::hint::black_box(chunker.chunk(&pages));
            best_ours = best_ours.min(t.elapsed().as_secs_f64());
        }
        let from_child = in_child(&bytes).expect("extraction in the child");
        assert_eq!(from_child, pages, "the child's text differs from the in-process text");
        let mut best_child = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            let pages = in_child(&bytes).expect("extract in the child");
            std::hint::black_box(chunker.chunk(&pages));
            best_child = best_child.min(t.elapsed().as_secs_f64());
        }
        let mut best_theirs = f64::NAN;
        if has_pdftotext {
            best_theirs = f64::MAX;
            for _ in 0..rounds {
                let t = Instant::now();
                let ok = Command::new("pdftotext").arg(path).arg("/dev/null").status().is_ok_and(|s| s.success());
                if ok {
                    best_theirs = best_theirs.min(t.elapsed().as_secs_f64());
                }
            }
        }
        total_pages += n;
        ours_total += best_ours;
        child_total += best_child;
        theirs_total += best_theirs;
        println!(
            "| {} | {n} | {chunks} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            Path::new(path).file_name().unwrap().to_string_lossy(),
            n as f64 / best_ours,
            n as f64 / best_child,
            best_ours / best_child,
            n as f64 / best_theirs,
            best_theirs / best_ours,
        );
    }
    println!(
        "\nall files: {total_pages} pages; docuchat in process {:.0} pages/s, in the child {:.0} pages/s ({:+.1} %), pdftotext {:.0} pages/s, pdftotext / in process {:.2} (best of {rounds} rounds, one core each; the child's text equals the in-process text for every file)",
        total_pages as f64 / ours_total,
        total_pages as f64 / child_total,
        (ours_total / child_total - 1.0) * 100.0,
        total_pages as f64 / theirs_total,
        theirs_total / ours_total
    );
}
