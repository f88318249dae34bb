//! The sections of [`super::Settings`], each with its defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;

// `rate_limit.fallback` and `rate_limit.mode` are the domain's own enums,
// read as they are.
pub use pantheon_domain::limiter::{Fallback, Mode as LimitMode};
use serde::Deserialize;

/// The development JWT secret: usable out of the box, refused when
/// `app.env = production`.
pub const DEVELOPMENT_JWT_SECRET: &str = "pantheon-development-secret-do-not-use-in-production";

/// `app.env`: production refuses development defaults.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppEnv {
    /// Local runs: development defaults allowed.
    #[default]
    Development,
    /// Deployed: development defaults refused.
    Production,
}

/// `app.*`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// `app.env`
    pub env: AppEnv,
}

/// `server.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// `server.addr`: where to listen.
    pub addr: SocketAddr,
    /// `server.shutdown_grace_secs`: how long in-flight work may finish
    /// after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// `server.header_read_timeout_ms`: how long a request head may take to
    /// arrive, from the connection's start or its first byte after a reply.
    pub header_read_timeout_ms: u64,
    /// `server.body_read_timeout_ms`: how long a request body may take to
    /// arrive once its head is in.
    pub body_read_timeout_ms: u64,
    /// `server.idle_timeout_secs`: how long a keep-alive connection may wait
    /// for its next request.
    pub idle_timeout_secs: u64,
    /// `server.max_connections`: unset derives it from the open-files limit.
    pub max_connections: Option<usize>,
    /// `server.metrics_addr`: where `GET /metrics` listens, apart from the
    /// API; `off` (or an empty string) serves no metrics.
    #[serde(deserialize_with = "super::addr::optional_addr")]
    pub metrics_addr: Option<SocketAddr>,
}

/// The address Prometheus scrapes by default: loopback, as the metrics
/// name routes and limiter states an outsider has no business seeing.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9464));

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_secs: 30,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_secs: 60,
            max_connections: None,
            metrics_addr: Some(DEFAULT_METRICS_ADDR),
        }
    }
}

/// `database.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `database.url`: `postgres://…` or `sqlite://…`.
    pub url: String,
    /// `database.max_connections`: unset sizes the pool for the machine.
    pub max_connections: Option<u32>,
    /// `database.auto_migrate`: apply pending migrations at start.
    pub auto_migrate: bool,
    /// `database.acquire_timeout_ms`: the longest a request waits for a
    /// connection, so an outage is answered `503` promptly.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://pantheon.db?mode=rwc".into(),
            max_connections: None,
            auto_migrate: true,
            acquire_timeout_ms: 2_000,
        }
    }
}

/// `redis.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis.url`: one Redis; unset (with no `cluster_urls`) means the
    /// in-process limiter.
    pub url: Option<String>,
    /// `redis.cluster_urls`: seed nodes of a Redis Cluster (from the
    /// environment, comma-separated); the rest of the cluster is found from
    /// them. Exclusive with `url`.
    pub cluster_urls: Vec<String>,
    /// `redis.timeout_ms`: the longest a limiter call may take.
    pub timeout_ms: u64,
}

impl RedisSettings {
    /// Whether a Redis (single or cluster) is configured.
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || !self.cluster_urls.is_empty()
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self { url: None, cluster_urls: Vec::new(), timeout_ms: 50 }
    }
}

/// `auth.jwt_algorithm`: the one algorithm tokens may use.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.jwt_secret`.
    #[default]
    HS256,
    /// RSA with `auth.jwt_public_key`.
    RS256,
    /// ECDSA P-256 with `auth.jwt_public_key`.
    ES256,
    /// Ed25519 with `auth.jwt_public_key`.
    EdDSA,
}

/// `auth.*`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `auth.jwt_secret`: the HS256 key, at least 32 bytes.
    pub jwt_secret: String,
    /// `auth.jwt_algorithm`
    pub jwt_algorithm: JwtAlgorithm,
    /// `auth.jwt_public_key`: PEM, for the asymmetric algorithms.
    pub jwt_public_key: Option<String>,
    /// `auth.issuer`: the required `iss`, when set.
    pub issuer: Option<String>,
    /// `auth.audience`: the required `aud`, when set.
    pub audience: Option<String>,
    /// `auth.leeway_secs`: the clock skew forgiven on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: DEVELOPMENT_JWT_SECRET.into(),
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_public_key: None,
            issuer: None,
            audience: None,
            leeway_secs: 60,
        }
    }
}

