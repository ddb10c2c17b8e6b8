//! The `--dev` signing key: an Ed25519 key made on first use under the data folder,
//! trusted by a `--dev` server and used by `compositions-jobs dev token`.
//!
//! It exists so that a newcomer can poll a job in a minute. It is not a way to
//! run in production: anyone who can read the data folder can mint tokens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

pub(crate) use crate::config::dev::{AUDIENCE, ISSUER, JWKS_FILE};

/// The `kid` of the dev key.
pub(crate) const KID: &str = "dev";

const KEY_FILE: &str = "dev-signing-key.pem";

/// PKCS#8 v1 framing of a raw Ed25519 seed (RFC 8410): the 16 bytes before it.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The dev key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    /// Reading or writing a file under the data folder failed.
    #[error("cannot use {}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but holds no usable key.
    #[error("{} holds no Ed25519 key; delete it to make a new one", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("cannot get random bytes for a key")]
    Random(#[source] getrandom::Error),
    /// Signing failed.
    #[error("cannot sign a token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The dev signing key.
pub struct DevKey {
    key: EncodingKey,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("DevKey").finish_non_exhaustive()
    }
}

impl DevKey {
    /// Loads the key under `data_dir`, making the folder, the key and its public
    /// JWKS on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, DevKeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DevKeyError::Io { path, source }
        };
        fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let key_path = data_dir.join(KEY_FILE);
        let key = EncodingKey::from_ed_der(&load_or_create_key(&key_path)?);

        // Rewritten every time, so that it always matches the key.
        let mut jwk =
            Jwk::from_encoding_key(&key, Algorithm::EdDSA).map_err(|_| DevKeyError::BadKey {
                path: key_path.clone(),
            })?;
        jwk.common.key_id = Some(KID.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks_path = data_dir.join(JWKS_FILE);
        let jwks = serde_json::to_string_pretty(&JwkSet { keys: vec![jwk] }).unwrap_or_default();
        // Replaced atomically: a server starting beside us never reads half a file.
        let temp = temporary_sibling(&jwks_path);
        written_aside(&temp, |temp| {
            fs::write(temp, jwks)?;
            fs::rename(temp, &jwks_path)
        })
        .map_err(io(&jwks_path))?;
        Ok(Self { key })
    }

    /// Mints a token that a `--dev` server accepts.
    pub fn mint(&self, client_id: &str, scope: &str, ttl: Duration) -> Result<String, DevKeyError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            aud: &'a str,
            sub: &'a str,
            client_id: &'a str,
            scope: &'a str,
            iat: u64,
            exp: u64,
        }
        let now = jsonwebtoken::get_current_timestamp();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KID.to_owned());
        let claims = Claims {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: client_id,
            client_id,
            scope,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(DevKeyError::Sign)
    }
}

/// The key at `path`, made if there is none. Two processes starting together agree
/// on one key: each writes a whole file aside and links it into place, and the
/// loser reads the winner's.
fn load_or_create_key(path: &Path) -> Result<Vec<u8>, DevKeyError> {
    let io = |source| DevKeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    loop {
        match fs::read_to_string(path) {
            Ok(pem) => {
                return decode_pem(&pem).ok_or_else(|| DevKeyError::BadKey {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let der = new_pkcs8()?;
        let temp = temporary_sibling(path);
        written_aside(&temp, |temp| write_private(temp, &encode_pem(&der))).map_err(io)?;
        let linked = fs::hard_link(&temp, path);
        // Best effort: a stray temporary file is harmless.
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => return Ok(der),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// Runs `write` on the temporary file `temp`, which is removed if it fails: a
/// full disk leaves no empty file behind.
fn written_aside(
    temp: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let written = write(temp);
    if written.is_err() {
        let _ = fs::remove_file(temp);
    }
    written
}

/// `dir/name` → `dir/.name.<pid>.tmp`.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn new_pkcs8() -> Result<Vec<u8>, DevKeyError> {
    let mut seed = [0_u8; 32];
    getrandom::fill(&mut seed).map_err(DevKeyError::Random)?;
    Ok([&ED25519_PKCS8_PREFIX[..], &seed].concat())
}

fn encode_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
}

fn decode_pem(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    (der.len() == 48 && der.starts_with(&ED25519_PKCS8_PREFIX)).then_some(der)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
