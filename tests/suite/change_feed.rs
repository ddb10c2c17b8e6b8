//! PostgreSQL's change feed when the network goes silent rather than failing:
//! the service reaches PostgreSQL through a relay the test controls, which can
//! hold the NOTIFY listener's connection open and let nothing through. The feed
//! must always be either working or known to be down, and long polls must hear
//! of transitions made by other processes either way.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use compositions_jobs::config::{Config, DatabaseUrl};
use compositions_jobs::{Access, JobStore, Store};
use compositions_tests::postgres::TestSchema;
use compositions_tests::relay::Relay;
use compositions_tests::{TestContext, complete, job_path, raw, sample, tokens};
use uuid::Uuid;

const LISTENER_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before the listener connects again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// What this shared machine may add to any deadline.
const SLACK: Duration = Duration::from_millis(1500);

/// The test schema's URL, through `relay`, in plain text (the relay reads it).
fn through(relay: &Relay, schema: &TestSchema) -> String {
    let (_, rest) = schema.url.split_once('@').unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    format!(
        "postgres://postgres@{}/{path}&sslmode=disable",
        relay.addr()
    )
}

fn upstream(schema: &TestSchema) -> SocketAddr {
    let (_, rest) = schema.url.split_once('@').unwrap();
    let (authority, _) = rest.split_once('/').unwrap();
    use std::net::ToSocketAddrs;
    authority.to_socket_addrs().unwrap().next().unwrap()
}

fn configure(config: &mut Config, url: String) {
    config.database = DatabaseUrl::Postgres(url);
    config.postgres.listener_timeout = LISTENER_TIMEOUT;
    config.postgres.connect_timeout = Duration::from_secs(2);
    config.postgres.query_timeout = Duration::from_secs(2);
}

async fn metric(ctx: &TestContext, name: &str) -> f64 {
    sample(&ctx.metrics().await, name)
}

async fn until(what: &str, within: Duration, condition: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A long poll of `job` (up to 25 s), answered when it finishes; resolves to the
/// status it read and when the answer came.
fn long_poll(ctx: &TestContext, job: Uuid) -> tokio::task::JoinHandle<(String, Instant)> {
    let (addr, path) = (ctx.addr, job_path(job));
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    tokio::spawn(async move {
        let response = raw::request(
            addr,
            "GET",
            &path,
            &[("Authorization", &bearer), ("Prefer", "wait=25")],
        )
        .await;
        assert_eq!(response.status, 200);
        let status = response.json()["data"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        (status, Instant::now())
    })
}

/// A long poll of a new job, then `producer` finishes it: how long after the
/// finish the long poll answered.
async fn heard_after(ctx: &TestContext, producer: &Store) -> Duration {
    let job = ctx.create_job("mis-1").await.id;
    let waiting = long_poll(ctx, job);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finished_at = Instant::now();
    complete(producer, job, Uuid::new_v4()).await;
    let (status, answered) = waiting.await.unwrap();
    assert_eq!(status, "DONE");
    answered - finished_at
}

#[tokio::test]
async fn a_silent_listener_is_noticed_and_long_polls_still_hear_of_transitions() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let relay = Relay::start(upstream(&schema)).await;
    let url = through(&relay, &schema);
    let ctx = TestContext::with_config(|config| configure(config, url)).await;
    // Another process: its own connections, straight to PostgreSQL.
    let producer = Store::open(
        &Config {
            database: DatabaseUrl::Postgres(schema.url.clone()),
            ..ctx.config.clone()
        },
        Access::ReadWrite,
    )
    .await
    .unwrap();
    until("the feed is up", Duration::from_secs(5), async || {
        metric(&ctx, "compositions_jobs_store_change_feed_up").await == 1.0
    })
    .await;

    // The network goes silent on the listener's connection.
    let job = ctx.create_job("mis-1").await.id;
    let waiting = long_poll(&ctx, job);
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.silence_listeners(true);
    let silent_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    complete(&producer, job, Uuid::new_v4()).await;
    let (status, answered) = waiting.await.unwrap();
    assert_eq!(status, "DONE");
    let took = answered - silent_at;
    assert!(
        took < LISTENER_TIMEOUT + FIRST_BACKOFF + SLACK,
        "the long poll heard of it {took:?} after the silence began"
    );
    assert_eq!(
        metric(&ctx, "compositions_jobs_store_change_feed_up").await,
        0.0
    );
    assert!(metric(&ctx, "compositions_jobs_store_change_feed_losses_total").await >= 1.0);

    // Still silent: every try to listen again is silent too, and given up in
    // time; long polls keep hearing, within a try and a back-off.
    let took = heard_after(&ctx, &producer).await;
    // A try: connect, then LISTEN until query_timeout; the back-off is at most 5 s.
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(5) + SLACK,
        "{took:?} while the listener stays silent"
    );

    // The network works again: the feed is back, and wakes long polls at once.
    relay.silence_listeners(false);
    until("the feed is back", Duration::from_secs(10), async || {
        metric(&ctx, "compositions_jobs_store_change_feed_up").await == 1.0
    })
    .await;
    assert!(metric(&ctx, "compositions_jobs_store_change_feed_recoveries_total").await >= 1.0);
    let took = heard_after(&ctx, &producer).await;
    assert!(
        took < Duration::from_millis(500),
        "{took:?} once the feed is back"
    );
    producer.close();
}

