//! Test support: the real service on port 0 with a temporary SQLite file and the
//! test key set, driven through the generated client (or raw HTTP, for what the
//! typed client cannot send).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod jwks_server;
pub mod php;
pub mod postgres;
pub mod raw;
pub mod relay;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use compositions_api::{Api, Client, GetAsyncJobStatusResponse};
use compositions_jobs::config::{AuthMode, Config, DatabaseUrl};
use compositions_jobs::jobs::{Failure, Job, Kind, Link, NewJob, Outcome, Timestamp};
use compositions_jobs::{Access, JobStore, Store};
use compositions_jobs::{ServerHandle, start_server};
use swagger::{ApiError, AuthData, Has, XSpanIdString};
use tempfile::TempDir;
use tokio::net::TcpListener;
use uuid::Uuid;

pub use raw::RawResponse;

/// The value of sample `name` (labels included) in `metrics`.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// The path of one job.
pub fn job_path(id: impl std::fmt::Display) -> String {
    format!("/api/patients/composition/job/{id}")
}

/// A file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A running service with its own database, and a producer-side handle on it.
#[derive(Debug)]
pub struct TestContext {
    /// Where the database lives; removed on drop.
    pub dir: TempDir,
    /// The configuration the server was started with.
    pub config: Config,
    /// The server's address.
    pub addr: SocketAddr,
    /// A second handle on the server's database, as a producer process would have.
    pub store: Store,
    server: ServerHandle,
}

impl TestContext {
    /// A service in JWT mode with the test key set.
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// A service with the test configuration changed by `configure`. The polling
    /// limit is off unless `configure` sets one: several suites poll one job many
    /// times on purpose.
    pub async fn with_config(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            database: DatabaseUrl::Sqlite(dir.path().join("jobs.db")),
            data_dir: dir.path().to_path_buf(),
            // Many servers run at once: each gets its own admin port too.
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwks = Some(fixture("jwks.json"));
        config.auth.issuer = Some(tokens::ISSUER.into());
        config.auth.audience = Some(tokens::AUDIENCE.into());
        config.polling.limit_per_second = 0.0;
        configure(&mut config);
        let config = config.validated().unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = start_server(config.clone(), listener).await.unwrap();
        let store = Store::open(&config, Access::ReadWrite).await.unwrap();
        Self {
            addr: server.local_addr(),
            dir,
            config,
            store,
            server,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin listener's address: health and metrics.
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// The admin listener's `/metrics`, in Prometheus' text format.
    pub async fn metrics(&self) -> String {
        let response = raw::request(self.admin_addr(), "GET", "/metrics", &[]).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        String::from_utf8(response.body).unwrap()
    }

    /// Reads the token signing keys again now, as SIGHUP does.
    pub fn reload_keys(&self) {
        self.server.reload_keys();
    }

    /// The server's own store: transitions through it wake long polls at once.
    pub fn server_store(&self) -> &Store {
        self.server.store()
    }

    /// Stops the server, letting requests in flight finish.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    /// Creates a PENDING job for `client_id`, expected in 30 s.
    pub async fn create_job(&self, client_id: &str) -> Job {
        let new = NewJob {
            id: Uuid::new_v4(),
            client_id: client_id.into(),
            kind: Kind::Create,
            expected_duration: Duration::from_secs(30),
            dedup_hash: None,
        };
        self.store.create(new, Timestamp::now()).await.unwrap().job
    }

    /// Finishes a job as DONE with a link to `composition/<composition>`, through
    /// the server's own store, so that the next poll sees it at once. A write by
    /// another connection (`self.store`) reaches the server's read cache only
    /// with the next change check; the suites that test that use it directly.
    pub async fn complete_job(&self, id: Uuid, composition: Uuid) -> Job {
        complete(self.server_store(), id, composition).await
    }

    /// Finishes a job as FAILED, through the server's own store.
    pub async fn fail_job(&self, id: Uuid, code: i32, name: &str, message: &str) -> Job {
        let outcome = Outcome::Failed(Failure::new(code, name, message).unwrap());
        self.server_store()
            .finish(id, outcome, Timestamp::now())
            .await
            .unwrap()
            .job
    }

    /// Polls a job through the generated client.
    pub async fn poll(
        &self,
        id: Uuid,
        token: Option<String>,
    ) -> Result<GetAsyncJobStatusResponse, ApiError> {
        self.poll_with(id, token, None, None).await
    }

    /// Polls a job through the generated client with `If-None-Match` and `Prefer`.
    pub async fn poll_with(
        &self,
        id: Uuid,
        token: Option<String>,
        if_none_match: Option<&str>,
        prefer: Option<&str>,
    ) -> Result<GetAsyncJobStatusResponse, ApiError> {
        let client = Client::try_new_http(&self.base_url()).unwrap();
        let context = ClientContext {
            span: XSpanIdString::default(),
            auth: token.and_then(|token| AuthData::bearer(&token)),
        };
        client
            .get_async_job_status(
                id,
                if_none_match.map(str::to_owned),
                prefer.map(str::to_owned),
                &context,
            )
            .await
    }

    /// Sends `GET path` with these extra header lines over raw HTTP/1.1.
    pub async fn get_raw(&self, path: &str, headers: &[(&str, &str)]) -> RawResponse {
        raw::request(self.addr, "GET", path, headers).await
    }

    /// Asserts that `response` is exactly the envelope for `error` with
    /// `status`, as JSON.
    pub fn assert_envelope(
        &self,
        response: &RawResponse,
        path: &str,
        status: u16,
        error: serde_json::Value,
    ) {
        assert_eq!(
            response.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.json(), self.expected_error(response, path, error));
    }

    /// The envelope this service must send for an error on `path`, given the
    /// response's own request id.
    pub fn expected_error(
        &self,
        response: &RawResponse,
        path: &str,
        error: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "meta": {
                "url": format!("{}{path}", self.base_url()),
                "type": "object",
                "code": response.status,
                "request_id": response.header("x-request-id").unwrap(),
            },
            "error": error,
        })
    }
}

/// Finishes a job through `store` as DONE with a link to `composition/<composition>`.
pub async fn complete(store: &Store, id: Uuid, composition: Uuid) -> Job {
    let link = Link::new("eHealth/resources", format!("composition/{composition}")).unwrap();
    store
        .finish(id, Outcome::Done(vec![link]), Timestamp::now())
        .await
        .unwrap()
        .job
}

/// The generated client's per-call context: a span id and the credentials.
#[derive(Clone, Debug)]
pub struct ClientContext {
    span: XSpanIdString,
    auth: Option<AuthData>,
}

impl Has<XSpanIdString> for ClientContext {
    fn get(&self) -> &XSpanIdString {
        &self.span
    }
    fn get_mut(&mut self) -> &mut XSpanIdString {
        &mut self.span
    }
    fn set(&mut self, value: XSpanIdString) {
        self.span = value;
    }
}

impl Has<Option<AuthData>> for ClientContext {
    fn get(&self) -> &Option<AuthData> {
        &self.auth
    }
    fn get_mut(&mut self) -> &mut Option<AuthData> {
        &mut self.auth
    }
    fn set(&mut self, value: Option<AuthData>) {
        self.auth = value;
    }
}
