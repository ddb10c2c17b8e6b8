//! The SQLite backend: a file in WAL mode, one writer, a few readers.
//!
//! Reads run inline on the async worker. A lookup by primary key in WAL mode
//! never waits for writers and takes microseconds, less than a hop to the
//! blocking pool would cost; the readers' busy timeout bounds the rare stall.
//! The one scan (the metrics' count by status) goes to the blocking pool.
//! Writes are rare (producers and the CLI) and go through one connection on the
//! blocking pool, in `IMMEDIATE` transactions with `synchronous = FULL`, so an
//! acknowledged transition is on disk before the caller hears of it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use tokio::sync::watch;

use super::{
    Access, Changes, Created, Finished, JobCache, JobStore, Row, StoreError, column,
    outcome_columns,
};
use crate::config::JobsConfig;
use crate::jobs::{self, Job, Link, NewJob, Outcome, State, StatusCounts, Timestamp, Transition};

/// Each entry upgrades the schema by one version (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_jobs.sql"),
    include_str!("../../migrations/sqlite/0002_finished_log.sql"),
    include_str!("../../migrations/sqlite/0003_every_change_logged.sql"),
];

/// How long the log of finished jobs keeps a row: far longer than any
/// watcher lags behind while it works (a watcher that fails is down, and the
/// cache with it, until it looks again).
const FINISHED_LOG_KEPT: Duration = Duration::from_secs(3600);

const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// A job store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    /// How often to look for transitions by other processes.
    change_check_interval: Duration,
}

struct Inner {
    path: PathBuf,
    ttl: Duration,
    /// `None` when opened read-only.
    writer: Option<Mutex<Connection>>,
    readers: Box<[Mutex<Connection>]>,
    next_reader: AtomicUsize,
    /// Its `PRAGMA data_version` changes when any other connection commits.
    watcher: Mutex<Connection>,
    changes: Arc<Changes>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the file at `path` and applies migrations;
    /// read-only, opens an existing file and checks its schema, writing nothing.
    /// The folder must exist.
    pub async fn open(
        path: &Path,
        jobs: &JobsConfig,
        change_check_interval: Duration,
        access: Access,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let cache = JobCache::new(jobs.read_cache_entries, jobs.read_cache_max_age, jobs.ttl);
        let ttl = jobs.ttl;
        let inner = tokio::task::spawn_blocking(move || Inner::open(path, ttl, cache, access))
            .await
            .map_err(|e| StoreError::backend("open the database", e))??;
        Ok(Self {
            inner: Arc::new(inner),
            change_check_interval,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The wake-ups of this store's long polls.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.inner.changes
    }

    /// Wakes waiters whose jobs another connection (another process) finished,
    /// and keeps the read cache truthful.
    ///
    /// Every `change_check_interval`, one `PRAGMA data_version` (it reads shared
    /// memory, not the file) tells whether anyone else committed; only then is
    /// the log of finished jobs (`jobs_finished`) read past the last row seen,
    /// and exactly those jobs are forgotten and their waiters woken. The cache
    /// serves only while this runs.
    pub async fn watch_changes(self, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.change_check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seen = Seen::default();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => {
                    self.inner.changes.cache().set_live(false);
                    return;
                }
            }
            let looked_at = std::time::Instant::now();
            let looked = self.wake_finished(&mut seen);
            let changes = &self.inner.changes;
            if looked.is_ok() {
                // Every commit before the look has been seen (and forgotten).
                changes.cache().confirm(looked_at);
            }
            if looked.is_ok() != changes.feed().is_up() {
                changes.set_feed(looked.is_ok());
            }
            if let Err(e) = looked {
                tracing::warn!(error = %crate::chain::ErrorChain(&e), "looking for finished jobs failed");
            }
        }
    }

