//! The `provider.*` section: which model provider answers turns, and the
//! settings of each. Apart from the other sections because the `openai`
//! upstream has a dozen knobs and a secret of its own.

use serde::Deserialize;

/// `provider.kind`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The offline, deterministic provider.
    #[default]
    Builtin,
    /// An OpenAI-compatible `/chat/completions` upstream (`provider.openai.*`).
    Openai,
}

/// `provider.builtin.*`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinProviderSettings {
    /// `provider.builtin.chunk_delay_ms`: a pause before each chunk.
    pub chunk_delay_ms: u64,
}

/// `provider.openai.max_tokens_field`: which request field carries a turn's
/// output cap. OpenAI refuses a request with both ("Setting 'max_tokens' and
/// 'max_completion_tokens' at the same time is not supported"), and its
/// reasoning models refuse `max_tokens`; other servers read only `max_tokens`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`: every compatible server reads it.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current name, required by its
    /// reasoning models.
    MaxCompletionTokens,
    /// Both (for proxies that forward either one).
    Both,
}

/// `provider.openai.*`: an OpenAI-compatible upstream. Only read (and
/// validated) when `provider.kind = openai`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiProviderSettings {
    /// `provider.openai.base_url`: as in the OpenAI SDKs
    /// (`https://api.openai.com/v1`); `/chat/completions` is appended.
    pub base_url: Option<String>,
    /// `provider.openai.api_key`: sent as a bearer token; unset sends none
    /// (local servers). Never logged.
    pub api_key: Option<String>,
    /// `provider.openai.model`: the `model` of every request.
    pub model: Option<String>,
    /// `provider.openai.system_prompt`: sent first, when set.
    pub system_prompt: Option<String>,
    /// `provider.openai.context_turns`: earlier completed turns of the
    /// session sent as history.
    pub context_turns: usize,
    /// `provider.openai.connect_timeout_ms`: TCP (and TLS) connect.
    pub connect_timeout_ms: u64,
    /// `provider.openai.first_byte_timeout_ms`: once the request is sent,
    /// the longest wait for the response head.
    pub first_byte_timeout_ms: u64,
    /// `provider.openai.idle_timeout_ms`: the longest silence between two
    /// chunks of the streamed body.
    pub idle_timeout_ms: u64,
    /// `provider.openai.max_output_tokens`: deprecated alias of
    /// `turns.max_output_tokens`, used when that one is unset.
    pub max_output_tokens: Option<u32>,
    /// `provider.openai.max_tokens_field`
    pub max_tokens_field: MaxTokensField,
}

impl Default for OpenAiProviderSettings {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key: None,
            model: None,
            system_prompt: None,
            context_turns: 10,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            max_output_tokens: None,
            max_tokens_field: MaxTokensField::MaxTokens,
        }
    }
}

/// Hand-written so the API key never reaches a log line.
impl std::fmt::Debug for OpenAiProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProviderSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("system_prompt", &self.system_prompt.as_ref().map(|p| p.len()))
            .field("context_turns", &self.context_turns)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("first_byte_timeout_ms", &self.first_byte_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("max_output_tokens", &self.max_output_tokens)
            .field("max_tokens_field", &self.max_tokens_field)
            .finish()
    }
}

/// `provider.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// `provider.kind`
    pub kind: ProviderKind,
    /// `provider.builtin.*`
    pub builtin: BuiltinProviderSettings,
    /// `provider.openai.*`
    pub openai: OpenAiProviderSettings,
    /// `provider.max_concurrent`: turns in flight upstream at once, over
    /// all instances; unset, no limit (and no queue).
    pub max_concurrent: Option<u32>,
    /// `provider.tokens_per_minute`: prompt and output tokens sent
    /// upstream in any sliding minute, over all instances; unset, none.
    pub tokens_per_minute: Option<u32>,
    /// `provider.queue_timeout_secs`: the longest a turn waits for the
    /// provider's capacity before it fails `503 upstream_saturated`.
    pub queue_timeout_secs: u64,
    /// `provider.queue_order`
    pub queue_order: QueueOrderSetting,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::default(),
            builtin: BuiltinProviderSettings::default(),
            openai: OpenAiProviderSettings::default(),
            max_concurrent: None,
            tokens_per_minute: None,
            queue_timeout_secs: 30,
            queue_order: QueueOrderSetting::default(),
        }
    }
}

