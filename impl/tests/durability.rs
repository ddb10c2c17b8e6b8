//! Crash durability: the server and a producer are killed with SIGKILL in the
//! middle of thousands of transitions; after a restart every acknowledged
//! transition is there with exactly its acknowledged state, and no row is in an
//! illegal state. On SQLite, and on PostgreSQL when `COMPOSITIONS_TEST_DATABASE_URL`
//! is set.
//!
//! The producer is this test binary run again as its own process (the `producer`
//! test below): it writes through the real store and prints an acknowledgement
//! only after the store returned Ok, as a producer answering its caller would.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compositions_jobs::config::Config;
use compositions_jobs::{Access, Store};
use compositions_tests::{job_path, postgres};
use support::{
    Ledger, PRODUCER_CLIENT, PRODUCER_WORKERS, Producer, Server, check_every_ack, check_over_http,
    cli, dev_token, get, producer_command,
};
use uuid::Uuid;

/// Acknowledged transitions (creations included) before the kill.
const ACKS_BEFORE_KILL: usize = 3000;
/// Jobs the producer writes at once.
const WORKERS: usize = 4;

/// The producer process's role; as an ordinary test it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer() {
    support::producer_main().await;
}

/// Every job, as SQL sees it: how many rows, how many break a rule of the
/// lifecycle, and how many belong to someone else.
struct TableCheck {
    rows: i64,
    illegal: i64,
    foreign: i64,
}

/// What a crash left, after the restart.
struct AfterCrash {
    ledger: Ledger,
    /// The restarted server, serving the same database.
    server: Server,
    /// How many jobs show a transition that was in flight and never acknowledged.
    landed_unacked: usize,
    /// Acknowledged transitions when the kill was sent.
    at_kill: usize,
    polls: usize,
    took: Duration,
}

/// Runs a server on `database` and a producer writing to it while a client polls,
/// kills both with SIGKILL once `ACKS_BEFORE_KILL` transitions were acknowledged,
/// starts a new server on the same database, and checks every acknowledgement
/// through the store and a sample of them over HTTP.
async fn crash_and_restart(
    dir: &Path,
    database: &str,
    server_command: impl Fn() -> Command,
) -> AfterCrash {
    let started = Instant::now();
    let server = Server::spawn(server_command());
    let token = dev_token(cli(dir), PRODUCER_CLIENT);
    let mut command = producer_command("producer", database);
    command.env(PRODUCER_WORKERS, WORKERS.to_string());
    let mut producer = Producer::start(command);

    // A client polls the newest acknowledged job all along: the server is busy
    // reading while the producer writes.
    let newest = Arc::new(Mutex::new(None::<Uuid>));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (newest, stop, address, token) = (
            Arc::clone(&newest),
            Arc::clone(&stop),
            server.address,
            token.clone(),
        );
        std::thread::spawn(move || {
            let mut polls = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = *newest.lock().unwrap();
                if let Some(id) = id {
                    let (status, body) = get(address, &job_path(id), &token);
                    // Acknowledged, so committed: never unknown, never an error.
                    assert!(matches!(status, 200 | 429), "{status}: {body}");
                    polls += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            polls
        })
    };

    let reached = producer.read_until(Duration::from_secs(45), |ledger, _| {
        *newest.lock().unwrap() = ledger.order.last().copied();
        ledger.transitions >= ACKS_BEFORE_KILL
    });
    assert!(
        reached,
        "only {} transitions acknowledged; said: {:?} {:?}",
        producer.ledger.transitions, producer.ledger.errors, producer.ledger.other
    );
    stop.store(true, Ordering::SeqCst);
    let polls = poller.join().unwrap();
    let at_kill = producer.ledger.transitions;
    // Both at once, the producer in the middle of its writes.
    let log = server.kill();
    producer.kill();
    assert!(!log.iter().any(|line| line.contains("panicked")), "{log:?}");
    let ledger = std::mem::take(&mut producer.ledger);
    assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
    assert!(ledger.in_flight() <= WORKERS, "{}", ledger.in_flight());

    // Restarted on the same database, the service has every acknowledged
    // transition, as the store and as a client see them.
    let server = Server::spawn(server_command());
    let url = database.parse().unwrap();
    let store = Store::open(
        &Config {
            database: url,
            ..Config::default()
        },
        Access::ReadWrite,
    )
    .await
    .unwrap();
    let (landed_unacked, statuses) = check_every_ack(&store, &ledger).await;
    assert!(landed_unacked <= ledger.in_flight());
    let sample: Vec<Uuid> = ledger
        .order
        .iter()
        .enumerate()
        .filter(|(i, id)| {
            i % 10 == 0
                || *i + 2 * WORKERS >= ledger.order.len()
                || statuses[*id] != ledger.acked[*id].0
        })
        .map(|(_, id)| *id)
        .collect();
    check_over_http(server.address, &token, &sample, &statuses);
    AfterCrash {
        ledger,
        server,
        landed_unacked,
        at_kill,
        polls,
        took: started.elapsed(),
    }
}

