//! Configuration: one struct, layered from defaults, a TOML file, the environment and
//! the command line, and checked completely before anything starts.
//!
//! Precedence, lowest first: built-in defaults, the file given with `--config`,
//! `COMPOSITIONS_*` environment variables (`__` separates sections, e.g.
//! `COMPOSITIONS_AUTH__ISSUER`), then command-line flags. A bad value fails at
//! start-up with the name of its key, never on the first request.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The prefix of the environment variables that configure the service.
pub const ENV_PREFIX: &str = "COMPOSITIONS_";

/// Everything the service and the CLI read at start-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address the HTTP server listens on.
    pub listen: SocketAddr,
    /// The operators' listener: `/health/live`, `/health/ready`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// The job store: `sqlite:PATH` or a `postgres://` URL.
    pub database: DatabaseUrl,
    /// Where local state lives: the default SQLite file and, with `dev`, the dev key.
    pub data_dir: PathBuf,
    /// The public base URL (`https://host[:port]`) used in `meta.url`. Unset, the
    /// request's `Host` is used.
    pub public_url: Option<String>,
    /// Trust a locally generated signing key, for trying the service out.
    pub dev: bool,
    /// How callers are authenticated.
    pub auth: AuthConfig,
    /// Job lifecycle settings.
    pub jobs: JobsConfig,
    /// HTTP server limits.
    pub http: HttpConfig,
    /// The connection pool, when `database` is PostgreSQL.
    pub postgres: PostgresConfig,
    /// What pollers are told, how long they may wait, and how often they may ask.
    pub polling: PollingConfig,
}

/// How callers are authenticated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `jwt` verifies bearer tokens itself; `gateway` trusts the eHealth gateway's
    /// `x-consumer-*` headers and must only be reachable through that gateway.
    pub mode: AuthMode,
    /// A JWKS file with the token signing keys (RS256 or EdDSA, each with a
    /// `kid`), read again when it changes and on SIGHUP.
    pub jwks: Option<PathBuf>,
    /// The issuer's JWKS URL (instead of `jwks`): HTTPS, or HTTP to loopback.
    pub jwks_url: Option<String>,
    /// CA certificates (PEM) to trust for `jwks_url` instead of the system's.
    pub jwks_ca_file: Option<PathBuf>,
    /// The shortest time between two fetches of `jwks_url`, whatever the
    /// issuer's `Cache-Control` says; also the longest wait after a failure.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_min: Duration,
    /// The longest time between two fetches, and the time when the issuer sends
    /// no `max-age`: how long a key removed at the issuer may still be honoured.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_max: Duration,
    /// The shortest time between two fetches caused by tokens with unknown `kid`s.
    #[serde(with = "humantime_serde")]
    pub jwks_unknown_kid_interval: Duration,
    /// How long one fetch may take, all of it.
    #[serde(with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// A key set its source has not confirmed for this long makes the instance
    /// not ready.
    #[serde(with = "humantime_serde")]
    pub jwks_stale_after: Duration,
    /// The required `iss` claim.
    pub issuer: Option<String>,
    /// The required `aud` claim.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How many verified tokens are remembered until they expire (0: none).
    pub token_cache_size: usize,
}

/// Where identity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Verify `Authorization: Bearer <JWT>` here.
    Jwt,
    /// Trust `x-consumer-id`, `x-consumer-scope` and `x-consumer-metadata`.
    Gateway,
}

/// Job lifecycle settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How long finished jobs stay readable (eHealth's `JOB_TTL_DAYS`, 7 days).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The eta a new job gets when its producer gives none.
    #[serde(with = "humantime_serde")]
    pub default_eta: Duration,
    /// How often expired jobs are deleted.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// How many expired jobs one purge statement deletes.
    pub purge_batch: u32,
    /// How many jobs the polling path keeps as last read (0: none).
    pub read_cache_entries: usize,
    /// The longest a poll may be answered from the read cache, whatever happens.
    #[serde(with = "humantime_serde")]
    pub read_cache_max_age: Duration,
}

