//! Embeddings behind one trait, chosen by configuration: an OpenAI-compatible HTTP API, or a
//! local model run in-process.

pub mod bert;
pub mod local;
pub mod openai;
pub mod unigram;
pub mod wordpiece;

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use crate::config::{Config, EmbeddingProvider};

/// Counts tokens with a model's own tokenizer.
pub type TokenCounter = dyn Fn(&str) -> usize + Send + Sync;

/// Vectors for a batch of texts, in input order, and the tokens the provider counted.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// worth trying again later (rate limits, server errors, timeouts)
    #[error("the embedding service is unavailable: {0}")]
    Unavailable(String),
    /// will not succeed on retry (bad request, wrong model, misconfiguration)
    #[error("the embedding request failed: {0}")]
    Failed(String),
}

pub trait Embedder: Send + Sync {
    /// The model name stored with each vector.
    fn model(&self) -> &str;
    fn dimensions(&self) -> usize;
    /// How many texts one call should carry.
    fn batch_size(&self) -> usize {
        64
    }
    /// The model's own input limit, counted with its own tokenizer, if it has one that chunks
    /// must respect: (count, max).
    fn input_limit(&self) -> Option<(&TokenCounter, usize)> {
        None
    }
    /// Vectors of passages (document chunks).
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Embeddings, EmbedError>>;
    /// The vector of a question. Models trained with a query form and a passage form (e5's
    /// `query: ` and `passage: `) give the query form here; for the others it is [`Self::embed`].
    fn embed_query<'a>(&'a self, question: &'a str) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        Box::pin(async move { self.embed(&[question.to_owned()]).await })
    }
}

/// Builds the embedder the configuration names (its batches counted and timed for the metrics).
pub fn from_config(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
    let inner: Box<dyn Embedder> = match config.embedding_provider {
        EmbeddingProvider::OpenAi => Box::new(openai::OpenAiEmbedder::from_config(config)?),
        EmbeddingProvider::Local => {
            let Some(model) = local::LocalModel::from_name(&config.embedding_model) else {
                anyhow::bail!(
                    "the local embedder runs {} or {}, not `{}`",
                    local::MODEL_NAME,
                    local::E5_MODEL_NAME,
                    config.embedding_model
                );
            };
            Box::new(local::LocalEmbedder::from_dir(model, config.local_model_dir.as_deref(), config.embed_threads)?)
        }
    };
    Ok(Arc::new(Metered(inner)))
}

/// Embedders of the models a tenant's chunks may still hold while a model switch re-embeds them
/// (`docuchat reindex` after `EMBEDDING_MODEL` changed): questions are embedded with those too, so
/// that a document not yet re-embedded stays searchable. The local models are loaded on first use
/// from `LOCAL_MODEL_DIR`; a hosted model no longer configured cannot be (its chunks are not
/// searched until they are re-embedded).
pub struct Previous {
    local_dir: Option<String>,
    threads: usize,
    loaded: [OnceLock<Option<Arc<dyn Embedder>>>; 2],
}

impl Previous {
    pub fn from_config(config: &Config) -> Self {
        Self { local_dir: config.local_model_dir.clone(), threads: config.embed_threads, loaded: Default::default() }
    }

    /// The embedder of `model`, if this process can run it.
    pub fn get(&self, model: &str) -> Option<Arc<dyn Embedder>> {
        let which = local::LocalModel::from_name(model)?;
        let slot = local::LocalModel::ALL.iter().position(|m| *m == which)?;
        self.loaded[slot]
            .get_or_init(|| match local::LocalEmbedder::from_dir(which, self.local_dir.as_deref(), self.threads) {
                Ok(e) => Some(Arc::new(Metered(Box::new(e))) as Arc<dyn Embedder>),
                Err(e) => {
                    tracing::warn!(model, error = %format!("{e:#}"), "cannot load the model of earlier chunks");
                    None
                }
            })
            .clone()
    }
}

/// An embedder whose batches go into the metrics.
struct Metered(Box<dyn Embedder>);

impl Embedder for Metered {
    fn model(&self) -> &str {
        self.0.model()
    }

    fn dimensions(&self) -> usize {
        self.0.dimensions()
    }

    fn batch_size(&self) -> usize {
        self.0.batch_size()
    }

    fn input_limit(&self) -> Option<(&TokenCounter, usize)> {
        self.0.input_limit()
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        Box::pin(metered(self.0.embed(texts)))
    }

    fn embed_query<'a>(&'a self, question: &'a str) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        Box::pin(metered(self.0.embed_query(question)))
    }
}

async fn metered(call: BoxFuture<'_, Result<Embeddings, EmbedError>>) -> Result<Embeddings, EmbedError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let m = crate::metrics::get();
    m.embed_batches.inc();
    m.embed_batch_duration.observe(started.elapsed().as_secs_f64());
    result
}

/// The cosine under which a passage does not count as relevant to a question, by embedding model
/// (`RETRIEVAL_MIN_SIMILARITY` overrides it). Models spread their similarities differently:
/// measured with `examples/eval_retrieval.rs` on the shared corpus (docs/BENCHMARKS.md), the best
/// passage of a question that a tenant cannot answer scores p50 0.12 / p90 0.22 / p99 0.36 with
/// all-MiniLM-L6-v2 and 0.80 / 0.83 / 0.84 with multilingual-e5-small, while the passages that
/// answer score from 0.30 and from 0.82 (p10). Each floor lets through what answers, at the cost
/// of some of what does not.
pub fn similarity_floor(model: &str) -> f32 {
    match model {
        local::E5_MODEL_NAME | "intfloat/multilingual-e5-small" => 0.80,
        _ => 0.25,
    }
}

