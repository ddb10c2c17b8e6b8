//! Polling done right: `Retry-After`, `ETag` and 304, `Cache-Control`, long polls
//! with `Prefer: wait` on both backends, the polling limit, and shutdown.

use std::time::{Duration, Instant};

use compositions_jobs::JobStore;
use compositions_jobs::config::{Config, DatabaseUrl};
use compositions_jobs::jobs::{Kind, NewJob, Timestamp};
use compositions_tests::postgres::TestSchema;
use compositions_tests::{RawResponse, TestContext, complete, job_path, raw, tokens};
use serde_json::json;
use uuid::Uuid;

/// A service on each backend: SQLite always, PostgreSQL when configured.
struct Backend {
    name: &'static str,
    ctx: TestContext,
    _schema: Option<TestSchema>,
}

async fn backends(configure: impl Fn(&mut Config)) -> Vec<Backend> {
    let mut backends = vec![Backend {
        name: "sqlite",
        ctx: TestContext::with_config(&configure).await,
        _schema: None,
    }];
    if let Some(schema) = TestSchema::create().await {
        let url = schema.url.clone();
        let ctx = TestContext::with_config(|config| {
            configure(config);
            config.database = DatabaseUrl::Postgres(url.clone());
        })
        .await;
        backends.push(Backend {
            name: "postgres",
            ctx,
            _schema: Some(schema),
        });
    }
    backends
}

