//! What both targets share: the test key set, and a token it accepts.

use std::path::PathBuf;

use compositions_jobs::config::{AuthConfig, AuthMode};

pub const ISSUER: &str = "https://auth.fuzz.example";
pub const AUDIENCE: &str = "compositions-jobs";
pub const CLIENT: &str = "mis-fuzz";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// JWT mode with the committed test key set.
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwks: Some(fixture("jwks.json")),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..AuthConfig::default()
    }
}

/// A token the key set accepts, for `CLIENT`, with the scope, for an hour.
pub fn valid_token() -> String {
    let pem = std::fs::read(fixture("rsa-test-key.pem")).expect("the test key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("an RSA key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "client_id": CLIENT,
        "scope": "composition:read", "exp": now + 3600, "iat": now,
    });
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}
