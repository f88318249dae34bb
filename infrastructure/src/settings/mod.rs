//! The typed configuration of every Pantheon binary.
//!
//! Layered with the `config` crate, lowest first: built-in defaults, an
//! optional `pantheon.toml`, `.env`, then the process environment
//! (`PANTHEON__SECTION__KEY`). The plain `DATABASE_URL` counts as
//! `PANTHEON__DATABASE__URL` when that one is unset, so the server, the
//! `pantheon` CLI and the migration CLI resolve the database the same way.

mod load;
mod provider;
mod sections;
mod validate;

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

    /// The log format in force: the configured one, else `json` in
    /// production and `pretty` elsewhere.
    pub fn log_format(&self) -> LogFormat {
        self.log.format.unwrap_or(match self.app.env {
            AppEnv::Production => LogFormat::Json,
            AppEnv::Development => LogFormat::Pretty,
        })
    }
}
