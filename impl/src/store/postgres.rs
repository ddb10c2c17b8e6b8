//! The PostgreSQL backend: one database shared by every instance and by producers.
//!
//! A pool of connections (deadpool) with a prepared statement cache per
//! connection. Every operation is bounded: waiting for a free connection
//! (`acquire_timeout`), connecting (`connect_timeout`) and the statement itself
//! (`query_timeout`, enforced by the server as `statement_timeout` and by us, so
//! that a server that vanished from the network cannot hang a request). A
//! connection whose query timed out is discarded, never reused. Broken
//! connections are dropped when they are next taken from the pool, so the service
//! recovers by itself when the server comes back.
//!
//! Transitions lock the row (`SELECT … FOR UPDATE`) and apply
//! [`crate::jobs::decide`], so concurrent producers on different machines leave
//! exactly one winner.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::changes::FeedChange;
use super::postgres_tls::MakeRustls;
use super::{
    Access, Changes, Created, Finished, JobCache, JobStore, Row, StoreError, column,
    outcome_columns,
};
use crate::config::{JobsConfig, PostgresConfig, PostgresTls, SslMode, split_postgres_url};
use crate::jobs::{
    self, Job, Link, NewJob, Outcome, State, Status, StatusCounts, Timestamp, Transition,
};
use crate::tls::{self, TlsFiles, Verify};

/// Each entry upgrades the schema by one version (`jobs_schema_version`).
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_jobs.sql"),
    include_str!("../../migrations/postgres/0002_notify_finished.sql"),
    include_str!("../../migrations/postgres/0003_announce_rows.sql"),
];

/// The channel on which the triggers of `0003_announce_rows.sql` announce each
/// new and each finished row; a macro so that `LISTEN` can be a `&'static str`.
macro_rules! notify_channel {
    () => {
        "jobs_changed"
    };
}

/// The NOTIFY listener's wait before reconnecting, doubling up to the maximum.
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The advisory lock that serializes migrations across instances ("cjobs").
const MIGRATION_LOCK: i64 = 0x0063_6a6f_6273;

/// A job store in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// For the listener's own connection, outside the pool.
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustls,
    ttl: Duration,
    connect_timeout: Duration,
    query_timeout: Duration,
    listener_timeout: Duration,
    changes: Arc<Changes>,
}