/// Checks what SQL sees against the ledger, and prints the figures.
fn check_table(backend: &str, crash: &AfterCrash, table: &TableCheck) {
    let ledger = &crash.ledger;
    assert_eq!(table.illegal, 0, "{backend}: rows in an illegal state");
    assert_eq!(table.foreign, 0, "{backend}: rows of another client");
    let acked = i64::try_from(ledger.order.len()).unwrap();
    // Beyond the acknowledged jobs, only creations in flight at the kill.
    assert!(
        (acked..=acked + i64::try_from(WORKERS).unwrap()).contains(&table.rows),
        "{backend}: {} rows, {acked} acknowledged jobs",
        table.rows
    );
    let count = |status: &str| ledger.acked.values().filter(|(s, _)| s == status).count();
    eprintln!(
        "{backend}: SIGKILL after {} acknowledged transitions ({} by the time both \
         were dead: {} jobs, {} DONE, {} FAILED, {} left PENDING); {} polls during the \
         run; after the restart all there, {} unacknowledged transitions in flight \
         landed, {} unacknowledged rows, 0 illegal rows; {:.1} s",
        crash.at_kill,
        ledger.transitions,
        ledger.order.len(),
        count("DONE"),
        count("FAILED"),
        count("PENDING"),
        crash.polls,
        crash.landed_unacked,
        table.rows - acked,
        crash.took.as_secs_f64(),
    );
}

/// SQL that counts the rows breaking a rule of the lifecycle (the `CHECK`s of
/// `impl/migrations/`, and more): the same for both backends but for the JSON check.
fn illegal_rows_sql(links_are_an_array: &str) -> String {
    format!(
        "SELECT count(*) FROM jobs WHERE NOT ( \
           (status = 'PENDING' AND finished_at IS NULL AND links IS NULL \
            AND error_code IS NULL AND error_type IS NULL AND error_message IS NULL) \
           OR (status = 'DONE' AND finished_at IS NOT NULL AND links IS NOT NULL \
            AND {links_are_an_array} \
            AND error_code IS NULL AND error_type IS NULL AND error_message IS NULL) \
           OR (status = 'FAILED' AND finished_at IS NOT NULL AND links IS NULL \
            AND error_code IS NOT NULL AND error_type IS NOT NULL AND error_message IS NOT NULL)) \
         OR kind NOT IN ('create', 'sign', 'cancel', 'erln_resend') \
         OR eta IS NULL OR created_at IS NULL OR finished_at < created_at"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_transition_through_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let database = format!("sqlite:{}", path.display());
    let crash = crash_and_restart(dir.path(), &database, || cli(dir.path())).await;

    let connection =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let count = |sql: &str| -> i64 { connection.query_row(sql, [], |row| row.get(0)).unwrap() };
    let table = TableCheck {
        rows: count("SELECT count(*) FROM jobs"),
        illegal: count(&illegal_rows_sql(
            "json_valid(links) AND json_type(links) = 'array'",
        )),
        foreign: count(&format!(
            "SELECT count(*) FROM jobs WHERE client_id <> '{PRODUCER_CLIENT}'"
        )),
    };
    check_table("SQLite", &crash, &table);
    crash.server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_transition_through_sigkill() {
    let Some(schema) = postgres::TestSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let crash = crash_and_restart(dir.path(), &schema.url, || {
        let mut command = cli(dir.path());
        command.env("COMPOSITIONS_DATABASE", &schema.url);
        command
    })
    .await;

    let (client, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut counts = Vec::new();
    for sql in [
        "SELECT count(*) FROM jobs".to_owned(),
        illegal_rows_sql("jsonb_typeof(links) = 'array'"),
        format!("SELECT count(*) FROM jobs WHERE client_id <> '{PRODUCER_CLIENT}'"),
    ] {
        counts.push(client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0));
    }
    let table = TableCheck {
        rows: counts[0],
        illegal: counts[1],
        foreign: counts[2],
    };
    check_table("PostgreSQL", &crash, &table);
    crash.server.stop();
}
