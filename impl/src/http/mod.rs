//! HTTP: the generated router, the layers around it, and the accept loop.
//!
//! Under everything, each connection's bytes pass through `conn`, which keeps
//! its keep-alive and header-read clocks and puts hyper's own refusals of
//! unparsable requests into the envelope.
//!
//! A request goes through, in order:
//! 1. [`RequestMeta`]: the request id (the caller's `x-request-id` if sane) and
//!    `meta.url`;
//! 2. the limits (`limits`): a place among the requests in flight (503), then
//!    the request's shape: URI length (414), headers (431), no body on a GET
//!    (400);
//! 3. authentication, for paths that name an operation: a failure is kept and
//!    becomes the 401 when the router asks for a caller;
//! 4. the generated router, which checks the scope from the spec, parses the id
//!    and the headers and calls [`JobsApi`]; `Prefer` and `If-None-Match` are
//!    normalized first, so that an unreadable value is ignored (RFC 7240) instead
//!    of refused by the router, and repeated headers count as one list;
//! 5. the rewrite of whatever the router answered by itself (plain text or an
//!    empty body) into the JSON envelope. Our own answers are always JSON, so the
//!    content type tells the two apart.
//!
//! Every response leaves with `x-request-id`, and every request is logged once
//! (target `access`): request id, method, operation, status, latency, client
//! id, and the trace id of the caller's W3C `traceparent` (a malformed one is
//! ignored). Never a credential: the token stays in the request.

mod api;
mod conn;
mod context;
mod error;
mod limiter;
mod limits;
pub(crate) mod mapping;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use compositions_api::server::{ApiRequestParser, Service as Router};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, HeaderValue,
    IF_NONE_MATCH,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use swagger::RequestParser;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) use api::JobsApi;
pub(crate) use context::{RequestContext, RequestMeta, X_REQUEST_ID, X_SPAN_ID};
pub(crate) use error::RequestError;
pub(crate) use limiter::RateLimiter;
pub use limits::Limits;

use crate::auth::{AuthError, Authenticator};
use crate::config::HttpConfig;
use crate::metrics::Metrics;
use conn::{Clock, ConnIo};
use error::Unparsable;
use limits::Connection;
use mapping::Body;

/// The contract, served at `/openapi.yaml` exactly as committed.
pub const SPEC: &str = include_str!("../../../spec/compositions.yaml");

/// The API documentation (`make docs`), served at `/docs`.
pub(crate) const DOCS: &str = include_str!("../../../docs/site/index.html");

/// The documentation page needs its own inline scripts and styles and nothing
/// from anywhere else: the browser enforces that it works offline.
const DOCS_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline' blob:; \
    style-src 'unsafe-inline'; img-src data: blob:; font-src data:; worker-src blob:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long shutdown keeps open connections answering (with `Connection: close`)
/// before it closes the idle ones.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// RFC 7240's request header.
const PREFER: HeaderName = HeaderName::from_static("prefer");

/// The path parameter the router names in its parse errors, when it names none.
const JOB_ID_PARAMETER: &str = "asyncJobId";

/// Methods probed to fill `Allow` on a 405.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The whole HTTP application: cheap to clone, one per connection.
#[derive(Clone)]
pub(crate) struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    router: Router<JobsApi, RequestContext>,
    authenticator: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    public_url: Option<String>,
    local_addr: SocketAddr,
    /// Shutting down: every answer closes its connection.
    draining: AtomicBool,
}

