//! One GET of the issuer's JWKS document, with every step bounded.
//!
//! The issuer is somebody else's server, reached over a network that may go
//! silent, so: one deadline over everything (connecting, TLS, the request, the
//! whole body), a body of at most [`MAX_DOCUMENT_BYTES`], 200 or nothing (a
//! redirect is not followed: a key set is trusted for its URL, not for wherever
//! that URL points today), and HTTPS, except to this machine's own loopback.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, CACHE_CONTROL, HOST, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{UrlError, check_jwks_url};
use crate::tls::{self, TlsError, TlsFiles, Verify};

/// The largest JWKS document accepted; real ones are a few kilobytes.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Where the issuer publishes its keys, and how to reach it.
pub struct Fetcher {
    url: String,
    host: String,
    port: u16,
    path: String,
    /// `None` for plain HTTP to loopback.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("url", &self.url).finish()
    }
}

/// A fetched document and how long the issuer says it may be kept.
#[derive(Debug)]
pub struct Fetched {
    /// The body.
    pub document: Bytes,
    /// `Cache-Control: max-age` (`no-cache` and `no-store` read as 0).
    pub max_age: Option<Duration>,
}

impl Fetcher {
    /// A fetcher for `url` (already checked), trusting `ca_file` (else the
    /// system's roots), giving up after `timeout`.
    pub fn new(url: &str, ca_file: Option<&Path>, timeout: Duration) -> Result<Self, FetcherError> {
        let uri = check_jwks_url(url)?;
        let host = uri.host().unwrap_or_default().to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = tls::client_config(TlsFiles {
                verify: Verify::Full,
                ca_key: "auth.jwks_ca_file",
                ca_file,
                client: None,
            })?;
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| UrlError(format!("its host is not a TLS server name: {e}")))?
                .to_owned();
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            path,
            tls,
            timeout,
        })
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the document, within the deadline.
    pub async fn fetch(&self) -> Result<Fetched, String> {
        match tokio::time::timeout(self.timeout, self.fetch_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no complete answer within {:?}", self.timeout)),
        }
    }

    async fn fetch_unbounded(&self) -> Result<Fetched, String> {
        let tcp = TcpStream::connect((
            self.host.trim_start_matches('[').trim_end_matches(']'),
            self.port,
        ))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            ),
            None => Box::new(tcp),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        // Driven beside the request and stopped with it, whatever happens: a
        // silent server leaves no task behind.
        let driver = AbortOnDrop(tokio::spawn(connection));
        let authority = match self.port {
            443 | 80 => self.host.clone(),
            port => format!("{}:{port}", self.host),
        };
        let request = Request::get(self.path.as_str())
            .header(HOST, authority)
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(
                USER_AGENT,
                concat!("compositions-jobs/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot make the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(LOCATION)
                .and_then(|location| location.to_str().ok())
                .unwrap_or("?");
            return Err(format!(
                "answered {status} to {to}; redirects are not followed"
            ));
        }
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let max_age = response
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(max_age);
        let document = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes")
                } else {
                    format!("HTTP: {e}")
                }
            })?
            .to_bytes();
        drop(driver);
        Ok(Fetched { document, max_age })
    }
}

/// Why a fetcher cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// The URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The CA file.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// `max-age=N` from one `Cache-Control` value; `no-cache` and `no-store` as 0.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        lower
            .strip_prefix("max-age=")
            .and_then(|seconds| seconds.trim_matches('"').parse().ok())
            .map(Duration::from_secs)
    })
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("max-age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