impl ProviderSettings {
    /// Whether turns pass the provider's shared capacity (and may queue).
    pub fn is_capped(&self) -> bool {
        self.max_concurrent.is_some() || self.tokens_per_minute.is_some()
    }

    /// Checks the capacity keys.
    ///
    /// # Errors
    /// `(key, message)` for the first bad key.
    pub(super) fn check_capacity(&self) -> Result<(), (&'static str, String)> {
        if self.max_concurrent == Some(0) {
            return Err(("provider.max_concurrent", "must be at least 1 (or unset)".into()));
        }
        if self.tokens_per_minute == Some(0) {
            return Err(("provider.tokens_per_minute", "must be at least 1 (or unset)".into()));
        }
        if self.queue_timeout_secs == 0 || self.queue_timeout_secs > 3_600 {
            return Err(("provider.queue_timeout_secs", "must be between 1 and 3600".into()));
        }
        Ok(())
    }
}

/// `provider.queue_order`: how turns waiting for the provider are
/// dispatched.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueOrderSetting {
    /// Weighted fair queuing on tokens served (a virtual counter per user).
    #[default]
    Fair,
    /// First come, first served (the baseline fair order is measured
    /// against).
    Fifo,
}

/// `provider.openai.context_turns` above this is surely a typo: every turn
/// would load that many rows and send them upstream.
pub const MAX_CONTEXT_TURNS: usize = 1_000;

impl OpenAiProviderSettings {
    /// The chat completions endpoint: `base_url` with `/chat/completions`
    /// appended to its path (a query, if any, is kept).
    ///
    /// # Errors
    /// A message for `provider.openai.base_url` when it is missing or unusable.
    pub fn chat_completions_url(&self) -> Result<reqwest::Url, String> {
        let raw = self.base_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let raw = raw.ok_or("is required when provider.kind = openai")?;
        let mut url = reqwest::Url::parse(raw).map_err(|e| format!("cannot be parsed: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if url.host().is_none() {
            return Err("must name a host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials; use provider.openai.api_key".into());
        }
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| "must be a URL with a path".to_owned())?
            .pop_if_empty()
            .extend(["chat", "completions"]);
        Ok(url)
    }