/// A server that accepts the connection and then says nothing: connecting is
/// given up within `postgres.connect_timeout`, start-up included (tokio-postgres'
/// own timeout covers only the socket).
#[tokio::test]
async fn a_server_that_never_answers_the_start_up_is_given_up_in_time() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let relay = Relay::start(upstream(&schema)).await;
    relay.silence_new_connections(true);
    let mut config = Config {
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        dev: true,
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..Config::default()
    };
    configure(&mut config, through(&relay, &schema));
    let config = config.validated().unwrap();
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = compositions_jobs::start_server(config, listener).await;
    assert!(refused.is_err(), "it started on a silent server");
    assert!(
        started.elapsed() < Duration::from_secs(2) + SLACK,
        "gave up after {:?}",
        started.elapsed()
    );
}

/// The reads of the polling path that reached the database so far.
async fn reads(ctx: &TestContext) -> f64 {
    metric(ctx, "compositions_jobs_store_read_duration_seconds_count").await
}

/// The owner's poll of `job`: its status and body.
async fn poll(ctx: &TestContext, job: Uuid) -> (u16, serde_json::Value) {
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let response = raw::request(
        ctx.addr,
        "GET",
        &job_path(job),
        &[("Authorization", &bearer)],
    )
    .await;
    let body = if response.body.is_empty() {
        serde_json::Value::Null
    } else {
        response.json()
    };
    (response.status, body)
}

/// Until the read cache answers `job` for its owner as the database does.
async fn until_cached_as_stored(ctx: &TestContext, job: Uuid) {
    until(
        "the announcement is taken",
        Duration::from_secs(5),
        async || {
            let now = compositions_jobs::jobs::Timestamp::now();
            let cached = ctx.server_store().cached(job, "mis-1", now);
            let stored = ctx.store.get(job).await.unwrap();
            cached.is_some_and(|cached| cached == stored)
        },
    )
    .await;
}

/// Until the read cache no longer holds `job`.
async fn until_forgotten(ctx: &TestContext, job: Uuid, what: &str) {
    until(what, Duration::from_secs(5), async || {
        let now = compositions_jobs::jobs::Timestamp::now();
        ctx.server_store().cached(job, "mis-1", now).is_none()
    })
    .await;
}

