//! The `openai` provider: any OpenAI-compatible `/chat/completions` upstream
//! (OpenAI itself, vLLM, Ollama, LiteLLM…), asked with `stream: true`.
//!
//! Why it is built this way:
//! - one [`reqwest::Client`] — one connection pool — for the process, made
//!   once at wiring and shared by every turn;
//! - every wait is bounded: connecting (`connect_timeout_ms`), the response
//!   head (`first_byte_timeout_ms`), each silence in the body
//!   (`idle_timeout_ms`); the whole reply by `turns.max_duration_secs` in
//!   the domain;
//! - what goes wrong before the body starts is returned by
//!   [`ModelProvider::reply`] (its own status: `502`, `503` or `504`); what
//!   goes wrong later is an `Err` item of the stream ([`stream`]);
//! - the returned stream owns the response: dropping it (a cancelled turn)
//!   drops the connection, and nothing goes on reading in the background;
//! - the API key only ever travels as a header marked sensitive, and
//!   upstream text that reaches a log has it scrubbed ([`failure`]).
//! - tool use takes the chat format's own shape ([`body`]), and the calls
//!   an upstream streams are put together within bounds ([`calls`]): a
//!   hostile upstream cannot make a turn hold or run more than a few.

mod body;
mod calls;
mod failure;
mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use pantheon_domain::ports::{ModelProvider, ReplyRequest, ReplyStream};
use pantheon_domain::tool::ToolRound;
use pantheon_domain::{ProviderError, TokenCounter};
use reqwest::header::{self, HeaderValue};
use reqwest::{Client, Url};

use crate::settings::{MaxTokensField, OpenAiProviderSettings, SettingsError};
use failure::Secret;

/// How long idle pooled connections are kept for the next turn.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// An OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    client: Client,
    endpoint: Url,
    api_key: Option<Secret>,
    model: String,
    system_prompt: Option<String>,
    context_turns: usize,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_tokens_field: MaxTokensField,
}

/// Tokens the chat format adds per message (its role and delimiters) and
/// once to prime the reply, as OpenAI documents for its chat models.
const TOKENS_PER_MESSAGE: u64 = 4;
const REPLY_PRIMING_TOKENS: u64 = 3;

impl OpenAiProvider {
    /// The provider for validated settings, with its HTTP client.
    ///
    /// # Errors
    /// [`SettingsError`] naming the key when a setting cannot be used or the
    /// client cannot be built (no TLS backend).
    pub fn new(settings: &OpenAiProviderSettings) -> Result<Self, SettingsError> {
        let invalid =
            |key: &str, message: String| SettingsError::Invalid { key: key.to_owned(), message };
        let endpoint =
            settings.chat_completions_url().map_err(|m| invalid("provider.openai.base_url", m))?;
        let model = settings.model.clone().filter(|m| !m.trim().is_empty()).ok_or_else(|| {
            invalid("provider.openai.model", "is required when provider.kind = openai".into())
        })?;
        let api_key = match settings.api_key.clone() {
            None => None,
            Some(key) => Some(Secret::new(key).ok_or_else(|| {
                invalid("provider.openai.api_key", "cannot be sent as a header".into())
            })?),
        };
        let client = Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .pool_idle_timeout(POOL_IDLE)
            .user_agent(concat!("pantheon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                invalid("provider.openai", format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(Self {
            client,
            endpoint,
            api_key,
            model,
            system_prompt: settings.system_prompt.clone().filter(|p| !p.trim().is_empty()),
            context_turns: settings.context_turns,
            first_byte_timeout: Duration::from_millis(settings.first_byte_timeout_ms),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
            max_tokens_field: settings.max_tokens_field,
        })
    }

    /// The request body ([`body`]).
    fn body<'a>(
        &'a self,
        request: &'a ReplyRequest,
    ) -> Result<body::ChatRequest<'a>, ProviderError> {
        let shape = body::Shape {
            model: &self.model,
            system_prompt: self.system_prompt.as_deref(),
            max_tokens_field: self.max_tokens_field,
        };
        body::chat_request(&shape, request)
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    async fn reply(&self, request: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        tracing::debug!(
            model = %self.model,
            history = request.history.len(),
            rounds = request.rounds.len(),
            "opening an upstream reply"
        );
        let mut call = self
            .client
            .post(self.endpoint.clone())
            .header(header::ACCEPT, HeaderValue::from_static("text/event-stream"))
            .json(&self.body(&request)?);
        if let Some(key) = &self.api_key {
            call = call.header(header::AUTHORIZATION, key.bearer());
        }
        // Connecting counts in the first-byte wait (and is bounded on its own
        // by `connect_timeout_ms` inside the client).
        let response = match tokio::time::timeout(self.first_byte_timeout, call.send()).await {
            Err(_) => return Err(ProviderError::Timeout),
            Ok(Err(error)) => return Err(failure::transport(&error)),
            Ok(Ok(response)) => response,
        };
        tracing::debug!(status = response.status().as_u16(), "upstream answered");
        if !response.status().is_success() {
            return Err(failure::refusal(response, self.api_key.as_ref(), self.idle_timeout).await);
        }
        failure::expect_event_stream(&response)?;
        Ok(stream::replies(response, self.idle_timeout, self.api_key.clone()))
    }

    fn context_turns(&self) -> usize {
        self.context_turns
    }

    /// The system prompt, the history and the input, each a message with
    /// its framing, plus the reply's priming.
    fn prompt_tokens(
        &self,
        tokens: &dyn TokenCounter,
        input: &str,
        history: &[(String, String)],
    ) -> u64 {
        let message = |content: &str| TOKENS_PER_MESSAGE + tokens.count(content);
        let system = self.system_prompt.as_deref().map_or(0, message);
        let earlier: u64 = history.iter().map(|(i, o)| message(i) + message(o)).sum();
        system + earlier + message(input) + REPLY_PRIMING_TOKENS
    }
    /// The assistant message of the round (its text and calls) and one
    /// message per result, each with its framing, as `prompt_tokens`
    /// frames the others.
    fn round_tokens(&self, tokens: &dyn TokenCounter, round: &ToolRound) -> u64 {
        let calls: u64 = round
            .calls
            .iter()
            .map(|(call, result)| {
                tokens.count(&call.name)
                    + tokens.count(&call.arguments)
                    + TOKENS_PER_MESSAGE
                    + tokens.count(&result.content)
            })
            .sum();
        TOKENS_PER_MESSAGE + tokens.count(&round.text) + calls
    }
}
