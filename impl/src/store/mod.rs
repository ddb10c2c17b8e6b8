//! The job store: one interface, one backend per database.
//!
//! [`JobStore`] is what the HTTP layer and the CLI need and nothing more. Every
//! backend applies the same lifecycle rules ([`crate::jobs::decide`]) inside its own
//! transaction, so the rules live in one place and the SQL only persists them.
//! [`Store`] picks the backend from the database URL; it is an enum rather than a
//! trait object so that the hot read path is a direct call without boxing.

mod sqlite;

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::config::DatabaseUrl;
use crate::jobs::{Job, LifecycleError, NewJob, Outcome, Timestamp, Transition};

pub use sqlite::SqliteStore;

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
    /// The database failed or could not be reached.
    #[error("job store failed to {operation}")]
    Backend {
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
}

/// The configured backend.
#[derive(Clone, Debug)]
pub enum Store {
    /// A SQLite file: the embedded default.
    Sqlite(SqliteStore),
}

impl Store {
    /// Opens the database at `url`, applying migrations. Finished jobs expire
    /// after `ttl`.
    pub async fn open(url: &DatabaseUrl, ttl: Duration) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::Sqlite(path) => Ok(Self::Sqlite(SqliteStore::open(path, ttl).await?)),
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
        match self {
            Self::Sqlite(store) => store.find_for_client(id, client_id, now).await,
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        match self {
            Self::Sqlite(store) => store.get(id).await,
        }
    }

    async fn create(&self, new: NewJob, now: Timestamp) -> Result<Created, StoreError> {
        match self {
            Self::Sqlite(store) => store.create(new, now).await,
        }
    }

    async fn finish(
        &self,
        id: Uuid,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Finished, StoreError> {
        match self {
            Self::Sqlite(store) => store.finish(id, outcome, now).await,
        }
    }
}