/// The floor of the cross-language search (a question and passages in different scripts, by
/// the multilingual model): a question and a passage in two languages score lower than in one,
/// so e5's own floor (0.80) would drop answers this search exists for. Measured with
/// `eval_retrieval` on the service's chunks (MiniLM's cut, given e5 vectors): of 236 questions not
/// in Latin script whose answer is in a Latin-script document, the answering passage scores at
/// least 0.77 for 100 % of them and at least 0.79 for 97 % (0.80: 92 %, 0.82: 80 %); of 603 such
/// questions asked of unrelated documents, the best passage passes 0.77 for 94 %, 0.79 for 69 %
/// (0.80: 46 %, 0.82: 6 %). 0.79 is the highest floor that keeps 97 % of the answers: above it
/// answers fall away faster than unanswerable questions are turned away.
pub const CROSS_LANGUAGE_FLOOR: f32 = 0.79;

/// Whether `model`'s vectors carry the meaning of `text`. all-MiniLM-L6-v2 learnt English: its
/// vocabulary is word pieces of Latin script, and text in another script becomes unknown pieces
/// and single characters whose vectors say little (measured: on Russian, Persian, Chinese and
/// Arabic questions its dense search finds the right page for 0.00–0.37 of them, while the
/// full-text search finds it for 0.71–0.97, docs/BENCHMARKS.md). A question mostly in another
/// script is therefore searched by its words alone with that model (see `retrieval::search`).
/// The multilingual and hosted models read every script.
pub fn reads(model: &str, text: &str) -> bool {
    match model {
        local::MODEL_NAME | "sentence-transformers/all-MiniLM-L6-v2" => mostly_latin(text),
        _ => true,
    }
}

/// At least half of the text's letters are Latin (a text without letters counts as Latin).
fn mostly_latin(text: &str) -> bool {
    let (mut letters, mut latin) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if matches!(c, 'A'..='Z' | 'a'..='z' | '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}') {
            latin += 1;
        }
    }
    latin * 2 >= letters
}

/// The script of a text's letters, as `documents.script` names it: `latin` when at least half of
/// them are Latin (the side all-MiniLM-L6-v2 reads, see [`reads`]), otherwise the most frequent
/// of the others.
pub fn script(text: &str) -> &'static str {
    if mostly_latin(text) {
        return "latin";
    }
    let mut counts = [0usize; 4];
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        let slot = match c {
            '\u{0400}'..='\u{052F}' => 0,
            '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' | '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}' => 1,
            '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}' => 2,
            _ => 3,
        };
        counts[slot] += 1;
    }
    let best = (0..4).max_by_key(|i| (counts[*i], std::cmp::Reverse(*i))).unwrap_or(3);
    ["cyrillic", "arabic", "han", "other"][best]
}

/// A document's script: `latin` when most of its chunks are (a Russian manual's chunks of
/// commands and code are still the Russian manual's), otherwise the most frequent script of the
/// others.
pub fn document_script<'a>(chunks: impl IntoIterator<Item = &'a str>) -> &'static str {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    let mut total = 0;
    for text in chunks {
        total += 1;
        let s = script(text);
        match counts.iter_mut().find(|(name, _)| *name == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let latin = counts.iter().find(|(name, _)| *name == "latin").map_or(0, |c| c.1);
    if latin * 2 >= total {
        return "latin";
    }
    counts.into_iter().filter(|(name, _)| *name != "latin").max_by_key(|c| c.1).map_or("latin", |c| c.0)
}

/// Scales a vector to unit length (cosine similarity becomes a dot product).
pub fn to_unit_length(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::reads;

    #[test]
    fn minilm_reads_latin_script_only() {
        let minilm = super::local::MODEL_NAME;
        for text in ["How many packages are supplied with R?", "Où est la gare ?", "Straße", "42?", ""] {
            assert!(reads(minilm, text), "{text}");
        }
        for text in ["ساختار فایل های ورودی لاتک چگونه است؟", "Как установить Debian?", "如何安装", "ما هو الخط"]
        {
            assert!(!reads(minilm, text), "{text}");
        }
        // mostly Latin, with a name in another script, and the other way round
        assert!(reads(minilm, "What does the word «داده» mean in this manual?"));
        assert!(!reads(minilm, "فایل PDF را چگونه بارگذاری کنم؟"));
        // the multilingual and hosted models read every script
        assert!(reads(super::local::E5_MODEL_NAME, "ساختار فایل های ورودی لاتک چگونه است؟"));
        assert!(reads("text-embedding-3-small", "Как установить Debian?"));
    }

    #[test]
    fn scripts_of_texts_and_documents() {
        use super::{document_script, script};
        assert_eq!(script("How many packages are supplied with R?"), "latin");
        assert_eq!(script("Как установить Debian?"), "cyrillic");
        assert_eq!(script("ساختار فایل های ورودی لاتک چگونه است؟"), "arabic");
        assert_eq!(script("如何安装"), "han");
        assert_eq!(script("Ὅμηρος ἔγραψε"), "other");
        assert_eq!(script("42"), "latin");
        // a Russian manual with a page of commands is Russian; half Latin is Latin
        assert_eq!(document_script(["Установка системы", "apt-get install foo", "Выбор пакетов"]), "cyrillic");
        assert_eq!(document_script(["Установка системы", "apt-get install foo"]), "latin");
        assert_eq!(document_script(["فایل", "Как", "متن"]), "arabic");
    }
}
