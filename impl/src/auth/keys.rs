//! The token signing keys: each checked on its own and bound to one algorithm,
//! a set replaced only as a whole, and the set in force shared by every request.
//!
//! A key set comes from a JWKS document, whether a file or the issuer's URL, and
//! the same rules apply to both:
//! - a key not meant for verifying signatures (`use` other than `sig`, or
//!   `key_ops` without `verify`) is left out, as the issuer intends;
//! - every other key must be usable: a `kid` of its own, RSA with a modulus of
//!   at least 2048 bits (counted from the number, not its encoding) and an odd
//!   public exponent of at least 65537, or Ed25519; its `alg`, if any, must
//!   match. Any key that is not is an error naming it, and the document is
//!   refused as a whole: a mistake at the issuer shows at once, loudly, instead
//!   of as tokens refused one by one.
//!
//! Every set in force has a generation. Outcomes remembered per token carry the
//! generation they were decided under, so no acceptance or refusal outlives the
//! set that decided it (see `cache`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use tokio::sync::Notify;

/// RSA moduli shorter than this are refused.
const MIN_RSA_BITS: usize = 2048;

/// The smallest RSA public exponent accepted (F4, what every issuer uses).
const MIN_RSA_EXPONENT: u64 = 65_537;

/// A key set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// A required setting is unset.
    #[error("config key `auth.{0}` is not set")]
    Missing(&'static str),
    /// The document could not be read or fetched.
    #[error("cannot read the key set {origin}: {reason}")]
    Unreadable {
        /// The file or URL.
        origin: String,
        /// Why.
        reason: String,
    },
    /// The document is not a JWKS document.
    #[error("{origin} is not a JWKS document: {reason}")]
    Parse {
        /// The file or URL.
        origin: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A key cannot be used for verification.
    #[error("key {kid:?} in {origin}: {reason}")]
    Unusable {
        /// The file or URL.
        origin: String,
        /// The key's `kid` (empty if it has none).
        kid: String,
        /// Why.
        reason: String,
    },
    /// The document has no key to verify signatures with.
    #[error("the key set {origin} has no signature verification key")]
    Empty {
        /// The file or URL.
        origin: String,
    },
}

/// What a token must carry besides a good signature.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
}

/// The algorithms a key may be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The name a token header gives it (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// One key, parsed once, bound to one algorithm.
///
/// Parsed here rather than for every token, as jsonwebtoken's key type is: an
/// RSA key built from its modulus and exponent for each verification costs its
/// Montgomery set-up each time, a sixth of the verification.
pub struct VerificationKey {
    public: ParsedPublicKey,
    /// The one algorithm it verifies.
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.public.verify_sig(message, signature).is_ok()
    }
}

/// The keys of one JWKS document, by `kid`.
pub struct KeySet {
    keys: HashMap<String, VerificationKey>,
    /// The keys' material, sorted by `kid`: two documents with the same
    /// fingerprint verify exactly the same tokens.
    fingerprint: Vec<(String, String)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kids())
            .finish()
    }
}

