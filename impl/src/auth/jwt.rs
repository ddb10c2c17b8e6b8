//! Bearer JWT verification against the key set in force (see `keys`).
//!
//! The algorithm comes from the key, never from the token: each key in the set is
//! bound at load time to exactly one algorithm (RS256 for RSA, EdDSA for Ed25519),
//! and a token whose header names another is refused. That closes `alg: none` and
//! the HS256-signed-with-the-RSA-public-key confusion. Keys are picked by `kid`
//! only; `jku`, `x5u` and embedded keys in the token header are ignored. A header
//! with `crit` is refused: it names extensions this verifier would have to
//! understand, and it understands none.
//!
//! A header or payload that names a member twice is refused: JSON parsers
//! disagree on which of the two counts, so such a token means different things
//! to different readers (and serde would quietly keep the last one of a member
//! not read here).
//!
//! The JWS itself (RFC 7515 compact form) is checked here, on aws-lc-rs with
//! keys parsed once, rather than by jsonwebtoken's `decode`: that rebuilds the
//! RSA key for every token and reads the header and the claims twice each, a
//! quarter of what a new token costs. The steps are few and in this order:
//! three base64url parts; the header (no duplicates, no `crit`, a known `kid`,
//! the key's own `alg`); the signature over the first two parts; then the claims
//! (`exp` required, `nbf` if present, both with the leeway; `iss` one string
//! equal to the issuer; `aud` ours, alone or in a list; `client_id`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::cache::TokenCache;
use super::keys::{KeySet, Keys, Policy};
use super::{AuthError, Caller, parse_scopes, valid_client_id};

/// Verifies tokens against the key set in force.
pub struct JwtVerifier {
    keys: Arc<Keys>,
    /// The claims every token must carry.
    policy: Policy,
    /// Callers of valid tokens, until `exp` plus the leeway.
    accepted: TokenCache<Arc<Caller>>,
    /// Tokens the key set refused for good: under one key set, issuer and
    /// audience, a bad signature, a foreign issuer or a passed `exp` never
    /// become valid. (A token refused for `nbf` is not remembered: it becomes
    /// valid later. Nor is one refused before a key was consulted, malformed or
    /// naming an unknown `kid`: that costs less to decide again than to keep.)
    refused: TokenCache<Refusal>,
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
    /// The refusal to remember for `error`, if it is permanent under its key set.
    fn of(error: &AuthError) -> Option<Self> {
        match error {
            AuthError::Expired => Some(Self::Expired),
            AuthError::InvalidToken { reason } => Some(Self::Invalid(reason)),
            AuthError::MissingToken
            | AuthError::NotYetValid
            | AuthError::KeysUnavailable
            | AuthError::MissingHeader(_)
            | AuthError::InvalidHeader(_) => None,
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

/// Why a token was refused, and whether a key decided it (only then is the
/// refusal worth remembering).
struct Refused {
    error: AuthError,
    by_key: bool,
}

impl From<AuthError> for Refused {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            by_key: true,
        }
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.current())
            .field("policy", &self.policy)
            .finish()
    }
}

/// The header parameters this service reads; the others (`typ`, `jku`, `x5u`,
/// `jwk`, …) are ignored. Read through [`Unique`], so duplicates are refused.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<IgnoredAny>,
}

/// The claims this service reads. Read through [`Unique`], so duplicates are
/// refused.
#[derive(Deserialize)]
struct Claims {
    /// A NumericDate: seconds, possibly with a fraction.
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    /// One string (RFC 7519 allows only a string or URI here).
    iss: String,
    aud: Audience,
    client_id: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    sub: Option<String>,
}

/// `aud`: one audience, or a list (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn includes(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|one| one == audience),
        }
    }
}

/// `T` read from a JSON object whose top-level names are all distinct (after
/// JSON unescaping, so `"client_\u0069d"` is `client_id`).
struct Unique<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Unique<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members<T>(std::marker::PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for Members<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                // Straight into `T`, each name checked on its way past.
                T::deserialize(de::value::MapAccessDeserializer::new(Distinct {
                    map,
                    seen: Vec::new(),
                }))
            }
        }
        deserializer
            .deserialize_map(Members(std::marker::PhantomData))
            .map(Unique)
    }
}