/// Hand-written so the secret never reaches a log line.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &"<redacted>")
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("jwt_public_key", &self.jwt_public_key.as_ref().map(|_| "<pem>"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// `rate_limit.tokenizer`: the encoding that counts tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// `o200k_base` (GPT-4o and later).
    #[default]
    O200k,
    /// `cl100k_base` (GPT-4, GPT-3.5).
    Cl100k,
}

/// A tier's limits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Turns per minute.
    pub per_minute: u32,
    /// Turns per hour.
    pub per_hour: u32,
    /// Turns running at once; the top-level `rate_limit.max_concurrent_turns`
    /// when unset.
    #[serde(default)]
    pub max_concurrent_turns: Option<u32>,
    /// Tokens per minute; the top-level `rate_limit.tokens_per_minute` when
    /// unset.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Tokens per hour; the top-level `rate_limit.tokens_per_hour` when unset.
    #[serde(default)]
    pub tokens_per_hour: Option<u32>,
    /// The tier's share of a saturated provider: its users' counters grow
    /// by tokens served divided by this (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `rate_limit.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `rate_limit.enabled`
    pub enabled: bool,
    /// `rate_limit.mode`
    pub mode: LimitMode,
    /// `rate_limit.fallback`
    pub fallback: Fallback,
    /// `rate_limit.per_minute`
    pub per_minute: u32,
    /// `rate_limit.per_hour`
    pub per_hour: u32,
    /// `rate_limit.max_concurrent_turns`
    pub max_concurrent_turns: u32,
    /// `rate_limit.lease_ttl_secs`: how long a slot outlives its instance.
    pub lease_ttl_secs: u64,
    /// `rate_limit.tokens_per_minute`: unset, no token budget per minute.
    pub tokens_per_minute: Option<u32>,
    /// `rate_limit.tokens_per_hour`: unset, no token budget per hour.
    pub tokens_per_hour: Option<u32>,
    /// `rate_limit.min_output_tokens`: under a token budget, a turn is
    /// admitted only with room for at least this much output.
    pub min_output_tokens: u32,
    /// `rate_limit.tokenizer`
    pub tokenizer: TokenizerKind,
    /// `rate_limit.tiers.<name>`
    pub tiers: BTreeMap<String, TierLimits>,
    /// `rate_limit.uploads_per_minute`: file uploads one user may start a
    /// minute, whatever their tier.
    pub uploads_per_minute: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: LimitMode::Enforce,
            fallback: Fallback::Allow,
            per_minute: 20,
            per_hour: 300,
            max_concurrent_turns: 4,
            lease_ttl_secs: 15,
            tokens_per_minute: None,
            tokens_per_hour: None,
            min_output_tokens: 16,
            tokenizer: TokenizerKind::O200k,
            tiers: BTreeMap::new(),
            uploads_per_minute: 10,
        }
    }
}

/// `turns.on_disconnect`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnDisconnect {
    /// Finish and persist the reply.
    #[default]
    Continue,
    /// Stop the provider; persist the partial output as `cancelled`.
    Cancel,
}

/// `turns.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnSettings {
    /// `turns.max_input_chars`
    pub max_input_chars: usize,
    /// `turns.keep_alive_secs`
    pub keep_alive_secs: u64,
    /// `turns.on_disconnect`
    pub on_disconnect: OnDisconnect,
    /// `turns.max_duration_secs`
    pub max_duration_secs: u64,
    /// `turns.checkpoint_ms`: how often a generating turn's output and
    /// heartbeat are saved; a crash loses at most this much output, and
    /// its turns are ended within about three of these plus a sweep.
    pub checkpoint_ms: u64,
    /// `turns.write_timeout_secs`: how long a response may wait for a client
    /// that stopped reading before its connection is dropped.
    pub write_timeout_secs: u64,
    /// `turns.max_output_tokens`: the most output one turn may produce, for
    /// every provider; unset, [`DEFAULT_MAX_OUTPUT_TOKENS`] (or the
    /// deprecated `provider.openai.max_output_tokens`); see
    /// [`super::Settings::max_output_tokens`].
    pub max_output_tokens: Option<u32>,
    /// `turns.coalesce_ms`: deltas arriving within this of the last one
    /// sent go out as one event (and one journal entry); 0 sends each chunk.
    pub coalesce_ms: u64,
    /// `turns.resume_ttl_secs`: how long a turn's events stay resumable
    /// after it ended; 0 keeps no journal (a resume then gets the end only).
    pub resume_ttl_secs: u64,
    /// `turns.idempotency_ttl_secs`: how long an `Idempotency-Key` is held
    /// (a retry within it gets the first attempt's turn).
    pub idempotency_ttl_secs: u64,
    /// `turns.max_tool_rounds`: the most rounds of tool calls (`file_read`)
    /// one turn runs before it ends `length`.
    pub max_tool_rounds: u32,
}

/// `turns.max_output_tokens` when unset.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4_096;

impl Default for TurnSettings {
    fn default() -> Self {
        Self {
            max_input_chars: 32_000,
            keep_alive_secs: 15,
            on_disconnect: OnDisconnect::Continue,
            max_duration_secs: 300,
            checkpoint_ms: 1_000,
            write_timeout_secs: 30,
            max_output_tokens: None,
            coalesce_ms: 50,
            resume_ttl_secs: 600,
            idempotency_ttl_secs: 86_400,
            max_tool_rounds: 8,
        }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object a line.
    Json,
}

/// `log.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `log.level`: an `EnvFilter` directive (`info`, `pantheon=debug,info`…).
    pub level: String,
    /// `log.format`: unset means `json` in production, `pretty` elsewhere.
    pub format: Option<LogFormat>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into(), format: None }
    }
}
