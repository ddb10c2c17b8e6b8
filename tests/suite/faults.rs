//! PostgreSQL failing under the service: an outage in the middle of load, and more
//! requests than connections. Runs when `COMPOSITIONS_TEST_DATABASE_URL` is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compositions_jobs::config::{Config, DatabaseUrl};
use compositions_tests::postgres::{PrivateServer, TestSchema};
use compositions_tests::{RawResponse, TestContext, job_path, raw, tokens};
use serde_json::json;

/// The longest any request may take while PostgreSQL misbehaves: every wait in
/// the store is bounded (acquire, connect, query), plus slack for this machine.
const BOUND: Duration = Duration::from_secs(5);

/// A pool with short, bounded waits, and no read cache in front of it: these
/// tests are about what reaches PostgreSQL.
fn small_pool(config: &mut Config, url: String) {
    config.database = DatabaseUrl::Postgres(url);
    config.jobs.read_cache_entries = 0;
    config.postgres.pool_size = 2;
    config.postgres.acquire_timeout = Duration::from_secs(1);
    config.postgres.connect_timeout = Duration::from_secs(1);
    config.postgres.query_timeout = Duration::from_secs(2);
}

/// A 200 with the job, or the 500 envelope; anything else fails the test.
fn assert_job_or_subordinate_error(response: &RawResponse) {
    match response.status {
        200 => assert_eq!(response.json()["data"]["status"], "PENDING"),
        500 => assert_eq!(
            response.json()["error"],
            json!({"type": "internal_error", "message": "Subordinate service error"})
        ),
        other => panic!(
            "unexpected {other}: {}",
            String::from_utf8_lossy(&response.body)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_prompt_500s_and_the_service_recovers_by_itself() {
    let Some(postgres) = PrivateServer::start() else {
        return;
    };
    let ctx = TestContext::with_config(|config| small_pool(config, postgres.url())).await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));

    // Eight pollers, each response recorded with when it came and how long it took.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, u16, Duration)>>> = Arc::default();
    let pollers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, seen, path, bearer, addr) = (
                stop.clone(),
                seen.clone(),
                path.clone(),
                bearer.clone(),
                ctx.addr,
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = tokio::time::timeout(
                        BOUND,
                        raw::request(addr, "GET", &path, &[("Authorization", &bearer)]),
                    )
                    .await
                    .expect("a request hung while PostgreSQL was failing");
                    assert_job_or_subordinate_error(&response);
                    seen.lock()
                        .unwrap()
                        .push((Instant::now(), response.status, started.elapsed()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    postgres.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarting = Instant::now();
    postgres.start_again();
    let restarted = Instant::now();
    // Wait for the service to serve jobs again, without any help.
    let recovered = loop {
        let last = seen.lock().unwrap().last().copied();
        if let Some((at, 200, _)) = last
            && at > restarted
        {
            break at;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "no recovery 20 s after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        poller.await.unwrap();
    }

    let seen = seen.lock().unwrap();
    let during: Vec<u16> = seen
        .iter()
        .filter(|(at, _, _)| *at > killed + Duration::from_millis(200) && *at < restarting)
        .map(|(_, status, _)| *status)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|status| *status == 500),
        "{during:?}"
    );
    assert!(seen.iter().all(|(_, _, took)| *took < BOUND));
    let after: Vec<u16> = seen
        .iter()
        .filter(|(at, _, _)| *at > recovered)
        .map(|(_, status, _)| *status)
        .collect();
    assert!(after.iter().all(|status| *status == 200), "{after:?}");
    println!(
        "{} requests; {} during the outage, all 500; recovered {:?} after PostgreSQL restarted",
        seen.len(),
        during.len(),
        recovered - restarted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_requests_than_connections_queue_then_fail_cleanly() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let ctx = TestContext::with_config(|config| small_pool(config, schema.url.clone())).await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let burst = |count: usize| {
        let (path, bearer, addr) = (path.clone(), bearer.clone(), ctx.addr);
        async move {
            let requests = (0..count).map(|_| {
                let (path, bearer) = (path.clone(), bearer.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let response =
                        raw::request(addr, "GET", &path, &[("Authorization", &bearer)]).await;
                    (response, started.elapsed())
                })
            });
            let mut results = Vec::new();
            for request in requests.collect::<Vec<_>>() {
                results.push(request.await.unwrap());
            }
            results
        }
    };

    // Forty at once on two connections: they queue, and all are answered.
    for (response, _) in burst(40).await {
        assert_eq!(response.status, 200);
    }

    // Another session locks the table, so both connections hang in their query
    // and everything else waits for a connection.
    let (locker, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked = burst(10).await;
    for (response, took) in &blocked {
        assert_eq!(response.status, 500);
        assert_job_or_subordinate_error(response);
        // They waited (for a connection, or in the query) and then gave up.
        assert!(
            *took >= Duration::from_millis(900) && *took < BOUND,
            "took {took:?}"
        );
    }

    // Once the lock goes, the same pool serves again.
    locker.batch_execute("ROLLBACK").await.unwrap();
    for (response, _) in burst(10).await {
        assert_eq!(response.status, 200);
    }
}
