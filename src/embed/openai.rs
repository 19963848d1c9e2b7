//! Embeddings from any server that speaks OpenAI's `POST /v1/embeddings` (OpenAI, Ollama,
//! vLLM, …), batched, with retries and backoff on 429 and 5xx.

use std::time::Duration;

use anyhow::Context;
use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    types::embeddings::{CreateEmbeddingRequest, EmbeddingInput},
};

use futures_util::future::BoxFuture;

use super::{EmbedError, Embedder, Embeddings};
use crate::config::Config;

pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    model: String,
    dimensions: usize,
    max_attempts: u32,
    base_delay: Duration,
}

/// Known dimensions of common models; others are learned from the first response.
fn known_dimensions(model: &str) -> Option<usize> {
    match model {
        "text-embedding-3-small" | "text-embedding-ada-002" => Some(1536),
        "text-embedding-3-large" => Some(3072),
        "all-MiniLM-L6-v2" | "all-minilm" | "all-minilm:l6-v2" => Some(384),
        "multilingual-e5-small" | "intfloat/multilingual-e5-small" => Some(384),
        "nomic-embed-text" => Some(768),
        _ => None,
    }
}

pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")
}

pub fn openai_config(config: &Config) -> OpenAIConfig {
    let mut c = OpenAIConfig::new();
    if let Some(key) = &config.openai_api_key {
        c = c.with_api_key(key.expose());
    }
    if let Some(base) = &config.openai_base_url {
        c = c.with_api_base(base.trim_end_matches('/'));
    }
    c
}

impl OpenAiEmbedder {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let model = config.embedding_model.clone();
        let dimensions = match (known_dimensions(&model), config.embedding_dimensions) {
            (_, Some(d)) => d,
            (Some(d), None) => d,
            (None, None) => anyhow::bail!("set EMBEDDING_DIMENSIONS for the embedding model `{model}`"),
        };
        crate::install_crypto_provider();
        let client = Client::with_config(openai_config(config)).with_http_client(http_client(Duration::from_secs(60))?);
        Ok(Self { client, model, dimensions, max_attempts: 5, base_delay: Duration::from_millis(250) })
    }

    pub fn with_retry(mut self, max_attempts: u32, base_delay: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.base_delay = base_delay;
        self
    }

    async fn call(&self, texts: &[String]) -> Result<Embeddings, EmbedError> {
        let request = CreateEmbeddingRequest {
            model: self.model.clone(),
            input: EmbeddingInput::StringArray(texts.to_vec()),
            encoding_format: None,
            user: None,
            dimensions: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.client.embeddings().create(request.clone()).await;
            let err = match result {
                Ok(resp) => {
                    let mut data = resp.data;
                    if data.len() != texts.len() {
                        return Err(EmbedError::Failed(format!(
                            "asked for {} embeddings, got {}",
                            texts.len(),
                            data.len()
                        )));
                    }
                    data.sort_by_key(|e| e.index);
                    let vectors: Vec<Vec<f32>> = data.into_iter().map(|e| e.embedding).collect();
                    if let Some(v) = vectors.iter().find(|v| v.len() != self.dimensions) {
                        return Err(EmbedError::Failed(format!(
                            "the model returned {} dimensions, expected {}",
                            v.len(),
                            self.dimensions
                        )));
                    }
                    return Ok(Embeddings { vectors, tokens: u64::from(resp.usage.prompt_tokens) });
                }
                Err(e) => e,
            };
            let retryable = match &err {
                OpenAIError::ApiError(api) => {
                    api.status_code.as_u16() == 429
                        || api.status_code.is_server_error()
                        || api.status_code.as_u16() == 408
                }
                OpenAIError::Reqwest(e) => e.is_timeout() || e.is_connect() || e.is_request() || e.is_body(),
                _ => false,
            };
            let message = match &err {
                OpenAIError::ApiError(api) => format!("HTTP {}", api.status_code),
                other => other.to_string(),
            };
            if !retryable {
                return Err(EmbedError::Failed(message));
            }
            if attempt >= self.max_attempts {
                return Err(EmbedError::Unavailable(message));
            }
            let delay = self.base_delay * 2u32.pow(attempt - 1);
            tracing::warn!(attempt, error = %message, "embedding request failed, retrying in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }
}

impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Embeddings, EmbedError>> {
        Box::pin(self.call(texts))
    }
}