/// Polling: `Retry-After`, long-polling with `Prefer: wait`, and the limit on how
/// often one client may poll one job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollingConfig {
    /// The shortest `Retry-After` sent while a job is pending.
    #[serde(with = "humantime_serde")]
    pub retry_after_min: Duration,
    /// The longest `Retry-After` sent while a job is pending.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// The longest `Prefer: wait` granted.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// The random spread of `Retry-After` and of a long poll's end, as a share of
    /// each (0 turns it off), so that clients that started together drift apart.
    pub jitter: f64,
    /// Polls of one job by one client allowed per second, after the burst; 0 turns
    /// the limit off.
    pub limit_per_second: f64,
    /// Polls of one job by one client allowed at once.
    pub limit_burst: u32,
    /// How many (client, job) pairs the limiter remembers at most.
    pub limit_entries: usize,
    /// SQLite: how often to look for transitions written by other processes.
    #[serde(with = "humantime_serde")]
    pub change_check_interval: Duration,
}

/// The PostgreSQL connection pool. Every wait is bounded, so an outage turns into
/// prompt 500s rather than hung requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connections per instance; see docs/scaling.md for sizing against `max_connections`.
    pub pool_size: usize,
    /// How long a request waits for a free connection.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long connecting may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one statement may take (also set as `statement_timeout`).
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// How long the NOTIFY listener's connection may be silent before it is
    /// given up and made again (it is checked every half of this).
    #[serde(with = "humantime_serde")]
    pub listener_timeout: Duration,
    /// TLS, as libpq's `sslmode`; an `sslmode` in the database URL wins.
    pub sslmode: SslMode,
    /// CA certificates (PEM) that sign the server's certificate (libpq's
    /// `sslrootcert`); unset, the system's roots. In the URL, it wins.
    pub sslrootcert: Option<PathBuf>,
    /// A client certificate (PEM) to present (`sslcert`), with `sslkey`.
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub sslkey: Option<PathBuf>,
}

/// TLS to PostgreSQL, with libpq's names and meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate; plain
    /// otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS always, without checking the certificate (unless `sslrootcert` is
    /// set: then as `verify-ca`, as libpq does).
    Require,
    /// TLS, the certificate signed by a trusted CA, any host name.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and naming the host: the one
    /// to use wherever the network is shared.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(mode: &str) -> Result<Self, Self::Err> {
        match mode {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }
}

/// How to reach PostgreSQL over TLS: the database URL's TLS parameters over the
/// `postgres.ssl*` keys. Each file is named with where it was set, for errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    /// The mode.
    pub mode: SslMode,
    /// The CA file, and the setting that named it.
    pub root_cert: Option<NamedFile>,
    /// The client certificate and key files, and the settings that named them.
    pub client: Option<(NamedFile, NamedFile)>,
}

/// A file, and the setting that named it (for errors).
pub type NamedFile = (&'static str, PathBuf);

impl PostgresTls {
    /// What `url`'s TLS parameters and `config`'s keys say together.
    pub fn resolve(url: &str, config: &PostgresConfig) -> Result<Self, ConfigError> {
        let (_, in_url) = split_postgres_url(url).map_err(|reason| invalid("database", reason))?;
        let file = |from_url: Option<PathBuf>, key: &'static str, configured: &Option<PathBuf>| {
            from_url
                .map(|path| ("database", path))
                .or_else(|| configured.clone().map(|path| (key, path)))
        };
        let mode = in_url.mode.unwrap_or(config.sslmode);
        let root_cert = file(
            in_url.root_cert,
            "postgres.sslrootcert",
            &config.sslrootcert,
        );
        let cert = file(in_url.cert, "postgres.sslcert", &config.sslcert);
        let key = file(in_url.key, "postgres.sslkey", &config.sslkey);
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some((named, _)), None) | (None, Some((named, _))) => {
                return Err(invalid(
                    named,
                    "a client certificate needs both sslcert and sslkey",
                ));
            }
        };
        Ok(Self {
            mode,
            root_cert,
            client,
        })
    }
}