impl KeySet {
    /// Reads a JWKS document from `origin` (a file or URL, for messages).
    pub fn parse(document: &[u8], origin: &str) -> Result<Self, KeySetError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let parse = |reason: String| KeySetError::Parse {
            origin: origin.to_owned(),
            reason,
        };
        let document: Document =
            serde_json::from_slice(document).map_err(|e| parse(e.to_string()))?;
        let mut keys = HashMap::new();
        let mut fingerprint = Vec::new();
        for value in document.keys {
            let kid = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let unusable = |reason: String| KeySetError::Unusable {
                origin: origin.to_owned(),
                kid: kid.clone(),
                reason,
            };
            if !for_verification(&value) {
                tracing::debug!(%origin, kid, "a key not meant for verifying signatures is left out");
                continue;
            }
            if kid.is_empty() {
                return Err(unusable("has no kid".into()));
            }
            let jwk: Jwk = serde_json::from_value(value.clone())
                .map_err(|e| unusable(format!("is not a JWK: {e}")))?;
            let key = verification_key(&jwk).map_err(unusable)?;
            if keys.insert(kid.clone(), key).is_some() {
                return Err(unusable("appears twice".into()));
            }
            fingerprint.push((kid, material(&jwk)));
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty {
                origin: origin.to_owned(),
            });
        }
        fingerprint.sort();
        Ok(Self { keys, fingerprint })
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    /// The `kid`s, sorted.
    pub fn kids(&self) -> Vec<&str> {
        self.fingerprint
            .iter()
            .map(|(kid, _)| kid.as_str())
            .collect()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no key (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `other` verifies exactly the same tokens.
    fn same_keys(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

/// Whether a JWK is meant for verifying signatures (RFC 7517 §4.2, §4.3): by
/// default yes; `use` other than `sig`, or `key_ops` without `verify`, says no.
fn for_verification(jwk: &serde_json::Value) -> bool {
    let use_ok = jwk
        .get("use")
        .is_none_or(|value| value.as_str() == Some("sig"));
    let ops_ok = jwk.get("key_ops").is_none_or(|ops| {
        ops.as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")))
    });
    use_ok && ops_ok
}

/// The key, bound to the one algorithm its type allows (and its `alg`, if any,
/// names).
fn verification_key(jwk: &Jwk) -> Result<VerificationKey, String> {
    let decode = |name: &str, value: &str| {
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| format!("its {name} is not base64url"))
    };
    let rejected = |e: aws_lc_rs::error::KeyRejected| format!("not a usable key: {e}");
    let (algorithm, public, declared_ok) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let (n, e) = (decode("n", &rsa.n)?, decode("e", &rsa.e)?);
            check_rsa(&n, &e)?;
            let components = RsaPublicKeyComponents {
                n: without_leading_zeros(&n),
                e: without_leading_zeros(&e),
            };
            (
                Algorithm::Rs256,
                components
                    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                    .map_err(rejected)?,
                matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)),
            )
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            let x = decode("x", &okp.x)?;
            if x.len() != 32 {
                return Err(format!("an Ed25519 key of {} bytes; 32 expected", x.len()));
            }
            (
                Algorithm::EdDsa,
                ParsedPublicKey::new(&ED25519, &x).map_err(rejected)?,
                matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::EdDSA)),
            )
        }
        // Symmetric keys in a verification set would let anyone holding the set
        // mint tokens; EC keys are not used by eHealth.
        _ => return Err("only RSA (RS256) and Ed25519 (EdDSA) keys are supported".into()),
    };
    if !declared_ok {
        return Err(format!(
            "its alg does not match its key type ({} expected)",
            algorithm.name()
        ));
    }
    Ok(VerificationKey { public, algorithm })
}

/// An RSA public key worth trusting: the modulus's real size, and the exponent
/// (both big-endian, as decoded).
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), String> {
    let bits = significant_bits(n);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    let e = without_leading_zeros(e);
    let odd = e.last().is_some_and(|last| last & 1 == 1);
    // Longer than 8 bytes is larger than any u64, so larger than F4.
    let large_enough = e.len() > 8
        || e.iter()
            .fold(0_u64, |value, &byte| (value << 8) | u64::from(byte))
            >= MIN_RSA_EXPONENT;
    if !(odd && large_enough) {
        return Err(format!(
            "an RSA public exponent must be odd and at least {MIN_RSA_EXPONENT}"
        ));
    }
    Ok(())
}

