//! Bearer tokens: verification for every request (in-process, no database)
//! and minting for `pantheon token`.
//!
//! The algorithm is pinned by configuration: a token naming any other one,
//! or `none`, fails verification before its signature is looked at.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pantheon_domain::limiter::LimitTable;
use pantheon_domain::{Caller, UserId};
use serde::{Deserialize, Serialize};

use crate::settings::{AuthSettings, JwtAlgorithm};

/// Leeway for `exp`/`nbf`, absorbing small clock skew between the issuer and us.
const CLOCK_SKEW_SECS: u64 = 5;

/// The claims Pantheon reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The limit tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token was refused. Logged at debug level only: the client is told
/// nothing about which check failed.
#[derive(Debug, thiserror::Error)]
#[error("token refused: {0}")]
pub struct TokenRefused(String);

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The key that verifies tokens under the configured algorithm.
///
/// # Errors
/// A message when the public key is missing or not PEM of the right kind.
pub fn decoding_key(auth: &AuthSettings) -> Result<DecodingKey, String> {
    let pem = || {
        auth.jwt_public_key
            .as_deref()
            .map(str::as_bytes)
            .ok_or_else(|| "is required for the configured algorithm".to_owned())
    };
    let bad = |e: jsonwebtoken::errors::Error| format!("is not a valid PEM public key: {e}");
    match auth.jwt_algorithm {
        JwtAlgorithm::HS256 => Ok(DecodingKey::from_secret(auth.jwt_secret.as_bytes())),
        JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(pem()?).map_err(bad),
        JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(pem()?).map_err(bad),
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem()?).map_err(bad),
    }
}

/// Verifies bearer tokens. Built once at start; cheap to share.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    limits: LimitTable,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

impl TokenVerifier {
    /// A verifier for the configured algorithm, key, issuer and audience;
    /// `limits` resolves each token's tier to its turn limits.
    ///
    /// # Errors
    /// A message when the key cannot be used (settings validation reports it first).
    pub fn new(auth: &AuthSettings, limits: LimitTable) -> Result<Self, String> {
        let mut validation = Validation::new(algorithm(auth.jwt_algorithm));
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self { key: decoding_key(auth)?, validation, limits })
    }

    /// Verifies a token and returns who it names.
    ///
    /// # Errors
    /// [`TokenRefused`] for a bad signature, algorithm, expiry, issuer,
    /// audience or `sub`.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenRefused> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenRefused(e.to_string()))?;
        let user = UserId::parse(&data.claims.sub).map_err(|e| TokenRefused(e.to_string()))?;
        let limits = self.limits.resolve(data.claims.tier.as_deref());
        Ok(Caller { user, tier: data.claims.tier, limits })
    }
}

/// Mints HS256 tokens with the configured secret, for local use and tests.
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter").finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// A minter for the configured secret.
    ///
    /// # Errors
    /// A message when the configured algorithm is not HS256 (Pantheon holds
    /// no private keys).
    pub fn new(auth: &AuthSettings) -> Result<Self, String> {
        if auth.jwt_algorithm != JwtAlgorithm::HS256 {
            return Err(
                "minting needs auth.jwt_algorithm = HS256 (Pantheon holds no private key)".into()
            );
        }
        Ok(Self {
            key: EncodingKey::from_secret(auth.jwt_secret.as_bytes()),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        })
    }

    /// A token for `user`, valid for `ttl`.
    ///
    /// # Errors
    /// A message when `user` is not a valid user id or signing fails.
    pub fn mint(&self, user: &str, tier: Option<&str>, ttl: Duration) -> Result<String, String> {
        let user = UserId::parse(user).map_err(|e| e.to_string())?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.as_str().to_owned(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
            tier: tier.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| e.to_string())
    }
}
