//! The operators' listener (`admin_listen`, 127.0.0.1:9090 by default): health
//! and metrics, apart from the public API so that its surface stays exactly the
//! spec.
//!
//! - `GET /health/live`: the process answers.
//! - `GET /health/ready`: the job store answers a primary-key read within
//!   [`READY_DEADLINE`], and the server is not shutting down; 503 otherwise, so a
//!   load balancer stops sending polls before the instance goes.
//! - `GET /metrics`: Prometheus' text format.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::http::Limits;
use crate::jobs::{Status, StatusCounts};
use crate::metrics::{self, DATABASE_READ_BUCKETS, Metrics};
use crate::store::{JobStore, Store};

/// How long the store may take to answer the readiness probe.
pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(2);

/// What the admin listener reports on.
#[derive(Debug)]
pub(crate) struct Admin {
    /// The job store, probed for readiness and asked for its pool.
    pub store: Store,
    /// The request counters.
    pub metrics: Arc<Metrics>,
    /// Requests in flight and connections.
    pub limits: Arc<Limits>,
    /// The token caches.
    pub authenticator: Arc<Authenticator>,
    /// True once shutdown has begun.
    pub shutdown: watch::Receiver<bool>,
    /// The last count of jobs by status, and when it was made.
    pub jobs_counted: tokio::sync::Mutex<Option<JobCount>>,
}

/// When jobs were counted, and the count per status.
pub(crate) type JobCount = (Instant, StatusCounts);

/// How long a count of jobs by status is reused: it scans the table, and
/// Prometheus scrapes every few seconds.
const JOB_COUNT_MAX_AGE: Duration = Duration::from_secs(30);