/// Why the NOTIFY listener's connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenerError {
    /// PostgreSQL or the network said so.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The server closed the connection.
    #[error("PostgreSQL closed the connection")]
    Closed,
    /// Nothing came back in time: the peer or the network went silent.
    #[error("no answer to {step} within {within:?}")]
    Silent {
        /// What was waited for.
        step: &'static str,
        /// How long.
        within: Duration,
    },
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool.status())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A statement that did not finish within `query_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no answer from PostgreSQL within {0:?}")]
struct TimedOut(Duration);

impl PostgresStore {
    /// Closes the pool: idle connections at once, the others as they come back.
    pub fn close(&self) {
        self.pool.close();
    }

    /// The pool's size, idle connections and limit.
    pub fn pool_status(&self) -> super::PoolStatus {
        let status = self.pool.status();
        super::PoolStatus {
            size: status.size,
            available: status.available,
            max_size: status.max_size,
        }
    }

    /// Connects to `url` with the pool `config`, over TLS as its `sslmode` and
    /// `postgres.ssl*` say, and applies migrations (or, read-only, checks that
    /// none is due).
    pub async fn open(
        url: &str,
        jobs: &JobsConfig,
        config: &PostgresConfig,
        access: Access,
    ) -> Result<Self, StoreError> {
        let ttl = jobs.ttl;
        let tls_settings = PostgresTls::resolve(url, config)
            .map_err(|e| StoreError::backend("read the TLS settings", e))?;
        let (driver_url, _) = split_postgres_url(url)
            .map_err(|e| StoreError::backend("parse the URL", std::io::Error::other(e)))?;
        let mut pg: tokio_postgres::Config = driver_url
            .parse()
            .map_err(|e| StoreError::backend("parse the URL", e))?;
        let statement_timeout =
            format!("-c statement_timeout={}", config.query_timeout.as_millis());
        let options = match pg.get_options() {
            Some(options) => format!("{options} {statement_timeout}"),
            None => statement_timeout,
        };
        if pg.get_application_name().is_none() {
            pg.application_name("compositions-jobs");
        }
        pg.options(&options)
            .ssl_mode(match tls_settings.mode {
                SslMode::Disable => DriverSslMode::Disable,
                SslMode::Prefer => DriverSslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    DriverSslMode::Require
                }
            })
            .connect_timeout(config.connect_timeout)
            // Notice a server that vanished without closing the connection.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        // With `disable` the connector is never asked for; it checks nothing.
        let files = tls_settings.files().unwrap_or(TlsFiles {
            verify: Verify::Nothing,
            ca_key: "postgres.sslrootcert",
            ca_file: None,
            client: None,
        });
        let tls = MakeRustls::new(
            tls::client_config(files).map_err(|e| StoreError::backend("configure TLS", e))?,
        );
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The whole of making a connection (socket, TLS, startup) is bounded by
        // `create_timeout`, not only the socket as tokio-postgres' own is.
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::backend("build the connection pool", e))?;
        let store = Self {
            pool,
            config: Arc::new(pg),
            tls,
            ttl,
            connect_timeout: config.connect_timeout,
            query_timeout: config.query_timeout,
            listener_timeout: config.listener_timeout,
            changes: Arc::new(Changes::new(JobCache::new(
                jobs.read_cache_entries,
                jobs.read_cache_max_age,
                ttl,
            ))),
        };
        match access {
            Access::ReadWrite => store.migrate().await?,
            Access::ReadOnly => store.check_schema().await?,
        }
        Ok(store)
    }

    /// The wake-ups of this store's long polls.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// Wakes waiters on the `NOTIFY` that the `jobs` trigger sends whenever any
    /// process finishes a job: one connection per instance, outside the pool,
    /// made again whenever it fails or goes silent.
    ///
    /// The feed is always either working or known to be down: each step of
    /// connecting is bounded (`postgres.connect_timeout` for the socket, TLS and
    /// the start-up, `postgres.query_timeout` for `LISTEN`), and a heartbeat
    /// on the connection, at least every half of `postgres.listener_timeout`,
    /// must answer within the other half. While it is down the read cache is off and every
    /// waiter looks for itself, since notifications are lost; each loss and
    /// recovery is logged and counted.
    pub async fn watch_changes(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = LISTEN_BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let ended = tokio::select! {
                ended = self.listen(&mut down_since) => ended,
                _ = shutdown.changed() => {
                    self.changes.cache().set_live(false);
                    return;
                }
            };
            // A connection that worked for a while starts the back-off afresh.
            if started.elapsed() > LISTEN_BACKOFF_MAX {
                backoff = LISTEN_BACKOFF_MIN;
            }
            let error = crate::chain::ErrorChain(&ended).to_string();
            if self.changes.set_feed(false) == FeedChange::Lost {
                down_since = Some(Instant::now());
                tracing::warn!(error, retry_in = ?backoff,
                    "the NOTIFY listener lost PostgreSQL; long polls read the database until it is back");
            } else {
                tracing::warn!(error, retry_in = ?backoff,
                    "the NOTIFY listener cannot reach PostgreSQL");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
        }
    }

    /// One listening connection, until it fails or goes silent (never `Ok`).
    ///
    /// Besides the jobs' channel it listens on a channel of its own, and the
    /// heartbeat is a `NOTIFY` on that channel: PostgreSQL delivers
    /// notifications in commit order, so when the heartbeat comes back every
    /// transition committed before it was sent has been heard, and the read
    /// cache is confirmed up to that moment ([`JobCache::confirm`]). The beat is
    /// frequent enough (half of `jobs.read_cache_max_age`) for cached entries to
    /// stay servable while the feed works, and its answer is awaited for half
    /// of `postgres.listener_timeout`.
    async fn listen(&self, down_since: &mut Option<Instant>) -> ListenerError {
        let silent = |step, within| ListenerError::Silent { step, within };
        let connected =
            tokio::time::timeout(self.connect_timeout, self.config.connect(self.tls.clone())).await;
        let (client, mut connection) = match connected {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => return e.into(),
            Err(_) => return silent("connecting", self.connect_timeout),
        };
        let changes = &self.changes;
        let beat_channel = format!("compositions_jobs_beat_{:032x}", Uuid::new_v4().as_u128());
        // The latest heartbeat sent: its number and when.
        let sent = std::sync::Mutex::new((0_u64, Instant::now()));
        let sent = &sent;
        // The connection yields the notifications and the answers to the
        // heartbeat; it is polled all the while.
        let deliver = async {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        if notification.channel() == beat_channel {
                            let (number, at) = *sent.lock().unwrap_or_else(PoisonError::into_inner);
                            if notification.payload() == number.to_string() {
                                changes.cache().confirm(at);
                            }
                        } else {
                            announced(changes, notification.payload());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e.into(),
                    None => return ListenerError::Closed,
                }
            }
        };
        let subscribe = async {
            let statement = format!(
                concat!("LISTEN ", notify_channel!(), "; LISTEN {}"),
                beat_channel
            );
            let listen = client.batch_execute(&statement);
            match tokio::time::timeout(self.query_timeout, listen).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return e.into(),
                Err(_) => return silent("LISTEN", self.query_timeout),
            }
            // From now on every transition is heard: the cache may serve, after
            // forgetting what may have finished unheard.
            if changes.set_feed(true) == FeedChange::Recovered {
                let down_for = down_since.take().map(|since| since.elapsed());
                tracing::info!(down_for = ?down_for, "the NOTIFY listener is back");
            }
            let half = self.listener_timeout / 2;
            let beat = match changes.cache().max_age() / 2 {
                Duration::ZERO => half,
                quarter => quarter.min(half),
            };
            for number in 1_u64.. {
                tokio::time::sleep(beat).await;
                *sent.lock().unwrap_or_else(PoisonError::into_inner) = (number, Instant::now());
                let statement = format!("SELECT pg_notify('{beat_channel}', '{number}')");
                let heartbeat = client.simple_query(&statement);
                match tokio::time::timeout(half, heartbeat).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.into(),
                    Err(_) => return silent("the heartbeat", half),
                }
            }
            ListenerError::Closed
        };
        tokio::select! {
            ended = deliver => ended,
            failed = subscribe => failed,
        }
    }

    /// Runs `work` on a pooled connection within the query timeout.
    async fn with_client<T>(
        &self,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::backend(operation, e))?;
        let outcome = tokio::time::timeout(self.query_timeout, work(&mut client)).await;
        outcome.unwrap_or_else(|_| {
            // The connection may still be busy with the abandoned statement.
            drop(Object::take(client));
            Err(StoreError::backend(operation, TimedOut(self.query_timeout)))
        })
    }

    /// For read-only use: the schema must be exactly this binary's, and nothing
    /// is written (a role that may only `SELECT` can read).
    async fn check_schema(&self) -> Result<(), StoreError> {
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        self.with_client("check the schema", async |client| {
            let failed = |e| StoreError::backend("check the schema", e);
            let exists: bool = client
                .query_one("SELECT to_regclass('jobs_schema_version') IS NOT NULL", &[])
                .await
                .map_err(failed)?
                .get(0);
            let found: i64 = if exists {
                client
                    .query_opt("SELECT max(version) FROM jobs_schema_version", &[])
                    .await
                    .map_err(failed)?
                    .and_then(|row| row.get::<_, Option<i64>>(0))
                    .unwrap_or(0)
            } else {
                0
            };
            super::check_version(found, known)
        })
        .await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        self.with_client("migrate", async |client| {
            let failed = |e| StoreError::backend("migrate", e);
            let tx = client.transaction().await.map_err(failed)?;
            // Two instances starting together take turns instead of racing.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(failed)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS jobs_schema_version (version bigint NOT NULL)",
            )
            .await
            .map_err(failed)?;
            let found: i64 = tx
                .query_opt("SELECT max(version) FROM jobs_schema_version", &[])
                .await
                .map_err(failed)?
                .and_then(|row| row.get::<_, Option<i64>>(0))
                .unwrap_or(0);
            if found > known {
                return Err(StoreError::SchemaTooNew { found, known });
            }
            for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
                tx.batch_execute(migration).await.map_err(failed)?;
            }
            tx.execute("DELETE FROM jobs_schema_version", &[])
                .await
                .map_err(failed)?;
            tx.execute(
                "INSERT INTO jobs_schema_version (version) VALUES ($1)",
                &[&known],
            )
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)
        })
        .await
    }
}

/// A `jobs_changed` notification (`0003_announce_rows.sql`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Announcement {
    /// Jobs deleted (by the purge, or by hand).
    Deleted { deleted: Vec<Uuid> },
    /// Every job deleted at once (`TRUNCATE`).
    Truncated {
        #[expect(dead_code, reason = "always true: the field names the announcement")]
        truncated: bool,
    },
    /// A new or finished job.
    Row(Box<Announced>),
}

/// A new or finished row, times in milliseconds, or a finished row's id alone
/// when it was too long to send.
#[derive(serde::Deserialize)]
struct Announced {
    id: Uuid,
    client_id: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    eta: Option<i64>,
    links: Option<Vec<Link>>,
    error_code: Option<i32>,
    error_type: Option<String>,
    error_message: Option<String>,
    dedup_hash: Option<String>,
    created_at: Option<i64>,
    finished_at: Option<i64>,
}

impl Announced {
    /// The job as announced, when the row came whole.
    fn into_job(self) -> Option<Result<Job, StoreError>> {
        let time = Timestamp::from_millis;
        let row = Row {
            id: self.id,
            client_id: self.client_id?,
            kind: self.kind?,
            status: self.status?,
            eta: time(self.eta?),
            links: self.links,
            error_code: self.error_code,
            error_type: self.error_type,
            error_message: self.error_message,
            dedup_hash: self.dedup_hash,
            created_at: time(self.created_at?),
            finished_at: self.finished_at.map(time),
        };
        Some(row.into_job())
    }
}

/// Applies one announcement: the read cache takes the new job or the finished
/// state (given a finished job's id alone, or a deleted job's, it forgets the
/// job), and the job's waiters wake. One that cannot be read says that
/// something changed, but not what: every job is forgotten and every waiter
/// looks.
fn announced(changes: &Changes, payload: &str) {
    let announced = match serde_json::from_str::<Announcement>(payload) {
        Ok(Announcement::Row(announced)) => announced,
        Ok(Announcement::Deleted { deleted }) => {
            for id in deleted {
                changes.finished(id);
            }
            return;
        }
        Ok(Announcement::Truncated { .. }) => {
            changes.forget_all();
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "an unreadable notification of a job");
            changes.forget_all();
            return;
        }
    };
    let id = announced.id;
    match announced.into_job() {
        Some(Ok(job)) if job.state.status() == Status::Pending => changes.created(job),
        Some(Ok(job)) => changes.finished_as(job),
        // Only a finished row comes without its columns.
        None => changes.finished(id),
        Some(Err(e)) => {
            tracing::warn!(error = %crate::chain::ErrorChain(&e),
                "a notification of a job breaks the lifecycle rules");
            changes.finished(id);
        }
    }
}

impl JobStore for PostgresStore {
    async fn find_for_client(
        &self,
        id: Uuid,
        client_id: &str,
        now: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        let cutoff = jobs::expiry_cutoff(now, self.ttl).to_system_time();
        self.with_client("read a job", async |client| {
            query_job(
                &*client,
                "read a job",
                select_jobs!(
                    "id = $1 AND client_id = $2 AND (finished_at IS NULL OR finished_at > $3)"
                ),
                &[&id, &client_id, &cutoff],
            )
            .await
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.with_client("read a job", async |client| {
            select_by_id(&*client, id, false).await
        })
        .await
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.with_client("count jobs by status", async |client| {
            let rows = client
                .query("SELECT status, count(*) FROM jobs GROUP BY status", &[])
                .await
                .map_err(|e| StoreError::backend("count jobs by status", e))?;
            super::status_counts(rows.iter().map(|row| (row.get(0), row.get(1))))
        })
        .await
    }

    async fn create(&self, new: NewJob, now: Timestamp) -> Result<Created, StoreError> {
        new.validate()?;
        self.with_client("create a job", async |client| {
            let failed = |e| StoreError::backend("create a job", e);
            let eta = now.plus(new.expected_duration);
            let insert = client
                .prepare_cached(
                    "INSERT INTO jobs (id, client_id, kind, status, eta, dedup_hash, created_at) \
                     VALUES ($1, $2, $3, 'PENDING', $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(failed)?;
            // A conflict is the id, or a pending duplicate; the duplicate may finish
            // between the insert and the look-up, and then the insert is retried.
            for _ in 0..3 {
                let inserted = client
                    .execute(
                        &insert,
                        &[
                            &new.id,
                            &new.client_id,
                            &new.kind.as_str(),
                            &eta.to_system_time(),
                            &new.dedup_hash,
                            &now.to_system_time(),
                        ],
                    )
                    .await
                    .map_err(failed)?;
                if inserted == 1 {
                    let job = Job {
                        id: new.id,
                        client_id: new.client_id,
                        kind: new.kind,
                        state: State::Pending { eta },
                        created_at: now,
                        dedup_hash: new.dedup_hash,
                    };
                    return Ok(Created {
                        job,
                        deduplicated: false,
                    });
                }
                if select_by_id(&*client, new.id, false).await?.is_some() {
                    return Err(StoreError::IdTaken(new.id));
                }
                if let Some(job) = select_pending_duplicate(&*client, &new).await? {
                    return Ok(Created {
                        job,
                        deduplicated: true,
                    });
                }
            }
            Err(StoreError::backend(
                "create a job",
                std::io::Error::other("the pending duplicate kept changing"),
            ))
        })
        .await
    }

    async fn finish(
        &self,
        id: Uuid,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Finished, StoreError> {
        self.with_client("finish a job", async |client| {
            let failed = |e| StoreError::backend("finish a job", e);
            let tx = client.transaction().await.map_err(failed)?;
            // The row lock makes concurrent producers take turns.
            let mut job = select_by_id(&tx, id, true).await?.ok_or(StoreError::NotFound(id))?;
            let transition = jobs::decide(&job.state, &outcome)?;
            if transition == Transition::Apply {
                let (links, failure) = outcome_columns(&outcome);
                let update = tx
                    .prepare_cached(
                        "UPDATE jobs SET status = $2, links = $3, error_code = $4, error_type = $5, \
                         error_message = $6, finished_at = $7 WHERE id = $1 AND status = 'PENDING'",
                    )
                    .await
                    .map_err(failed)?;
                tx.execute(
                    &update,
                    &[
                        &id,
                        &outcome.status().as_str(),
                        &links.map(Json),
                        &failure.map(|f| f.code),
                        &failure.map(|f| &f.name),
                        &failure.map(|f| &f.message),
                        &now.to_system_time(),
                    ],
                )
                .await
                .map_err(failed)?;
                job.state = outcome.into_state(now);
            }
            tx.commit().await.map_err(failed)?;
            Ok(Finished { job, transition })
        })
        .await
        // The trigger's NOTIFY reaches this instance too; waking now saves the trip.
        .inspect(|finished| {
            if finished.transition == Transition::Apply {
                self.changes.finished_here(id);
            }
        })
    }

    async fn purge_batch(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let cutoff = jobs::expiry_cutoff(now, self.ttl).to_system_time();
        self.with_client("purge expired jobs", async |client| {
            let failed = |e| StoreError::backend("purge expired jobs", e);
            // SKIP LOCKED: instances purging at the same time share the work.
            let statement = client
                .prepare_cached(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at <= $1 \
                     ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .await
                .map_err(failed)?;
            client
                .execute(&statement, &[&cutoff, &i64::from(limit)])
                .await
                .map_err(failed)
        })
        .await
    }
}

async fn select_by_id(
    client: &impl GenericClient,
    id: Uuid,
    for_update: bool,
) -> Result<Option<Job>, StoreError> {
    let sql = if for_update {
        select_jobs!("id = $1 FOR UPDATE")
    } else {
        select_jobs!("id = $1")
    };
    query_job(client, "read a job", sql, &[&id]).await
}

async fn select_pending_duplicate(
    client: &impl GenericClient,
    new: &NewJob,
) -> Result<Option<Job>, StoreError> {
    let Some(hash) = &new.dedup_hash else {
        return Ok(None);
    };
    query_job(
        client,
        "look for a duplicate job",
        select_jobs!("client_id = $1 AND dedup_hash = $2 AND status = 'PENDING'"),
        &[&new.client_id, hash],
    )
    .await
}

/// At most one job, with a statement prepared once per connection.
async fn query_job(
    client: &impl GenericClient,
    operation: &'static str,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Job>, StoreError> {
    let failed = |e| StoreError::backend(operation, e);
    let statement = client.prepare_cached(sql).await.map_err(failed)?;
    let found = client.query_opt(&statement, params).await.map_err(failed)?;
    found.map(|found| row(&found)).transpose()
}

fn row(found: &tokio_postgres::Row) -> Result<Job, StoreError> {
    let failed = |e| StoreError::backend("decode a job", e);
    let time = |index: usize| -> Result<Timestamp, StoreError> {
        Ok(Timestamp::from_system_time(
            found.try_get(index).map_err(failed)?,
        ))
    };
    Row {
        id: found.try_get(column::ID).map_err(failed)?,
        client_id: found.try_get(column::CLIENT_ID).map_err(failed)?,
        kind: found.try_get(column::KIND).map_err(failed)?,
        status: found.try_get(column::STATUS).map_err(failed)?,
        eta: time(column::ETA)?,
        links: found
            .try_get::<_, Option<Json<Vec<Link>>>>(column::LINKS)
            .map_err(failed)?
            .map(|Json(links)| links),
        error_code: found.try_get(column::ERROR_CODE).map_err(failed)?,
        error_type: found.try_get(column::ERROR_TYPE).map_err(failed)?,
        error_message: found.try_get(column::ERROR_MESSAGE).map_err(failed)?,
        dedup_hash: found.try_get(column::DEDUP_HASH).map_err(failed)?,
        created_at: time(column::CREATED_AT)?,
        finished_at: found
            .try_get::<_, Option<std::time::SystemTime>>(column::FINISHED_AT)
            .map_err(failed)?
            .map(Timestamp::from_system_time),
    }
    .into_job()
}