impl PostgresTls {
    /// The files and checks for rustls; `None` when TLS is off.
    pub fn files(&self) -> Option<crate::tls::TlsFiles<'_>> {
        use crate::tls::{ClientIdentity, TlsFiles, Verify};
        // As libpq: a CA file makes `prefer` and `require` check the chain.
        let verify = match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => return None,
            (SslMode::Prefer | SslMode::Require, None) => Verify::Nothing,
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, _) => Verify::ChainOnly,
            (SslMode::VerifyFull, _) => Verify::Full,
        };
        Some(TlsFiles {
            verify,
            ca_key: self
                .root_cert
                .as_ref()
                .map_or("postgres.sslrootcert", |(key, _)| key),
            ca_file: self.root_cert.as_ref().map(|(_, path)| path.as_path()),
            client: self
                .client
                .as_ref()
                .map(|((cert_key, cert), (key_key, key))| ClientIdentity {
                    cert_key,
                    cert,
                    key_key,
                    key,
                }),
        })
    }
}

/// The TLS parameters of a PostgreSQL URL.
#[derive(Debug, Default)]
pub(crate) struct UrlTls {
    mode: Option<SslMode>,
    root_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Splits a PostgreSQL URL into the URL tokio-postgres reads (its TLS
/// parameters taken out: it knows no `verify-*` mode and no certificate files)
/// and those parameters.
pub(crate) fn split_postgres_url(url: &str) -> Result<(String, UrlTls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), UrlTls::default()));
    };
    let mut tls = UrlTls::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match name {
            "sslmode" => tls.mode = Some(value.parse()?),
            "sslrootcert" => tls.root_cert = Some(value.into()),
            "sslcert" => tls.cert = Some(value.into()),
            "sslkey" => tls.key = Some(value.into()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8"))
}

/// HTTP server limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// How long a client may take to send a request head, from its first byte
    /// (the slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The most request headers accepted (431 beyond).
    pub max_headers: usize,
    /// The most bytes of request header names and values accepted (431 beyond).
    pub max_header_bytes: usize,
    /// The longest path and query accepted, in bytes (414 beyond).
    pub max_uri_bytes: usize,
    /// The most connections open at once; beyond, each new one is answered 503
    /// and closed.
    pub max_connections: usize,
    /// The most requests in flight at once, long polls included (503 beyond).
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            database: DatabaseUrl::Sqlite(PathBuf::from("var/jobs.db")),
            data_dir: PathBuf::from("var"),
            public_url: None,
            dev: false,
            auth: AuthConfig::default(),
            jobs: JobsConfig::default(),
            http: HttpConfig::default(),
            postgres: PostgresConfig::default(),
            polling: PollingConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Jwt,
            jwks: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_min: Duration::from_secs(30),
            jwks_refresh_max: Duration::from_secs(15 * 60),
            jwks_unknown_kid_interval: Duration::from_secs(30),
            jwks_fetch_timeout: Duration::from_secs(10),
            jwks_stale_after: Duration::from_secs(24 * 60 * 60),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            token_cache_size: 10_000,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(7 * 24 * 60 * 60),
            default_eta: Duration::from_secs(30),
            purge_interval: Duration::from_secs(10 * 60),
            purge_batch: 500,
            read_cache_entries: 100_000,
            read_cache_max_age: Duration::from_secs(1),
        }
    }
}

impl Default for PollingConfig {
    fn default() -> Self {
        Self {
            retry_after_min: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(10),
            max_wait: Duration::from_secs(30),
            jitter: 0.2,
            limit_per_second: 1.0,
            limit_burst: 10,
            limit_entries: 100_000,
            change_check_interval: Duration::from_millis(50),
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            pool_size: 16,
            acquire_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            query_timeout: Duration::from_secs(5),
            listener_timeout: Duration::from_secs(10),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            shutdown_timeout: Duration::from_secs(10),
            max_headers: 64,
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 2048,
            max_connections: 32_768,
            max_in_flight: 16_384,
        }
    }
}

