//! Extraction + chunking throughput, side by side with poppler's `pdftotext` on the same files.
//!
//!     cargo run --release --example bench_extract -- <pdf dir> [rounds]
//!
//! Prints pages per second for DocuChat (extract, normalise, chunk at 400/40 tokens) and for
//! `pdftotext` (a process per file, output to /dev/null), and their ratio. Files that DocuChat
//! refuses (encrypted, no text) are skipped for both.

use std::{path::Path, process::Command, time::Instant};

use docuchat::ingestion::{
    chunk::Chunker,
    pdf::{Limits, extract},
};

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

    println!("| file | pages | chunks | docuchat pages/s | pdftotext pages/s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut total_pages, mut ours_total, mut theirs_total) = (0usize, 0f64, 0f64);
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
        theirs_total += best_theirs;
        println!(
            "| {} | {n} | {chunks} | {:.0} | {:.0} | {:.2} |",
            Path::new(path).file_name().unwrap().to_string_lossy(),
            n as f64 / best_ours,
            n as f64 / best_theirs,
            best_theirs / best_ours,
        );
    }
    println!(
        "\nall files: {total_pages} pages; docuchat {:.0} pages/s, pdftotext {:.0} pages/s, ratio {:.2} (best of {rounds} rounds, one core each)",
        total_pages as f64 / ours_total,
        total_pages as f64 / theirs_total,
        theirs_total / ours_total
    );
}
