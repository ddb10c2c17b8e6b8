//! The admin listener: liveness, readiness (store failures and shutdown) and
//! the Prometheus metrics, read back after real traffic.

use std::time::{Duration, Instant};

use compositions_jobs::config::DatabaseUrl;
use compositions_tests::postgres::PrivateServer;
use compositions_tests::{TestContext, job_path, raw, sample, tokens};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn live_and_ready_on_the_admin_listener_only() {
    let ctx = TestContext::new().await;
    let live = raw::request(ctx.admin_addr(), "GET", "/health/live", &[]).await;
    assert_eq!(
        (live.status, live.json()["status"].as_str()),
        (200, Some("live"))
    );
    let ready = raw::request(ctx.admin_addr(), "GET", "/health/ready", &[]).await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (200, Some("ready"))
    );
    // Not on the public listener, whose surface is the spec.
    assert_eq!(ctx.get_raw("/health/live", &[]).await.status, 404);
    assert_eq!(ctx.get_raw("/metrics", &[]).await.status, 404);
    // The admin listener's own unknowns.
    assert_eq!(
        raw::request(ctx.admin_addr(), "GET", "/nope", &[])
            .await
            .status,
        404
    );
    assert_eq!(
        raw::request(ctx.admin_addr(), "POST", "/metrics", &[])
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn readiness_fails_while_shutting_down() {
    let ctx = TestContext::with_config(|c| c.http.shutdown_timeout = Duration::from_secs(3)).await;
    let admin = ctx.admin_addr();
    // Half a request keeps the drain going until the deadline.
    let mut held = TcpStream::connect(ctx.addr).await.unwrap();
    held.write_all(b"GET /api/patients/composition/job/x HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(ctx.shutdown());
    let started = Instant::now();
    loop {
        let ready = raw::request(admin, "GET", "/health/ready", &[]).await;
        if ready.status == 503 {
            assert_eq!(ready.json()["status"], "stopping");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    stopping.await.unwrap();
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let Some(postgres) = PrivateServer::start() else {
        println!("COMPOSITIONS_TEST_DATABASE_URL is unset: skipping the PostgreSQL readiness test");
        return;
    };
    let ctx = TestContext::with_config(|c| {
        c.database = DatabaseUrl::Postgres(postgres.url());
        c.postgres.connect_timeout = Duration::from_secs(1);
        c.postgres.acquire_timeout = Duration::from_secs(1);
    })
    .await;
    let ready = || raw::request(ctx.admin_addr(), "GET", "/health/ready", &[]);
    assert_eq!(ready().await.status, 200);

    postgres.kill();
    let started = Instant::now();
    let down = ready().await;
    assert_eq!(down.status, 503);
    assert_eq!(down.json()["status"], "not_ready");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );

    postgres.start_again();
    let started = Instant::now();
    while ready().await.status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = ctx.metrics().await;
    assert!(sample(&metrics, "compositions_jobs_store_pool_max") >= 1.0);
    assert_eq!(
        sample(&metrics, r#"compositions_jobs_jobs{status="PENDING"}"#),
        0.0
    );
    // The readiness probe's read failed while the server was down, but it is not
    // the polling path's: only polls count as store reads.
    assert_eq!(
        sample(&metrics, "compositions_jobs_store_read_errors_total"),
        0.0
    );
}

#[tokio::test]
async fn metrics_count_what_was_served() {
    // The job is created through another connection, which the server's read
    // cache learns of at its next change check: none comes during this test,
    // and nothing expires, so exactly one poll reads the database.
    let ctx = TestContext::with_config(|c| {
        c.polling.change_check_interval = Duration::from_secs(3600);
        c.jobs.read_cache_max_age = Duration::from_secs(3600);
    })
    .await;
    let id = ctx.create_job("mis-1").await.id;
    let token = format!("Bearer {}", tokens::valid("mis-1"));
    for _ in 0..5 {
        assert_eq!(
            ctx.get_raw(&job_path(id), &[("Authorization", &token)])
                .await
                .status,
            200
        );
    }
    assert_eq!(ctx.get_raw("/nowhere", &[]).await.status, 404);

    // A long poll in flight shows as a request, a connection and a waiter.
    let waiting = raw::spawn_get(
        ctx.addr,
        job_path(id),
        vec![
            ("Authorization", token.clone()),
            ("Prefer", "wait=2".into()),
        ],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = ctx.metrics().await;
    let ok = r#"compositions_jobs_requests_total{operation="getAsyncJobStatus",status="200"}"#;
    assert_eq!(sample(&metrics, ok), 5.0);
    let unknown = r#"compositions_jobs_requests_total{operation="none",status="404"}"#;
    assert_eq!(sample(&metrics, unknown), 1.0);
    assert_eq!(
        sample(&metrics, "compositions_jobs_request_duration_seconds_count"),
        6.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"compositions_jobs_request_duration_seconds_bucket{le="+Inf"}"#
        ),
        6.0
    );
    assert_eq!(
        sample(&metrics, "compositions_jobs_requests_in_flight"),
        1.0
    );
    assert_eq!(sample(&metrics, "compositions_jobs_long_poll_waiters"), 1.0);
    assert_eq!(sample(&metrics, "compositions_jobs_long_poll_jobs"), 1.0);
    assert!(sample(&metrics, "compositions_jobs_connections_open") >= 1.0);
    // Jobs by status, and the one read that reached the database (then cached).
    assert_eq!(
        sample(&metrics, r#"compositions_jobs_jobs{status="PENDING"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"compositions_jobs_jobs{status="DONE"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "compositions_jobs_store_read_duration_seconds_count"
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, "compositions_jobs_store_read_errors_total"),
        0.0
    );
    // One verification, then the cache: the same token six times.
    assert_eq!(
        sample(&metrics, "compositions_jobs_token_cache_misses_total"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "compositions_jobs_token_cache_hits_total"),
        5.0
    );

    assert_eq!(waiting.await.unwrap().status, 200);
    let metrics = ctx.metrics().await;
    assert_eq!(
        sample(&metrics, "compositions_jobs_requests_in_flight"),
        0.0
    );
    assert_eq!(sample(&metrics, "compositions_jobs_long_poll_waiters"), 0.0);
    assert_eq!(sample(&metrics, ok), 6.0);
}