    fn wake_finished(&self, seen: &mut Seen) -> Result<(), StoreError> {
        let failed = |e| StoreError::backend("look for finished jobs", e);
        let watcher = lock(&self.inner.watcher);
        let version: i64 = watcher
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(failed)?;
        if seen.version.replace(version) == Some(version) {
            return Ok(());
        }
        let Some(after) = seen.finished else {
            // The first look: what finished before it is no news to anyone.
            let last = watcher
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM jobs_finished",
                    [],
                    |row| row.get(0),
                )
                .map_err(failed)?;
            seen.finished = Some(last);
            return Ok(());
        };
        let mut statement = watcher
            .prepare_cached("SELECT seq, id FROM jobs_finished WHERE seq > ?1 ORDER BY seq")
            .map_err(failed)?;
        let mut rows = statement.query([after]).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let seq: i64 = row.get(0).map_err(failed)?;
            let id: String = row.get(1).map_err(failed)?;
            if let Ok(id) = id.parse() {
                self.inner.changes.finished(id);
            }
            seen.finished = Some(seq);
        }
        Ok(())
    }

    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let writer = inner.writer.as_ref().ok_or_else(|| {
                StoreError::backend(
                    "write",
                    std::io::Error::other("the store was opened read-only"),
                )
            })?;
            write(&mut lock(writer)).map_err(|e| explain(e, &inner.path))
        })
        .await
        .map_err(|e| StoreError::backend("run a write", e))?
    }
}

impl Inner {
    fn open(
        path: PathBuf,
        ttl: Duration,
        cache: JobCache,
        access: Access,
    ) -> Result<Self, StoreError> {
        check_folder(&path)?;
        let writer = match access {
            Access::ReadWrite => Some(open_writer(&path).map_err(|e| explain(e, &path))?),
            Access::ReadOnly => {
                let reader =
                    open_reader(&path).map_err(|e| StoreError::backend("open read-only", e))?;
                check_schema(&reader)?;
                None
            }
        };

        let count = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        let readers = (0..count)
            .map(|_| open_reader(&path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::backend("open a reader", e))?;
        let watcher = open_reader(&path).map_err(|e| StoreError::backend("open a reader", e))?;
        Ok(Self {
            path,
            ttl,
            writer: writer.map(Mutex::new),
            readers: readers.into_boxed_slice(),
            next_reader: AtomicUsize::new(0),
            watcher: Mutex::new(watcher),
            changes: Arc::new(Changes::new(cache)),
        })
    }

    /// A free reader if there is one, else waits for the next in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let count = self.readers.len();
        (0..count)
            .find_map(|i| self.readers[(start + i) % count].try_lock().ok())
            .unwrap_or_else(|| lock(&self.readers[start % count]))
    }
}

/// The folder must exist: SQLite's own word for a missing one is only "unable to
/// open database file", so name the folder instead.
fn check_folder(path: &Path) -> Result<(), StoreError> {
    let Some(folder) = path
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty())
    else {
        return Ok(());
    };
    let problem = match std::fs::metadata(folder) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Ok(metadata) if !metadata.is_dir() => "is not a folder",
        // Anything else (no permission, say), SQLite reports as it can.
        _ => return Ok(()),
    };
    let error = std::io::Error::other(format!("the folder {} {problem}", folder.display()));
    Err(StoreError::backend("open", error))
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut writer = Connection::open(path).map_err(|e| StoreError::backend("open", e))?;
    configure_writer(&writer)?;
    migrate(&mut writer)?;
    Ok(writer)
}

/// SQLite says "unable to open database file" or "attempt to write a readonly
/// database" whatever the reason. When it could not open or write its files,
/// try them directly and put first what the operating system says (a read-only
/// file system, no permission, an immutable file).
fn explain(error: StoreError, path: &Path) -> StoreError {
    let StoreError::Backend { operation, source } = error else {
        return error;
    };
    let unexplained = source
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| {
            use rusqlite::ErrorCode::{CannotOpen, ReadOnly, SystemIoFailure};
            matches!(code, CannotOpen | ReadOnly | SystemIoFailure)
        });
    let source = match unexplained.then(|| os_cause(path)).flatten() {
        Some(cause) => Box::new(Explained { cause, source }),
        None => source,
    };
    StoreError::Backend { operation, source }
}

/// The first of the database's files that cannot be opened for writing, and why.
/// (Each is made if missing, empty, as SQLite itself would make it.)
fn os_cause(path: &Path) -> Option<String> {
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_path_buf(), beside("-wal"), beside("-shm")]
        .into_iter()
        .find_map(|file| {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file);
            opened
                .err()
                .map(|e| format!("cannot write {}: {e}", file.display()))
        })
}

