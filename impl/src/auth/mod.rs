//! Authentication: who is calling, for which MIS client, with which scopes.
//!
//! Two modes, chosen by `auth.mode`:
//! - `jwt` verifies `Authorization: Bearer <JWT>` here against a JWKS file;
//! - `gateway` trusts the `x-consumer-*` headers that eHealth's Kong gateway (the
//!   mithril plugin) sets after verifying the token itself. It is off unless
//!   configured, because anyone who can reach the service directly could forge them.
//!
//! Authorization (the scope check) is not here: the generated router enforces the
//! scopes written in the spec, from the [`Caller`]'s scopes.

mod cache;
pub mod dev;
mod jwt;

use std::collections::BTreeSet;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use serde::Deserialize;

use crate::config::{AuthConfig, AuthMode};

pub use jwt::{JwtVerifier, KeySetError};

/// The longest `Authorization` value accepted; real tokens are far shorter.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The MIS client (or legal entity) the caller acts for; it owns jobs.
    pub client_id: String,
    /// The user, if the token names one.
    pub subject: Option<String>,
    /// The granted scopes.
    pub scopes: BTreeSet<String>,
}

/// Why a request is not authenticated. Every variant becomes a 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    MissingToken,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// The token is malformed, badly signed, or not meant for this service.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What is wrong, for the log.
        reason: &'static str,
        /// The verifier's error, if it gave one.
        #[source]
        source: Option<jsonwebtoken::errors::Error>,
    },
    /// Gateway mode: a required `x-consumer-*` header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// Gateway mode: an `x-consumer-*` header cannot be read.
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
}

impl AuthError {
    fn invalid(reason: &'static str) -> Self {
        Self::InvalidToken {
            reason,
            source: None,
        }
    }
}

/// The configured way of authenticating callers.
#[derive(Debug)]
pub enum Authenticator {
    /// Verify bearer JWTs.
    Jwt(JwtVerifier),
    /// Trust the eHealth gateway's headers.
    Gateway,
}

impl Authenticator {
    /// Builds the authenticator, reading the key set in `jwt` mode.
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeySetError> {
        match config.mode {
            AuthMode::Jwt => Ok(Self::Jwt(JwtVerifier::from_config(config)?)),
            AuthMode::Gateway => Ok(Self::Gateway),
        }
    }

    /// Identifies the caller from the request headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        match self {
            Self::Jwt(verifier) => verifier.verify(bearer_token(headers)?),
            Self::Gateway => gateway_caller(headers),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::invalid("more than one Authorization header"));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::invalid("token too long"));
    }
    // UTF-8 is checked by a vectorized scan (HeaderValue::to_str checks each byte
    // for visible ASCII, a cost per poll); a token with odd bytes matches no
    // cached token and fails verification anyway.
    let value = std::str::from_utf8(value.as_bytes())
        .ok()
        .filter(|value| value.is_ascii())
        .ok_or_else(|| AuthError::invalid("Authorization is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

/// Checks a client id from any source: non-empty, bounded, printable.
fn valid_client_id(client_id: &str) -> bool {
    !client_id.is_empty() && client_id.len() <= 256 && !client_id.chars().any(char::is_control)
}

fn gateway_caller(headers: &HeaderMap) -> Result<Caller, AuthError> {
    #[derive(Deserialize)]
    struct Metadata {
        client_id: String,
    }
    let text = |name: &'static str| -> Result<Option<&str>, AuthError> {
        headers
            .get(name)
            .map(|value| value.to_str().map_err(|_| AuthError::InvalidHeader(name)))
            .transpose()
    };
    let subject = text("x-consumer-id")?
        .filter(|id| !id.trim().is_empty())
        .ok_or(AuthError::MissingHeader("x-consumer-id"))?;
    let metadata =
        text("x-consumer-metadata")?.ok_or(AuthError::MissingHeader("x-consumer-metadata"))?;
    let Metadata { client_id } = serde_json::from_str(metadata)
        .map_err(|_| AuthError::InvalidHeader("x-consumer-metadata"))?;
    if !valid_client_id(&client_id) {
        return Err(AuthError::InvalidHeader("x-consumer-metadata"));
    }
    Ok(Caller {
        client_id,
        subject: Some(subject.to_owned()),
        scopes: parse_scopes(text("x-consumer-scope")?.unwrap_or_default()),
    })
}

/// Scopes from a space-separated list (OAuth 2.0's `scope` syntax).
fn parse_scopes(scopes: &str) -> BTreeSet<String> {
    scopes.split_ascii_whitespace().map(str::to_owned).collect()
}
