//! The job store's lifecycle rules, one suite for every backend.

use std::sync::Arc;
use std::time::Duration;

use compositions_jobs::config::{Config, DatabaseUrl, JobsConfig};
use compositions_jobs::jobs::{
    Failure, Kind, LifecycleError, Link, NewJob, Outcome, State, Status, Timestamp, Transition,
};
use compositions_jobs::{Access, JobStore, Store, StoreError, purge};
use compositions_tests::postgres::TestSchema;
use tempfile::TempDir;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The store's configuration for `database`, with a short TTL.
fn config(database: DatabaseUrl) -> Config {
    Config {
        database,
        jobs: JobsConfig {
            ttl: TTL,
            ..JobsConfig::default()
        },
        ..Config::default()
    }
}

/// A store under test, and what keeps its database alive until the test ends.
struct Backend {
    name: &'static str,
    url: DatabaseUrl,
    store: Store,
    _database: Database,
}

enum Database {
    Sqlite(TempDir),
    Postgres(TestSchema),
}

impl Backend {
    /// Opens another store on the same database, as another process would.
    async fn reopen(&self) -> Result<Store, StoreError> {
        Store::open(&config(self.url.clone()), Access::ReadWrite).await
    }
}

/// A fresh store of each backend: SQLite always, PostgreSQL when configured.
async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("jobs.db"));
    let mut backends = vec![Backend {
        name: "sqlite",
        store: Store::open(&config(url.clone()), Access::ReadWrite)
            .await
            .unwrap(),
        url,
        _database: Database::Sqlite(dir),
    }];
    if let Some(schema) = TestSchema::create().await {
        let url = DatabaseUrl::Postgres(schema.url.clone());
        backends.push(Backend {
            name: "postgres",
            store: Store::open(&config(url.clone()), Access::ReadWrite)
                .await
                .unwrap(),
            url,
            _database: Database::Postgres(schema),
        });
    }
    backends
}

fn new_job(client_id: &str, dedup_hash: Option<&str>) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        client_id: client_id.into(),
        kind: Kind::Sign,
        expected_duration: Duration::from_secs(20),
        dedup_hash: dedup_hash.map(str::to_owned),
    }
}

fn done(composition: &str) -> Outcome {
    Outcome::Done(vec![
        Link::new("eHealth/resources", format!("composition/{composition}")).unwrap(),
    ])
}

fn failed(code: i32) -> Outcome {
    Outcome::Failed(
        Failure::new(code, "INVALID_NEWBORN_CATEGORY", "Invalid newborn category").unwrap(),
    )
}

fn conflict(current: Status, requested: Status) -> LifecycleError {
    LifecycleError::Conflict { current, requested }
}

#[tokio::test]
async fn a_new_job_is_pending_with_an_eta() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let created = store.create(new_job("mis-1", None), now).await.unwrap();

        assert!(!created.deduplicated);
        let job = created.job;
        assert_eq!(job.id.get_version_num(), 4);
        assert_eq!(job.kind, Kind::Sign);
        assert_eq!(
            job.state,
            State::Pending {
                eta: now.plus(Duration::from_secs(20))
            }
        );
        assert_eq!(
            store.find_for_client(job.id, "mis-1", now).await.unwrap(),
            Some(job.clone())
        );
        assert_eq!(store.get(job.id).await.unwrap(), Some(job));
    }
}

#[tokio::test]
async fn only_the_owner_finds_a_job() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let job = store.create(new_job("mis-1", None), now).await.unwrap().job;

        assert_eq!(
            store.find_for_client(job.id, "mis-2", now).await.unwrap(),
            None
        );
        assert_eq!(
            store
                .find_for_client(Uuid::new_v4(), "mis-1", now)
                .await
                .unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn pending_becomes_done_once_and_repeating_it_is_idempotent() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let job = store.create(new_job("mis-1", None), now).await.unwrap().job;
        let later = now.plus(Duration::from_secs(3));

        let first = store.finish(job.id, done("a"), later).await.unwrap();
        assert_eq!(first.transition, Transition::Apply);
        assert_eq!(first.job.state.status(), Status::Done);
        assert_eq!(first.job.state.eta(), later);

        let again = store
            .finish(job.id, done("a"), later.plus(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(again.transition, Transition::AlreadyApplied);
        // Nothing changed, not even the finish time.
        assert_eq!(again.job, first.job);
        assert_eq!(store.get(job.id).await.unwrap(), Some(first.job));
    }
}

#[tokio::test]
async fn pending_becomes_failed_once_and_repeating_it_is_idempotent() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let job = store.create(new_job("mis-1", None), now).await.unwrap().job;

        let first = store.finish(job.id, failed(1081), now).await.unwrap();
        assert_eq!(first.transition, Transition::Apply);
        let State::Failed { failure, .. } = &first.job.state else {
            panic!("not FAILED: {:?}", first.job.state);
        };
        assert_eq!(failure.code, 1081);

        let again = store.finish(job.id, failed(1081), now).await.unwrap();
        assert_eq!(again.transition, Transition::AlreadyApplied);
        assert_eq!(again.job, first.job);
    }
}