/// Values given on the command line, which win over every other source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--admin-listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// `--database`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `--dev` (only when given)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<bool>,
}

/// A configuration that cannot be used, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is well-formed but unusable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key, e.g. `auth.jwks`.
        key: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
}

impl Config {
    /// Loads and checks the configuration from every source.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a file", file.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Self = figment
            // COMPOSITIONS_TEST_* configure the test suites, not the service.
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validated()
    }

    /// Fills what `dev` implies, then checks every value.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        if self.dev {
            dev::fill_config(&mut self);
        }
        if let Some(url) = &self.public_url {
            let trimmed = url.trim_end_matches('/');
            if !(trimmed.starts_with("http://") || trimmed.starts_with("https://"))
                || trimmed.contains(char::is_whitespace)
            {
                return Err(invalid("public_url", "must be an http:// or https:// URL"));
            }
            self.public_url = Some(trimmed.to_owned());
        }
        for (key, value) in [
            ("auth.jwks_refresh_min", self.auth.jwks_refresh_min),
            ("auth.jwks_fetch_timeout", self.auth.jwks_fetch_timeout),
            ("auth.jwks_stale_after", self.auth.jwks_stale_after),
            ("jobs.ttl", self.jobs.ttl),
            ("jobs.purge_interval", self.jobs.purge_interval),
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.keep_alive_timeout", self.http.keep_alive_timeout),
            ("postgres.acquire_timeout", self.postgres.acquire_timeout),
            ("postgres.connect_timeout", self.postgres.connect_timeout),
            ("postgres.query_timeout", self.postgres.query_timeout),
            ("postgres.listener_timeout", self.postgres.listener_timeout),
            ("polling.retry_after_min", self.polling.retry_after_min),
            (
                "polling.change_check_interval",
                self.polling.change_check_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        for (key, value) in [
            ("http.max_headers", self.http.max_headers),
            ("http.max_header_bytes", self.http.max_header_bytes),
            ("http.max_uri_bytes", self.http.max_uri_bytes),
            ("http.max_connections", self.http.max_connections),
            ("http.max_in_flight", self.http.max_in_flight),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        self.auth.check()?;
        if let DatabaseUrl::Postgres(url) = &self.database {
            // The certificate files are read now, so that a bad one stops the
            // service at start with its key's name.
            if let Some(files) = PostgresTls::resolve(url, &self.postgres)?.files() {
                crate::tls::client_config(files).map_err(|e| ConfigError::Invalid {
                    key: e.key,
                    reason: e.reason,
                })?;
            }
        }
        if self.jobs.purge_batch == 0 {
            return Err(invalid("jobs.purge_batch", "must be at least 1"));
        }
        if self.postgres.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "must be at least 1"));
        }
        if self.polling.retry_after_max < self.polling.retry_after_min {
            return Err(invalid(
                "polling.retry_after_max",
                "must not be shorter than polling.retry_after_min",
            ));
        }
        if !(0.0..=1.0).contains(&self.polling.jitter) {
            return Err(invalid("polling.jitter", "must be a share from 0 to 1"));
        }
        if !(self.polling.limit_per_second.is_finite() && self.polling.limit_per_second >= 0.0) {
            return Err(invalid(
                "polling.limit_per_second",
                "must be a number of 0 or more",
            ));
        }
        if self.polling.limit_burst == 0 || self.polling.limit_entries == 0 {
            return Err(invalid(
                "polling.limit_burst",
                "limit_burst and limit_entries must be at least 1",
            ));
        }
        Ok(self)
    }
}

