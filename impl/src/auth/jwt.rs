//! Bearer JWT verification against a JWKS file.
//!
//! The algorithm comes from the key, never from the token: each key in the set is
//! bound at load time to exactly one algorithm (RS256 for RSA, EdDSA for Ed25519),
//! and a token whose header names another is refused. That closes `alg: none` and
//! the HS256-signed-with-the-RSA-public-key confusion. Keys are picked by `kid`
//! only; `jku`, `x5u` and embedded keys in the token header are ignored. A header
//! with `crit` is refused: it names extensions this verifier would have to
//! understand, and it understands none.
//!
//! A payload that names a claim twice is refused: JSON parsers disagree on which
//! of the two counts, so such a token means different things to different
//! readers (and serde would quietly keep the last one of a claim not read here).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::cache::TokenCache;
use super::{AuthError, Caller, parse_scopes, valid_client_id};
use crate::config::AuthConfig;

/// RSA moduli shorter than this are refused at load time.
const MIN_RSA_BITS: usize = 2048;

/// A key set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// `auth.jwks`, `auth.issuer` or `auth.audience` is unset.
    #[error("auth.{0} is not set")]
    Missing(&'static str),
    /// The file could not be read.
    #[error("cannot read the key set {}", path.display())]
    Read {
        /// The JWKS file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a JWKS document.
    #[error("{} is not a JWKS document", path.display())]
    Parse {
        /// The JWKS file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A key cannot be used for verification.
    #[error("key {kid:?} in the key set: {reason}")]
    Unusable {
        /// The key's `kid` (empty if it has none).
        kid: String,
        /// Why.
        reason: String,
    },
    /// The set has no keys.
    #[error("the key set {} has no keys", path.display())]
    Empty {
        /// The JWKS file.
        path: PathBuf,
    },
}

/// Verifies tokens against a fixed set of keys.
pub struct JwtVerifier {
    keys: HashMap<String, VerificationKey>,
    /// Callers of valid tokens, until `exp` plus the leeway.
    accepted: TokenCache<Arc<Caller>>,
    /// Tokens refused for good: with a fixed key set, issuer and audience, a bad
    /// signature, a foreign issuer or a passed `exp` never become valid. (A
    /// token refused for `nbf` is not remembered: it becomes valid later.)
    refused: TokenCache<Refusal>,
    leeway: u64,
    /// Tokens answered from either cache, and tokens verified, for `/metrics`.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A remembered refusal: what [`AuthError`] to answer again.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    Expired,
    Invalid(&'static str),
}

impl Refusal {
    /// The refusal to remember for `error`, if it is permanent.
    fn of(error: &AuthError) -> Option<Self> {
        match error {
            AuthError::Expired => Some(Self::Expired),
            AuthError::InvalidToken { source, .. }
                if source
                    .as_ref()
                    .is_some_and(|e| *e.kind() == ErrorKind::ImmatureSignature) =>
            {
                None
            }
            AuthError::InvalidToken { reason, .. } => Some(Self::Invalid(reason)),
            AuthError::MissingToken | AuthError::MissingHeader(_) | AuthError::InvalidHeader(_) => {
                None
            }
        }
    }
}

impl From<Refusal> for AuthError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Expired => Self::Expired,
            Refusal::Invalid(reason) => Self::invalid(reason),
        }
    }
}

struct VerificationKey {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The claims this service reads; `exp`, `nbf`, `iss` and `aud` are checked by
/// [`Validation`]. Read through [`UniqueClaims`], so duplicates are refused.
#[derive(Deserialize)]
struct Claims {
    /// A NumericDate: seconds, possibly with a fraction.
    exp: f64,
    client_id: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    sub: Option<String>,
}

/// `T` read from a payload whose top-level names are all distinct (after JSON
/// unescaping, so `"client_\u0069d"` is `client_id`). It runs only once the
/// signature has been verified, and only on a token-cache miss.
struct UniqueClaims<T>(T);

impl<'de, T: de::DeserializeOwned> Deserialize<'de> for UniqueClaims<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = serde_json::Map<String, serde_json::Value>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = serde_json::Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value()?;
                    if members.insert(name, value).is_some() {
                        // The name is the caller's text: not repeated into the log.
                        return Err(de::Error::custom("a claim appears more than once"));
                    }
                }
                Ok(members)
            }
        }
        let members = deserializer.deserialize_map(Members)?;
        T::deserialize(serde_json::Value::Object(members))
            .map(UniqueClaims)
            .map_err(de::Error::custom)
    }
}