impl App {
    /// The application for `api`, authenticating with `authenticator`, counting
    /// into `metrics`, within the limits of `http`.
    pub(crate) fn new(
        api: JobsApi,
        authenticator: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        http: &HttpConfig,
        public_url: Option<String>,
        local_addr: SocketAddr,
    ) -> Self {
        Self {
            inner: Arc::new(AppInner {
                router: Router::new(api, false),
                authenticator,
                metrics,
                limits: Arc::new(Limits::new(http)),
                public_url,
                local_addr,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// The limits and their counters, shared with the admin listener.
    pub(crate) fn limits(&self) -> Arc<Limits> {
        Arc::clone(&self.inner.limits)
    }

    fn meta(&self, request: &Request<Incoming>) -> Arc<RequestMeta> {
        Arc::new(RequestMeta::new(
            request.headers(),
            request.uri(),
            self.inner.public_url.as_deref(),
            self.inner.local_addr,
        ))
    }

    /// The answer on a connection past `http.max_connections`.
    fn shed(&self, request: &Request<Incoming>) -> Response<Body> {
        let meta = self.meta(request);
        let response = reject(self.inner.limits.overloaded_connections(), &meta);
        finish(
            &self.inner,
            response,
            &meta,
            request.method().as_str(),
            None,
            None,
        )
    }

    /// The answer, in the envelope, to a request hyper refused by itself.
    fn refusal(&self, refusal: Unparsable) -> Response<Body> {
        let meta = RequestMeta::new(
            &HeaderMap::new(),
            &Uri::from_static("/"),
            self.inner.public_url.as_deref(),
            self.inner.local_addr,
        );
        let response = reject(RequestError::Unparsable(refusal), &meta);
        finish(&self.inner, response, &meta, "-", None, None)
    }

    /// Everything before the router runs here, synchronously, so that the request
    /// moves straight into the router instead of through layers of futures. The
    /// connection's `clock` learns when the answer is ready.
    fn call(&self, request: Request<Incoming>, clock: &Arc<Clock>) -> ServiceFuture {
        let request = conn::detach_head(request);
        let meta = self.meta(&request);
        let method = request.method().clone();
        let admitted = self
            .inner
            .limits
            .admit()
            .and_then(|admitted| self.inner.limits.check(&request).map(|()| admitted));
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(e) => {
                let response = reject(e, &meta);
                let response = finish(&self.inner, response, &meta, method.as_str(), None, None);
                clock.idle();
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        match self.inner.route(request, &meta) {
            Routed::Answered(response) => {
                let response = finish(&self.inner, response, &meta, method.as_str(), None, None);
                clock.idle();
                Box::pin(std::future::ready(Ok(response)))
            }
            Routed::Router {
                answer,
                uri,
                refusal,
            } => {
                let inner = Arc::clone(&self.inner);
                let clock = Arc::clone(clock);
                Box::pin(async move {
                    let _admitted = admitted;
                    let (response, operation) = match answer.await {
                        // Below 400 is always ours (200, 304); the router's own answers
                        // are errors. JSON comes only from the API implementation.
                        Ok(response) if response.status().as_u16() < 400 || is_json(&response) => {
                            (response, meta.operation())
                        }
                        Ok(response) => {
                            let operation = operation_of(&method, &uri);
                            // Boxed, as is the rest of this rare path: a held long
                            // poll keeps this future for its whole wait.
                            let response =
                                Box::pin(rewrite_router_answer(response, &uri, &meta, refusal))
                                    .await;
                            (response, operation)
                        }
                        Err(e) => (reject(RequestError::Router(e.to_string()), &meta), None),
                    };
                    let client_id = meta.caller().map(|caller| caller.client_id.as_str());
                    let response = finish(
                        &inner,
                        response,
                        &meta,
                        method.as_str(),
                        operation,
                        client_id,
                    );
                    clock.idle();
                    Ok(response)
                })
            }
        }
    }
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The application as one connection sees it: with the connection's clock, and
/// only a 503 if the connection is past `http.max_connections`.
struct Served {
    app: App,
    clock: Arc<Clock>,
    shed: bool,
}

impl hyper::service::Service<Request<Incoming>> for Served {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.clock.busy();
        if self.shed {
            let response = self.app.shed(&request);
            self.clock.idle();
            return Box::pin(std::future::ready(Ok(response)));
        }
        self.app.call(request, &self.clock)
    }
}

/// Where a request went: answered at once, or handed to the generated router.
enum Routed {
    Answered(Response<Body>),
    Router {
        answer: <Router<JobsApi, RequestContext> as hyper::service::Service<(
            Request<Incoming>,
            RequestContext,
        )>>::Future,
        /// For `Allow`, should the router answer 405.
        uri: Uri,
        /// Why authentication failed, should the router ask for a caller.
        refusal: Option<AuthError>,
    },
}

impl AppInner {
    fn route(&self, mut request: Request<Incoming>, meta: &Arc<RequestMeta>) -> Routed {
        match request.uri().path() {
            "/openapi.yaml" => {
                let response = serve_static(request.method(), meta, SPEC, "application/yaml", None);
                return Routed::Answered(response);
            }
            "/docs" => {
                let html = "text/html; charset=utf-8";
                let response = serve_static(request.method(), meta, DOCS, html, Some(DOCS_POLICY));
                return Routed::Answered(response);
            }
            _ => {}
        }
        // Authentication comes first, so that an anonymous caller learns nothing
        // about ids or scopes. A failure is kept rather than answered at once: the
        // router answers paths that name no operation with 404 or 405 whoever
        // calls, and on an operation refuses a context without a caller
        // ("Unauthenticated"), which is when the kept failure becomes the 401.
        // That spares matching the path a second time on every request.
        let refusal = match self.authenticator.authenticate(request.headers()) {
            Ok(caller) => {
                meta.set_caller(caller);
                None
            }
            Err(e) => Some(e),
        };
        for name in [PREFER, IF_NONE_MATCH] {
            normalize_list_header(request.headers_mut(), name);
        }
        let uri = request.uri().clone();
        let context = RequestContext::new(Arc::clone(meta));
        Routed::Router {
            answer: hyper::service::Service::call(&self.router, (request, context)),
            uri,
            refusal,
        }
    }
}

/// The last touch on every response: the request id, the metrics and the access
/// log.
fn finish(
    inner: &AppInner,
    mut response: Response<Body>,
    meta: &RequestMeta,
    method: &str,
    operation: Option<&str>,
    client_id: Option<&str>,
) -> Response<Body> {
    let headers = response.headers_mut();
    // The generated router echoes the id as `x-span-id`; eHealth's name for it
    // is `x-request-id`, and one copy is enough.
    headers.remove(X_SPAN_ID);
    headers.insert(X_REQUEST_ID, meta.request_id_header());
    if inner.draining.load(Ordering::Relaxed) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let latency = meta.started.elapsed();
    inner
        .metrics
        .record(operation, response.status().as_u16(), latency);
    tracing::info!(
        target: "access",
        request_id = meta.request_id.0.as_str(),
        method,
        operation = operation.unwrap_or("-"),
        status = response.status().as_u16(),
        latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        client_id = client_id.unwrap_or("-"),
        trace_id = meta.trace_id().unwrap_or("-"),
    );
    response
}

/// The operation a request names, for the log of an answer the router made
/// itself (rare: the common answers come from the API implementation), as the
/// spec names it (the router capitalizes it).
fn operation_of(method: &Method, uri: &Uri) -> Option<&'static str> {
    let probe = Request::builder()
        .method(method)
        .uri(uri.clone())
        .body(())
        .ok()?;
    let routed = ApiRequestParser::parse_operation_id(&probe)?;
    crate::responses::OPERATION_IDS
        .into_iter()
        .find(|id| id.eq_ignore_ascii_case(routed))
}

fn reject(error: RequestError, meta: &RequestMeta) -> Response<Body> {
    mapping::encode_error(mapping::error_answer(error, meta))
}

fn is_json(response: &Response<Body>) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"))
}

/// Maps what the generated router answered by itself onto the contract's errors.
async fn rewrite_router_answer(
    response: Response<Body>,
    uri: &Uri,
    meta: &RequestMeta,
    refusal: Option<AuthError>,
) -> Response<Body> {
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let text = String::from_utf8_lossy(&body);
    let error = match status {
        // "Invalid header Prefer - …": normalization should have prevented it.
        StatusCode::BAD_REQUEST if text.starts_with("Invalid header ") => {
            RequestError::MalformedParameter {
                location: "header",
                parameter: text
                    .trim_start_matches("Invalid header ")
                    .split(" - ")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                expected: "text",
            }
        }
        StatusCode::BAD_REQUEST => RequestError::MalformedParameter {
            // "Couldn't parse path parameter asyncJobId: …"; the percent-decoding
            // error names no parameter, and this operation has only one.
            location: "path_parameter",
            parameter: text
                .strip_prefix("Couldn't parse path parameter ")
                .and_then(|rest| rest.split_once(':'))
                .map_or(JOB_ID_PARAMETER, |(name, _)| name)
                .to_owned(),
            expected: "uuid",
        },
        StatusCode::FORBIDDEN => {
            match text.strip_prefix("Insufficient authorization, missing scopes") {
                Some(scopes) => RequestError::MissingScopes {
                    missing: scopes.split_whitespace().map(str::to_owned).collect(),
                },
                // "Unauthenticated": the router saw no caller; say why.
                None => RequestError::Unauthenticated(refusal.unwrap_or(AuthError::MissingToken)),
            }
        }
        StatusCode::NOT_FOUND => RequestError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => RequestError::MethodNotAllowed {
            allow: allowed_methods(uri),
        },
        _ => RequestError::Router(format!("{status}: {text}")),
    };
    reject(error, meta)
}

/// Keeps the readable values of a list header (`Prefer`, `If-None-Match`) as one
/// comma-separated value, which is what the router reads; drops the header when
/// none is readable. Headers that are absent cost nothing.
fn normalize_list_header(headers: &mut HeaderMap, name: HeaderName) {
    let mut values = headers.get_all(&name).iter();
    match (values.next(), values.next()) {
        (None, _) => return,
        (Some(only), None) if only.to_str().is_ok() => return,
        _ => {}
    }
    let readable: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let joined = HeaderValue::from_str(&readable.join(", "));
    match joined {
        Ok(joined) if !readable.is_empty() => {
            headers.insert(name, joined);
        }
        _ => {
            headers.remove(name);
        }
    }
}

/// The methods the generated router routes for this path.
fn allowed_methods(uri: &Uri) -> String {
    METHODS
        .iter()
        .filter(|method| {
            let probe = Request::builder().method(*method).uri(uri.clone()).body(());
            probe.is_ok_and(|probe| ApiRequestParser::parse_operation_id(&probe).is_some())
        })
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A public document embedded at build time (the spec, the documentation).
fn serve_static(
    method: &Method,
    meta: &RequestMeta,
    body: &'static str,
    content_type: &'static str,
    policy: Option<&'static str>,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return reject(
            RequestError::MethodNotAllowed {
                allow: "GET, HEAD".into(),
            },
            meta,
        );
    }
    let mut response = Response::new(BoxBody::new(Full::new(Bytes::from_static(body.as_bytes()))));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Public, but revalidated, so a new deployment is seen at once.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(policy) = policy {
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    }
    response
}

/// Accepts connections until `shutdown` changes, then lets requests in flight
/// finish for up to `config.shutdown_timeout`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: App,
    config: HttpConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let limits = Arc::clone(&app.inner.limits);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The connection's own clocks time it (`conn`), not hyper's one timer.
    builder
        .header_read_timeout(None)
        .max_buf_size(limits.hyper_max_buf_size());
    if let Some(max_headers) = limits.hyper_max_headers() {
        builder.max_headers(max_headers);
    }
    // Past the connection limit: one answer, then close.
    let mut shedding = builder.clone();
    shedding.keep_alive(false);
    let refuse: conn::Refuse = {
        let app = app.clone();
        Arc::new(move |refusal| app.refusal(refusal))
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let slot = match limits.connect() {
                        Connection::Dropped => continue,
                        Connection::Admitted(slot) | Connection::Shed(slot) => slot,
                    };
                    let shed = slot.is_shed();
                    // Responses are small and written at once; don't let Nagle hold them.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    let clock = Arc::new(Clock::new());
                    let io = TokioIo::new(ConnIo::new(
                        stream,
                        Arc::clone(&clock),
                        Arc::clone(&limits),
                        Arc::clone(&refuse),
                    ));
                    let served = Served { app: app.clone(), clock, shed };
                    let builder = if shed { &shedding } else { &builder };
                    let connection = graceful.watch(builder.serve_connection(io, served));
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // Drain before closing: for a moment, answer what arrives on open
    // connections with `Connection: close`, so that clients stop reusing them.
    // Only then are the idle ones closed; a request a client sends at that very
    // moment would find its connection gone.
    app.inner.draining.store(true, Ordering::Relaxed);
    let grace = DRAIN_GRACE.min(config.shutdown_timeout / 5);
    tokio::time::sleep(grace).await;
    let rest = config.shutdown_timeout.saturating_sub(grace);
    if tokio::time::timeout(rest, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with connections still open");
    }
}
