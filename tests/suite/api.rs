//! The operation through the generated client: each status as the contract shows it.

use std::time::Duration;

use compositions_api::GetAsyncJobStatusResponse;
use compositions_api::models;
use compositions_jobs::JobStore;
use compositions_jobs::jobs::{Failure, Link, Outcome, Status, Timestamp};
use compositions_tests::tokens::{self, TestKey};
use compositions_tests::{TestContext, job_path};
use regex::Regex;
use uuid::Uuid;

fn task_found(response: GetAsyncJobStatusResponse) -> models::JobEnvelope {
    match response {
        GetAsyncJobStatusResponse::TaskFound { body, .. } => body,
        other => panic!("expected 200 Task found, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pending_job_reads_as_pending_with_its_eta() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;

    let envelope = task_found(
        ctx.poll(job.id, Some(tokens::valid("mis-1")))
            .await
            .unwrap(),
    );

    assert_eq!(envelope.meta.code, 200);
    assert_eq!(envelope.meta.r#type, "object");
    assert_eq!(
        envelope.meta.url,
        format!("{}{}", ctx.base_url(), job_path(job.id))
    );
    assert!(!envelope.meta.request_id.is_empty());
    let data = envelope.data;
    assert_eq!(data.id, job.id);
    assert_eq!(Status::from(data.status), Status::Pending);
    assert_eq!(data.eta, job.state.eta().to_rfc3339());
    assert_eq!(
        data.links,
        vec![models::JobLink::new("eHealth/resources".into())]
    );
    assert_eq!(data.error, None);
}

#[tokio::test]
async fn a_done_job_links_the_created_composition() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let composition = Uuid::new_v4();
    let done = ctx.complete_job(job.id, composition).await;

    let data = task_found(
        ctx.poll(job.id, Some(tokens::valid("mis-1")))
            .await
            .unwrap(),
    )
    .data;

    assert_eq!(Status::from(data.status), Status::Done);
    // The eta of a finished job is the time it finished.
    assert_eq!(data.eta, done.state.eta().to_rfc3339());
    let href = data.links[0].href.clone().unwrap();
    let pattern = Regex::new(r"(?:/|^)composition/([0-9a-f-]{36})").unwrap();
    assert_eq!(
        &pattern.captures(&href).unwrap()[1],
        composition.to_string()
    );
    let links: Vec<Link> = data.links.iter().map(Link::from).collect();
    assert_eq!(
        links,
        vec![Link::new("eHealth/resources", format!("composition/{composition}")).unwrap()]
    );
    assert_eq!(data.error, None);
}

#[tokio::test]
async fn a_failed_job_carries_its_code_type_and_message() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let message = "Final composition for this encounter already exists";
    ctx.fail_job(
        job.id,
        1127,
        "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
        message,
    )
    .await;

    let data = task_found(
        ctx.poll(job.id, Some(tokens::valid("mis-1")))
            .await
            .unwrap(),
    )
    .data;

    assert_eq!(Status::from(data.status), Status::Failed);
    let error = data.error.unwrap();
    assert_eq!(
        Failure::from(&error),
        Failure::new(
            1127,
            "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
            message
        )
        .unwrap()
    );
    // Older clients read the same error from the first link.
    assert_eq!(
        data.links[0].error.as_deref(),
        Some(format!("1127: {message}").as_str())
    );
    assert_eq!(data.links[0].href, None);
}

#[tokio::test]
async fn ed25519_tokens_are_accepted_too() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let token = tokens::sign(&tokens::claims("mis-1"), TestKey::Ed25519);

    task_found(ctx.poll(job.id, Some(token)).await.unwrap());
}