#[tokio::test]
async fn a_finished_job_refuses_any_other_outcome() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let done_job = store.create(new_job("mis-1", None), now).await.unwrap().job;
        store.finish(done_job.id, done("a"), now).await.unwrap();
        let failed_job = store.create(new_job("mis-1", None), now).await.unwrap().job;
        store
            .finish(failed_job.id, failed(1081), now)
            .await
            .unwrap();

        let refusals = [
            (
                done_job.id,
                failed(1081),
                conflict(Status::Done, Status::Failed),
            ),
            (done_job.id, done("b"), conflict(Status::Done, Status::Done)),
            (
                failed_job.id,
                done("a"),
                conflict(Status::Failed, Status::Done),
            ),
            (
                failed_job.id,
                failed(1160),
                conflict(Status::Failed, Status::Failed),
            ),
        ];
        for (id, outcome, expected) in refusals {
            let before = store.get(id).await.unwrap();
            match store.finish(id, outcome, now).await {
                Err(StoreError::Lifecycle(error)) => assert_eq!(error, expected),
                other => panic!("expected {expected}, got {other:?}"),
            }
            assert_eq!(
                store.get(id).await.unwrap(),
                before,
                "a refused transition changed the job"
            );
        }
    }
}

#[tokio::test]
async fn finishing_an_unknown_job_is_not_found() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let id = Uuid::new_v4();
        let result = store.finish(id, done("a"), Timestamp::now()).await;
        assert!(
            matches!(result, Err(StoreError::NotFound(missing)) if missing == id),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_conflicting_transitions_leave_exactly_one_winner() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let store = Arc::new(store.clone());
        let job = store
            .create(new_job("mis-1", None), Timestamp::now())
            .await
            .unwrap()
            .job;
        let attempts = (0..16).map(|i| {
            let store = Arc::clone(&store);
            let outcome = if i % 2 == 0 {
                done(&format!("c{i}"))
            } else {
                failed(1000 + i)
            };
            tokio::spawn(async move { store.finish(job.id, outcome, Timestamp::now()).await })
        });
        let mut applied = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(finished) => {
                    assert_eq!(finished.transition, Transition::Apply);
                    applied += 1;
                }
                Err(StoreError::Lifecycle(LifecycleError::Conflict { .. })) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(applied, 1);
    }
}

#[tokio::test]
async fn a_duplicate_of_a_pending_job_returns_that_job() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let first = store
            .create(new_job("mis-1", Some("sha256:abc")), now)
            .await
            .unwrap();
        let second = store
            .create(new_job("mis-1", Some("sha256:abc")), now)
            .await
            .unwrap();
        assert!(second.deduplicated);
        assert_eq!(second.job, first.job);

        // Another client, another hash, or no hash: a new job.
        for (client, hash) in [
            ("mis-2", Some("sha256:abc")),
            ("mis-1", Some("sha256:def")),
            ("mis-1", None),
        ] {
            let other = store.create(new_job(client, hash), now).await.unwrap();
            assert!(!other.deduplicated);
            assert_ne!(other.job.id, first.job.id);
        }

        // Once the job has finished, the same request starts a new one.
        store.finish(first.job.id, done("a"), now).await.unwrap();
        let after = store
            .create(new_job("mis-1", Some("sha256:abc")), now)
            .await
            .unwrap();
        assert!(!after.deduplicated);
        assert_ne!(after.job.id, first.job.id);
    }
}

