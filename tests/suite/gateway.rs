//! Gateway mode: behind eHealth's Kong gateway, which verifies the token and passes
//! the caller on in `x-consumer-*` headers.

use compositions_jobs::config::AuthMode;
use compositions_tests::{TestContext, job_path};
use serde_json::json;

async fn gateway() -> TestContext {
    TestContext::with_config(|config| config.auth.mode = AuthMode::Gateway).await
}

#[tokio::test]
async fn the_gateways_headers_identify_the_caller() {
    let ctx = gateway().await;
    let job = ctx.create_job("legal-entity-7").await;
    let path = job_path(job.id);

    let response = ctx
        .get_raw(
            &path,
            &[
                ("x-consumer-id", "user-42"),
                ("x-consumer-scope", "composition:read composition:write"),
                (
                    "x-consumer-metadata",
                    r#"{"client_id": "legal-entity-7", "client_type": "MIS"}"#,
                ),
            ],
        )
        .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.json()["data"]["status"], "PENDING");
}

#[tokio::test]
async fn missing_or_bad_gateway_headers_are_401() {
    let ctx = gateway().await;
    let job = ctx.create_job("legal-entity-7").await;
    let path = job_path(job.id);
    let metadata = r#"{"client_id": "legal-entity-7"}"#;
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "Missing header x-consumer-id"),
        (
            &[("x-consumer-metadata", metadata)],
            "Missing header x-consumer-id",
        ),
        (
            &[("x-consumer-id", "user-42")],
            "Missing header x-consumer-metadata",
        ),
        (
            &[
                ("x-consumer-id", "user-42"),
                ("x-consumer-metadata", "not json"),
            ],
            "Invalid header x-consumer-metadata",
        ),
        (
            &[
                ("x-consumer-id", "user-42"),
                ("x-consumer-metadata", r#"{"client_id": ""}"#),
            ],
            "Invalid header x-consumer-metadata",
        ),
    ];
    for (headers, message) in cases {
        let response = ctx.get_raw(&path, headers).await;
        assert_eq!(response.status, 401, "{message}");
        let expected = ctx.expected_error(
            &response,
            &path,
            json!({"type": "access_denied", "message": message}),
        );
        assert_eq!(response.json(), expected);
    }
}

#[tokio::test]
async fn a_gateway_caller_without_the_scope_is_403_and_another_clients_job_404() {
    let ctx = gateway().await;
    let job = ctx.create_job("legal-entity-7").await;
    let path = job_path(job.id);

    let no_scope = ctx
        .get_raw(
            &path,
            &[
                ("x-consumer-id", "u"),
                ("x-consumer-metadata", r#"{"client_id": "legal-entity-7"}"#),
            ],
        )
        .await;
    assert_eq!(no_scope.status, 403);

    let other = ctx
        .get_raw(
            &path,
            &[
                ("x-consumer-id", "u"),
                ("x-consumer-scope", "composition:read"),
                ("x-consumer-metadata", r#"{"client_id": "legal-entity-8"}"#),
            ],
        )
        .await;
    assert_eq!(other.status, 404);
}
