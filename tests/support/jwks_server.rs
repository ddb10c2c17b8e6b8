//! A token issuer's JWKS endpoint of the test's own: real HTTPS on a loopback
//! port, with a CA and a server certificate made for the test, answering what
//! the test says (a key set, an error, a redirect, a huge or garbage body, or
//! nothing at all), and counting the fetches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCa;

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

/// The running endpoint.
#[derive(Debug)]
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