/// The number of bits of a big-endian unsigned integer, leading zeros not counted.
fn significant_bits(number: &[u8]) -> usize {
    let number = without_leading_zeros(number);
    match number.first() {
        None => 0,
        Some(first) => (number.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

fn without_leading_zeros(number: &[u8]) -> &[u8] {
    let zeros = number.iter().take_while(|&&b| b == 0).count();
    &number[zeros..]
}

/// What a key verifies with, as text, for the fingerprint.
fn material(jwk: &Jwk) -> String {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => format!("RSA {} {}", rsa.n, rsa.e),
        AlgorithmParameters::OctetKeyPair(okp) => format!("OKP {}", okp.x),
        // Refused by `verification_key` before this is asked.
        other => format!("{other:?}"),
    }
}

/// The set in force with its generation.
#[derive(Debug)]
pub struct Current {
    /// The keys.
    pub set: KeySet,
    /// Bumped each time a different set comes into force; never 0.
    pub generation: u64,
}

/// The key set in force, replaced as a whole, and how it is kept fresh.
#[derive(Debug)]
pub struct Keys {
    current: RwLock<Option<Arc<Current>>>,
    /// The generation of `current`, readable without the lock (0: none yet).
    generation: AtomicU64,
    /// When the set in force was last confirmed by its source (read or fetched),
    /// even if unchanged.
    confirmed: Mutex<Option<Instant>>,
    /// A token named a `kid` the set lacks.
    pub(super) unknown_kid: Notify,
    /// An operator asked for the keys to be read again (SIGHUP).
    pub(super) reload: Notify,
    /// Beyond this age the set makes the instance not ready.
    stale_after: Duration,
    counters: Counters,
}

/// What `/metrics` shows of the key set's life.
#[derive(Debug, Default)]
struct Counters {
    loads: AtomicU64,
    changes: AtomicU64,
    failures: AtomicU64,
    unknown_kids: AtomicU64,
}

/// A snapshot of the key set's state for `/metrics` and readiness.
#[derive(Clone, Copy, Debug)]
pub struct KeysStatus {
    /// Keys in force (0 before the first set).
    pub keys: usize,
    /// The set's generation (0 before the first set).
    pub generation: u64,
    /// Since the source last confirmed the set.
    pub age: Option<Duration>,
    /// Successful reads or fetches, changed or not.
    pub loads: u64,
    /// Times a different set came into force.
    pub changes: u64,
    /// Reads or fetches that failed or gave an unusable document.
    pub failures: u64,
    /// Tokens that named a `kid` the set lacked.
    pub unknown_kids: u64,
}

impl Keys {
    /// No keys yet; a set older than `stale_after` makes the instance not ready.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            confirmed: Mutex::new(None),
            unknown_kid: Notify::new(),
            reload: Notify::new(),
            stale_after,
            counters: Counters::default(),
        }
    }

    /// The generation in force (0: none yet). One atomic load, for every request.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The set in force.
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `set` in force, unless it holds the same keys as the set in force,
    /// which then counts as confirmed. Returns whether the keys changed.
    pub fn install(&self, set: KeySet) -> bool {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        self.confirm();
        if current.as_ref().is_some_and(|c| c.set.same_keys(&set)) {
            return false;
        }
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        tracing::info!(kids = ?set.kids(), generation, "a key set is in force");
        *current = Some(Arc::new(Current { set, generation }));
        self.generation.store(generation, Ordering::Release);
        self.counters.changes.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The source gave the set in force again (an unchanged file).
    pub fn confirm(&self) {
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Records a read or fetch that gave nothing usable; the set in force stays.
    pub fn failed(&self) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A token named a `kid` the set lacks: ask its source to look again (the
    /// source decides how often it may).
    pub fn unknown_kid(&self) {
        self.counters.unknown_kids.fetch_add(1, Ordering::Relaxed);
        self.unknown_kid.notify_one();
    }

    /// Read the keys again now (SIGHUP).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Why the instance cannot verify tokens as it should, if it cannot: no set
    /// yet, or one older than `auth.jwks_stale_after`.
    pub fn not_ready(&self) -> Option<&'static str> {
        match self.age() {
            None => Some("no usable token signing key set yet"),
            Some(age) if age > self.stale_after => Some(
                "the token signing key set has not been confirmed within auth.jwks_stale_after",
            ),
            Some(_) => None,
        }
    }

    fn age(&self) -> Option<Duration> {
        self.confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|at| at.elapsed())
    }

    /// The state, for `/metrics`.
    pub fn status(&self) -> KeysStatus {
        let current = self.current();
        let counters = &self.counters;
        KeysStatus {
            keys: current.as_ref().map_or(0, |c| c.set.len()),
            generation: current.as_ref().map_or(0, |c| c.generation),
            age: self.age(),
            loads: counters.loads.load(Ordering::Relaxed),
            changes: counters.changes.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            unknown_kids: counters.unknown_kids.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn fixture_keys() -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).expect("fixture");
        let document: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        document["keys"].as_array().expect("keys").clone()
    }

    fn parse(keys: &[serde_json::Value]) -> Result<KeySet, KeySetError> {
        let document = serde_json::json!({ "keys": keys }).to_string();
        KeySet::parse(document.as_bytes(), "test.json")
    }

    fn refusal(keys: &[serde_json::Value]) -> String {
        parse(keys).expect_err("refused").to_string()
    }

    fn rsa() -> serde_json::Value {
        fixture_keys()[0].clone()
    }

    #[test]
    fn the_fixture_set_loads() {
        let set = parse(&fixture_keys()).expect("loads");
        assert_eq!(set.kids(), ["test-ed", "test-rsa"]);
    }

    /// A 1024-bit modulus padded with zero bytes to 256 bytes is still 1024 bits.
    #[test]
    fn rsa_size_is_counted_from_the_modulus_not_its_encoding() {
        let mut n = vec![0_u8; 128];
        n.extend(std::iter::repeat_n(0xC5, 128));
        let mut padded = rsa();
        padded["n"] = URL_SAFE_NO_PAD.encode(&n).into();
        let refused = refusal(&[padded]);
        assert!(refused.contains("1024 bits"), "{refused}");
        assert!(refused.contains("test-rsa"), "{refused}");
    }

    #[test]
    fn rsa_exponents_must_be_odd_and_at_least_65537() {
        for (e, accepted) in [
            ("AQAB", true),   // 65537
            ("AAEAAQ", true), // 65537 with a leading zero
            ("AQAD", true),   // 65539
            ("Aw", false),    // 3
            ("AQAA", false),  // 65536, even
            ("AQ", false),    // 1
            ("", false),      // nothing
        ] {
            let mut key = rsa();
            key["e"] = e.into();
            assert_eq!(parse(&[key]).is_ok(), accepted, "e = {e}");
        }
    }

    #[test]
    fn keys_not_meant_for_verification_are_left_out() {
        let mut encryption = rsa();
        encryption["use"] = "enc".into();
        encryption["kid"] = "enc".into();
        let mut sign_only = rsa();
        sign_only["kid"] = "sign-only".into();
        sign_only["key_ops"] = serde_json::json!(["sign"]);
        sign_only.as_object_mut().map(|key| key.remove("use"));
        let mut verify = rsa();
        verify["kid"] = "verify".into();
        verify["key_ops"] = serde_json::json!(["verify"]);
        let set = parse(&[encryption.clone(), sign_only.clone(), verify]).expect("loads");
        assert_eq!(set.kids(), ["verify"]);
        // A set of nothing but such keys has nothing to verify with.
        assert!(refusal(&[encryption, sign_only]).contains("no signature verification key"));
    }

    #[test]
    fn unusable_signature_keys_refuse_the_document_and_are_named() {
        let mut no_kid = rsa();
        no_kid.as_object_mut().map(|key| key.remove("kid"));
        assert!(refusal(&[no_kid]).contains("has no kid"));
        let mut hmac = serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        assert!(refusal(&[hmac.clone()]).contains(r#"key "hmac""#));
        hmac["use"] = "sig".into();
        assert!(refusal(&[rsa(), hmac]).contains("only RSA"));
        let mut wrong_alg = rsa();
        wrong_alg["alg"] = "EdDSA".into();
        assert!(refusal(&[wrong_alg]).contains("alg does not match"));
        assert!(refusal(&[rsa(), rsa()]).contains("appears twice"));
        let mut short_ed = fixture_keys()[1].clone();
        short_ed["x"] = "AAAA".into();
        assert!(refusal(&[short_ed]).contains("32 expected"));
    }

    #[test]
    fn a_set_comes_into_force_with_a_new_generation_only_when_its_keys_change() {
        let keys = Keys::new(Duration::from_secs(60));
        assert_eq!(keys.generation(), 0);
        assert!(keys.not_ready().is_some());
        assert!(keys.install(parse(&fixture_keys()).expect("loads")));
        assert_eq!(keys.generation(), 1);
        assert!(keys.not_ready().is_none());
        // The same keys in another order: confirmed, not changed.
        let reversed: Vec<_> = fixture_keys().into_iter().rev().collect();
        assert!(!keys.install(parse(&reversed).expect("loads")));
        assert_eq!(keys.generation(), 1);
        assert!(keys.install(parse(&[rsa()]).expect("loads")));
        assert_eq!(keys.generation(), 2);
        let status = keys.status();
        assert_eq!((status.keys, status.loads, status.changes), (1, 3, 2));
    }

    #[test]
    fn a_set_older_than_the_bound_makes_the_instance_not_ready() {
        let keys = Keys::new(Duration::ZERO);
        keys.install(parse(&fixture_keys()).expect("loads"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            keys.not_ready()
                .is_some_and(|reason| reason.contains("jwks_stale_after"))
        );
    }
}