/// `GET` the job with a token of its owner and these headers.
async fn get(ctx: &TestContext, id: Uuid, headers: &[(&str, &str)]) -> RawResponse {
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let mut all = vec![("Authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    raw::request(ctx.addr, "GET", &job_path(id), &all).await
}

/// Starts a long poll in the background; resolves to the response and when it came.
fn long_poll(
    ctx: &TestContext,
    id: Uuid,
    headers: Vec<(&'static str, String)>,
) -> tokio::task::JoinHandle<(RawResponse, Instant)> {
    let (addr, bearer) = (ctx.addr, format!("Bearer {}", tokens::valid("mis-1")));
    tokio::spawn(async move {
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend(headers.iter().map(|(name, value)| (*name, value.as_str())));
        let response = raw::request(addr, "GET", &job_path(id), &all).await;
        (response, Instant::now())
    })
}

async fn job_due_in(ctx: &TestContext, expected: Duration) -> Uuid {
    let new = NewJob {
        id: Uuid::new_v4(),
        client_id: "mis-1".into(),
        kind: Kind::Create,
        expected_duration: expected,
        dedup_hash: None,
    };
    ctx.store
        .create(new, Timestamp::now())
        .await
        .unwrap()
        .job
        .id
}

#[tokio::test]
async fn retry_after_counts_down_to_the_eta_and_is_never_sent_once_finished() {
    // Exact values: no spread.
    let ctx = TestContext::with_config(|c| c.polling.jitter = 0.0).await;
    for (expected, retry_after) in [(0, "1"), (2_500, "3"), (4_000, "4"), (600_000, "10")] {
        let id = job_due_in(&ctx, Duration::from_millis(expected)).await;
        let response = get(&ctx, id, &[]).await;
        assert_eq!(
            response.header("retry-after"),
            Some(retry_after),
            "eta in {expected} ms"
        );
    }
    // Created a minute ago and due at once: its eta has passed; the least delay.
    let overdue = NewJob {
        id: Uuid::new_v4(),
        client_id: "mis-1".into(),
        kind: Kind::Sign,
        expected_duration: Duration::ZERO,
        dedup_hash: None,
    };
    let overdue = ctx
        .store
        .create(overdue, Timestamp::now().minus(Duration::from_secs(60)))
        .await
        .unwrap()
        .job
        .id;
    assert_eq!(
        get(&ctx, overdue, &[]).await.header("retry-after"),
        Some("1")
    );

    ctx.complete_job(overdue, Uuid::new_v4()).await;
    assert_eq!(get(&ctx, overdue, &[]).await.header("retry-after"), None);
}

#[tokio::test]
async fn the_etag_is_stable_until_the_job_changes_and_a_current_tag_gets_304() {
    let ctx = TestContext::new().await;
    let id = ctx.create_job("mis-1").await.id;

    let first = get(&ctx, id, &[]).await;
    let second = get(&ctx, id, &[("x-request-id", "another-request")]).await;
    let pending_tag = first.header("etag").unwrap().to_owned();
    assert!(
        pending_tag.starts_with('"') && pending_tag.ends_with('"'),
        "{pending_tag}"
    );
    assert_eq!(
        second.header("etag"),
        Some(pending_tag.as_str()),
        "same state, same tag"
    );
    assert_eq!(
        (first.header("cache-control"), first.header("vary")),
        (Some("no-store"), Some("Prefer"))
    );

    let not_modified = get(&ctx, id, &[("If-None-Match", &pending_tag)]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(pending_tag.as_str()));
    assert_eq!(not_modified.header("cache-control"), Some("no-store"));
    assert!(
        not_modified.header("retry-after").is_some(),
        "still pending"
    );

    ctx.complete_job(id, Uuid::new_v4()).await;
    let done = get(&ctx, id, &[("If-None-Match", &pending_tag)]).await;
    assert_eq!(done.status, 200, "a stale tag gets the new representation");
    let done_tag = done.header("etag").unwrap().to_owned();
    assert_ne!(done_tag, pending_tag);
    assert_eq!(done.header("cache-control"), Some("private, no-cache"));

    for tags in [
        done_tag.clone(),
        format!("W/{done_tag}"),
        format!("\"other\", {done_tag}"),
        "*".into(),
    ] {
        let response = get(&ctx, id, &[("If-None-Match", &tags)]).await;
        assert_eq!(response.status, 304, "{tags}");
        assert_eq!(response.header("retry-after"), None, "finished");
        assert_eq!(response.header("cache-control"), Some("private, no-cache"));
    }
    // Through the generated client too.
    let response = ctx
        .poll_with(id, Some(tokens::valid("mis-1")), Some(&done_tag), None)
        .await
        .unwrap();
    assert!(
        matches!(response, compositions_api::GetAsyncJobStatusResponse::NotModified { ref e_tag, .. } if *e_tag == done_tag),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_the_job_finishes_in_this_process_or_another() {
    for backend in backends(|_| {}).await {
        let ctx = &backend.ctx;
        // The server's own store (this process), then a store of its own, which is
        // what another process is to SQLite (data_version) and PostgreSQL (NOTIFY).
        for (finisher, store) in [
            ("this process", ctx.server_store()),
            ("another connection", &ctx.store),
        ] {
            let id = ctx.create_job("mis-1").await.id;
            let waiting = long_poll(ctx, id, vec![("Prefer", "wait=20".into())]);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let finished = Instant::now();
            complete(store, id, Uuid::new_v4()).await;
            let (response, answered) = waiting.await.unwrap();

            let latency = answered.duration_since(finished);
            println!("{} / {finisher}: woke after {latency:?}", backend.name);
            assert_eq!(response.status, 200);
            assert_eq!(response.json()["data"]["status"], "DONE");
            assert_eq!(response.header("preference-applied"), Some("wait=20"));
            assert!(
                latency < Duration::from_secs(2),
                "{} / {finisher}: {latency:?}",
                backend.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ends_at_its_deadline_with_the_current_state() {
    // The exact deadline: no spread.
    for backend in backends(|c| c.polling.jitter = 0.0).await {
        let id = backend.ctx.create_job("mis-1").await.id;
        let started = Instant::now();
        let response = get(&backend.ctx, id, &[("Prefer", "wait=1")]).await;
        let took = started.elapsed();
        assert_eq!(response.status, 200, "{}", backend.name);
        assert_eq!(response.json()["data"]["status"], "PENDING");
        assert_eq!(response.header("preference-applied"), Some("wait=1"));
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(3),
            "{}: {took:?}",
            backend.name
        );
    }
}

#[tokio::test]
async fn a_finished_job_answers_a_long_poll_at_once() {
    for backend in backends(|_| {}).await {
        let id = backend.ctx.create_job("mis-1").await.id;
        backend.ctx.complete_job(id, Uuid::new_v4()).await;
        let started = Instant::now();
        let response = get(&backend.ctx, id, &[("Prefer", "wait=20")]).await;
        assert_eq!(response.json()["data"]["status"], "DONE");
        assert_eq!(response.header("preference-applied"), Some("wait=20"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{}",
            backend.name
        );
    }
}

#[tokio::test]
async fn a_bad_prefer_is_ignored_never_refused() {
    for backend in backends(|_| {}).await {
        let ctx = &backend.ctx;
        let id = ctx.create_job("mis-1").await.id;
        for prefer in [
            "wait=abc",
            "wait=-1",
            "wait",
            "wait=1.5",
            "handling=strict",
            "",
        ] {
            let started = Instant::now();
            let response = get(ctx, id, &[("Prefer", prefer)]).await;
            assert_eq!(response.status, 200, "{prefer}");
            assert_eq!(response.header("preference-applied"), None, "{prefer}");
            assert!(started.elapsed() < Duration::from_secs(1), "{prefer}");
        }
        // Bytes outside ASCII, which the generated router alone would refuse.
        let path = job_path(id);
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nPrefer: wait=",
            tokens::valid("mis-1")
        )
        .into_bytes();
        request.extend([0xff, 0xfe]);
        request.extend(b"\r\nIf-None-Match: \"\xe9\"\r\n\r\n");
        let response = raw::send(ctx.addr, &request).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        // Several Prefer headers are one list (RFC 7240).
        let response = get(
            ctx,
            id,
            &[("Prefer", "respond-async"), ("Prefer", "wait=1")],
        )
        .await;
        assert_eq!(response.header("preference-applied"), Some("wait=1"));
    }
}

#[tokio::test]
async fn the_wait_is_capped_by_the_configuration() {
    let ctx =
        TestContext::with_config(|config| config.polling.max_wait = Duration::from_secs(1)).await;
    let id = ctx.create_job("mis-1").await.id;
    let started = Instant::now();
    let response = get(&ctx, id, &[("Prefer", "wait=3600")]).await;
    assert_eq!(response.header("preference-applied"), Some("wait=1"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_if_none_match_a_long_poll_waits_for_a_new_representation() {
    for backend in backends(|_| {}).await {
        let ctx = &backend.ctx;
        let id = ctx.create_job("mis-1").await.id;
        let tag = get(ctx, id, &[]).await.header("etag").unwrap().to_owned();

        // Unchanged until the deadline: 304.
        let response = get(ctx, id, &[("If-None-Match", &tag), ("Prefer", "wait=1")]).await;
        assert_eq!(response.status, 304, "{}", backend.name);

        // Changed meanwhile: 200 with the new tag.
        let waiting = long_poll(
            ctx,
            id,
            vec![("If-None-Match", tag.clone()), ("Prefer", "wait=20".into())],
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        ctx.complete_job(id, Uuid::new_v4()).await;
        let (response, _) = waiting.await.unwrap();
        assert_eq!(response.status, 200, "{}", backend.name);
        assert_ne!(response.header("etag"), Some(tag.as_str()));
    }
}

#[tokio::test]
async fn polling_one_job_too_fast_gets_429_then_recovers() {
    let ctx = TestContext::with_config(|config| {
        config.polling.limit_per_second = 2.0;
        config.polling.limit_burst = 3;
    })
    .await;
    let id = ctx.create_job("mis-1").await.id;
    for _ in 0..3 {
        assert_eq!(get(&ctx, id, &[]).await.status, 200);
    }
    let throttled = get(&ctx, id, &[]).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("1"));
    assert_eq!(
        throttled.json(),
        ctx.expected_error(
            &throttled,
            &job_path(id),
            json!({"type": "too_many_requests", "message": "This job is polled too often; retry after the Retry-After delay"})
        )
    );
    // Another job of the same client is not throttled.
    assert_eq!(
        get(&ctx, ctx.create_job("mis-1").await.id, &[])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&ctx, id, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_polls_at_once_with_the_current_state() {
    for backend in backends(|_| {}).await {
        let id = backend.ctx.create_job("mis-1").await.id;
        let waiting = long_poll(&backend.ctx, id, vec![("Prefer", "wait=30".into())]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        backend.ctx.shutdown().await;
        let (response, _) = waiting.await.unwrap();
        assert_eq!(response.status, 200, "{}", backend.name);
        assert_eq!(response.json()["data"]["status"], "PENDING");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{}",
            backend.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_is_seen_at_once_here_and_within_the_bound_from_elsewhere() {
    for backend in backends(|_| {}).await {
        let ctx = &backend.ctx;
        // Made by the server's own store: the very next poll sees it.
        let id = ctx.create_job("mis-1").await.id;
        assert_eq!(get(ctx, id, &[]).await.json()["data"]["status"], "PENDING");
        complete(ctx.server_store(), id, Uuid::new_v4()).await;
        assert_eq!(
            get(ctx, id, &[]).await.json()["data"]["status"],
            "DONE",
            "{}",
            backend.name
        );

        // Made through another connection: seen within the change detection delay,
        // never later than jobs.read_cache_max_age.
        let id = ctx.create_job("mis-1").await.id;
        assert_eq!(get(ctx, id, &[]).await.json()["data"]["status"], "PENDING");
        let finished = Instant::now();
        complete(&ctx.store, id, Uuid::new_v4()).await;
        while get(ctx, id, &[]).await.json()["data"]["status"] != "DONE" {
            assert!(
                finished.elapsed() < ctx.config.jobs.read_cache_max_age,
                "{}",
                backend.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("{}: seen after {:?}", backend.name, finished.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_the_end_of_long_polls_are_spread_at_random() {
    // The default spread, 0.2: an eta 4 s away is told as 4 or 5 seconds.
    let ctx = TestContext::new().await;
    assert!((ctx.config.polling.jitter - 0.2).abs() < f64::EPSILON);
    let id = job_due_in(&ctx, Duration::from_secs(4)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(
            get(&ctx, id, &[])
                .await
                .header("retry-after")
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        seen,
        ["4", "5"].map(String::from).into(),
        "both, nothing else"
    );

    // Ten long polls begun together for 2 s end apart, within [1.6 s, 2 s].
    let started = Instant::now();
    let polls: Vec<_> = (0..10)
        .map(|_| long_poll(&ctx, id, vec![("Prefer", "wait=2".into())]))
        .collect();
    let mut ends = Vec::new();
    for poll in polls {
        let (response, at) = poll.await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("preference-applied"), Some("wait=2"));
        ends.push(at.duration_since(started));
    }
    ends.sort();
    let (first, last) = (ends[0], ends[ends.len() - 1]);
    assert!(first >= Duration::from_millis(1550), "{ends:?}");
    assert!(last < Duration::from_millis(2500), "{ends:?}");
    assert!(
        last - first >= Duration::from_millis(20),
        "not spread: {ends:?}"
    );
}

#[tokio::test]
async fn a_304_is_not_counted_by_the_polling_limit() {
    let ctx = TestContext::with_config(|c| {
        c.polling.limit_per_second = 0.1;
        c.polling.limit_burst = 3;
    })
    .await;
    let id = ctx.create_job("mis-1").await.id;
    let first = get(&ctx, id, &[]).await;
    assert_eq!(first.status, 200);
    let tag = first.header("etag").unwrap().to_owned();
    // Far more 304s than the burst: none is counted.
    for _ in 0..20 {
        assert_eq!(get(&ctx, id, &[("If-None-Match", &tag)]).await.status, 304);
    }
    // What is left of the burst is still there, then the limit holds.
    assert_eq!(get(&ctx, id, &[]).await.status, 200);
    assert_eq!(get(&ctx, id, &[]).await.status, 200);
    assert_eq!(get(&ctx, id, &[]).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_job_is_answered_from_memory_while_the_change_feed_confirms() {
    // Polls further apart than read_cache_max_age still hit the cache: it is
    // the feed's confirmations, not the read, that keep an entry fresh.
    for backend in backends(|c| c.jobs.read_cache_max_age = Duration::from_millis(300)).await {
        let ctx = &backend.ctx;
        let id = ctx.create_job("mis-1").await.id;
        let counts = async || {
            let metrics = ctx.metrics().await;
            (
                compositions_tests::sample(&metrics, "compositions_jobs_read_cache_hits_total"),
                compositions_tests::sample(
                    &metrics,
                    "compositions_jobs_store_read_duration_seconds_count",
                ),
            )
        };
        // The job was made through another connection: the first reads may
        // race the feed's news of it.
        for _ in 0..2 {
            assert_eq!(get(ctx, id, &[]).await.status, 200);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (hits, reads) = counts().await;
        for _ in 0..4 {
            // A producer busy with other jobs (through another connection)
            // changes nothing this job's entry depends on.
            ctx.create_job("mis-9").await;
            let other = ctx.create_job("mis-9").await.id;
            complete(&ctx.store, other, Uuid::new_v4()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(get(ctx, id, &[]).await.status, 200);
        }
        assert_eq!(counts().await, (hits + 4.0, reads), "{}", backend.name);

        // Another client's poll of the same job is no hit: it takes the
        // database's path, as an unknown id does.
        let foreign = raw::request(
            ctx.addr,
            "GET",
            &job_path(id),
            &[(
                "Authorization",
                &format!("Bearer {}", tokens::valid("mis-2")),
            )],
        )
        .await;
        assert_eq!(foreign.status, 404);
        assert_eq!(
            counts().await,
            (hits + 4.0, reads + 1.0),
            "{}",
            backend.name
        );
    }
}
