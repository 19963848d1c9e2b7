//! Chat models behind one trait. Tokens go out through a bounded channel as they are produced;
//! dropping the future (a cancel, a disconnect) stops the generation.

pub mod offline;
pub mod openai;

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use futures_util::future::BoxFuture;

use crate::{config::Config, retrieval::Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

/// Everything a model may use: the full prompt for a generative model, and the question and its
/// sources for the extractive one.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: String,
    pub system: String,
    /// earlier turns (oldest first), then the current user message with its context
    pub messages: Vec<(Speaker, String)>,
    pub question: String,
    pub sources: Vec<Source>,
    pub persian: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model service is unavailable")]
    Unavailable(String),
    #[error("the model service is rate limiting us")]
    RateLimited(String),
    #[error("the model request failed")]
    Failed(String),
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::Unavailable(_) | ChatError::Failed(_) => "upstream_unavailable",
            ChatError::RateLimited(_) => "upstream_rate_limited",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            ChatError::Unavailable(d) | ChatError::RateLimited(d) | ChatError::Failed(d) => d,
        }
    }
}

pub trait ChatModel: Send + Sync {
    /// The name recorded with messages and usage.
    fn name(&self) -> &str;
    /// Streams the answer's tokens into `tokens`; returns the usage the model reported, if any
    /// (otherwise the caller counts).
    fn stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        tokens: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<Option<Usage>, ChatError>>;
}

/// The chat models this process may answer with: the OpenAI-compatible one when
/// `OPENAI_API_KEY` is set (created on first use), the offline extractive one otherwise, and the
/// allow-list of model names a client may ask for.
pub struct Models {
    config: Arc<Config>,
    openai: OnceLock<Result<Arc<dyn ChatModel>, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model `{0}` is not allowed here")]
    NotAllowed(String),
    #[error("the chat model is not available")]
    Unavailable(String),
}

impl ModelError {
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::NotAllowed(_) => "model_not_allowed",
            ModelError::Unavailable(_) => "upstream_unavailable",
        }
    }
}

impl Models {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config, openai: OnceLock::new() }
    }

    /// The chat model for a question and the model name to ask for: a client may name one from
    /// the allow-list. Without `OPENAI_API_KEY`, answers are extractive (offline).
    pub fn select(&self, requested: Option<&str>) -> Result<(Arc<dyn ChatModel>, String), ModelError> {
        if let Some(name) = requested
            && name != offline::NAME
            && !self.config.chat_models_allowed.iter().any(|m| m == name)
        {
            return Err(ModelError::NotAllowed(name.to_owned()));
        }
        if self.config.openai_api_key.is_none() || requested == Some(offline::NAME) {
            return Ok((Arc::new(offline::OfflineModel), offline::NAME.to_owned()));
        }
        let model = self
            .openai
            .get_or_init(|| {
                openai::OpenAiChat::from_config(&self.config)
                    .map(|m| Arc::new(m) as Arc<dyn ChatModel>)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(ModelError::Unavailable)?;
        Ok((model, requested.unwrap_or(&self.config.chat_model).to_owned()))
    }
}