/// The members of a JSON object, refused at the second of any name.
struct Distinct<A> {
    map: A,
    /// A token's header and claims have a handful of members: a list will do.
    seen: Vec<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Distinct<A> {
    type Error = A::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some(name) = self.map.next_key::<String>()? else {
            return Ok(None);
        };
        if self.seen.contains(&name) {
            // The name is the caller's text: not repeated into the log.
            return Err(de::Error::custom("a member appears more than once"));
        }
        let key = seed.deserialize(de::value::StrDeserializer::<A::Error>::new(&name))?;
        self.seen.push(name);
        Ok(Some(key))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// One base64url part of a token, read as `T`.
fn part<T: DeserializeOwned>(encoded: &str) -> Option<T> {
    let json = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice::<Unique<T>>(&json)
        .ok()
        .map(|Unique(value)| value)
}

impl JwtVerifier {
    /// A verifier of tokens against `keys` under `policy`, with `cache_size`
    /// tokens remembered each way.
    pub fn new(keys: Arc<Keys>, policy: Policy, cache_size: usize) -> Self {
        Self {
            keys,
            policy,
            accepted: TokenCache::new(cache_size),
            refused: TokenCache::new(cache_size),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The key set it verifies against.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// Verifies `token` and returns its caller.
    pub fn verify(&self, token: &[u8]) -> Result<Arc<Caller>, AuthError> {
        let generation = self.keys.generation();
        if generation == 0 {
            return Err(AuthError::KeysUnavailable);
        }
        let now = now();
        if let Some(caller) = self.accepted.get(token, now, generation) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(caller);
        }
        if let Some(refusal) = self.refused.get(token, now, generation) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Err(refusal.into());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let current = self.keys.current().ok_or(AuthError::KeysUnavailable)?;
        // Remembered under the generation of the set that decided, which may be
        // newer than the one read above.
        match self.verify_signature_and_claims(&current.set, token, now) {
            Ok((caller, exp)) => {
                let caller = Arc::new(caller);
                let valid_until = exp.saturating_add(self.policy.leeway);
                self.accepted
                    .insert(token, Arc::clone(&caller), valid_until, current.generation);
                Ok(caller)
            }
            Err(Refused { error, by_key }) => {
                if let Some(refusal) = Refusal::of(&error).filter(|_| by_key) {
                    self.refused
                        .insert(token, refusal, u64::MAX, current.generation);
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

    fn verify_signature_and_claims(
        &self,
        keys: &KeySet,
        token: &[u8],
        now: u64,
    ) -> Result<(Caller, u64), Refused> {
        let before_key = |reason| Refused {
            error: AuthError::invalid(reason),
            by_key: false,
        };
        // A JWT is ASCII (base64url and dots); anything else is refused here.
        let token = std::str::from_utf8(token)
            .ok()
            .filter(|token| token.is_ascii())
            .ok_or_else(|| before_key("the token is not ASCII"))?;
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(before_key("not three parts"));
        };
        let header: Header = part(header).ok_or_else(|| before_key("malformed header"))?;
        // RFC 7515 §4.1.11: extensions listed as critical must be understood, and
        // this verifier understands none.
        if header.crit.is_some() {
            return Err(before_key("critical header extensions (crit)"));
        }
        let kid = header
            .kid
            .ok_or_else(|| before_key("no kid in the token header"))?;
        let Some(key) = keys.get(&kid) else {
            self.keys.unknown_kid();
            return Err(before_key("unknown kid"));
        };
        // From here on the key decides, the same way every time under this set.
        if header.alg != key.algorithm.name() {
            return Err(AuthError::invalid("alg is not the key's algorithm").into());
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::invalid("malformed signature"))?;
        let signed = &token.as_bytes()[..token.len() - signature_len(token)];
        if !key.verify(signed, &signature) {
            return Err(AuthError::invalid("bad signature").into());
        }
        let claims: Claims = part(payload).ok_or(AuthError::invalid("malformed claims"))?;
        let leeway = self.policy.leeway as f64;
        let now = now as f64;
        if claims.exp + leeway < now {
            return Err(AuthError::Expired.into());
        }
        if claims.nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Err(AuthError::NotYetValid.into());
        }
        if claims.iss != self.policy.issuer {
            return Err(AuthError::invalid("iss is not the configured issuer").into());
        }
        if !claims.aud.includes(&self.policy.audience) {
            return Err(AuthError::invalid("aud is not this service").into());
        }
        if !valid_client_id(&claims.client_id) {
            return Err(AuthError::invalid("bad client_id claim").into());
        }
        let caller = Caller::new(claims.client_id, claims.sub, parse_scopes(&claims.scope));
        // `exp` is a finite time after now here.
        Ok((caller, claims.exp as u64))
    }
}

/// The length of the last part of a token and the dot before it.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

/// Seconds since the epoch.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::Policy;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn policy() -> Policy {
        Policy {
            issuer: "https://auth.test".into(),
            audience: "compositions-jobs".into(),
            leeway: 30,
        }
    }

    fn fixture_set() -> KeySet {
        let document = std::fs::read(format!("{FIXTURES}/jwks.json")).expect("fixture");
        KeySet::parse(&document, "jwks.json").expect("the test key set loads")
    }

    fn verifier() -> JwtVerifier {
        let keys = Arc::new(Keys::new(std::time::Duration::from_secs(3600)));
        keys.install(fixture_set());
        JwtVerifier::new(keys, policy(), 100)
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
        verifier.refused.get(
            token.as_bytes(),
            jsonwebtoken::get_current_timestamp(),
            verifier.keys.generation(),
        )
    }

    /// `token` with one character changed in the middle of its signature: still
    /// base64url (the last character may carry bits that must be zero), wrong.
    fn with_a_wrong_signature(token: &str) -> String {
        let mut bad = token.to_owned().into_bytes();
        let middle = token.len() - 20;
        bad[middle] = if bad[middle] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bad).expect("ASCII")
    }

    #[test]
    fn a_bad_signature_is_remembered_and_refused_again() {
        let verifier = verifier();
        let bad = with_a_wrong_signature(&token(claims(3600, -10)));
        let first = verifier.verify(bad.as_bytes()).expect_err("bad signature");
        assert!(matches!(
            first,
            AuthError::InvalidToken {
                reason: "bad signature"
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

    #[test]
    fn iss_must_be_one_string_equal_to_the_issuer() {
        let verifier = verifier();
        let mut listed = claims(3600, -10);
        listed["iss"] = serde_json::json!(["https://auth.test"]);
        assert!(matches!(
            verifier.verify(token(listed).as_bytes()),
            Err(AuthError::InvalidToken { .. })
        ));
        let mut other = claims(3600, -10);
        other["iss"] = "https://auth.test/".into();
        assert!(verifier.verify(token(other).as_bytes()).is_err());
    }

    #[test]
    fn nothing_is_verified_before_a_key_set_is_in_force() {
        let keys = Arc::new(Keys::new(std::time::Duration::from_secs(3600)));
        let verifier = JwtVerifier::new(Arc::clone(&keys), policy(), 100);
        let good = token(claims(3600, -10));
        assert!(matches!(
            verifier.verify(good.as_bytes()),
            Err(AuthError::KeysUnavailable)
        ));
        keys.install(fixture_set());
        assert!(verifier.verify(good.as_bytes()).is_ok());
    }

    #[test]
    fn no_outcome_outlives_the_key_set_that_decided_it() {
        let verifier = verifier();
        let good = token(claims(3600, -10));
        let bad = with_a_wrong_signature(&good);
        assert!(verifier.verify(good.as_bytes()).is_ok());
        assert!(verifier.verify(bad.as_bytes()).is_err());
        assert!(remembered(&verifier, &bad).is_some());
        // The RSA key leaves the set: its token, accepted a moment ago, is not.
        let ed_only = serde_json::json!({"keys": [
            serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).expect("fixture")
            ).expect("JSON")["keys"][1]
        ]});
        let set = KeySet::parse(ed_only.to_string().as_bytes(), "ed.json").expect("loads");
        assert!(verifier.keys.install(set));
        assert!(matches!(
            verifier.verify(good.as_bytes()),
            Err(AuthError::InvalidToken {
                reason: "unknown kid",
                ..
            })
        ));
        assert!(remembered(&verifier, &bad).is_none());
        // Nor is an unknown kid remembered: the next set may have it.
        verifier.keys.install(fixture_set());
        assert!(verifier.verify(good.as_bytes()).is_ok());
    }

    #[test]
    fn refusals_decided_before_a_key_is_consulted_are_not_remembered() {
        let verifier = verifier();
        for garbage in ["garbage", "a.b.c", "e30.e30.e30"] {
            assert!(verifier.verify(garbage.as_bytes()).is_err());
            assert!(remembered(&verifier, garbage).is_none(), "{garbage}");
        }
    }
}
