//! Tokens signed with the committed test keys, good ones and hostile ones.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::fixture;

/// The issuer the test server trusts.
pub const ISSUER: &str = "https://auth.test.ehealth.example";
/// The audience the test server requires.
pub const AUDIENCE: &str = "compositions-jobs-test";
/// The scope getAsyncJobStatus requires.
pub const SCOPE: &str = "composition:read";

/// A signing key of the test set.
#[derive(Clone, Copy, Debug)]
pub enum TestKey {
    /// RSA, `kid: test-rsa`, in the trusted set.
    Rsa,
    /// Ed25519, `kid: test-ed`, in the trusted set.
    Ed25519,
    /// Ed25519 that the server does not trust.
    Untrusted,
}

fn encoding_key(key: TestKey) -> EncodingKey {
    let read = |name| std::fs::read(fixture(name)).unwrap();
    match key {
        TestKey::Rsa => EncodingKey::from_rsa_pem(&read("rsa-test-key.pem")).unwrap(),
        TestKey::Ed25519 => EncodingKey::from_ed_pem(&read("ed25519-test-key.pem")).unwrap(),
        TestKey::Untrusted => EncodingKey::from_ed_pem(&read("ed25519-untrusted-key.pem")).unwrap(),
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// Claims of a valid token for `client_id`, valid for five minutes.
pub fn claims(client_id: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": format!("user-of-{client_id}"),
        "client_id": client_id,
        "scope": format!("openid {SCOPE}"),
        "iat": now(),
        "exp": now() + 300,
    })
}

/// `claims` signed with `key`, with the key's own `alg` and `kid`.
pub fn sign(claims: &Value, key: TestKey) -> String {
    let (alg, kid) = match key {
        TestKey::Rsa => (Algorithm::RS256, "test-rsa"),
        TestKey::Ed25519 => (Algorithm::EdDSA, "test-ed"),
        TestKey::Untrusted => (Algorithm::EdDSA, "test-ed"),
    };
    sign_with_header(claims, key, alg, Some(kid))
}

/// `claims` signed with `key` under a chosen header.
pub fn sign_with_header(claims: &Value, key: TestKey, alg: Algorithm, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(key)).unwrap()
}

/// A valid RS256 token for `client_id`, but with claim `key` set to `value`.
pub fn with_claim(client_id: &str, key: &str, value: Value) -> String {
    let mut claims = claims(client_id);
    claims[key] = value;
    sign(&claims, TestKey::Rsa)
}

/// A valid RS256 token for `client_id`, but without claim `key`.
pub fn without_claim(client_id: &str, key: &str) -> String {
    let mut claims = claims(client_id);
    claims.as_object_mut().unwrap().remove(key);
    sign(&claims, TestKey::Rsa)
}

/// A valid RS256 token for `client_id`.
pub fn valid(client_id: &str) -> String {
    sign(&claims(client_id), TestKey::Rsa)
}

/// A token assembled by hand: any header, any payload text, any signature.
pub fn forge(header: &Value, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// An HS256 token keyed with the RSA *public* key, the classic confusion attack.
pub fn hs256_with_public_key(client_id: &str) -> String {
    let public = std::fs::read(fixture("rsa-test-key.pub.pem")).unwrap();
    hmac(&claims(client_id), Algorithm::HS256, &public)
}

/// `claims` under `kid: test-rsa`, MACed with `alg` (an HS algorithm) keyed with
/// `secret`: what an attacker makes of public material.
pub fn hmac(claims: &Value, alg: Algorithm, secret: &[u8]) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("test-rsa".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

/// The algorithm `key` signs with.
pub fn algorithm(key: TestKey) -> Algorithm {
    match key {
        TestKey::Rsa => Algorithm::RS256,
        TestKey::Ed25519 | TestKey::Untrusted => Algorithm::EdDSA,
    }
}

/// A token with any header and any payload text, validly signed with `key` (in
/// `key`'s own algorithm, whatever the header says): for hostile headers and
/// payloads that a real signature must not make acceptable. The header is text,
/// so that it too may repeat a parameter.
pub fn sign_raw(header: &str, payload: &str, key: TestKey) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(key), algorithm(key)).unwrap();
    format!("{message}.{signature}")
}

/// The public half of `key` as a JWK, as an attacker would embed it in a header.
pub fn public_jwk(key: TestKey) -> Value {
    let jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding_key(key), algorithm(key)).unwrap();
    serde_json::to_value(jwk).unwrap()
}

/// The trusted JWK named `kid` in the committed test key set.
pub fn trusted_jwk(kid: &str) -> Value {
    let set: Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"] == kid)
        .unwrap()
        .clone()
}

/// An Ed25519 signing key made for one test, under a `kid` of its own: the key
/// an issuer rotates to.
pub struct FreshKey {
    /// Its `kid`.
    pub kid: String,
    pkcs8: Vec<u8>,
    x: String,
}

/// The private key stays out of test output.
impl std::fmt::Debug for FreshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl FreshKey {
    /// A new key named `kid`.
    pub fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            kid: kid.to_owned(),
            pkcs8: pair.serialize_der(),
            x: URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
        }
    }

    /// Its public half, as the issuer publishes it.
    pub fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid, "x": self.x})
    }

    /// A valid token for `client_id`, signed with it.
    pub fn token(&self, client_id: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims(client_id),
            &EncodingKey::from_ed_der(&self.pkcs8),
        )
        .unwrap()
    }
}
