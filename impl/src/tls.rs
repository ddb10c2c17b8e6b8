//! TLS for the connections the service makes itself: to the token issuer's
//! JWKS endpoint and to PostgreSQL.
//!
//! rustls on aws-lc-rs, the same library that verifies token signatures, so
//! there is one cryptographic library in the process and no OpenSSL. Trust is
//! explicit: either the CA certificates of one file (a private issuer or
//! database), or the system's roots; and how much is checked is said, never
//! assumed (libpq's `sslmode` asks for less than a full check in some modes).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// A TLS setting that cannot be used, named by its configuration key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct TlsError {
    /// The key, e.g. `auth.jwks_ca_file`.
    pub key: &'static str,
    /// Why, naming the file.
    pub reason: String,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Signed by a trusted CA, valid now, and naming the host dialled.
    Full,
    /// Signed by a trusted CA and valid now, whatever host it names (libpq's
    /// `verify-ca`).
    ChainOnly,
    /// Not checked at all: the connection is encrypted, the server not
    /// authenticated (libpq's `prefer` and `require` without a CA file). The
    /// handshake's own signatures are still checked.
    Nothing,
}

/// Whom to trust, and what to show, each file with the configuration key that
/// names it (for the error if it cannot be used).
#[derive(Clone, Copy, Debug)]
pub struct TlsFiles<'a> {
    /// How much of the server's certificate is checked.
    pub verify: Verify,
    /// The key of the CA file, also named when the system's roots are missing.
    pub ca_key: &'static str,
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub ca_file: Option<&'a Path>,
    /// A client certificate chain and its private key, to present.
    pub client: Option<ClientIdentity<'a>>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity<'a> {
    /// The key of the certificate file.
    pub cert_key: &'static str,
    /// The certificate chain, the client's own certificate first.
    pub cert: &'a Path,
    /// The key of the private key file.
    pub key_key: &'static str,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: &'a Path,
}

/// A client configuration that verifies servers against the CA file (or the
/// system's roots) and presents the client identity if one is given.
pub(crate) fn client_config(files: TlsFiles<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let failed = |e: &dyn std::fmt::Display| TlsError {
        key: files.ca_key,
        reason: e.to_string(),
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?;
    let roots = || match files.ca_file {
        Some(path) => roots_from_file(files.ca_key, path),
        None => system_roots(files.ca_key),
    };
    let builder = match files.verify {
        Verify::Full => builder.with_root_certificates(roots()?),
        Verify::ChainOnly => {
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots()?),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| failed(&e))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(
                provider.signature_verification_algorithms,
            ))),
    };
    let config = match files.client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = certificates(client.cert_key, client.cert)?;
            let private = PrivateKeyDer::from_pem_file(client.key).map_err(|e| TlsError {
                key: client.key_key,
                reason: format!("{} holds no usable private key: {e}", client.key.display()),
            })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError {
                    key: client.cert_key,
                    reason: format!("{}: {e}", client.cert.display()),
                })?
        }
    };
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unusable = |reason: String| TlsError {
        key,
        reason: format!("{}: {reason}", path.display()),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("not a PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(unusable("holds no certificate".into()));
    }
    Ok(certificates)
}

fn roots_from_file(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(key, path)? {
        roots.add(certificate).map_err(|e| TlsError {
            key,
            reason: format!(
                "{}: a certificate is not usable as a CA: {e}",
                path.display()
            ),
        })?;
    }
    Ok(roots)
}

fn system_roots(key: &'static str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError {
            key,
            reason: format!(
                "unset, and the system's store has no CA certificates ({}); install ca-certificates or name a CA file",
                found
                    .errors
                    .first()
                    .map_or_else(|| "it is empty".to_owned(), ToString::to_string)
            ),
        });
    }
    Ok(roots)
}

/// `verify-ca`: the whole check but the name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // Only the name: everything else was checked before it.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: any certificate; the handshake is still checked to
/// be signed by the certificate presented.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
