//! The job store: one interface, one backend per database.
//!
//! [`JobStore`] is what the HTTP layer and the CLI need and nothing more. Every
//! backend applies the same lifecycle rules ([`crate::jobs::decide`]) inside its own
//! transaction and reads rows through the same `Row::into_job`, so the rules live
//! in one place and the SQL only persists them. [`Store`] picks the backend from
//! the database URL; it is an enum rather than a trait object so that the hot read
//! path is a direct call without boxing.

/// `SELECT` of every column a `Row` holds, in [`column`](mod@column)'s order, `WHERE` the
/// conditions given: one query shape for every backend (their placeholders are
/// theirs). A macro, so that each query is a `&'static str` both the SQLite and
/// the PostgreSQL statement caches can key by.
macro_rules! select_jobs {
    ($($condition:literal),+) => {
        concat!(
            "SELECT id, client_id, kind, status, eta, links, error_code, error_type, ",
            "error_message, dedup_hash, created_at, finished_at FROM jobs WHERE ",
            $($condition),+
        )
    };
}

mod cache;
pub(crate) mod changes;
mod postgres;
mod postgres_tls;
mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{Config, DatabaseUrl};
use crate::jobs::{
    Failure, Job, Kind, LifecycleError, Link, NewJob, Outcome, State, Status, StatusCounts,
    Timestamp, Transition,
};

pub(crate) use cache::JobCache;
pub(crate) use changes::Changes;
pub(crate) use postgres::PostgresStore;
pub(crate) use sqlite::SqliteStore;

/// Something a store could not do, named for what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No job with this id.
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// A new job asked for an id that another job has.
    #[error("a job with id {0} already exists")]
    IdTaken(Uuid),
    /// The request breaks a lifecycle rule.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The database failed, could not be reached, or did not answer in time.
    #[error("job store failed to {operation}")]
    Backend {
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Read-only use of a database whose schema is older than this binary's
    /// (which only `serve` or a writing command may migrate).
    #[error(
        "the job store's schema is version {found}, older than this binary's {known}: \
         `compositions-jobs serve` (or any command that writes) migrates it"
    )]
    SchemaTooOld {
        /// The version in the database (0: none).
        found: i64,
        /// The version this binary knows.
        known: i64,
    },
    /// The database holds a schema this binary does not know.
    #[error("the job store's schema is version {found}, newer than this binary's {known}")]
    SchemaTooNew {
        /// The version in the database.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// A stored row breaks an invariant the schema should have kept.
    #[error("stored job {id} is corrupt: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn backend(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            operation,
            source: Box::new(source),
        }
    }
}

/// A connection pool's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open.
    pub size: usize,
    /// Connections idle.
    pub available: usize,
    /// The most it opens.
    pub max_size: usize,
}

/// What a store is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes; migrates the schema first.
    ReadWrite,
    /// Reads only: writes nothing at all (no migration), so a role that may only
    /// `SELECT` (or a read-only file) will do; the schema must be current.
    ReadOnly,
}

/// Whether a schema of version `found` may be read by this binary, which knows
/// `known`, without migrating.
pub(crate) fn check_version(found: i64, known: i64) -> Result<(), StoreError> {
    match found.cmp(&known) {
        std::cmp::Ordering::Less => Err(StoreError::SchemaTooOld { found, known }),
        std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew { found, known }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// A new job, or the pending one it duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The job the producer should report.
    pub job: Job,
    /// True when an existing pending job with the same dedup hash was returned.
    pub deduplicated: bool,
}

/// A finished job and whether this call finished it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The job, now terminal.
    pub job: Job,
    /// `AlreadyApplied` when the job had already finished exactly this way.
    pub transition: Transition,
}

