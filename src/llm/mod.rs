//! Chat models behind one trait. Tokens go out through a bounded channel as they are produced;
//! dropping the future (a cancel, a disconnect) stops the generation.

pub mod offline;
pub mod openai;

use tokio::sync::mpsc;

use crate::{embed::BoxFuture, retrieval::Source};

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