#[tokio::test]
async fn a_finished_job_expires_after_the_ttl_and_a_pending_one_never() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let finished = store.create(new_job("mis-1", None), now).await.unwrap().job;
        store.finish(finished.id, done("a"), now).await.unwrap();
        let pending = store.create(new_job("mis-1", None), now).await.unwrap().job;

        let just_before = now.plus(TTL).minus(Duration::from_millis(1));
        assert!(
            store
                .find_for_client(finished.id, "mis-1", just_before)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .find_for_client(finished.id, "mis-1", now.plus(TTL))
                .await
                .unwrap(),
            None
        );
        let much_later = now.plus(TTL * 10);
        assert!(
            store
                .find_for_client(pending.id, "mis-1", much_later)
                .await
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test]
async fn bad_producer_input_is_refused_before_anything_is_written() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let result = store.create(new_job("", None), Timestamp::now()).await;
        assert!(matches!(
            result,
            Err(StoreError::Lifecycle(LifecycleError::Invalid {
                field: "client_id",
                ..
            }))
        ));
        let result = store
            .create(new_job("mis\n1", None), Timestamp::now())
            .await;
        assert!(matches!(
            result,
            Err(StoreError::Lifecycle(LifecycleError::Invalid { .. }))
        ));
    }
    assert!(Failure::new(0, "X", "m").is_err());
    assert!(Failure::new(1127, "", "m").is_err());
    assert!(Failure::new(1127, "X", " ").is_err());
    assert!(Link::new("eHealth/resources", "").is_err());
    assert!(Link::new("eHealth/resources", "x".repeat(3000)).is_err());
}

#[tokio::test]
async fn transitions_survive_reopening_the_database() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let job = backend
            .store
            .create(new_job("mis-1", None), Timestamp::now())
            .await
            .unwrap()
            .job;
        let finished = backend
            .store
            .finish(job.id, failed(1127), Timestamp::now())
            .await
            .unwrap()
            .job;

        let reopened = backend.reopen().await.unwrap();

        assert_eq!(reopened.get(job.id).await.unwrap(), Some(finished));
    }
}

/// Runs SQL on a backend's database directly, as a producer in another language would.
async fn execute(backend: &Backend, sql: &str) -> Result<(), String> {
    match &backend._database {
        Database::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("jobs.db"))
            .and_then(|connection| connection.execute_batch(sql))
            .map_err(|e| e.to_string()),
        Database::Postgres(schema) => schema.execute(sql).await,
    }
}