impl JwtVerifier {
    /// Reads the key set and binds each key to its algorithm and the configured
    /// issuer, audience and leeway.
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeySetError> {
        let path = config.jwks.as_deref().ok_or(KeySetError::Missing("jwks"))?;
        let issuer = config
            .issuer
            .as_deref()
            .ok_or(KeySetError::Missing("issuer"))?;
        let audience = config
            .audience
            .as_deref()
            .ok_or(KeySetError::Missing("audience"))?;
        let set = read_key_set(path)?;

        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let unusable = |reason: String| KeySetError::Unusable {
                kid: kid.clone(),
                reason,
            };
            if kid.is_empty() {
                return Err(unusable("has no kid".into()));
            }
            let algorithm = algorithm_for(jwk).map_err(unusable)?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| unusable(e.to_string()))?;
            let mut validation = Validation::new(algorithm);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = config.leeway.as_secs();
            if keys
                .insert(kid.clone(), VerificationKey { key, validation })
                .is_some()
            {
                return Err(unusable("appears twice".into()));
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            keys,
            accepted: TokenCache::new(config.token_cache_size),
            refused: TokenCache::new(config.token_cache_size),
            leeway: config.leeway.as_secs(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Verifies `token` and returns its caller.
    pub fn verify(&self, token: &[u8]) -> Result<Arc<Caller>, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(caller) = self.accepted.get(token, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(caller);
        }
        if let Some(refusal) = self.refused.get(token, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Err(refusal.into());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        match self.verify_signature_and_claims(token) {
            Ok((caller, exp)) => {
                let caller = Arc::new(caller);
                let valid_until = exp.saturating_add(self.leeway);
                self.accepted
                    .insert(token, Arc::clone(&caller), valid_until, now);
                Ok(caller)
            }
            Err(error) => {
                if let Some(refusal) = Refusal::of(&error) {
                    self.refused.insert(token, refusal, u64::MAX, now);
                }
                Err(error)
            }
        }
    }

    /// Tokens answered from the caches, and tokens verified, so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn verify_signature_and_claims(&self, token: &[u8]) -> Result<(Caller, u64), AuthError> {
        // A JWT is ASCII (base64url and dots); anything else is refused here.
        let token = std::str::from_utf8(token)
            .ok()
            .filter(|token| token.is_ascii())
            .ok_or_else(|| AuthError::invalid("the token is not ASCII"))?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| rejected("malformed token", e))?;
        // RFC 7515 §4.1.11: extensions listed as critical must be understood, and
        // this verifier understands none.
        if header.crit.is_some() {
            return Err(AuthError::invalid("critical header extensions (crit)"));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::invalid("no kid in the token header"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::invalid("unknown kid"))?;
        let UniqueClaims(claims) =
            jsonwebtoken::decode::<UniqueClaims<Claims>>(token, &key.key, &key.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => rejected("verification failed", e),
                })?
                .claims;
        if !valid_client_id(&claims.client_id) {
            return Err(AuthError::invalid("bad client_id claim"));
        }
        let caller = Caller::new(claims.client_id, claims.sub, parse_scopes(&claims.scope));
        // `exp` passed validation, so it is a finite time in the future.
        Ok((caller, claims.exp as u64))
    }
}

fn rejected(reason: &'static str, source: jsonwebtoken::errors::Error) -> AuthError {
    AuthError::InvalidToken {
        reason,
        source: Some(source),
    }
}

fn read_key_set(path: &Path) -> Result<JwkSet, KeySetError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeySetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| KeySetError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The one algorithm a key may verify, from its type (and `alg`, if it has one).
fn algorithm_for(jwk: &Jwk) -> Result<Algorithm, String> {
    let (algorithm, declared_ok) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let bits = base64_len(&rsa.n) * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            (
                Algorithm::RS256,
                matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)),
            )
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => (
            Algorithm::EdDSA,
            matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::EdDSA)),
        ),
        // Symmetric keys in a verification set would let anyone holding the set
        // mint tokens; EC keys are not used by eHealth.
        _ => return Err("only RSA (RS256) and Ed25519 (EdDSA) keys are supported".into()),
    };
    if !declared_ok {
        return Err(format!(
            "its alg does not match its key type ({algorithm:?} expected)"
        ));
    }
    Ok(algorithm)
}