/// What every backend provides.
pub trait JobStore: Send + Sync {
    /// The job `id` if it belongs to `client_id` and has not expired at `now`.
    ///
    /// One indexed query: another client's job and an unknown id are the same
    /// `None`, so callers cannot leak which jobs exist.
    fn find_for_client(
        &self,
        id: Uuid,
        client_id: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// The job `id` whoever owns it, expired or not (for operators).
    fn get(&self, id: Uuid) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// How many jobs are in each status (for `/metrics`): a scan of the table.
    fn count_by_status(&self) -> impl Future<Output = Result<StatusCounts, StoreError>> + Send;

    /// Creates a pending job, or returns the client's pending job with the same
    /// dedup hash.
    fn create(
        &self,
        new: NewJob,
        now: Timestamp,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// Finishes a pending job, following [`crate::jobs::decide`].
    fn finish(
        &self,
        id: Uuid,
        outcome: Outcome,
        now: Timestamp,
    ) -> impl Future<Output = Result<Finished, StoreError>> + Send;

    /// Deletes up to `limit` jobs that had expired at `now`; returns how many.
    fn purge_batch(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The configured backend.
#[derive(Clone, Debug)]
pub enum Store {
    /// A SQLite file: the embedded default.
    Sqlite(SqliteStore),
    /// A PostgreSQL database shared by several instances.
    Postgres(PostgresStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            Store::Sqlite($backend) => $call.await,
            Store::Postgres($backend) => $call.await,
        }
    };
}

impl Store {
    /// Opens `config.database` for `access` (read-write applies migrations),
    /// with what else the backend reads from `config`: the TTL and the read
    /// cache (`jobs`), and the pool and TLS (`postgres`) or the change check
    /// (`polling.change_check_interval`).
    pub async fn open(config: &Config, access: Access) -> Result<Self, StoreError> {
        match &config.database {
            DatabaseUrl::Sqlite(path) => Ok(Self::Sqlite(
                SqliteStore::open(
                    path,
                    &config.jobs,
                    config.polling.change_check_interval,
                    access,
                )
                .await?,
            )),
            DatabaseUrl::Postgres(url) => Ok(Self::Postgres(
                PostgresStore::open(url, &config.jobs, &config.postgres, access).await?,
            )),
        }
    }
    /// Closes the PostgreSQL pool at shutdown (SQLite's connections close as they
    /// are dropped).
    pub fn close(&self) {
        if let Self::Postgres(store) = self {
            store.close();
        }
    }

    /// The connection pool's size, idle connections and limit (`None` for a
    /// backend without a pool).
    pub fn pool_status(&self) -> Option<PoolStatus> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(store) => Some(store.pool_status()),
        }
    }

    /// [`JobStore::find_for_client`] from the read cache alone: `None` when it
    /// cannot answer (the job is not there, or the change feed is down).
    pub fn cached(&self, id: Uuid, client_id: &str, now: Timestamp) -> Option<Option<Job>> {
        self.changes().cache().get(id, client_id, now)
    }

    /// [`JobStore::find_for_client`] from the database, remembering the job in
    /// the read cache.
    pub async fn read_through(
        &self,
        id: Uuid,
        client_id: &str,
        now: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        let cache = self.changes().cache();
        let ticket = cache.ticket();
        let found = dispatch!(self, store => store.find_for_client(id, client_id, now))?;
        if let Some(job) = &found {
            cache.insert(job, ticket);
        }
        Ok(found)
    }

    /// The wake-ups of this store's long polls.
    pub fn changes(&self) -> &Arc<Changes> {
        match self {
            Self::Sqlite(store) => store.changes(),
            Self::Postgres(store) => store.changes(),
        }
    }

    /// Wakes waiters when another process finishes their jobs, until `shutdown`
    /// changes: the backend's change feed (see [`Changes`]).
    pub async fn watch_changes(self, shutdown: watch::Receiver<bool>) {
        match self {
            Self::Sqlite(store) => store.watch_changes(shutdown).await,
            Self::Postgres(store) => store.watch_changes(shutdown).await,
        }
    }
}

impl JobStore for Store {
    async fn find_for_client(
        &self,
        id: Uuid,
        client_id: &str,
        now: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        match self.cached(id, client_id, now) {
            Some(answer) => Ok(answer),
            None => self.read_through(id, client_id, now).await,
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        dispatch!(self, store => store.get(id))
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        dispatch!(self, store => store.count_by_status())
    }

    async fn create(&self, new: NewJob, now: Timestamp) -> Result<Created, StoreError> {
        dispatch!(self, store => store.create(new, now))
    }

    async fn finish(
        &self,
        id: Uuid,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Finished, StoreError> {
        dispatch!(self, store => store.finish(id, outcome, now))
    }

    async fn purge_batch(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        dispatch!(self, store => store.purge_batch(now, limit))
    }
}

/// Deletes every job expired at `now`, `batch` rows at a time so that no single
/// statement holds locks for long. Returns how many were deleted.
pub async fn purge(store: &impl JobStore, now: Timestamp, batch: u32) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let deleted = store.purge_batch(now, batch).await?;
        total += deleted;
        if deleted < u64::from(batch) {
            return Ok(total);
        }
        // Let requests in between batches.
        tokio::task::yield_now().await;
    }
}

/// Purges expired jobs every `every` until `shutdown` changes. The first purge is
/// one interval after start, so that instances restarting together do not all
/// purge at once.
pub(crate) async fn purge_periodically(
    store: Store,
    every: Duration,
    batch: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => match purge(&store, Timestamp::now(), batch).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "purged expired jobs"),
                Err(e) => tracing::warn!(error = %crate::chain::ErrorChain(&e), "purging expired jobs failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Where each column is in the rows `select_jobs!` selects: rows are read by
/// position, not by name (a test checks that the two lists agree).
pub(crate) mod column {
    pub(crate) const ID: usize = 0;
    pub(crate) const CLIENT_ID: usize = 1;
    pub(crate) const KIND: usize = 2;
    pub(crate) const STATUS: usize = 3;
    pub(crate) const ETA: usize = 4;
    pub(crate) const LINKS: usize = 5;
    pub(crate) const ERROR_CODE: usize = 6;
    pub(crate) const ERROR_TYPE: usize = 7;
    pub(crate) const ERROR_MESSAGE: usize = 8;
    pub(crate) const DEDUP_HASH: usize = 9;
    pub(crate) const CREATED_AT: usize = 10;
    pub(crate) const FINISHED_AT: usize = 11;
}

/// A row as every backend reads it, before its invariants are checked.
pub(crate) struct Row {
    pub id: Uuid,
    pub client_id: String,
    pub kind: String,
    pub status: String,
    pub eta: Timestamp,
    pub links: Option<Vec<Link>>,
    pub error_code: Option<i32>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub dedup_hash: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

impl Row {
    /// The job this row stores; a row that breaks an invariant is reported as
    /// corrupt, never guessed at.
    pub(crate) fn into_job(self) -> Result<Job, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: self.id.to_string(),
            reason,
        };
        let status = self
            .status
            .parse::<Status>()
            .map_err(|e| corrupt(e.to_string()))?;
        let kind = self
            .kind
            .parse::<Kind>()
            .map_err(|e| corrupt(e.to_string()))?;
        let state = match (status, self.finished_at) {
            (Status::Pending, None) => State::Pending { eta: self.eta },
            (Status::Done, Some(finished_at)) => State::Done {
                links: self
                    .links
                    .ok_or_else(|| corrupt("DONE without links".into()))?,
                finished_at,
            },
            (Status::Failed, Some(finished_at)) => {
                match (self.error_code, self.error_type, self.error_message) {
                    (Some(code), Some(name), Some(message)) => State::Failed {
                        failure: Failure {
                            code,
                            name,
                            message,
                        },
                        finished_at,
                    },
                    _ => return Err(corrupt("FAILED without an error".into())),
                }
            }
            (Status::Pending, Some(_)) => {
                return Err(corrupt("PENDING with a finished_at".into()));
            }
            (Status::Done | Status::Failed, None) => {
                return Err(corrupt(format!("{status} without a finished_at")));
            }
        };
        Ok(Job {
            id: self.id,
            client_id: self.client_id,
            kind,
            state,
            created_at: self.created_at,
            dedup_hash: self.dedup_hash,
        })
    }
}

/// Counts read from `SELECT status, count(*) … GROUP BY status` rows; a status
/// this binary does not know is a corrupt store.
pub(crate) fn status_counts(
    rows: impl IntoIterator<Item = (String, i64)>,
) -> Result<StatusCounts, StoreError> {
    let mut counts = StatusCounts::default();
    for (status, count) in rows {
        let parsed = status.parse::<Status>().map_err(|e| StoreError::Corrupt {
            id: format!("(the jobs in status {status:?})"),
            reason: e.to_string(),
        })?;
        counts.add(parsed, u64::try_from(count).unwrap_or_default());
    }
    Ok(counts)
}

/// The columns a transition writes: links for DONE, the error for FAILED.
pub(crate) fn outcome_columns(outcome: &Outcome) -> (Option<&[Link]>, Option<&Failure>) {
    match outcome {
        Outcome::Done(links) => (Some(links), None),
        Outcome::Failed(failure) => (None, Some(failure)),
    }
}

#[cfg(test)]
mod tests {
    use super::column;

    /// `column`'s positions are those of `select_jobs!`'s list.
    #[test]
    fn the_column_positions_are_the_select_list() {
        let sql = select_jobs!("1 = 1");
        let list = sql
            .trim_start_matches("SELECT ")
            .split(" FROM ")
            .next()
            .unwrap_or_default();
        let names: Vec<&str> = list.split(", ").collect();
        let positions = [
            ("id", column::ID),
            ("client_id", column::CLIENT_ID),
            ("kind", column::KIND),
            ("status", column::STATUS),
            ("eta", column::ETA),
            ("links", column::LINKS),
            ("error_code", column::ERROR_CODE),
            ("error_type", column::ERROR_TYPE),
            ("error_message", column::ERROR_MESSAGE),
            ("dedup_hash", column::DEDUP_HASH),
            ("created_at", column::CREATED_AT),
            ("finished_at", column::FINISHED_AT),
        ];
        assert_eq!(names.len(), positions.len());
        for (name, position) in positions {
            assert_eq!(names[position], name);
        }
    }
}
