//! Embeddings behind one trait, chosen by configuration: an OpenAI-compatible HTTP API, or a
//! local model run in-process.

pub mod local;
pub mod minilm;
pub mod openai;
pub mod wordpiece;

use std::sync::Arc;

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
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Embeddings, EmbedError>>;
}

/// Builds the embedder the configuration names (its batches counted and timed for the metrics).
pub fn from_config(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
    let inner: Box<dyn Embedder> = match config.embedding_provider {
        EmbeddingProvider::OpenAi => Box::new(openai::OpenAiEmbedder::from_config(config)?),
        EmbeddingProvider::Local => {
            if config.embedding_model != local::MODEL_NAME {
                anyhow::bail!("the local embedder runs {}, not `{}`", local::MODEL_NAME, config.embedding_model);
            }
            Box::new(local::LocalEmbedder::from_dir(config.local_model_dir.as_deref(), config.embed_threads)?)
        }
    };
    Ok(Arc::new(Metered(inner)))
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
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.0.embed(texts).await;
            let m = crate::metrics::get();
            m.embed_batches.inc();
            m.embed_batch_duration.observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// Scales a vector to unit length (cosine similarity becomes a dot product).
pub fn to_unit_length(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