/// A driver's error with the operating system's account of it first.
#[derive(Debug)]
struct Explained {
    cause: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

impl std::error::Error for Explained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection cannot leave it half-written: SQLite
    // rolls back an unfinished transaction when its guard drops.
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

fn configure_writer(connection: &Connection) -> Result<(), StoreError> {
    let failed = |e| StoreError::backend("configure the database", e);
    connection
        .busy_timeout(WRITER_BUSY_TIMEOUT)
        .map_err(failed)?;
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") {
        let refused = std::io::Error::other(format!("the database stays in {mode} mode"));
        return Err(StoreError::backend("enable WAL mode", refused));
    }
    // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss.
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(failed)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(READER_BUSY_TIMEOUT)?;
    Ok(connection)
}

/// For read-only use: the schema is exactly this binary's; nothing is written.
fn check_schema(connection: &Connection) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let found: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| StoreError::backend("check the schema", e))?;
    super::check_version(found, known)
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let failed = |e| StoreError::backend("migrate", e);
    // IMMEDIATE: two processes starting together take turns instead of racing.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(failed)?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    // Nothing is written when the schema is current, so that a server restarting
    // on a full disk still starts and answers polls, which only read.
    if found < known {
        for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
            tx.execute_batch(migration).map_err(failed)?;
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(failed)?;
    }
    tx.commit().map_err(failed)
}

impl JobStore for SqliteStore {
    async fn find_for_client(
        &self,
        id: Uuid,
        client_id: &str,
        now: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        let cutoff = jobs::expiry_cutoff(now, self.inner.ttl);
        let mut id_buf = Uuid::encode_buffer();
        let id: &str = id.hyphenated().encode_lower(&mut id_buf);
        query_job(
            &self.inner.reader(),
            "read a job",
            select_jobs!(
                "id = ?1 AND client_id = ?2 ",
                "AND (finished_at IS NULL OR finished_at > ?3)"
            ),
            params![id, client_id, cutoff.as_millis()],
        )
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        select_by_id(&self.inner.reader(), id)
    }

    /// A scan of the whole table (about 0.3 s a million jobs), so it runs on the
    /// blocking pool, never on a worker that answers polls.
    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let failed = |e| StoreError::backend("count jobs by status", e);
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let reader = inner.reader();
            let mut statement = reader
                .prepare_cached("SELECT status, count(*) FROM jobs GROUP BY status")
                .map_err(failed)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(failed)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(failed)?;
            super::status_counts(rows)
        })
        .await
        .map_err(|e| StoreError::backend("count jobs by status", e))?
    }

    async fn create(&self, new: NewJob, now: Timestamp) -> Result<Created, StoreError> {
        new.validate()?;
        self.write(move |connection| {
            let failed = |e| StoreError::backend("create a job", e);
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(failed)?;
            if let Some(existing) = select_pending_duplicate(&tx, &new)? {
                return Ok(Created {
                    job: existing,
                    deduplicated: true,
                });
            }
            if select_by_id(&tx, new.id)?.is_some() {
                return Err(StoreError::IdTaken(new.id));
            }
            let job = Job {
                id: new.id,
                client_id: new.client_id,
                kind: new.kind,
                state: State::Pending {
                    eta: now.plus(new.expected_duration),
                },
                created_at: now,
                dedup_hash: new.dedup_hash,
            };
            tx.execute(
                "INSERT INTO jobs (id, client_id, kind, status, eta, dedup_hash, created_at) \
                 VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6)",
                params![
                    job.id.to_string(),
                    job.client_id,
                    job.kind.as_str(),
                    job.state.eta().as_millis(),
                    job.dedup_hash,
                    now.as_millis(),
                ],
            )
            .map_err(failed)?;
            tx.commit().map_err(failed)?;
            Ok(Created {
                job,
                deduplicated: false,
            })
        })
        .await
    }

    async fn finish(
        &self,
        id: Uuid,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Finished, StoreError> {
        self.write(move |connection| {
            let failed = |e| StoreError::backend("finish a job", e);
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(failed)?;
            let mut job = select_by_id(&tx, id)?.ok_or(StoreError::NotFound(id))?;
            let transition = jobs::decide(&job.state, &outcome)?;
            if transition == Transition::Apply {
                let (links, failure) = outcome_columns(&outcome);
                let links = links.map(to_json).transpose()?;
                tx.execute(
                    "UPDATE jobs SET status = ?2, links = ?3, error_code = ?4, error_type = ?5, \
                     error_message = ?6, finished_at = ?7 WHERE id = ?1 AND status = 'PENDING'",
                    params![
                        id.to_string(),
                        outcome.status().as_str(),
                        links,
                        failure.map(|f| f.code),
                        failure.map(|f| &f.name),
                        failure.map(|f| &f.message),
                        now.as_millis(),
                    ],
                )
                .map_err(failed)?;
                job.state = outcome.into_state(now);
            }
            tx.commit().map_err(failed)?;
            Ok(Finished { job, transition })
        })
        .await
        .inspect(|finished| {
            if finished.transition == Transition::Apply {
                self.inner.changes.finished(id);
            }
        })
    }

    async fn purge_batch(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let cutoff = jobs::expiry_cutoff(now, self.inner.ttl);
        self.write(move |connection| {
            let deleted = connection
                .prepare_cached(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
                     WHERE finished_at IS NOT NULL AND finished_at <= ?1 LIMIT ?2)",
                )
                .and_then(|mut statement| statement.execute(params![cutoff.as_millis(), limit]))
                .map_err(|e| StoreError::backend("purge expired jobs", e))?;
            // The log of finished jobs, with what it no longer needs to say.
            let kept = now.minus(FINISHED_LOG_KEPT).as_millis();
            connection
                .prepare_cached("DELETE FROM jobs_finished WHERE finished_at <= ?1")
                .and_then(|mut statement| statement.execute(params![kept]))
                .map_err(|e| StoreError::backend("purge the log of finished jobs", e))?;
            Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
        })
        .await
    }
}

