//! Bearer JWT verification against a JWKS file.
//!
//! The algorithm comes from the key, never from the token: each key in the set is
//! bound at load time to exactly one algorithm (RS256 for RSA, EdDSA for Ed25519),
//! and a token whose header names another is refused. That closes `alg: none` and
//! the HS256-signed-with-the-RSA-public-key confusion. Keys are picked by `kid`
//! only; `jku`, `x5u` and embedded keys in the token header are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

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
    cache: TokenCache,
    leeway: u64,
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
/// [`Validation`]. Duplicate claims make deserialization fail.
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
            cache: TokenCache::new(config.token_cache_size),
            leeway: config.leeway.as_secs(),
        })
    }

    /// Verifies `token` and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(caller) = self.cache.get(token, now) {
            return Ok(caller);
        }
        let (caller, exp) = self.verify_signature_and_claims(token)?;
        self.cache
            .insert(token, caller.clone(), exp.saturating_add(self.leeway), now);
        Ok(caller)
    }

    fn verify_signature_and_claims(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| rejected("malformed token", e))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthError::invalid("no kid in the token header"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::invalid("unknown kid"))?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => rejected("verification failed", e),
            })?
            .claims;
        if !valid_client_id(&claims.client_id) {
            return Err(AuthError::invalid("bad client_id claim"));
        }
        let caller = Caller {
            client_id: claims.client_id,
            subject: claims.sub,
            scopes: parse_scopes(&claims.scope),
        };
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
