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

/// Builds the embedder the configuration names.
pub fn from_config(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
    match config.embedding_provider {
        EmbeddingProvider::OpenAi => Ok(Arc::new(openai::OpenAiEmbedder::from_config(config)?)),
        EmbeddingProvider::Local => {
            if config.embedding_model != local::MODEL_NAME {
                anyhow::bail!("the local embedder runs {}, not `{}`", local::MODEL_NAME, config.embedding_model);
            }
            Ok(Arc::new(local::LocalEmbedder::from_dir(config.local_model_dir.as_deref(), config.embed_threads)?))
        }
    }
}

/// Scales a vector to unit length (cosine similarity becomes a dot product).
pub fn to_unit_length(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
