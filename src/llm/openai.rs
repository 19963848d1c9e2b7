//! Streaming chat completions from any OpenAI-compatible server (OpenAI, Ollama, vLLM, …).
//! Usage comes from the stream's usage chunk when the server sends one.

use std::time::Duration;

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    types::chat::{
        ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
        ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
        ChatCompletionStreamOptions, CreateChatCompletionRequest,
    },
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{ChatError, ChatModel, ChatRequest, Speaker, Usage};
use futures_util::future::BoxFuture;

use crate::config::Config;

pub struct OpenAiChat {
    client: Client<OpenAIConfig>,
    /// longest wait for the first or the next piece of the stream
    timeout: Duration,
    /// most tokens one answer may take
    max_tokens: u32,
}

impl OpenAiChat {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let http = crate::embed::openai::http_client(Duration::from_secs(600))?;
        let client = Client::with_config(crate::embed::openai::openai_config(config)).with_http_client(http);
        Ok(Self { client, timeout: config.chat.upstream_timeout, max_tokens: config.chat.max_answer_tokens as u32 })
    }

    fn messages(request: &ChatRequest) -> Vec<ChatCompletionRequestMessage> {
        let mut out: Vec<ChatCompletionRequestMessage> =
            vec![ChatCompletionRequestSystemMessage { content: request.system.clone().into(), name: None }.into()];
        for (speaker, text) in &request.messages {
            out.push(match speaker {
                Speaker::User => ChatCompletionRequestUserMessage { content: text.clone().into(), name: None }.into(),
                Speaker::Assistant => ChatCompletionRequestAssistantMessage {
                    content: Some(ChatCompletionRequestAssistantMessageContent::Text(text.clone())),
                    ..Default::default()
                }
                .into(),
            });
        }
        out
    }

    async fn run(&self, request: &ChatRequest, tokens: mpsc::Sender<String>) -> Result<Option<Usage>, ChatError> {
        let body = CreateChatCompletionRequest {
            model: request.model.clone(),
            messages: Self::messages(request),
            stream_options: Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None }),
            max_completion_tokens: Some(self.max_tokens),
            ..Default::default()
        };
        let mut stream = tokio::time::timeout(self.timeout, self.client.chat().create_stream(body))
            .await
            .map_err(|_| ChatError::Unavailable("timed out connecting".into()))?
            .map_err(map_error)?;
        let mut usage = None;
        loop {
            let next = tokio::time::timeout(self.timeout, stream.next())
                .await
                .map_err(|_| ChatError::Unavailable("timed out waiting for the stream".into()))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(map_error)?;
            if let Some(u) = chunk.usage {
                usage = Some(Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens });
            }
            for choice in chunk.choices {
                if let Some(content) = choice.delta.content
                    && !content.is_empty()
                    && tokens.send(content).await.is_err()
                {
                    // the receiver is gone (cancelled): dropping the stream ends the request
                    return Ok(usage);
                }
            }
        }
        Ok(usage)
    }
}

fn map_error(e: OpenAIError) -> ChatError {
    match e {
        OpenAIError::ApiError(api) if api.status_code.as_u16() == 429 => {
            ChatError::RateLimited(format!("HTTP {}", api.status_code))
        }
        OpenAIError::ApiError(api) => ChatError::Unavailable(format!("HTTP {}", api.status_code)),
        OpenAIError::Reqwest(e) => ChatError::Unavailable(e.to_string()),
        other => ChatError::Failed(other.to_string()),
    }
}

impl ChatModel for OpenAiChat {
    fn name(&self) -> &str {
        // the request carries the model actually used; this names the provider
        "openai"
    }

    fn stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        tokens: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<Option<Usage>, ChatError>> {
        Box::pin(self.run(request, tokens))
    }
}