    /// Checks the section (only when `provider.kind = openai`).
    ///
    /// # Errors
    /// `(key, message)` for the first bad key.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        self.chat_completions_url().map_err(|m| ("provider.openai.base_url", m))?;
        if self.model.as_deref().is_none_or(|m| m.trim().is_empty()) {
            return Err((
                "provider.openai.model",
                "is required when provider.kind = openai".into(),
            ));
        }
        if let Some(key) = &self.api_key {
            // The message never quotes the key.
            let usable = !key.trim().is_empty()
                && reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_ok();
            if !usable {
                return Err((
                    "provider.openai.api_key",
                    "must be non-blank printable text (or unset for no key)".into(),
                ));
            }
        }
        let positive = [
            ("provider.openai.connect_timeout_ms", self.connect_timeout_ms),
            ("provider.openai.first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("provider.openai.idle_timeout_ms", self.idle_timeout_ms),
            ("provider.openai.max_output_tokens", self.max_output_tokens.map_or(1, u64::from)),
        ];
        if let Some((key, _)) = positive.into_iter().find(|(_, value)| *value == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if self.context_turns > MAX_CONTEXT_TURNS {
            return Err((
                "provider.openai.context_turns",
                format!("must be at most {MAX_CONTEXT_TURNS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Settings, SettingsError, Sources};

    const OPENAI: [(&str, &str); 3] = [
        ("PANTHEON__PROVIDER__KIND", "openai"),
        ("PANTHEON__PROVIDER__OPENAI__BASE_URL", "https://api.openai.com/v1"),
        ("PANTHEON__PROVIDER__OPENAI__MODEL", "gpt-4o-mini"),
    ];

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Sources::from_env(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).load()
    }

    fn openai_with(extra: &[(&'static str, &'static str)]) -> Result<Settings, SettingsError> {
        let mut vars = OPENAI.to_vec();
        vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        vars.extend_from_slice(extra);
        load(&vars)
    }

    #[test]
    fn openai_loads_with_documented_defaults() {
        let s = openai_with(&[("PANTHEON__PROVIDER__OPENAI__API_KEY", "12345")])
            .map_err(|e| e.to_string());
        let openai = s.map(|s| s.provider.openai);
        assert_eq!(openai.as_ref().map(|o| o.api_key.clone()), Ok(Some("12345".into())));
        assert_eq!(openai.as_ref().map(|o| o.context_turns), Ok(10));
        assert_eq!(
            openai.as_ref().map(|o| (o.connect_timeout_ms, o.first_byte_timeout_ms)),
            Ok((5_000, 60_000))
        );
        assert_eq!(openai.map(|o| (o.idle_timeout_ms, o.max_output_tokens)), Ok((60_000, None)));
    }

    #[test]
    fn bad_openai_values_name_their_key() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[("PANTHEON__PROVIDER__OPENAI__BASE_URL", "")], "provider.openai.base_url"),
            (&[("PANTHEON__PROVIDER__OPENAI__BASE_URL", "not a url")], "provider.openai.base_url"),
            (&[("PANTHEON__PROVIDER__OPENAI__BASE_URL", "ftp://x/v1")], "provider.openai.base_url"),
            (&[("PANTHEON__PROVIDER__OPENAI__BASE_URL", "https://u:p@x/v1")], "base_url"),
            (&[("PANTHEON__PROVIDER__OPENAI__MODEL", " ")], "provider.openai.model"),
            (&[("PANTHEON__PROVIDER__OPENAI__CONNECT_TIMEOUT_MS", "0")], "connect_timeout_ms"),
            (&[("PANTHEON__PROVIDER__OPENAI__FIRST_BYTE_TIMEOUT_MS", "0")], "first_byte_timeout"),
            (&[("PANTHEON__PROVIDER__OPENAI__IDLE_TIMEOUT_MS", "0")], "idle_timeout_ms"),
            (&[("PANTHEON__PROVIDER__OPENAI__MAX_OUTPUT_TOKENS", "0")], "max_output_tokens"),
        ];
        for (vars, key) in cases {
            let err = openai_with(vars).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("configuration error: provider.openai."), "{vars:?}: {err}");
            assert!(err.contains(key), "{vars:?}: {err:?} should name {key}");
        }
        let no_model = load(&OPENAI[..2]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(no_model.contains("provider.openai.model"), "{no_model}");
        let too_many = openai_with(&[("PANTHEON__PROVIDER__OPENAI__CONTEXT_TURNS", "5000")]);
        assert!(too_many.err().is_some_and(|e| e.to_string().contains("context_turns")));
    }

    #[test]
    fn the_openai_section_is_ignored_while_builtin_is_chosen() {
        let s = load(&[("PANTHEON__PROVIDER__OPENAI__IDLE_TIMEOUT_MS", "0")]);
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn chat_completions_is_appended_to_the_base_url() {
        let url = |base: &str| {
            let s = OpenAiProviderSettings { base_url: Some(base.into()), ..Default::default() };
            s.chat_completions_url().map(|u| u.to_string())
        };
        let cases = [
            ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
            ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
            ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1/chat/completions"),
            ("http://proxy:4000", "http://proxy:4000/chat/completions"),
            ("https://h/v1?api-version=2", "https://h/v1/chat/completions?api-version=2"),
        ];
        for (base, expected) in cases {
            assert_eq!(url(base), Ok(expected.to_owned()), "{base}");
        }
    }

    #[test]
    fn debug_never_shows_the_api_key() {
        let s = OpenAiProviderSettings {
            api_key: Some("sk-very-secret-key".into()),
            ..Default::default()
        };
        let shown = format!("{s:?} {:?}", Settings::default());
        assert!(!shown.contains("sk-very-secret-key"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
