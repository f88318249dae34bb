//! The typed configuration of every Pantheon binary.
//!
//! Layered with the `config` crate, lowest first: built-in defaults, an
//! optional `pantheon.toml`, `.env`, then the process environment
//! (`PANTHEON__SECTION__KEY`). The plain `DATABASE_URL` counts as
//! `PANTHEON__DATABASE__URL` when that one is unset, so the server, the
//! `pantheon` CLI and the migration CLI resolve the database the same way.

mod addr;
mod files;
mod load;
mod provider;
mod sections;
mod validate;

pub use files::*;
pub use load::{SettingsError, Sources};
pub use provider::*;
pub use sections::*;

use serde::Deserialize;

/// Every setting, with its documented default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `app.*`
    pub app: AppSettings,
    /// `server.*`
    pub server: ServerSettings,
    /// `database.*`
    pub database: DatabaseSettings,
    /// `redis.*`
    pub redis: RedisSettings,
    /// `auth.*`
    pub auth: AuthSettings,
    /// `rate_limit.*`
    pub rate_limit: RateLimitSettings,
    /// `turns.*`
    pub turns: TurnSettings,
    /// `provider.*`
    pub provider: ProviderSettings,
    /// `files.*`
    pub files: FilesSettings,
    /// `log.*`
    pub log: LogSettings,
}

impl Settings {
    /// Loads the settings from `pantheon.toml`, `.env` and the process
    /// environment, then validates them.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first bad key.
    pub fn load() -> Result<Self, SettingsError> {
        Sources::from_process().load()
    }

    /// `turns.max_output_tokens` in force: the setting, else the deprecated
    /// `provider.openai.max_output_tokens`, else 4,096.
    pub fn max_output_tokens(&self) -> u32 {
        self.turns
            .max_output_tokens
            .or(self.provider.openai.max_output_tokens)
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
    }

    /// Deprecated settings in use, one line each, for the start to log.
    pub fn deprecations(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.provider.openai.max_output_tokens.is_some() {
            lines.push(match self.turns.max_output_tokens {
                None => "provider.openai.max_output_tokens is deprecated; it now sets turns.max_output_tokens, for every provider".to_owned(),
                Some(_) => "provider.openai.max_output_tokens is deprecated and ignored: turns.max_output_tokens is set".to_owned(),
            });
        }
        lines
    }

    /// The log format in force: the configured one, else `json` in
    /// production and `pretty` elsewhere.
    pub fn log_format(&self) -> LogFormat {
        self.log.format.unwrap_or(match self.app.env {
            AppEnv::Production => LogFormat::Json,
            AppEnv::Development => LogFormat::Pretty,
        })
    }
}
