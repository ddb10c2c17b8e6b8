//! The six rules of the production PHP MIS client, one test each: every response
//! this service sends must be readable by it. Each test also shows that the
//! emulation in `tests/support/php.rs` rejects what the real client rejects.

use compositions_api::GetAsyncJobStatusResponse;
use compositions_tests::php::{Reading, read};
use compositions_tests::{RawResponse, TestContext, job_path, tokens};
use serde_json::{Value, json};
use uuid::Uuid;

/// A job of `mis-1` in each status, polled over HTTP.
async fn one_of_each(ctx: &TestContext) -> (RawResponse, RawResponse, RawResponse, Uuid) {
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let pending = ctx.create_job("mis-1").await;
    let done = ctx.create_job("mis-1").await;
    let failed = ctx.create_job("mis-1").await;
    let composition = Uuid::new_v4();
    ctx.complete_job(done.id, composition).await;
    ctx.fail_job(
        failed.id,
        1002,
        "COMPOSITION_ALREADY_EXISTS_FOR_SUBJECT",
        "Composition already exists",
    )
    .await;
    let mut responses = Vec::new();
    for id in [pending.id, done.id, failed.id] {
        responses.push(
            ctx.get_raw(&job_path(id), &[("Authorization", &bearer)])
                .await,
        );
    }
    let failed = responses.pop().unwrap();
    let done = responses.pop().unwrap();
    let pending = responses.pop().unwrap();
    (pending, done, failed, composition)
}

#[tokio::test]
async fn rule_1_data_is_always_an_object() {
    for broken in [json!({}), json!({"data": []}), json!({"data": null})] {
        assert!(matches!(read(200, &broken), Reading::Unusable(_)));
    }
    let ctx = TestContext::new().await;
    let (pending, done, failed, _) = one_of_each(&ctx).await;
    for response in [pending, done, failed] {
        assert!(response.json()["data"].is_object());
        assert!(!matches!(
            read(response.status, &response.json()),
            Reading::Unusable(_)
        ));
    }
}