/// The number of bytes a base64url string (without padding) decodes to.
fn base64_len(encoded: &str) -> usize {
    encoded.trim_end_matches('=').len() * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn verifier() -> JwtVerifier {
        let config = AuthConfig {
            jwks: Some(format!("{FIXTURES}/jwks.json").into()),
            issuer: Some("https://auth.test".into()),
            audience: Some("compositions-jobs".into()),
            ..AuthConfig::default()
        };
        JwtVerifier::from_config(&config).expect("the test key set loads")
    }

    fn token(claims: serde_json::Value) -> String {
        let pem = std::fs::read(format!("{FIXTURES}/rsa-test-key.pem")).expect("test key");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-rsa".into());
        let key = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
        jsonwebtoken::encode(&header, &claims, &key).expect("signed")
    }

    /// A token over `payload` exactly as written, validly signed.
    fn token_over(payload: &str) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pem = std::fs::read(format!("{FIXTURES}/rsa-test-key.pem")).expect("test key");
        let key = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
        let header = r#"{"alg":"RS256","typ":"JWT","kid":"test-rsa"}"#;
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).expect("signed");
        format!("{message}.{signature}")
    }

    fn claims(exp_from_now: i64, nbf_from_now: i64) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        serde_json::json!({
            "iss": "https://auth.test", "aud": "compositions-jobs", "client_id": "mis-1",
            "scope": "composition:read", "exp": now + exp_from_now, "nbf": now + nbf_from_now,
        })
    }

    fn remembered(verifier: &JwtVerifier, token: &str) -> Option<Refusal> {
        verifier
            .refused
            .get(token.as_bytes(), jsonwebtoken::get_current_timestamp())
    }

    #[test]
    fn a_bad_signature_is_remembered_and_refused_again() {
        let verifier = verifier();
        let mut bad = token(claims(3600, -10));
        let last = if bad.ends_with('A') { 'B' } else { 'A' };
        bad.pop();
        bad.push(last);
        let first = verifier.verify(bad.as_bytes()).expect_err("bad signature");
        assert!(matches!(
            first,
            AuthError::InvalidToken {
                source: Some(_),
                ..
            }
        ));
        assert!(matches!(
            remembered(&verifier, &bad),
            Some(Refusal::Invalid(_))
        ));
        let again = verifier.verify(bad.as_bytes()).expect_err("still bad");
        assert_eq!(again.to_string(), first.to_string());
    }

    #[test]
    fn an_expired_token_is_remembered_as_expired() {
        let verifier = verifier();
        let expired = token(claims(-3600, -7200));
        assert!(matches!(
            verifier.verify(expired.as_bytes()),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            verifier.verify(expired.as_bytes()),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            remembered(&verifier, &expired),
            Some(Refusal::Expired)
        ));
    }

    #[test]
    fn a_token_not_valid_yet_is_not_remembered() {
        let verifier = verifier();
        let early = token(claims(7200, 3600));
        assert!(verifier.verify(early.as_bytes()).is_err());
        assert!(remembered(&verifier, &early).is_none());
    }

    #[test]
    fn a_valid_token_is_not_refused() {
        let verifier = verifier();
        let good = token(claims(3600, -10));
        let caller = verifier.verify(good.as_bytes()).expect("valid");
        assert_eq!(caller.client_id, "mis-1");
        assert!(remembered(&verifier, &good).is_none());
        assert_eq!(verifier.verify(good.as_bytes()).expect("cached"), caller);
    }

    #[test]
    fn a_payload_with_a_claim_twice_is_refused() {
        let verifier = verifier();
        let members = claims(3600, -10).to_string();
        let members = members.trim_start_matches('{').trim_end_matches('}');
        // Distinct members, written the same way, verify: the duplicates are the
        // only difference below.
        let single = token_over(&format!("{{{members}}}"));
        assert!(verifier.verify(single.as_bytes()).is_ok());
        for extra in [
            r#""iat":1,"iat":2"#,
            r#""jti":"a","jti":"a""#,
            r#""client_id":"mis-2""#,
            r#""client_\u0069d":"mis-2""#,
            r#""scope":"composition:read""#,
        ] {
            let duplicated = token_over(&format!("{{{members},{extra}}}"));
            let refused = verifier.verify(duplicated.as_bytes());
            assert!(
                matches!(refused, Err(AuthError::InvalidToken { .. })),
                "{extra}: {refused:?}"
            );
        }
    }
}
