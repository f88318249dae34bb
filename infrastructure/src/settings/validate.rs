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

/// Leases are renewed every third of their TTL; under 3 s a renewal would be
/// due every second and one slow Redis round trip could let a live turn's
/// slot lapse.
const MIN_LEASE_TTL_SECS: u64 = 3;

/// The largest token limit: the limiter's script computes in Lua's doubles,
/// exact for integers below 2^53, and an hour's `L·W` must stay below that.
pub const MAX_TOKEN_LIMIT: u32 = 1_000_000_000;

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
        self.validate_redis()?;
        let positive = [
            ("redis.timeout_ms", self.redis.timeout_ms),
            ("rate_limit.per_minute", u64::from(self.rate_limit.per_minute)),
            ("rate_limit.per_hour", u64::from(self.rate_limit.per_hour)),
            ("rate_limit.max_concurrent_turns", u64::from(self.rate_limit.max_concurrent_turns)),
            ("turns.max_input_chars", self.turns.max_input_chars as u64),
            ("turns.keep_alive_secs", self.turns.keep_alive_secs),
            ("turns.max_duration_secs", self.turns.max_duration_secs),
            ("database.acquire_timeout_ms", self.database.acquire_timeout_ms),
            ("turns.write_timeout_secs", self.turns.write_timeout_secs),
            ("server.header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("server.body_read_timeout_ms", self.server.body_read_timeout_ms),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            ("rate_limit.uploads_per_minute", u64::from(self.rate_limit.uploads_per_minute)),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(SettingsError::invalid(key, "must be at least 1"));
            }
        }
        self.validate_tokens()?;
        if self.rate_limit.lease_ttl_secs < MIN_LEASE_TTL_SECS {
            return Err(SettingsError::invalid(
                "rate_limit.lease_ttl_secs",
                format!("must be at least {MIN_LEASE_TTL_SECS}"),
            ));
        }
        for (tier, limits) in &self.rate_limit.tiers {
            if limits.per_minute == 0
                || limits.per_hour == 0
                || limits.max_concurrent_turns == Some(0)
                || limits.weight == 0
            {
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
        self.files.check()?;
        self.provider
            .check_capacity()
            .map_err(|(key, message)| SettingsError::invalid(key, message))?;
        if self.provider.kind == ProviderKind::Openai {
            self.provider
                .openai
                .check()
                .map_err(|(key, message)| SettingsError::invalid(key, message))?;
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), SettingsError> {
        let rate_limit = &self.rate_limit;
        let mut limits = vec![
            ("rate_limit.tokens_per_minute".to_owned(), rate_limit.tokens_per_minute),
            ("rate_limit.tokens_per_hour".to_owned(), rate_limit.tokens_per_hour),
            ("turns.max_output_tokens".to_owned(), self.turns.max_output_tokens),
            (
                "provider.openai.max_output_tokens".to_owned(),
                self.provider.openai.max_output_tokens,
            ),
            ("rate_limit.min_output_tokens".to_owned(), Some(rate_limit.min_output_tokens)),
        ];
        for (tier, t) in &rate_limit.tiers {
            limits
                .push((format!("rate_limit.tiers.{tier}.tokens_per_minute"), t.tokens_per_minute));
            limits.push((format!("rate_limit.tiers.{tier}.tokens_per_hour"), t.tokens_per_hour));
        }
        for (key, value) in limits {
            match value {
                Some(0) => return Err(SettingsError::invalid(&key, "must be at least 1")),
                Some(v) if v > MAX_TOKEN_LIMIT => {
                    return Err(SettingsError::invalid(
                        &key,
                        format!("must be at most {MAX_TOKEN_LIMIT}"),
                    ));
                }
                _ => {}
            }
        }
        if rate_limit.min_output_tokens > self.max_output_tokens() {
            return Err(SettingsError::invalid(
                "rate_limit.min_output_tokens",
                "must be at most turns.max_output_tokens",
            ));
        }
        Ok(())
    }

    fn validate_redis(&self) -> Result<(), SettingsError> {
        let redis = &self.redis;
        if redis.url.is_some() && !redis.cluster_urls.is_empty() {
            return Err(SettingsError::invalid(
                "redis.url",
                "cannot be set together with redis.cluster_urls: set redis.url for one Redis, \
                 or redis.cluster_urls for the seed nodes of a Redis Cluster",
            ));
        }
        if let Some(url) = &redis.url {
            validate_redis_url("redis.url", url, true)?;
        }
        for url in &redis.cluster_urls {
            validate_redis_url("redis.cluster_urls", url, false)?;
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

/// A Redis URL the limiter can connect with; a cluster node is reached over
/// TCP, so `unix://` is for a single Redis only.
fn validate_redis_url(key: &str, url: &str, unix_allowed: bool) -> Result<(), SettingsError> {
    let tcp = ["redis://", "rediss://"];
    let unix = ["redis+unix://", "unix://"];
    let known = tcp.iter().any(|s| url.starts_with(s))
        || (unix_allowed && unix.iter().any(|s| url.starts_with(s)));
    if !known {
        let expected = if unix_allowed {
            "must be a redis://, rediss:// or unix:// URL"
        } else {
            "must be redis:// or rediss:// URLs"
        };
        return Err(SettingsError::invalid(key, expected));
    }
    redis::Client::open(url)
        .map_err(|e| SettingsError::invalid(key, format!("cannot be parsed: {e}")))?;
    Ok(())
}
