//! Bearer tokens: verification for every request (in-process, no database)
//! and minting for `pantheon token`.
//!
//! The algorithm is pinned by configuration: a token naming any other one,
//! or `none`, fails verification before its signature is looked at. A
//! configured issuer or audience makes `iss` / `aud` required claims: a
//! token without them (or with `null`) was meant for someone else, or for
//! anyone. `aud` may be one string or an array holding ours (RFC 7519
//! §4.1.3). Clock skew between the issuer and us is forgiven up to
//! `auth.leeway_secs` on `exp`, `nbf` and `iat`; an `iat` further in the
//! future names a token that cannot have been issued yet.
//!
//! Verified tokens are remembered until they expire: a client sends the
//! same token with every request, and decoding it (two base64 parts, two
//! JSON documents, the signature) was a fifth of the server's work on a
//! refused turn (`bench/RESULTS.md`, scenario C). Only tokens that passed
//! every check are kept, keyed by their full text, with the window in which
//! they pass (from `max(nbf, iat) - leeway` to `exp + leeway`, on the same
//! clock): a hit outside it is verified afresh, so a hit is exactly the
//! answer a fresh verification would give. The settings that verification
//! depends on are fixed for the process.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pantheon_domain::limiter::LimitTable;
use pantheon_domain::{Caller, UserId};
use serde::{Deserialize, Serialize};

use crate::settings::{AuthSettings, JwtAlgorithm};

/// The claims Pantheon reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
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
    pub aud: Option<Audience>,
}

/// `aud`: one recipient or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// A single string.
    One(String),
    /// An array of strings.
    Many(Vec<String>),
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
    leeway: u64,
    /// Token text → who it names and when it passes.
    verified: Arc<quick_cache::sync::Cache<String, Verified>>,
}

/// A token that passed every check, and the window in which it passes.
#[derive(Debug, Clone)]
struct Verified {
    caller: Caller,
    /// `max(nbf, iat)`: before it (less the leeway) the token is refused.
    not_before: u64,
    exp: u64,
}

impl Verified {
    fn passes_at(&self, now: u64, leeway: u64) -> bool {
        self.not_before <= now.saturating_add(leeway) && now <= self.exp.saturating_add(leeway)
    }
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
        validation.leeway = auth.leeway_secs;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` / `aud` only when present; required, a
        // missing or `null` one is refused too.
        let mut required = vec!["exp", "sub"];
        match &auth.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key: decoding_key(auth)?,
            validation,
            leeway: auth.leeway_secs,
            limits,
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_CAPACITY)),
        })
    }

    /// Verifies a token and returns who it names.
    ///
    /// # Errors
    /// [`TokenRefused`] for a bad signature, algorithm, expiry, `nbf`,
    /// `iat`, issuer, audience or `sub`.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenRefused> {
        // The system clock, as jsonwebtoken judges `exp` and `nbf` by it.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(hit) = self.verified.get(token) {
            if hit.passes_at(now, self.leeway) {
                return Ok(hit.caller);
            }
            self.verified.remove(token);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenRefused(e.to_string()))?
            .claims;
        // jsonwebtoken does not look at `iat`.
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(self.leeway)) {
            return Err(TokenRefused("iat is in the future".into()));
        }
        let user = UserId::parse(&claims.sub).map_err(|e| TokenRefused(e.to_string()))?;
        let limits = self.limits.resolve(claims.tier.as_deref());
        let caller = Caller { user, tier: claims.tier, limits };
        let not_before = claims.nbf.unwrap_or(0).max(claims.iat.unwrap_or(0));
        let verified = Verified { caller: caller.clone(), not_before, exp: claims.exp };
        self.verified.insert(token.to_owned(), verified);
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
            nbf: None,
            iat: Some(now),
            tier: tier.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
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
        let limits = LimitTable::new(Limits::turns(20, 300, 4), Default::default());
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
            nbf: None,
            iat: None,
            tier: None,
            iss: None,
            aud: None,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &minter.key).unwrap();
        assert!(verifier.verify(&expired).is_err(), "expired: refused");
        // As if it had been verified an hour ago, when it was still valid.
        let limits = Limits::turns(20, 300, 4);
        let caller = Caller { user: UserId::parse("bob").unwrap(), tier: None, limits };
        verifier
            .verified
            .insert(expired.clone(), Verified { caller, not_before: 0, exp: claims.exp });
        assert!(verifier.verify(&expired).is_err(), "past exp + leeway: verified again");
        assert!(verifier.verified.get(&expired).is_none(), "and forgotten");
    }

    #[test]
    fn a_token_refused_for_its_iat_is_never_remembered() {
        let (verifier, minter) = verifier();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "carol".into(),
            exp: now + 3_600,
            nbf: None,
            iat: Some(now + 600),
            tier: None,
            iss: None,
            aud: None,
        };
        let early =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &minter.key).unwrap();
        assert!(verifier.verify(&early).is_err());
        assert!(verifier.verify(&early).is_err(), "asked again: refused again");
        assert!(verifier.verified.get(&early).is_none());
    }
}
