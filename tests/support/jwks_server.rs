//! A token issuer's JWKS endpoint of the test's own: real HTTPS on a loopback
//! port, with a CA and a server certificate made for the test, answering what
//! the test says (a key set, an error, a redirect, a huge or garbage body, or
//! nothing at all), and counting the fetches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the endpoint answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with this body and, if given, `Cache-Control: max-age=N`.
    Document {
        /// The body.
        body: String,
        /// `max-age` in seconds.
        max_age: Option<u64>,
    },
    /// This status, with a small body.
    Status(u16),
    /// 302 to this location.
    Redirect(String),
    /// 200 with a body of this many bytes of JSON-looking text.
    Huge(usize),
    /// Accepts the connection and the request, then never answers.
    Silent,
}

impl Answer {
    /// 200 with a key set of these JWKs.
    pub fn keys(keys: &[serde_json::Value], max_age: Option<u64>) -> Self {
        Self::Document {
            body: serde_json::json!({ "keys": keys }).to_string(),
            max_age,
        }
    }
}

/// A CA of the test's own, and a server certificate it signed.
pub struct TestCa {
    dir: tempfile::TempDir,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// A CA, and a certificate it signs for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "compositions-jobs test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let server_cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server-key.pem"),
            server_key.serialize_pem(),
        )
        .unwrap();
        Self {
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            dir,
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate and its key, PEM files.
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server-key.pem"),
        )
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
        .unwrap();
        Arc::new(config)
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The running endpoint.
pub struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    ca: TestCa,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// An endpoint answering `answer`, with a certificate for `localhost`.
    pub async fn start(answer: Answer) -> Self {
        let ca = TestCa::new(&["localhost"]);
        let acceptor = TlsAcceptor::from(ca.server_config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (shared, counted) = (Arc::clone(&answer), Arc::clone(&fetches));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (answer, fetches) = (Arc::clone(&shared), Arc::clone(&counted));
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let answer = answer.lock().unwrap().clone();
                        fetches.fetch_add(1, Ordering::SeqCst);
                        respond(request, answer)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            answer,
            fetches,
            ca,
            task,
        }
    }

    /// The key set's URL.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/jwks", self.addr.port())
    }

    /// The CA file that trusts this endpoint.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.ca_file()
    }

    /// Answer `answer` from now on.
    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Requests received so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(
    _request: Request<Incoming>,
    answer: Answer,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let mut builder = Response::builder().header("content-type", "application/json");
    let body = match answer {
        Answer::Document { body, max_age } => {
            if let Some(seconds) = max_age {
                builder = builder.header("cache-control", format!("public, max-age={seconds}"));
            }
            body
        }
        Answer::Status(status) => {
            builder = builder.status(status);
            r#"{"error":"unavailable"}"#.to_owned()
        }
        Answer::Redirect(location) => {
            builder = builder.status(302).header("location", location);
            String::new()
        }
        Answer::Huge(bytes) => {
            let mut body = String::with_capacity(bytes);
            body.push_str(r#"{"keys":[],"padding":""#);
            while body.len() < bytes - 2 {
                body.push('x');
            }
            body.push_str(r#""}"#);
            body
        }
        Answer::Silent => {
            std::future::pending::<()>().await;
            String::new()
        }
    };
    Ok(builder.body(Full::new(Bytes::from(body))).unwrap())
}
