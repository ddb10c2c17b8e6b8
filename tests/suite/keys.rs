//! The token signing keys on the paths production takes: fetched from the
//! issuer's JWKS URL over real HTTPS (an endpoint the test makes, with a CA of
//! its own), rotated without a restart, kept when the issuer misbehaves, and a
//! key file read again when it changes. Polls go through the generated client.

use std::future::Future;
use std::time::{Duration, Instant};

use compositions_api::GetAsyncJobStatusResponse;
use compositions_jobs::config::Config;
use compositions_tests::jwks_server::{Answer, JwksServer};
use compositions_tests::tls::TestCa;
use compositions_tests::tokens::{self, FreshKey};
use compositions_tests::{TestContext, raw, sample};
use serde_json::json;
use uuid::Uuid;

/// Waits until `condition` holds, for at most `within`.
async fn eventually<F: Future<Output = bool>>(
    what: &str,
    within: Duration,
    condition: impl Fn() -> F,
) {
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service trusts the issuer at `server`'s URL, with short refresh bounds.
fn from_issuer(server: &JwksServer) -> impl FnOnce(&mut Config) + use<> {
    let (url, ca) = (server.url(), server.ca_file());
    move |config| {
        config.auth.jwks = None;
        config.auth.jwks_url = Some(url);
        config.auth.jwks_ca_file = Some(ca);
        config.auth.jwks_refresh_min = Duration::from_secs(1);
        config.auth.jwks_refresh_max = Duration::from_secs(60);
        config.auth.jwks_unknown_kid_interval = Duration::from_secs(1);
        config.auth.jwks_fetch_timeout = Duration::from_secs(1);
    }
}

/// A service on `issuer` that fetches only at start and when a test asks (its
/// refresh bounds are far off), once it is ready.
async fn ready_without_refreshes(issuer: &JwksServer) -> TestContext {
    let ctx = TestContext::with_config(|config| {
        from_issuer(issuer)(config);
        config.auth.jwks_refresh_min = Duration::from_secs(600);
        config.auth.jwks_refresh_max = Duration::from_secs(600);
    })
    .await;
    eventually("ready", Duration::from_secs(10), || async {
        ready(&ctx).await.0 == 200
    })
    .await;
    ctx
}

async fn ready(ctx: &TestContext) -> (u16, serde_json::Value) {
    let response = raw::request(ctx.admin_addr(), "GET", "/health/ready", &[]).await;
    (response.status, response.json())
}

/// The status a poll of `job` with `token` gets, through the generated client.
async fn status(ctx: &TestContext, job: Uuid, token: &str) -> u16 {
    match ctx.poll(job, Some(token.to_owned())).await.unwrap() {
        GetAsyncJobStatusResponse::TaskFound { .. } => 200,
        GetAsyncJobStatusResponse::Unauthorized { .. } => 401,
        GetAsyncJobStatusResponse::ServiceUnavailable { .. } => 503,
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn metric(ctx: &TestContext, name: &str) -> f64 {
    sample(&ctx.metrics().await, name)
}

#[tokio::test]
async fn keys_rotate_at_the_issuer_without_a_restart() {
    let (old, new) = (FreshKey::new("2026-12-a"), FreshKey::new("2026-12-b"));
    let issuer = JwksServer::start(Answer::keys(&[old.jwk()], Some(1))).await;
    let ctx = TestContext::with_config(from_issuer(&issuer)).await;
    eventually("ready", Duration::from_secs(10), || async {
        ready(&ctx).await.0 == 200
    })
    .await;
    let job = ctx.create_job("mis-1").await.id;
    let (old_token, new_token) = (old.token("mis-1"), new.token("mis-1"));
    assert_eq!(status(&ctx, job, &old_token).await, 200);
    assert_eq!(
        status(&ctx, job, &new_token).await,
        401,
        "not published yet"
    );

    // The issuer publishes the next key beside the current one.
    issuer.set(Answer::keys(&[old.jwk(), new.jwk()], Some(1)));
    eventually(
        "the new key is honoured",
        Duration::from_secs(5),
        || async { status(&ctx, job, &new_token).await == 200 },
    )
    .await;
    assert_eq!(
        status(&ctx, job, &old_token).await,
        200,
        "both during the overlap"
    );

    // Then it retires the old one: its token, accepted (and remembered) a
    // moment ago, is refused once the set without it is in force.
    issuer.set(Answer::keys(&[new.jwk()], Some(1)));
    eventually("the old key is refused", Duration::from_secs(5), || async {
        status(&ctx, job, &old_token).await == 401
    })
    .await;
    assert_eq!(status(&ctx, job, &new_token).await, 200);
    assert_eq!(metric(&ctx, "compositions_jobs_jwks_generation").await, 3.0);
    assert_eq!(metric(&ctx, "compositions_jobs_jwks_keys").await, 1.0);
    assert_eq!(ready(&ctx).await.0, 200);
}

#[tokio::test]
async fn the_service_is_not_ready_and_answers_503_until_a_usable_key_set_arrives() {
    let key = FreshKey::new("k1");
    let issuer = JwksServer::start(Answer::Status(503)).await;
    let ctx = TestContext::with_config(from_issuer(&issuer)).await;
    let job = ctx.create_job("mis-1").await.id;
    eventually("a fetch", Duration::from_secs(5), || async {
        issuer.fetches() >= 1
    })
    .await;

    let (status_code, body) = ready(&ctx).await;
    assert_eq!(status_code, 503);
    assert_eq!(body["reason"], "no usable token signing key set yet");
    // Nobody's token can be checked yet: the service's state, never a 401.
    let path = compositions_tests::job_path(job);
    let response = ctx
        .get_raw(
            &path,
            &[("Authorization", &format!("Bearer {}", key.token("mis-1")))],
        )
        .await;
    ctx.assert_envelope(
        &response,
        &path,
        503,
        json!({"type": "service_unavailable", "message": "Service starting: token signing keys are not loaded yet; retry after the Retry-After delay"}),
    );
    assert_eq!(response.header("retry-after"), Some("1"));

    issuer.set(Answer::keys(&[key.jwk()], None));
    eventually("ready", Duration::from_secs(10), || async {
        ready(&ctx).await.0 == 200
    })
    .await;
    assert_eq!(status(&ctx, job, &key.token("mis-1")).await, 200);
    assert!(metric(&ctx, "compositions_jobs_jwks_failures_total").await >= 1.0);
}

#[tokio::test]
async fn an_issuer_whose_certificate_another_ca_signed_is_never_trusted() {
    let key = FreshKey::new("k1");
    let issuer = JwksServer::start(Answer::keys(&[key.jwk()], None)).await;
    let other_ca = TestCa::new(&["localhost"]);
    let ctx = TestContext::with_config(|config| {
        from_issuer(&issuer)(config);
        config.auth.jwks_ca_file = Some(other_ca.ca_file());
    })
    .await;
    eventually("two failed fetches", Duration::from_secs(10), || async {
        metric(&ctx, "compositions_jobs_jwks_failures_total").await >= 2.0
    })
    .await;
    assert_eq!(ready(&ctx).await.0, 503);
    let job = ctx.create_job("mis-1").await.id;
    assert_eq!(status(&ctx, job, &key.token("mis-1")).await, 503);
    assert_eq!(
        issuer.fetches(),
        0,
        "the handshake fails before any request"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let key = FreshKey::new("k1");
    let issuer = JwksServer::start(Answer::keys(&[key.jwk()], None)).await;
    let ctx = ready_without_refreshes(&issuer).await;
    let job = ctx.create_job("mis-1").await.id;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let made_up = FreshKey::new(&format!("made-up-{sent}"));
        assert_eq!(status(&ctx, job, &made_up.token("mis-1")).await, 401);
        sent += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let fetches = issuer.fetches();
    // The first fetch at start, then at most one per second of flood.
    assert!(sent > 50, "only {sent} tokens sent");
    assert!(
        (2..=2 + seconds.ceil() as usize).contains(&fetches),
        "{fetches} fetches for {sent} unknown kids in {seconds:.1} s"
    );
    assert_eq!(
        metric(&ctx, "compositions_jobs_jwks_unknown_kid_total").await,
        f64::from(sent)
    );
    assert_eq!(status(&ctx, job, &key.token("mis-1")).await, 200);
}

#[tokio::test]
async fn a_misbehaving_issuer_never_stalls_a_request_nor_replaces_good_keys() {
    let key = FreshKey::new("good");
    let elsewhere_key = FreshKey::new("elsewhere");
    let elsewhere = JwksServer::start(Answer::keys(&[elsewhere_key.jwk()], None)).await;
    let issuer = JwksServer::start(Answer::keys(&[key.jwk()], None)).await;
    let ctx = ready_without_refreshes(&issuer).await;
    let job = ctx.create_job("mis-1").await.id;
    let token = key.token("mis-1");
    let mut weak = tokens::trusted_jwk("test-rsa");
    let mut n = vec![0_u8; 128];
    n.extend(std::iter::repeat_n(0xC5, 128));
    weak["n"] = base64_url(&n).into();
    weak["kid"] = "weak".into();

    let cases = [
        ("silent", Answer::Silent),
        ("huge", Answer::Huge(2 * 1024 * 1024)),
        ("redirect", Answer::Redirect(elsewhere.url())),
        ("500", Answer::Status(500)),
        (
            "garbage",
            Answer::Document {
                body: "<html>maintenance</html>".into(),
                max_age: None,
            },
        ),
        ("no keys", Answer::keys(&[], None)),
        ("a 1024-bit key", Answer::keys(&[key.jwk(), weak], None)),
    ];
    for (case, answer) in cases {
        issuer.set(answer);
        let failures = metric(&ctx, "compositions_jobs_jwks_failures_total").await;
        ctx.reload_keys();
        // Polls go on at their usual pace while the fetch fails, however slowly.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        while metric(&ctx, "compositions_jobs_jwks_failures_total").await <= failures {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{case}: no failure recorded"
            );
            let asked = Instant::now();
            assert_eq!(status(&ctx, job, &token).await, 200, "{case}");
            slowest = slowest.max(asked.elapsed());
        }
        assert!(
            slowest < Duration::from_millis(500),
            "{case}: a poll took {slowest:?}"
        );
        assert_eq!(status(&ctx, job, &token).await, 200, "{case}");
        assert_eq!(
            metric(&ctx, "compositions_jobs_jwks_generation").await,
            1.0,
            "{case}: the set in force changed"
        );
        assert_eq!(ready(&ctx).await.0, 200, "{case}");
    }
    assert_eq!(elsewhere.fetches(), 0, "the redirect was followed");
    assert_eq!(status(&ctx, job, &elsewhere_key.token("mis-1")).await, 401);

    // A good document again: it comes into force.
    let next = FreshKey::new("next");
    issuer.set(Answer::keys(&[next.jwk()], None));
    ctx.reload_keys();
    eventually("the next set", Duration::from_secs(5), || async {
        status(&ctx, job, &next.token("mis-1")).await == 200
    })
    .await;
}

#[tokio::test]
async fn the_key_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let write = |keys: &[serde_json::Value]| {
        // Written whole, then renamed, as a deployment tool (or a Kubernetes
        // volume) replaces it.
        let staged = dir.path().join("jwks.json.new");
        std::fs::write(&staged, json!({ "keys": keys }).to_string()).unwrap();
        std::fs::rename(&staged, &file).unwrap();
    };
    let rsa = tokens::trusted_jwk("test-rsa");
    write(std::slice::from_ref(&rsa));
    let path = file.clone();
    let ctx = TestContext::with_config(move |config| config.auth.jwks = Some(path)).await;
    let job = ctx.create_job("mis-1").await.id;
    let (old_token, next) = (tokens::valid("mis-1"), FreshKey::new("next"));
    assert_eq!(status(&ctx, job, &old_token).await, 200);
    assert_eq!(status(&ctx, job, &next.token("mis-1")).await, 401);

    write(&[rsa.clone(), next.jwk()]);
    eventually("the added key", Duration::from_secs(6), || async {
        status(&ctx, job, &next.token("mis-1")).await == 200
    })
    .await;

    // A broken file keeps the keys in force, and says so in the metrics.
    std::fs::write(&file, "{\"keys\": [").unwrap();
    eventually("the failure", Duration::from_secs(6), || async {
        metric(&ctx, "compositions_jobs_jwks_failures_total").await >= 1.0
    })
    .await;
    assert_eq!(status(&ctx, job, &old_token).await, 200);
    assert_eq!(status(&ctx, job, &next.token("mis-1")).await, 200);

    write(&[next.jwk()]);
    eventually("the removed key", Duration::from_secs(6), || async {
        status(&ctx, job, &old_token).await == 401
    })
    .await;
    assert_eq!(status(&ctx, job, &next.token("mis-1")).await, 200);
    assert_eq!(metric(&ctx, "compositions_jobs_jwks_generation").await, 3.0);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
