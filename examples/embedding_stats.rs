//! Compares the retrieval benchmark's synthetic vectors with real ones: PDFs are extracted,
//! chunked and embedded by the local all-MiniLM-L6-v2, and the neighbour statistics of those
//! vectors are printed beside the statistics of each synthetic model at the same count.
//!
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example embedding_stats -- file.pdf [file.pdf ...]

#[path = "support/vectors.rs"]
mod vectors;

use docuchat::{
    embed::{
        bert::best_kernel,
        local::{LocalEmbedder, LocalModel},
    },
    ingestion::{
        chunk::Chunker,
        pdf::{Limits, extract},
    },
};
use vectors::{Model, Rng, Tenant, stats};

/// Chunks taken from one file at most (a long manual would outweigh the others).
const PER_FILE: usize = 400;

fn main() -> anyhow::Result<()> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: embedding_stats <file.pdf> [file.pdf ...]");
        std::process::exit(2);
    }
    let dir =
        std::env::var("LOCAL_MODEL_DIR").map_err(|_| anyhow::anyhow!("set LOCAL_MODEL_DIR (infra/dev.sh env)"))?;
    let embedder = LocalEmbedder::load(&LocalModel::MiniLm.dir_in(std::path::Path::new(&dir)), best_kernel(), 2)?;
    let limits = Limits { max_pages: 10_000, ..Limits::default() };
    let mut real = Vec::new();
    for file in &files {
        let pages = extract(&std::fs::read(file)?, &limits, |_| {}).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        // the local embedder's chunk size
        let texts: Vec<String> =
            Chunker::new(200, 20).chunk(&pages).into_iter().map(|c| c.text).take(PER_FILE).collect();
        let vectors = embedder.embed_blocking(&texts).vectors;
        println!("{file}: {}", stats(&vectors));
        real.extend(vectors);
    }
    println!("all-MiniLM-L6-v2, all files: {}", stats(&real));
    for model in [Model::Manifold, Model::Isotropic] {
        let mut rng = Rng(7);
        let tenant = Tenant::new(&mut rng, model, 384);
        let synthetic: Vec<Vec<f32>> = (0..real.len()).map(|i| tenant.sample(&mut rng, i)).collect();
        println!("synthetic, {} model: {}", model.name(), stats(&synthetic));
    }
    Ok(())
}