impl AuthConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.mode == AuthMode::Gateway {
            return Ok(());
        }
        // Whether the keys are set at all is asked when serving (the `jobs`
        // commands need none); whether the settings agree, always.
        if self.jwks.is_some() && self.jwks_url.is_some() {
            return Err(invalid(
                "auth.jwks_url",
                "set either auth.jwks (a file) or auth.jwks_url, not both",
            ));
        }
        if let Some(url) = &self.jwks_url {
            check_jwks_url(url).map_err(|e| invalid("auth.jwks_url", e.reason()))?;
        }
        if self.jwks_refresh_max < self.jwks_refresh_min {
            return Err(invalid(
                "auth.jwks_refresh_max",
                "must not be shorter than auth.jwks_refresh_min",
            ));
        }
        Ok(())
    }
}

/// What `--dev` means: a key set made under `data_dir` (see `auth::dev`), and
/// the claims its tokens carry.
pub mod dev {
    use super::{AuthMode, Config};

    /// The `iss` of dev tokens.
    pub const ISSUER: &str = "compositions-jobs-dev";
    /// The `aud` of dev tokens.
    pub const AUDIENCE: &str = "compositions-jobs";
    /// The dev key set, under `data_dir`.
    pub const JWKS_FILE: &str = "dev-jwks.json";

    /// Points `auth` at the dev key set unless the configuration names its own.
    pub(super) fn fill_config(config: &mut Config) {
        config.auth.mode = AuthMode::Jwt;
        if config.auth.jwks_url.is_none() {
            config
                .auth
                .jwks
                .get_or_insert_with(|| config.data_dir.join(JWKS_FILE));
        }
        config.auth.issuer.get_or_insert_with(|| ISSUER.to_owned());
        config
            .auth
            .audience
            .get_or_insert_with(|| AUDIENCE.to_owned());
    }
}

/// A JWKS URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("config key `auth.jwks_url`: {0}")]
pub struct UrlError(pub(crate) String);

impl UrlError {
    /// What is wrong, without the key's name.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// Checks a JWKS URL: HTTPS, or HTTP to a loopback address; no user info.
pub fn check_jwks_url(url: &str) -> Result<hyper::Uri, UrlError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| UrlError(format!("not a URL: {e}")))?;
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| UrlError("has no host".into()))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(UrlError("must not carry user info".into()));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(UrlError(
            "must be https:// (plain http only to a loopback address)".into(),
        )),
        _ => Err(UrlError("must be an https:// URL".into())),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Where jobs are stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatabaseUrl {
    /// `sqlite:PATH`: a SQLite file.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`: a PostgreSQL database.
    Postgres(String),
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a file path, e.g. sqlite:var/jobs.db".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (driver_url, _) = split_postgres_url(url)?;
            driver_url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("must be sqlite:PATH or postgres://…".into())
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        url.parse()
    }
}

impl From<DatabaseUrl> for String {
    fn from(url: DatabaseUrl) -> Self {
        match url {
            DatabaseUrl::Sqlite(path) => format!("sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => url,
        }
    }
}

/// Shows the URL with any password replaced, so it is safe in logs and errors.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `postgres://user:secret@host/db?password=secret` → `postgres://user:***@host/db?password=***`.
fn redact_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::{check_jwks_url, redact_password};

    #[test]
    fn only_https_or_loopback_http() {
        for url in [
            "https://auth.ehealth.gov.ua/.well-known/jwks.json",
            "http://127.0.0.1:8081/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert!(check_jwks_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://auth.ehealth.gov.ua/jwks",
            "http://10.0.0.1/jwks",
            "ftp://auth/jwks",
            "https://user:pass@auth/jwks",
            "/jwks",
            "not a url",
        ] {
            assert!(check_jwks_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/jobs?sslmode=disable&password=other"),
            "postgres://app:***@db:5432/jobs?sslmode=disable&password=***"
        );
        assert_eq!(
            redact_password("postgres://app@db/jobs"),
            "postgres://app@db/jobs"
        );
    }
}