/// PostgreSQL announces every new and finished row whole, and every deleted
/// id: the read cache takes them as they come, exactly as the database holds
/// them, and the polls that follow need no read.
#[tokio::test]
async fn announced_rows_are_answered_from_memory_as_the_database_holds_them() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let ctx = TestContext::with_config(|config| configure(config, schema.url.clone())).await;
    until("the feed is up", Duration::from_secs(5), async || {
        metric(&ctx, "compositions_jobs_store_change_feed_up").await == 1.0
    })
    .await;

    // Created by another process: its first poll is answered from memory.
    let job = ctx.create_job("mis-1").await.id;
    until_cached_as_stored(&ctx, job).await;
    let before = reads(&ctx).await;
    assert_eq!(poll(&ctx, job).await.1["data"]["status"], "PENDING");

    // Finished by a producer's plain SQL, with text the JSON must carry intact.
    let message = "Висновок уже існує: \"quotes\", \\ and \u{1F600}";
    schema
        .execute(&format!(
            "UPDATE jobs SET status = 'FAILED', finished_at = now(), error_code = 1127, \
             error_type = 'FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS', \
             error_message = '{message}' WHERE id = '{job}' AND status = 'PENDING'"
        ))
        .await
        .unwrap();
    until_cached_as_stored(&ctx, job).await;
    let (status, body) = poll(&ctx, job).await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (200, Some("FAILED"))
    );
    assert_eq!(body["data"]["error"]["message"], message);
    assert_eq!(reads(&ctx).await, before, "no poll read the database");

    // A finished row too long to announce is announced by its id: read.
    let long = ctx.create_job("mis-1").await.id;
    until_cached_as_stored(&ctx, long).await;
    let links = (0..100)
        .map(|i| {
            format!(
                r#"{{"entity": "eHealth/resources", "href": "composition/{}-{i}"}}"#,
                Uuid::new_v4()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    assert!(links.len() > 8000);
    schema
        .execute(&format!(
            "UPDATE jobs SET status = 'DONE', finished_at = now(), links = '[{links}]' \
             WHERE id = '{long}'"
        ))
        .await
        .unwrap();
    until_forgotten(&ctx, long, "the long row is forgotten").await;
    let before = reads(&ctx).await;
    let (status, body) = poll(&ctx, long).await;
    assert_eq!(
        (status, body["data"]["links"].as_array().map(Vec::len)),
        (200, Some(100))
    );
    assert_eq!(reads(&ctx).await, before + 1.0);

    // Deleted by hand: forgotten, and the next poll finds nothing.
    schema
        .execute(&format!("DELETE FROM jobs WHERE id = '{job}'"))
        .await
        .unwrap();
    until(
        "the deleted job is gone",
        Duration::from_secs(5),
        async || poll(&ctx, job).await.0 == 404,
    )
    .await;

    // A bulk load is not announced: its jobs are read on their first poll.
    let bulk = Uuid::new_v4();
    schema
        .execute(&format!(
            "INSERT INTO jobs (id, client_id, kind, status, eta, created_at) \
             SELECT CASE WHEN n = 0 THEN '{bulk}'::uuid ELSE gen_random_uuid() END, \
             'mis-1', 'create', 'PENDING', now(), now() FROM generate_series(0, 100) AS n"
        ))
        .await
        .unwrap();
    // Announcements come in commit order: once a later job is in, the bulk
    // load's would have been too.
    let later = ctx.create_job("mis-1").await.id;
    until_cached_as_stored(&ctx, later).await;
    let now = compositions_jobs::jobs::Timestamp::now();
    assert_eq!(ctx.server_store().cached(bulk, "mis-1", now), None);
    assert_eq!(poll(&ctx, bulk).await.1["data"]["status"], "PENDING");

    // A notification that cannot be read (another program's) tells that
    // something changed, not what: every job is forgotten.
    assert_eq!(poll(&ctx, later).await.0, 200);
    schema
        .execute("NOTIFY jobs_changed, 'not an announcement'")
        .await
        .unwrap();
    until_forgotten(&ctx, later, "everything is forgotten").await;

    // TRUNCATE fires no DELETE trigger, and is announced all the same.
    assert_eq!(poll(&ctx, later).await.0, 200);
    schema.execute("TRUNCATE jobs").await.unwrap();
    until(
        "the truncated jobs are gone",
        Duration::from_secs(5),
        async || poll(&ctx, later).await.0 == 404,
    )
    .await;
}