#[tokio::test]
async fn the_schema_refuses_illegal_rows_from_any_writer() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let (id, zero, one) = match backend._database {
            Database::Sqlite(_) => ("'a'", "0", "1"),
            Database::Postgres(_) => ("gen_random_uuid()", "now()", "now()"),
        };
        let columns = "INSERT INTO jobs (id, client_id, kind, status, eta, created_at";
        let illegal = [
            // DONE without finished_at or links
            format!("{columns}) VALUES ({id}, 'c', 'create', 'DONE', {zero}, {zero})"),
            // PENDING with finished_at
            format!(
                "{columns}, finished_at) VALUES ({id}, 'c', 'create', 'PENDING', {zero}, {zero}, {one})"
            ),
            // FAILED without an error
            format!(
                "{columns}, finished_at) VALUES ({id}, 'c', 'create', 'FAILED', {zero}, {zero}, {one})"
            ),
            // an error on a DONE job
            format!(
                "{columns}, finished_at, links, error_code, error_type, error_message) \
                 VALUES ({id}, 'c', 'create', 'DONE', {zero}, {zero}, {one}, '[]', 1, 'X', 'm')"
            ),
            // lowercase status
            format!("{columns}) VALUES ({id}, 'c', 'create', 'pending', {zero}, {zero})"),
            // unknown kind
            format!("{columns}) VALUES ({id}, 'c', 'delete', 'PENDING', {zero}, {zero})"),
        ];
        for sql in &illegal {
            let error = execute(&backend, sql).await.expect_err(sql);
            assert!(
                error.contains("CHECK") || error.contains("check"),
                "{sql}: {error}"
            );
        }
        // The same statement with a legal state is accepted, so the CHECKs are what refused.
        execute(
            &backend,
            &format!("{columns}) VALUES ({id}, 'c', 'create', 'PENDING', {zero}, {zero})"),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_schema_refuses_every_change_but_the_transition() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let pending = store
            .create(new_job("mis-1", None), now)
            .await
            .unwrap()
            .job
            .id;
        let finished = store
            .create(new_job("mis-1", None), now)
            .await
            .unwrap()
            .job
            .id;
        store.finish(finished, done("a"), now).await.unwrap();
        let refused = [
            format!("UPDATE jobs SET links = '[]' WHERE id = '{finished}'"),
            format!(
                "UPDATE jobs SET status = 'PENDING', finished_at = NULL, links = NULL WHERE id = '{finished}'"
            ),
            format!("UPDATE jobs SET client_id = 'mis-2' WHERE id = '{pending}'"),
            format!("UPDATE jobs SET eta = created_at WHERE id = '{pending}'"),
            format!("UPDATE jobs SET dedup_hash = 'h' WHERE id = '{pending}'"),
        ];
        for sql in &refused {
            let error = execute(&backend, sql).await.expect_err(sql);
            assert!(
                error.contains("the only change a job may have is PENDING to DONE or FAILED"),
                "{sql}: {error}"
            );
        }
        assert_eq!(
            store.get(finished).await.unwrap().unwrap().state.status(),
            Status::Done
        );
        // The transition itself, as a producer writes it.
        let finished_at = match backend._database {
            Database::Sqlite(_) => "1",
            Database::Postgres(_) => "now()",
        };
        execute(
            &backend,
            &format!(
                "UPDATE jobs SET status = 'FAILED', finished_at = {finished_at}, error_code = 1, \
                 error_type = 'X', error_message = 'm' WHERE id = '{pending}' AND status = 'PENDING'"
            ),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let sql = match backend._database {
            Database::Sqlite(_) => "PRAGMA user_version = 99",
            Database::Postgres(_) => "UPDATE jobs_schema_version SET version = 99",
        };
        execute(&backend, sql).await.unwrap();

        let result = backend.reopen().await;

        assert!(
            matches!(result, Err(StoreError::SchemaTooNew { found: 99, .. })),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn purging_deletes_expired_jobs_in_batches_and_nothing_else() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let now = Timestamp::now();
        let long_ago = now.minus(TTL + Duration::from_secs(60));
        let mut expired = Vec::new();
        for i in 0..7 {
            let job = store
                .create(new_job("mis-1", None), long_ago)
                .await
                .unwrap()
                .job;
            store
                .finish(job.id, failed(1000 + i), long_ago)
                .await
                .unwrap();
            expired.push(job.id);
        }
        let fresh = store.create(new_job("mis-1", None), now).await.unwrap().job;
        store.finish(fresh.id, done("a"), now).await.unwrap();
        let old_but_pending = store
            .create(new_job("mis-1", None), long_ago)
            .await
            .unwrap()
            .job;

        assert_eq!(store.purge_batch(now, 3).await.unwrap(), 3);
        assert_eq!(purge(store, now, 3).await.unwrap(), 4);
        assert_eq!(purge(store, now, 3).await.unwrap(), 0);

        for id in expired {
            assert_eq!(store.get(id).await.unwrap(), None);
        }
        assert!(store.get(fresh.id).await.unwrap().is_some());
        assert!(store.get(old_but_pending.id).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn a_new_job_may_bring_its_own_id_but_never_a_taken_one() {
    for backend in backends().await {
        println!("backend: {}", backend.name);
        let store = &backend.store;
        let id = Uuid::new_v4();
        let now = Timestamp::now();
        let job = store
            .create(
                NewJob {
                    id,
                    ..new_job("mis-1", None)
                },
                now,
            )
            .await
            .unwrap()
            .job;
        assert_eq!(job.id, id);

        let again = store
            .create(
                NewJob {
                    id,
                    ..new_job("mis-2", None)
                },
                now,
            )
            .await;
        assert!(
            matches!(again, Err(StoreError::IdTaken(taken)) if taken == id),
            "{again:?}"
        );
        assert_eq!(store.get(id).await.unwrap(), Some(job));

        let nil = store
            .create(
                NewJob {
                    id: Uuid::nil(),
                    ..new_job("mis-1", None)
                },
                now,
            )
            .await;
        assert!(matches!(
            nil,
            Err(StoreError::Lifecycle(LifecycleError::Invalid {
                field: "id",
                ..
            }))
        ));
    }
}