#[tokio::test]
async fn an_unknown_job_is_task_not_found() {
    let ctx = TestContext::new().await;

    let response = ctx
        .poll(Uuid::new_v4(), Some(tokens::valid("mis-1")))
        .await
        .unwrap();

    let GetAsyncJobStatusResponse::TaskNotFound(body) = response else {
        panic!("expected 404, got {response:?}");
    };
    assert_eq!(
        (body.error.r#type.as_str(), body.error.message.as_str()),
        ("not_found", "Task not found")
    );
    assert_eq!(body.meta.code, 404);
}

#[tokio::test]
async fn another_clients_job_reads_exactly_like_an_unknown_one() {
    let ctx = TestContext::new().await;
    let theirs = ctx.create_job("mis-2").await;
    let token = tokens::valid("mis-1");

    let foreign = ctx
        .get_raw(
            &job_path(theirs.id),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
    let unknown_id = Uuid::new_v4();
    let unknown = ctx
        .get_raw(
            &job_path(unknown_id),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;

    assert_eq!((foreign.status, unknown.status), (404, 404));
    let mut foreign_body = foreign.json();
    let mut unknown_body = unknown.json();
    for body in [&mut foreign_body, &mut unknown_body] {
        body["meta"]["request_id"] = "-".into();
        body["meta"]["url"] = "-".into();
    }
    assert_eq!(foreign_body, unknown_body);
    let mut foreign_headers = foreign.headers.clone();
    let mut unknown_headers = unknown.headers.clone();
    for headers in [&mut foreign_headers, &mut unknown_headers] {
        headers.retain(|(name, _)| !matches!(name.as_str(), "x-request-id" | "date"));
    }
    assert_eq!(foreign_headers, unknown_headers);
}

#[tokio::test]
async fn a_finished_job_expires_after_the_ttl() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let ttl = ctx.config.jobs.ttl;
    // Finished just over the TTL ago.
    let finished = Timestamp::now().minus(ttl + Duration::from_secs(1));
    let link = Link::new(
        "eHealth/resources",
        format!("composition/{}", Uuid::new_v4()),
    )
    .unwrap();
    ctx.store
        .finish(job.id, Outcome::Done(vec![link]), finished)
        .await
        .unwrap();

    let response = ctx
        .poll(job.id, Some(tokens::valid("mis-1")))
        .await
        .unwrap();

    assert!(
        matches!(response, GetAsyncJobStatusResponse::TaskNotFound(_)),
        "{response:?}"
    );
    // Operators still see it until it is purged.
    assert!(ctx.store.get(job.id).await.unwrap().is_some());
}

#[tokio::test]
async fn the_callers_request_id_is_echoed_and_a_bad_one_replaced() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));

    let kept = ctx
        .get_raw(
            &job_path(job.id),
            &[
                ("Authorization", &bearer),
                ("x-request-id", "mis-1.poll_42"),
            ],
        )
        .await;
    assert_eq!(kept.header("x-request-id"), Some("mis-1.poll_42"));
    // One copy of the id: the generated router's own `x-span-id` is dropped.
    assert_eq!(kept.header("x-span-id"), None);
    assert_eq!(kept.json()["meta"]["request_id"], "mis-1.poll_42");

    let replaced = ctx
        .get_raw(
            &job_path(job.id),
            &[("Authorization", &bearer), ("x-request-id", "<script>")],
        )
        .await;
    let id = replaced.header("x-request-id").unwrap();
    assert!(Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(replaced.json()["meta"]["request_id"], id);
}

#[tokio::test]
async fn meta_url_uses_the_public_url_when_configured() {
    let ctx = TestContext::with_config(|config| {
        config.public_url = Some("https://api.ehealth.example/".into());
    })
    .await;
    let job = ctx.create_job("mis-1").await;

    let envelope = task_found(
        ctx.poll(job.id, Some(tokens::valid("mis-1")))
            .await
            .unwrap(),
    );

    assert_eq!(
        envelope.meta.url,
        format!("https://api.ehealth.example{}", job_path(job.id))
    );
}

#[tokio::test]
async fn the_service_serves_the_committed_spec_and_docs() {
    let ctx = TestContext::new().await;

    let spec = ctx.get_raw("/openapi.yaml", &[]).await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.header("content-type"), Some("application/yaml"));
    assert_eq!(spec.body, include_bytes!("../../spec/compositions.yaml"));

    let docs = ctx.get_raw("/docs", &[]).await;
    assert_eq!(docs.status, 200);
    assert_eq!(
        docs.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        docs.header("content-security-policy")
            .is_some_and(|policy| policy.starts_with("default-src 'none'"))
    );
    assert_eq!(docs.body, include_bytes!("../../docs/site/index.html"));
}

#[test]
fn statuses_map_both_ways() {
    for status in [Status::Pending, Status::Done, Status::Failed] {
        assert_eq!(Status::from(models::JobStatus::from(status)), status);
        assert_eq!(models::JobStatus::from(status).to_string(), status.as_str());
    }
}

#[tokio::test]
async fn the_purge_task_deletes_expired_jobs_on_every_backend() {
    let schema = compositions_tests::postgres::TestSchema::create().await;
    let mut databases = vec![None];
    databases.extend(schema.as_ref().map(|schema| Some(schema.url.clone())));
    for database in databases {
        let ctx = TestContext::with_config(|config| {
            if let Some(url) = &database {
                config.database = compositions_jobs::config::DatabaseUrl::Postgres(url.clone());
            }
            config.jobs.purge_interval = Duration::from_millis(100);
        })
        .await;
        let job = ctx.create_job("mis-1").await;
        let long_ago = Timestamp::now().minus(ctx.config.jobs.ttl + Duration::from_secs(1));
        let link = Link::new(
            "eHealth/resources",
            format!("composition/{}", Uuid::new_v4()),
        )
        .unwrap();
        ctx.store
            .finish(job.id, Outcome::Done(vec![link]), long_ago)
            .await
            .unwrap();

        let waited = std::time::Instant::now();
        while ctx.store.get(job.id).await.unwrap().is_some() {
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "not purged ({database:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ctx.shutdown().await;
    }
}