#[tokio::test]
async fn rule_2_status_is_exactly_pending_done_or_failed() {
    for status in ["pending", "processed", "Done"] {
        let body = json!({"data": {"id": "x", "status": status, "eta": "x", "links": []}});
        assert!(matches!(read(200, &body), Reading::Unusable(_)), "{status}");
    }
    let ctx = TestContext::new().await;
    let (pending, done, failed, _) = one_of_each(&ctx).await;
    let statuses: Vec<Value> = [pending, done, failed]
        .iter()
        .map(|r| r.json()["data"]["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("PENDING"), json!("DONE"), json!("FAILED")]);
}

#[tokio::test]
async fn rule_3_id_and_eta_are_strings_and_links_an_array() {
    for body in [
        json!({"data": {"id": 1, "status": "PENDING", "eta": "x", "links": []}}),
        json!({"data": {"id": "x", "status": "PENDING", "eta": 1_666_614_949, "links": []}}),
        json!({"data": {"id": "x", "status": "PENDING", "eta": "x", "links": "composition/x"}}),
    ] {
        assert!(matches!(read(200, &body), Reading::Unusable(_)), "{body}");
    }
    let ctx = TestContext::new().await;
    let (pending, done, failed, _) = one_of_each(&ctx).await;
    for response in [pending, done, failed] {
        let data = &response.json()["data"];
        assert!(
            data["id"].is_string() && data["eta"].is_string() && data["links"].is_array(),
            "{data}"
        );
    }
}

#[tokio::test]
async fn rule_4_the_composition_id_is_found_in_the_links() {
    let plural = json!({"data": {"id": "x", "status": "DONE", "eta": "x",
        "links": [{"entity": "e", "href": format!("compositions/{}", Uuid::new_v4())}]}});
    assert_eq!(
        read(200, &plural),
        Reading::Done {
            composition_id: None
        }
    );

    let ctx = TestContext::new().await;
    let (pending, done, _, composition) = one_of_each(&ctx).await;
    assert_eq!(
        read(done.status, &done.json()),
        Reading::Done {
            composition_id: Some(composition.to_string())
        }
    );
    assert_eq!(read(pending.status, &pending.json()), Reading::Pending);
}

#[tokio::test]
async fn rule_5_errors_show_as_code_colon_message_without_a_double_prefix() {
    let coded = json!({"data": {"id": "x", "status": "FAILED", "eta": "x", "links": [],
        "error": {"code": 1127, "message": "1127: already coded"}}});
    assert_eq!(
        read(200, &coded),
        Reading::Failed {
            errors: vec!["1127: already coded".into()]
        }
    );

    let ctx = TestContext::new().await;
    let (_, _, failed, _) = one_of_each(&ctx).await;
    let Reading::Failed { errors } = read(failed.status, &failed.json()) else {
        panic!("not read as FAILED: {}", failed.json());
    };
    // data.error and links[0].error both say the same, each coded once.
    assert!(!errors.is_empty());
    for error in &errors {
        assert_eq!(error, "1002: Composition already exists");
    }
}

/// A producer that writes the code into its message (`jobs fail ID --code 1127
/// --message "1127: …"`): `links[0].error` carries it once, so the client shows
/// one error, not `1127: …` beside `1127: 1127: …`.
#[tokio::test]
async fn rule_5_a_message_that_starts_with_its_code_is_not_prefixed_again() {
    let ctx = TestContext::new().await;
    let message = "1127: Final composition for this encounter already exists";
    let job = ctx.create_job("mis-1").await;
    ctx.fail_job(
        job.id,
        1127,
        "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
        message,
    )
    .await;

    let response = ctx
        .poll(job.id, Some(tokens::valid("mis-1")))
        .await
        .unwrap();
    let GetAsyncJobStatusResponse::TaskFound { body, .. } = response else {
        panic!("expected 200 Task found, got {response:?}");
    };
    assert_eq!(body.data.links[0].error.as_deref(), Some(message));
    assert_eq!(body.data.error.as_ref().unwrap().message, message);

    let Reading::Failed { errors } = read(200, &serde_json::to_value(&body).unwrap()) else {
        panic!("not read as FAILED: {body:?}");
    };
    assert_eq!(errors, [message, message], "data.error and links[0].error");
}

#[tokio::test]
async fn rule_6_every_error_status_carries_error_message_and_its_ehealth_type() {
    assert!(matches!(read(404, &json!({})), Reading::Unusable(_)));
    let ctx = TestContext::new().await;
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let mut wrong_scope = tokens::claims("mis-1");
    wrong_scope["scope"] = json!("openid");
    let wrong_scope = format!(
        "Bearer {}",
        tokens::sign(&wrong_scope, tokens::TestKey::Rsa)
    );
    let unknown = job_path(Uuid::new_v4());
    let mut responses = vec![
        ctx.get_raw(&job_path("nope"), &[("Authorization", &bearer)])
            .await,
        ctx.get_raw(&unknown, &[]).await,
        ctx.get_raw(&unknown, &[("Authorization", &wrong_scope)])
            .await,
        ctx.get_raw(&unknown, &[("Authorization", &bearer)]).await,
        ctx.get_raw("/nowhere", &[]).await,
        compositions_tests::raw::request(ctx.addr, "DELETE", &unknown, &[]).await,
    ];
    // A real store failure: the table disappears under the running service.
    let database = rusqlite::Connection::open(ctx.dir.path().join("jobs.db")).unwrap();
    database.execute_batch("DROP TABLE jobs").unwrap();
    responses.push(ctx.get_raw(&unknown, &[("Authorization", &bearer)]).await);

    let seen: Vec<(u16, String)> = responses
        .iter()
        .map(|r| {
            (
                r.status,
                r.json()["error"]["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        (400, "request_malformed"),
        (401, "access_denied"),
        (403, "forbidden"),
        (404, "not_found"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (500, "internal_error"),
    ];
    assert_eq!(
        seen,
        expected.map(|(status, kind)| (status, kind.to_owned()))
    );
    for response in responses {
        let Reading::HttpError { message } = read(response.status, &response.json()) else {
            panic!("unreadable error: {}", response.json());
        };
        assert!(!message.is_empty());
    }
}
