//! The local embedder: agreement with the reference vectors, then throughput on chunks of 256
//! word pieces.
//!
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example bench_embed -- [texts] [threads] [amx-bf16|f32]

use std::time::Instant;

use docuchat::embed::{
    local::{LocalEmbedder, MAX_WORD_PIECES},
    minilm::{Kernel, best_kernel},
};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let kernel = match args.get(2).map(String::as_str) {
        Some("f32") => Kernel::F32,
        Some("amx-bf16") => Kernel::AmxBf16,
        _ => best_kernel(),
    };
    let dir =
        std::env::var("LOCAL_MODEL_DIR").map_err(|_| anyhow::anyhow!("set LOCAL_MODEL_DIR (infra/dev.sh env)"))?;
    let embedder = LocalEmbedder::load(std::path::Path::new(&dir), kernel, threads)?;
    println!("kernel: {}", embedder.kernel().name());

    let fixture = format!("{}/tests/fixtures/minilm-reference-vectors.json", env!("CARGO_MANIFEST_DIR"));
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<String> = items.iter().map(|i| i["text"].as_str().unwrap().to_owned()).collect();
    let out = embedder.embed_blocking(&texts);
    let mut worst = 1f32;
    for (item, v) in items.iter().zip(&out.vectors) {
        let want: Vec<f32> = item["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let c = cosine(v, &want);
        worst = worst.min(c);
        let pieces = embedder.tokenizer().count(item["text"].as_str().unwrap());
        println!("cosine {c:.5}  word pieces {pieces:>3} (reference {})", item["word_pieces"]);
    }
    println!("worst cosine against the reference vectors: {worst:.5}");

    // chunks of exactly 256 word pieces
    let base = "Retrieval augmented generation combines a search over the documents of a tenant with a language model that answers from what was found, citing its sources. ";
    let long = base.repeat(20);
    let mut chunks = Vec::new();
    for i in 0..n {
        let text = format!("{i} {long}");
        chunks.push(text);
    }
    let pieces = embedder.tokenizer().encode(&chunks[0], MAX_WORD_PIECES).len();
    embedder.embed_blocking(&chunks[..4.min(n)]); // warm-up
    let t = Instant::now();
    embedder.embed_blocking(&chunks);
    let secs = t.elapsed().as_secs_f64();
    println!("{n} chunks of {pieces} word pieces in {secs:.2} s: {:.1} chunks/s ({threads} threads)", n as f64 / secs);

    // a chat question is embedded on its own: what one costs before retrieval can start
    let questions = [
        "What are the standard and recommended packages supplied with R?",
        "How do I install a package from a local file?",
        "چگونه می‌توانم یک جدول در لاتک بسازم؟",
        "Which options does the bzip2 command accept for the block size?",
    ];
    let mut ms = Vec::new();
    for round in 0..50 {
        for q in questions {
            let t = Instant::now();
            embedder.embed_blocking(&[q.to_owned()]);
            if round > 0 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    ms.sort_by(f64::total_cmp);
    let pieces: Vec<usize> = questions.iter().map(|q| embedder.tokenizer().count(q)).collect();
    println!(
        "one question at a time ({:?} word pieces): p50 {:.2} ms, p99 {:.2} ms ({threads} threads)",
        pieces,
        ms[ms.len() / 2],
        ms[(ms.len() * 99 / 100).min(ms.len() - 1)]
    );
    Ok(())
}
