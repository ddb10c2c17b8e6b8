//! getAsyncJobStatus for the eHealth (ЕСОЗ) Compositions API.
//!
//! MIS clients poll `GET /api/patients/composition/job/{asyncJobId}` until a job
//! that a create, sign, cancel or ERLN-resend request started is `DONE` or
//! `FAILED`. This crate is the hand-written half of a spec-first service:
//! `spec/compositions.yaml` is the contract, `compositions-api` is generated from
//! it (router, models, client), and this crate implements the generated `Api`
//! trait and the layers the generator does not give.
//!
//! # Shape
//! - [`config`]: one struct, checked at start-up.
//! - [`auth`]: bearer JWTs verified against a JWKS, or the eHealth gateway's headers.
//! - [`jobs`]: the job, its states and the lifecycle rules.
//! - [`polling`]: ETag, Retry-After, Cache-Control and the long poll.
//! - [`store`]: the `JobStore` interface, its SQLite and PostgreSQL backends, and
//!   the purge of expired jobs.
//! - [`http`]: the only implementation of the generated trait, the mapping between
//!   domain and generated types, and the layers around the router.
//! - [`start_server`]: shared by the binary and the tests.
//!
//! Dependencies point one way: `impl` → `generated`. A contract change regenerates
//! `generated/`, and `http::mapping` stops compiling until the change is handled.
//!
//! # Alternatives we rejected
//! - **Hand-written routes (axum) with the spec kept beside them.** The spec would
//!   drift from the code; here the router, models and client come from the spec.
//! - **A `dyn JobStore` trait object.** The store is an enum over backends, so the
//!   hot read path is a direct call with no boxed future.
//! - **sqlx for SQLite.** It runs each connection on its own thread behind a
//!   channel; rusqlite on the caller's thread answers a primary-key read in
//!   microseconds (see `store::sqlite`).
//! - **sqlx for PostgreSQL too, for one driver.** tokio-postgres with deadpool
//!   gives a statement cache per connection and explicit control of every wait,
//!   which the outage behaviour depends on (see `store::postgres`).
//! - **Checking scopes by hand.** The generated router enforces the scopes written
//!   in the spec; we only turn its plain-text 403 into the envelope.

mod admin;
mod auth;
mod bounded;
mod chain;
pub mod config;
mod http;
pub mod jobs;
mod logging;
mod metrics;
mod polling;
mod responses;
mod store;
mod tls;

pub use auth::{
    Authenticator, Current, DevKey, JwtVerifier, KeySet, KeySetError, Keys, KeysStatus, Policy,
    VerificationKey,
};
pub use chain::ErrorChain;
pub use http::{Limits, SPEC};
pub use logging::{JsonLines, LogWriter, LogWriterGuard};
pub use store::{Access, JobStore, Store, StoreError, purge};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::AuthSetupError;
use crate::config::Config;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The job store could not be opened or migrated.
    #[error("cannot open the job store {database}")]
    Store {
        /// The configured database (without secrets).
        database: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The token signing keys, or where they come from, cannot be used.
    #[error("cannot use the token signing keys")]
    Keys(#[from] AuthSetupError),
    /// The listener has no local address.
    #[error("cannot read the listener's address")]
    Listener(#[source] std::io::Error),
    /// The admin listener's address cannot be bound.
    #[error("cannot listen on admin_listen {address}")]
    AdminListener {
        /// The configured address.
        address: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_stop: watch::Sender<bool>,
    admin: JoinHandle<()>,
    store: Store,
    keys: Option<Arc<Keys>>,
}

impl ServerHandle {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address: health and metrics.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The server's own store: transitions made through it wake its long polls
    /// at once (for producers embedded in the same process).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads the token signing keys again now, from their file or URL (what
    /// SIGHUP does); the answer comes in the log. Nothing behind the gateway.
    pub fn reload_keys(&self) {
        if let Some(keys) = &self.keys {
            keys.reload();
        }
    }

    /// Stops accepting, answers long polls at once, lets requests in flight
    /// finish, and waits.
    pub async fn shutdown(self) {
        // Ignoring the error is right: it only means the server already stopped.
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a server task failed");
            }
        }
        // Readiness said "stopping" all through; now the admin listener goes too.
        let _ = self.admin_stop.send(true);
        if let Err(e) = self.admin.await {
            tracing::error!(error = %e, "the admin listener failed");
        }
        self.store.close();
    }
}

/// Opens the store, loads the keys and serves HTTP on `listener`.
///
/// `config` must come from [`Config::load`] or [`Config::validated`]. The binary
/// and the tests both start the service through here.
pub async fn start_server(
    config: Config,
    listener: TcpListener,
) -> Result<ServerHandle, StartError> {
    let local_addr = listener.local_addr().map_err(StartError::Listener)?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::AdminListener {
            address: config.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().map_err(StartError::Listener)?;
    let store = Store::open(&config, Access::ReadWrite)
        .await
        .map_err(|source| StartError::Store {
            database: config.database.to_string(),
            source,
        })?;
    let (authenticator, key_source) = Authenticator::from_config(&config.auth)?;
    let authenticator = Arc::new(authenticator);
    let metrics = Arc::new(metrics::Metrics::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let keys = authenticator.keys().cloned();
    if let (Some(source), Some(keys)) = (key_source, &keys) {
        tasks.push(tokio::spawn(
            source.keep_fresh(Arc::clone(keys), shutdown_rx.clone()),
        ));
    }
    let purger = tokio::spawn(store::purge_periodically(
        store.clone(),
        config.jobs.purge_interval,
        config.jobs.purge_batch,
        shutdown_rx.clone(),
    ));
    let watcher = tokio::spawn(store.clone().watch_changes(shutdown_rx.clone()));
    let limiter = http::RateLimiter::new(&config.polling);
    let polling = polling::Polling::new(
        store.clone(),
        config.polling.clone(),
        shutdown_rx.clone(),
        Arc::clone(&metrics),
    );
    let app = http::App::new(
        http::JobsApi::new(polling, limiter),
        Arc::clone(&authenticator),
        Arc::clone(&metrics),
        &config.http,
        config.public_url.clone(),
        local_addr,
    );
    let admin = Arc::new(admin::Admin {
        store: store.clone(),
        metrics,
        limits: app.limits(),
        authenticator,
        shutdown: shutdown_rx.clone(),
        jobs_counted: tokio::sync::Mutex::new(None),
    });
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin = tokio::spawn(admin::serve(admin_listener, admin, admin_stop_rx));
    let server = tokio::spawn(http::serve(listener, app, config.http, shutdown_rx));
    tasks.extend([server, purger, watcher]);
    Ok(ServerHandle {
        local_addr,
        admin_addr,
        shutdown,
        tasks,
        admin_stop,
        admin,
        store,
        keys,
    })
}
