//! Checks that need more than a type: the start stops on the first bad key,
//! with a message naming it.

use std::str::FromStr;

use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;

use super::load::SettingsError;
use super::{AppEnv, DEVELOPMENT_JWT_SECRET, JwtAlgorithm, ProviderKind, Settings};

/// Checkpoints more often than this would cost a write per turn per few
/// chunks, and a heartbeat that tight would end turns on a busy machine.
const MIN_CHECKPOINT_MS: u64 = 50;

/// HS256 keys shorter than this are guessable (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;

/// The most clock skew forgiven: a synchronised clock is off by far less,
/// and beyond an hour a token's `exp` would no longer bound its life.
const MAX_LEEWAY_SECS: u64 = 3_600;

impl Settings {
    /// Validates what the types cannot express.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.validate_auth()?;
        validate_database_url(&self.database.url)?;
        if let Some(url) = &self.redis.url {
            let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(SettingsError::invalid(
                    "redis.url",
                    "must be a redis://, rediss:// or unix:// URL",
                ));
            }
            redis::Client::open(url.as_str()).map_err(|e| {
                SettingsError::invalid("redis.url", format!("cannot be parsed: {e}"))
            })?;
        }
        let positive = [
            ("redis.timeout_ms", self.redis.timeout_ms),
            ("rate_limit.per_minute", u64::from(self.rate_limit.per_minute)),
            ("rate_limit.per_hour", u64::from(self.rate_limit.per_hour)),
            ("turns.max_input_chars", self.turns.max_input_chars as u64),
            ("turns.keep_alive_secs", self.turns.keep_alive_secs),
            ("turns.max_duration_secs", self.turns.max_duration_secs),
            ("database.acquire_timeout_ms", self.database.acquire_timeout_ms),
            ("turns.write_timeout_secs", self.turns.write_timeout_secs),
            ("server.header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("server.body_read_timeout_ms", self.server.body_read_timeout_ms),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(SettingsError::invalid(key, "must be at least 1"));
            }
        }
        for (tier, limits) in &self.rate_limit.tiers {
            if limits.per_minute == 0 || limits.per_hour == 0 {
                return Err(SettingsError::invalid(
                    &format!("rate_limit.tiers.{tier}"),
                    "limits must be at least 1",
                ));
            }
        }
        if self.turns.checkpoint_ms < MIN_CHECKPOINT_MS {
            return Err(SettingsError::invalid(
                "turns.checkpoint_ms",
                format!("must be at least {MIN_CHECKPOINT_MS}"),
            ));
        }
        if self.server.metrics_addr.is_some_and(|m| m.port() != 0 && m == self.server.addr) {
            return Err(SettingsError::invalid(
                "server.metrics_addr",
                "must differ from server.addr: metrics have a listener of their own",
            ));
        }
        if self.server.max_connections == Some(0) {
            return Err(SettingsError::invalid("server.max_connections", "must be at least 1"));
        }
        if self.database.max_connections == Some(0) {
            return Err(SettingsError::invalid("database.max_connections", "must be at least 1"));
        }
        if self.provider.kind == ProviderKind::Openai {
            self.provider
                .openai
                .check()
                .map_err(|(key, message)| SettingsError::invalid(key, message))?;
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), SettingsError> {
        let auth = &self.auth;
        if auth.leeway_secs > MAX_LEEWAY_SECS {
            return Err(SettingsError::invalid(
                "auth.leeway_secs",
                format!("must be at most {MAX_LEEWAY_SECS}"),
            ));
        }
        match auth.jwt_algorithm {
            JwtAlgorithm::HS256 => {
                if auth.jwt_secret.len() < MIN_SECRET_BYTES {
                    return Err(SettingsError::invalid(
                        "auth.jwt_secret",
                        format!("must be at least {MIN_SECRET_BYTES} bytes"),
                    ));
                }
                if self.app.env == AppEnv::Production && auth.jwt_secret == DEVELOPMENT_JWT_SECRET {
                    return Err(SettingsError::invalid(
                        "auth.jwt_secret",
                        "the development secret is refused when app.env = production",
                    ));
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 | JwtAlgorithm::EdDSA => {
                crate::auth::decoding_key(auth)
                    .map_err(|message| SettingsError::invalid("auth.jwt_public_key", message))?;
            }
        }
        Ok(())
    }
}

fn validate_database_url(url: &str) -> Result<(), SettingsError> {
    let parsed = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PgConnectOptions::from_str(url).map(drop)
    } else if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map(drop)
    } else {
        return Err(SettingsError::invalid("database.url", "must be a postgres:// or sqlite: URL"));
    };
    parsed.map_err(|e| SettingsError::invalid("database.url", format!("cannot be parsed: {e}")))
}