/// What the change watcher has seen: the last `data_version`, and the last
/// row of the log of finished jobs.
#[derive(Debug, Default)]
struct Seen {
    version: Option<i64>,
    finished: Option<i64>,
}

/// At most one job, with a statement prepared once per connection.
fn query_job(
    connection: &Connection,
    operation: &'static str,
    sql: &'static str,
    params: impl rusqlite::Params,
) -> Result<Option<Job>, StoreError> {
    let failed = |e| StoreError::backend(operation, e);
    connection
        .prepare_cached(sql)
        .map_err(failed)?
        .query_row(params, job_from_row)
        .optional()
        .map_err(failed)?
        .transpose()
}

fn select_by_id(connection: &Connection, id: Uuid) -> Result<Option<Job>, StoreError> {
    query_job(
        connection,
        "read a job",
        select_jobs!("id = ?1"),
        params![id.to_string()],
    )
}

fn select_pending_duplicate(
    connection: &Connection,
    new: &NewJob,
) -> Result<Option<Job>, StoreError> {
    let Some(hash) = &new.dedup_hash else {
        return Ok(None);
    };
    query_job(
        connection,
        "look for a duplicate job",
        select_jobs!("client_id = ?1 AND dedup_hash = ?2 AND status = 'PENDING'"),
        params![new.client_id, hash],
    )
}

fn to_json(links: &[Link]) -> Result<String, StoreError> {
    serde_json::to_string(links).map_err(|e| StoreError::backend("encode links", e))
}

/// Reads a row into the shared [`Row`]; text that is not what the schema says is
/// reported as corrupt.
fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job, StoreError>> {
    let id: String = row.get(column::ID)?;
    let links: Option<String> = row.get(column::LINKS)?;
    let raw = Row {
        id: Uuid::nil(),
        client_id: row.get(column::CLIENT_ID)?,
        kind: row.get(column::KIND)?,
        status: row.get(column::STATUS)?,
        eta: Timestamp::from_millis(row.get(column::ETA)?),
        links: None,
        error_code: row.get(column::ERROR_CODE)?,
        error_type: row.get(column::ERROR_TYPE)?,
        error_message: row.get(column::ERROR_MESSAGE)?,
        dedup_hash: row.get(column::DEDUP_HASH)?,
        created_at: Timestamp::from_millis(row.get(column::CREATED_AT)?),
        finished_at: row
            .get::<_, Option<i64>>(column::FINISHED_AT)?
            .map(Timestamp::from_millis),
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.clone(),
        reason,
    };
    let decoded = (|| {
        let id = id
            .parse()
            .map_err(|e| corrupt(format!("id is not a UUID: {e}")))?;
        let links = links
            .map(|links| serde_json::from_str(&links))
            .transpose()
            .map_err(|e| corrupt(format!("links are not valid JSON: {e}")))?;
        Row { id, links, ..raw }.into_job()
    })();
    Ok(decoded)
}
