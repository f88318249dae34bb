//! Bearer tokens: verification for every request (in-process, no database)
//! and minting for `pantheon token`.
//!
//! The algorithm is pinned by configuration: a token naming any other one,
//! or `none`, fails verification before its signature is looked at.
//!
//! Verified tokens are remembered until they expire: a client sends the
//! same token with every request, and decoding it (two base64 parts, two
//! JSON documents, the signature) was a fifth of the server's work on a
//! refused turn (`bench/RESULTS.md`, scenario C). Only tokens that passed
//! every check are kept, keyed by their full text, so a hit is exactly the
//! answer a fresh verification would give until `exp`; the settings that
//! verification depends on are fixed for the process.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Verified tokens remembered at most (a few hundred bytes each: the token
/// text and who it names), so at most a few MB.
const VERIFIED_CAPACITY: usize = 16_384;

/// Verifies bearer tokens. Built once at start; cheap to share.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    limits: LimitTable,
    /// Token text → who it names and its `exp`.
    verified: Arc<quick_cache::sync::Cache<String, (Caller, u64)>>,
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
        Ok(Self {
            key: decoding_key(auth)?,
            validation,
            limits,
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_CAPACITY)),
        })
    }

    /// Verifies a token and returns who it names.
    ///
    /// # Errors
    /// [`TokenRefused`] for a bad signature, algorithm, expiry, issuer,
    /// audience or `sub`.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenRefused> {
        // `exp` is judged as jsonwebtoken judges it: the system clock, with
        // the same leeway.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some((caller, exp)) = self.verified.get(token) {
            if now <= exp.saturating_add(CLOCK_SKEW_SECS) {
                return Ok(caller);
            }
            self.verified.remove(token);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenRefused(e.to_string()))?;
        let user = UserId::parse(&data.claims.sub).map_err(|e| TokenRefused(e.to_string()))?;
        let limits = self.limits.resolve(data.claims.tier.as_deref());
        let caller = Caller { user, tier: data.claims.tier, limits };
        self.verified.insert(token.to_owned(), (caller.clone(), data.claims.exp));
        Ok(caller)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use pantheon_domain::limiter::{LimitTable, Limits};

    use super::*;

    fn verifier() -> (TokenVerifier, TokenMinter) {
        let auth = AuthSettings::default();
        let limits = LimitTable::new(Limits { per_minute: 20, per_hour: 300 }, Default::default());
        (TokenVerifier::new(&auth, limits).unwrap(), TokenMinter::new(&auth).unwrap())
    }

    #[test]
    fn a_remembered_token_answers_as_a_fresh_verification_would() {
        let (verifier, minter) = verifier();
        let token = minter.mint("alice", Some("pro"), Duration::from_secs(60)).unwrap();
        let first = verifier.verify(&token).unwrap();
        let again = verifier.verify(&token).unwrap();
        assert_eq!((again.user.as_str(), again.tier.as_deref()), ("alice", Some("pro")));
        assert_eq!(first.limits, again.limits);

        // A token altered in one character was never verified: refused.
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(verifier.verify(&String::from_utf8(altered).unwrap()).is_err());
    }

    #[test]
    fn a_remembered_token_past_its_expiry_is_verified_again_and_refused() {
        let (verifier, minter) = verifier();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "bob".into(),
            exp: now - 3_600,
            iat: None,
            tier: None,
            iss: None,
            aud: None,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &minter.key).unwrap();
        assert!(verifier.verify(&expired).is_err(), "expired: refused");
        // As if it had been verified an hour ago, when it was still valid.
        let limits = Limits { per_minute: 20, per_hour: 300 };
        let caller = Caller { user: UserId::parse("bob").unwrap(), tier: None, limits };
        verifier.verified.insert(expired.clone(), (caller, claims.exp));
        assert!(verifier.verify(&expired).is_err(), "past exp + leeway: verified again");
        assert!(verifier.verified.get(&expired).is_none(), "and forgotten");
    }
}