impl Admin {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method_not_allowed"}"#.into(),
            );
        }
        match request.uri().path() {
            "/health/live" => json(StatusCode::OK, r#"{"status":"live"}"#.into()),
            "/health/ready" => self.ready().await,
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.render().await)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
        }
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        if *self.shutdown.borrow() {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"stopping"}"#.into(),
            );
        }
        if let Some(reason) = self.authenticator.keys().and_then(|keys| keys.not_ready()) {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"status":"not_ready","reason":"{reason}"}}"#),
            );
        }
        // A real read through the polling path's store, for an id nobody has.
        match tokio::time::timeout(READY_DEADLINE, self.store.get(Uuid::nil())).await {
            Ok(Ok(_)) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::chain::ErrorChain(&e), "not ready");
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"not_ready","reason":"the job store failed"}"#.into(),
                )
            }
            Err(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"not_ready","reason":"the job store did not answer in time"}"#.into(),
            ),
        }
    }

    async fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.metrics.render(&mut out);
        let (buckets, seconds, errors) = self.metrics.database_reads().snapshot();
        metrics::histogram(
            &mut out,
            "compositions_jobs_store_read_duration_seconds",
            "Reads of the polling path that reached the database.",
            &DATABASE_READ_BUCKETS,
            &buckets,
            seconds,
        );
        metrics::counter(
            &mut out,
            "compositions_jobs_store_read_errors_total",
            "Reads of the polling path that the database failed.",
            errors,
        );
        match self.jobs_by_status().await {
            Some(counts) => {
                out.push_str(
                    "# HELP compositions_jobs_jobs Jobs in the store by status (recounted at most every 30 s).\n\
                     # TYPE compositions_jobs_jobs gauge\n",
                );
                for status in Status::ALL {
                    out.push_str(&format!(
                        "compositions_jobs_jobs{{status=\"{status}\"}} {}\n",
                        counts.get(status)
                    ));
                }
            }
            None => tracing::warn!("could not count the jobs by status"),
        }
        metrics::gauge(
            &mut out,
            "compositions_jobs_requests_in_flight",
            "Requests being answered, long polls included.",
            self.limits.in_flight(),
        );
        metrics::gauge(
            &mut out,
            "compositions_jobs_connections_open",
            "Client connections open.",
            self.limits.connections(),
        );
        let (idle, slow_heads) = self.limits.timed_out();
        out.push_str(
            "# HELP compositions_jobs_connections_timed_out_total Client connections closed \
             idle past http.keep_alive_timeout, or cut for a request head slower than \
             http.header_read_timeout.\n\
             # TYPE compositions_jobs_connections_timed_out_total counter\n",
        );
        out.push_str(&format!(
            "compositions_jobs_connections_timed_out_total{{reason=\"keep_alive\"}} {idle}\n\
             compositions_jobs_connections_timed_out_total{{reason=\"header_read\"}} {slow_heads}\n"
        ));
        let feed = self.store.changes().feed();
        metrics::gauge(
            &mut out,
            "compositions_jobs_store_change_feed_up",
            "1 while the change feed works (SQLite's watcher, PostgreSQL's NOTIFY listener); \
             while 0, the read cache is off and long polls read the database.",
            u8::from(feed.is_up()),
        );
        let (losses, recoveries) = feed.counts();
        metrics::counter(
            &mut out,
            "compositions_jobs_store_change_feed_losses_total",
            "Times the change feed stopped working (failed, or went silent).",
            losses,
        );
        metrics::counter(
            &mut out,
            "compositions_jobs_store_change_feed_recoveries_total",
            "Times the change feed worked again after a loss.",
            recoveries,
        );
        let (jobs, waiters) = self.store.changes().waiters();
        metrics::gauge(
            &mut out,
            "compositions_jobs_long_poll_waiters",
            "Long polls waiting for a job to change.",
            waiters,
        );
        metrics::gauge(
            &mut out,
            "compositions_jobs_long_poll_jobs",
            "Jobs that long polls wait for.",
            jobs,
        );
        if let Some((hits, misses)) = self.authenticator.token_cache_stats() {
            metrics::counter(
                &mut out,
                "compositions_jobs_token_cache_hits_total",
                "Bearer tokens answered from the cache of verified tokens.",
                hits,
            );
            metrics::counter(
                &mut out,
                "compositions_jobs_token_cache_misses_total",
                "Bearer tokens verified (signature and claims).",
                misses,
            );
        }
        if let Some(keys) = self.authenticator.keys() {
            let status = keys.status();
            metrics::gauge(
                &mut out,
                "compositions_jobs_jwks_keys",
                "Token signing keys in force (0 before the first usable key set).",
                status.keys,
            );
            metrics::gauge(
                &mut out,
                "compositions_jobs_jwks_generation",
                "The key set in force: bumped each time a different set comes into force.",
                status.generation,
            );
            if let Some(age) = status.age {
                metrics::gauge(
                    &mut out,
                    "compositions_jobs_jwks_age_seconds",
                    "Since the key set in force was last confirmed by its file or URL.",
                    age.as_secs(),
                );
            }
            for (name, help, value) in [
                (
                    "compositions_jobs_jwks_loads_total",
                    "Reads or fetches of the key set that gave a usable set, changed or not.",
                    status.loads,
                ),
                (
                    "compositions_jobs_jwks_changes_total",
                    "Times a different key set came into force.",
                    status.changes,
                ),
                (
                    "compositions_jobs_jwks_failures_total",
                    "Reads or fetches of the key set that failed or gave an unusable document \
                     (the keys in force stayed).",
                    status.failures,
                ),
                (
                    "compositions_jobs_jwks_unknown_kid_total",
                    "Tokens naming a kid the key set in force lacks.",
                    status.unknown_kids,
                ),
            ] {
                metrics::counter(&mut out, name, help, value);
            }
        }
        if let Some(pool) = self.store.pool_status() {
            metrics::gauge(
                &mut out,
                "compositions_jobs_store_pool_connections",
                "PostgreSQL connections open in the pool.",
                pool.size,
            );
            metrics::gauge(
                &mut out,
                "compositions_jobs_store_pool_available",
                "PostgreSQL connections idle in the pool.",
                pool.available,
            );
            metrics::gauge(
                &mut out,
                "compositions_jobs_store_pool_max",
                "The pool's size limit (postgres.pool_size).",
                pool.max_size,
            );
        }
        out
    }
}

impl Admin {
    /// The count of jobs by status, reused for `JOB_COUNT_MAX_AGE`; `None` when
    /// the store cannot say within the readiness deadline.
    async fn jobs_by_status(&self) -> Option<StatusCounts> {
        let mut counted = self.jobs_counted.lock().await;
        if let Some((at, counts)) = counted.as_ref()
            && at.elapsed() < JOB_COUNT_MAX_AGE
        {
            return Some(*counts);
        }
        let counts = tokio::time::timeout(READY_DEADLINE, self.store.count_by_status())
            .await
            .ok()?
            .ok()?;
        *counted = Some((Instant::now(), counts));
        Some(counts)
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves the admin listener until `stop` changes: after the public listener has
/// drained, so that readiness says "stopping" all through the shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admin = Arc::clone(&admin);
                    let service = hyper::service::service_fn(move |request| {
                        let admin = Arc::clone(&admin);
                        async move { Ok::<_, Infallible>(admin.answer(request).await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}
