//! Authentication: who is calling, for which MIS client, with which scopes.
//!
//! Two modes, chosen by `auth.mode`:
//! - `jwt` verifies `Authorization: Bearer <JWT>` here against the issuer's keys,
//!   from a JWKS file or the issuer's JWKS URL, kept fresh in the background
//!   (`keys`, `source`);
//! - `gateway` trusts the `x-consumer-*` headers that eHealth's Kong gateway (the
//!   mithril plugin) sets after verifying the token itself. It is off unless
//!   configured, because anyone who can reach the service directly could forge them.
//!
//! Authorization (the scope check) is not here: the generated router enforces the
//! scopes written in the spec, from the [`Caller`]'s scopes.

mod cache;
pub(crate) mod dev;

pub use dev::DevKey;
mod fetch;
mod jwt;
mod keys;
mod source;

use std::collections::BTreeSet;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use serde::Deserialize;
use swagger::auth::{Authorization, Scopes};

use crate::config::{AuthConfig, AuthMode};

pub(crate) use fetch::FetcherError;
pub use jwt::JwtVerifier;
pub use keys::{Current, KeySet, KeySetError, Keys, KeysStatus, Policy, VerificationKey};
pub(crate) use source::{Refresh, Source};

/// The longest `Authorization` value accepted; real tokens are far shorter.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The MIS client (or legal entity) the caller acts for; it owns jobs.
    pub client_id: String,
    /// Its user (the token's `sub`, else the client) and granted scopes, as the
    /// generated router checks scopes. Always `Some`: the router reads an
    /// `Option` from the request context, which lends this one rather than
    /// building one per request.
    pub authorization: Option<Authorization>,
}

impl Caller {
    /// A caller acting for `client_id`, as `subject` if known, with `scopes`.
    pub fn new(client_id: String, subject: Option<String>, scopes: BTreeSet<String>) -> Self {
        let subject = subject.unwrap_or_else(|| client_id.clone());
        Self {
            authorization: Some(Authorization {
                subject,
                scopes: Scopes::Some(scopes),
                issuer: None,
            }),
            client_id,
        }
    }
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
    /// No key set is in force yet (the issuer's has not been fetched): nobody's
    /// token can be checked, which is the service's state, not the caller's fault.
    #[error("no token signing key set is in force yet")]
    KeysUnavailable,
    /// The token's `nbf` is still ahead (beyond the leeway): it may pass later.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token is malformed, badly signed, or not meant for this service.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What is wrong, for the log (never the caller's text).
        reason: &'static str,
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
        Self::InvalidToken { reason }
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

/// Why the authenticator cannot be built: a bad key set or key source, named.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The key file, or a setting about keys.
    #[error(transparent)]
    Keys(#[from] KeySetError),
    /// The JWKS URL or its CA file.
    #[error(transparent)]
    Fetcher(#[from] FetcherError),
}

impl Authenticator {
    /// Builds the authenticator. In `jwt` mode a key file is read now (any
    /// problem is returned), and the returned [`Source`] keeps [`Self::keys`]
    /// fresh once spawned with [`Source::keep_fresh`].
    pub fn from_config(config: &AuthConfig) -> Result<(Self, Option<Source>), AuthSetupError> {
        if config.mode == AuthMode::Gateway {
            return Ok((Self::Gateway, None));
        }
        // Which source first: it is the setting a new deployment forgets.
        let (file, url) = match (&config.jwks, &config.jwks_url) {
            (None, None) => return Err(KeySetError::Missing("jwks` or `auth.jwks_url").into()),
            (file, url) => (file.clone(), url.as_deref()),
        };
        let policy = Policy {
            issuer: config
                .issuer
                .clone()
                .ok_or(KeySetError::Missing("issuer"))?,
            audience: config
                .audience
                .clone()
                .ok_or(KeySetError::Missing("audience"))?,
            leeway: config.leeway.as_secs(),
        };
        let keys = Arc::new(Keys::new(config.jwks_stale_after));
        let source = match (file, url) {
            (Some(path), _) => Source::load_file(path, &keys)?,
            (None, url) => Source::Url {
                fetcher: fetch::Fetcher::new(
                    url.unwrap_or_default(),
                    config.jwks_ca_file.as_deref(),
                    config.jwks_fetch_timeout,
                )?,
                refresh: Refresh {
                    min: config.jwks_refresh_min,
                    max: config.jwks_refresh_max,
                    unknown_kid_interval: config.jwks_unknown_kid_interval,
                },
            },
        };
        let verifier = JwtVerifier::new(Arc::clone(&keys), policy, config.token_cache_size);
        Ok((Self::Jwt(verifier), Some(source)))
    }

    /// The key set verified against (`None` behind the gateway).
    pub fn keys(&self) -> Option<&Arc<Keys>> {
        match self {
            Self::Jwt(verifier) => Some(verifier.keys()),
            Self::Gateway => None,
        }
    }

    /// Tokens answered from the verifier's caches, and tokens verified, so far
    /// (`None` behind the gateway, which verifies them itself).
    pub fn token_cache_stats(&self) -> Option<(u64, u64)> {
        match self {
            Self::Jwt(verifier) => Some(verifier.cache_stats()),
            Self::Gateway => None,
        }
    }

    /// Identifies the caller from the request headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Caller>, AuthError> {
        match self {
            Self::Jwt(verifier) => verifier.verify(bearer_token(headers)?),
            Self::Gateway => gateway_caller(headers).map(Arc::new),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive),
/// as bytes: the verifier looks them up among tokens it has already checked
/// before it reads them as text.
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::invalid("more than one Authorization header"));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::invalid("token too long"));
    }
    let value = value.as_bytes();
    let space = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(AuthError::MissingToken)?;
    let (scheme, token) = (&value[..space], value[space + 1..].trim_ascii());
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
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
    Ok(Caller::new(
        client_id,
        Some(subject.to_owned()),
        parse_scopes(text("x-consumer-scope")?.unwrap_or_default()),
    ))
}

/// Scopes from a space-separated list (OAuth 2.0's `scope` syntax).
fn parse_scopes(scopes: &str) -> BTreeSet<String> {
    scopes.split_ascii_whitespace().map(str::to_owned).collect()
}
