//! Every error this service sends, over raw HTTP: the cases the typed client
//! cannot make. Each asserts the status, the content type, the headers and the
//! whole envelope. The main authentication cases are the table in
//! `auth_table.rs`; these are the other hostile inputs.

use compositions_tests::tokens::{self, TestKey};
use compositions_tests::{TestContext, job_path, raw};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use uuid::Uuid;

const MISSING: &str = "Authorization header is not set or doesn't contain Bearer token";
const INVALID: &str = "Invalid access token";
const CHALLENGE_INVALID: &str = r#"Bearer error="invalid_token""#;

fn denied(message: &str) -> Value {
    json!({"type": "access_denied", "message": message})
}

/// A 401 for `token` (sent as `Authorization: Bearer <token>`).
async fn assert_rejected_token(ctx: &TestContext, token: &str, error: Value, challenge: &str) {
    let path = job_path(ctx.create_job("mis-1").await.id);
    let response = ctx
        .get_raw(&path, &[("Authorization", &format!("Bearer {token}"))])
        .await;
    ctx.assert_envelope(&response, &path, 401, error);
    assert_eq!(response.header("www-authenticate"), Some(challenge));
}

#[tokio::test]
async fn a_non_uuid_id_is_invalid_request_format() {
    let ctx = TestContext::new().await;
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    // The second is not valid UTF-8 once percent-decoded.
    for id in ["not-a-uuid", "%FF", "89678f60-4cdc-4fe3-ae83-e8b3ebd35c5"] {
        let path = job_path(id);
        let response = ctx.get_raw(&path, &[("Authorization", &bearer)]).await;
        let error = json!({
            "type": "request_malformed",
            "message": "Invalid request format",
            "invalid": [{
                "entry_type": "path_parameter",
                "entry": "asyncJobId",
                "rules": [{"rule": "format", "params": ["uuid"], "description": "asyncJobId must be a UUID"}],
            }],
        });
        ctx.assert_envelope(&response, &path, 400, error);
    }
}

#[tokio::test]
async fn an_authorization_header_without_a_bearer_token_is_401() {
    let ctx = TestContext::new().await;
    let path = job_path(Uuid::new_v4());
    for value in [
        "Basic bWlzOnNlY3JldA==",
        "Bearer",
        "Bearer    ",
        "Token abc",
    ] {
        let response = ctx.get_raw(&path, &[("Authorization", value)]).await;
        ctx.assert_envelope(&response, &path, 401, denied(MISSING));
    }
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401_invalid_token() {
    let ctx = TestContext::new().await;
    let path = job_path(Uuid::new_v4());
    let valid = tokens::valid("mis-1");
    let cases: Vec<Vec<u8>> = vec![
        // Not a JWT at all.
        b"Bearer abc".to_vec(),
        b"Bearer a.b.c".to_vec(),
        // Bytes outside ASCII.
        [&b"Bearer "[..], &[0xff, 0xfe, 0x80]].concat(),
        // Over the size limit.
        format!("Bearer {}", "a".repeat(9 * 1024)).into_bytes(),
    ];
    for value in cases {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: ",
            ctx.addr
        )
        .into_bytes();
        request.extend(&value);
        request.extend(b"\r\n\r\n");
        let response = raw::send(ctx.addr, &request).await;
        ctx.assert_envelope(&response, &path, 401, denied(INVALID));
    }
    // Two Authorization headers: which one is meant is ambiguous.
    let bearer = format!("Bearer {valid}");
    let response = ctx
        .get_raw(
            &path,
            &[("Authorization", &bearer), ("Authorization", &bearer)],
        )
        .await;
    ctx.assert_envelope(&response, &path, 401, denied(INVALID));
}

#[tokio::test]
async fn tokens_that_fail_verification_are_401_invalid_access_token() {
    let ctx = TestContext::new().await;
    let claims = tokens::claims("mis-1");
    let with = |key: &str, value: Value| tokens::with_claim("mis-1", key, value);
    let without = |key: &str| tokens::without_claim("mis-1", key);
    let valid = tokens::valid("mis-1");
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let other_payload = tokens::valid("mis-2");
    let other_payload = other_payload.split('.').nth(1).unwrap();

    let cases = [
        (
            "payload swapped under a valid signature",
            format!("{head}.{other_payload}.{signature}"),
        ),
        ("not yet valid", with("nbf", json!(tokens::now() + 3600))),
        ("no exp", without("exp")),
        ("no client_id", without("client_id")),
        ("empty client_id", with("client_id", json!(""))),
        (
            "RS256 header on the Ed25519 key",
            tokens::sign_with_header(&claims, TestKey::Rsa, Algorithm::RS256, Some("test-ed")),
        ),
        (
            "unknown kid",
            tokens::sign_with_header(&claims, TestKey::Rsa, Algorithm::RS256, Some("nobody")),
        ),
        (
            "no kid",
            tokens::sign_with_header(&claims, TestKey::Rsa, Algorithm::RS256, None),
        ),
        (
            "kid with a path",
            tokens::sign_with_header(
                &claims,
                TestKey::Rsa,
                Algorithm::RS256,
                Some("../../etc/passwd"),
            ),
        ),
    ];
    for (case, token) in cases {
        println!("case: {case}");
        assert_rejected_token(&ctx, &token, denied(INVALID), CHALLENGE_INVALID).await;
    }
}

#[tokio::test]
async fn a_token_without_the_scope_is_403_forbidden() {
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let path = job_path(job.id);
    let error = json!({
        "type": "forbidden",
        "message": "Your scope does not allow to access this resource. Missing allowances: composition:read",
    });
    for scope in [json!("composition:write openid"), json!("")] {
        let mut claims = tokens::claims("mis-1");
        claims["scope"] = scope;
        let token = tokens::sign(&claims, TestKey::Rsa);
        let response = ctx
            .get_raw(&path, &[("Authorization", &format!("Bearer {token}"))])
            .await;
        ctx.assert_envelope(&response, &path, 403, error.clone());
    }
}

#[tokio::test]
async fn an_unknown_path_is_404_without_authentication() {
    let ctx = TestContext::new().await;
    for path in [
        "/",
        "/api/patients/composition/job",
        "/api/patients/composition/job/x/y",
        "/docs.php",
    ] {
        let response = ctx.get_raw(path, &[]).await;
        ctx.assert_envelope(
            &response,
            path,
            404,
            json!({"type": "not_found", "message": "Not found"}),
        );
    }
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let ctx = TestContext::new().await;
    let path = job_path(Uuid::new_v4());
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let error = json!({"type": "method_not_allowed", "message": "Method not allowed"});
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let response = raw::request(
            ctx.addr,
            method,
            &path,
            &[("Authorization", &bearer), ("Content-Length", "0")],
        )
        .await;
        ctx.assert_envelope(&response, &path, 405, error.clone());
        assert_eq!(response.header("allow"), Some("GET"));
    }
    let response = raw::request(
        ctx.addr,
        "POST",
        "/openapi.yaml",
        &[("Content-Length", "0")],
    )
    .await;
    ctx.assert_envelope(&response, "/openapi.yaml", 405, error);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn every_error_carries_the_request_id_in_header_and_body() {
    let ctx = TestContext::new().await;
    let path = job_path(Uuid::new_v4());

    let response = ctx.get_raw(&path, &[("x-request-id", "trace-123")]).await;

    assert_eq!(response.header("x-request-id"), Some("trace-123"));
    assert_eq!(response.json()["meta"]["request_id"], "trace-123");
}

/// RFC 9112 §3.2: no `Host`, more than one, or one that is not an authority is a
/// 400, before authentication, whatever `public_url` says; one valid `Host` is
/// served. hyper enforces none of it.
#[tokio::test]
async fn a_request_without_exactly_one_valid_host_is_400() {
    let public = "https://api.ehealth.example";
    for public_url in [None, Some(public)] {
        let ctx = TestContext::with_config(|config| {
            config.public_url = public_url.map(str::to_owned);
        })
        .await;
        let path = job_path(ctx.create_job("mis-1").await.id);
        let auth = format!("Authorization: Bearer {}\r\n", tokens::valid("mis-1"));
        let addr = ctx.addr;
        let request = |version: &str, hosts: &str| {
            format!("GET {path} HTTP/{version}\r\n{hosts}{auth}Connection: close\r\n\r\n")
        };
        let refused = [
            request("1.1", ""),
            request("1.0", ""),
            request(
                "1.1",
                &format!("Host: {addr}\r\nHost: elsewhere.example\r\n"),
            ),
            request("1.1", &format!("Host: {addr}\r\nHost: {addr}\r\n")),
            request("1.1", "Host: \r\n"),
            request("1.1", &format!("Host: user@{addr}\r\n")),
            request("1.1", "Host: a b\r\n"),
        ];
        for bytes in refused {
            let response = raw::send(addr, bytes.as_bytes()).await;
            assert_eq!(response.status, 400, "{bytes:?}");
            assert_eq!(response.header("content-type"), Some("application/json"));
            let body = response.json();
            assert_eq!(
                body["error"],
                json!({"type": "request_malformed", "message": "A request must carry exactly one valid Host header"}),
                "{bytes:?}"
            );
            assert_eq!(body["meta"]["code"], 400);
            let base = public_url.map_or_else(|| ctx.base_url(), str::to_owned);
            assert_eq!(body["meta"]["url"], format!("{base}{path}"), "{bytes:?}");
        }
        for hosts in [
            format!("Host: {addr}\r\n"),
            "Host: my_service:8080\r\n".into(),
        ] {
            let response = raw::send(addr, request("1.1", &hosts).as_bytes()).await;
            assert_eq!(response.status, 200, "{hosts:?}");
        }
    }
}

/// The status each response of getAsyncJobStatus has in the spec, by its
/// `x-response-id`: read from the spec, so that this test holds whatever codes
/// it gives (the drift suite changes them).
fn declared(response_id: &str) -> u16 {
    let spec: serde_norway::Value = serde_norway::from_str(compositions_jobs::SPEC).unwrap();
    let responses = spec["paths"]["/api/patients/composition/job/{asyncJobId}"]["get"]["responses"]
        .as_mapping()
        .unwrap();
    responses
        .iter()
        .find(|(_, response)| response["x-response-id"].as_str() == Some(response_id))
        .map(|(code, _)| {
            code.as_str()
                .map_or_else(|| code.as_u64().unwrap(), |code| code.parse().unwrap())
        })
        .and_then(|code| u16::try_from(code).ok())
        .unwrap_or_else(|| panic!("{response_id} is not a response of the spec"))
}

/// Each status is stated once: whoever makes an answer (the handler, the
/// router, the layers before it), its HTTP status and its `meta.code` are the
/// code the spec gives that response.
#[tokio::test]
async fn every_answer_states_the_status_the_spec_gives_it() {
    let ctx = TestContext::with_config(|config| {
        config.polling.limit_per_second = 0.5;
        config.polling.limit_burst = 2;
        config.http.max_in_flight = 2;
    })
    .await;
    let bearer = format!("Bearer {}", tokens::valid("mis-1"));
    let auth = [("Authorization", bearer.as_str())];
    let job = job_path(ctx.create_job("mis-1").await.id);
    let mut wrong_scope = tokens::claims("mis-1");
    wrong_scope["scope"] = json!("openid");
    let wrong_scope = format!("Bearer {}", tokens::sign(&wrong_scope, TestKey::Rsa));
    let addr = ctx.addr;
    let mut cases = vec![
        ("TaskFound", ctx.get_raw(&job, &auth).await),
        (
            "InvalidRequestFormat",
            ctx.get_raw(&job_path("nope"), &auth).await,
        ),
        (
            "InvalidRequestFormat",
            raw::send(
                addr,
                format!("GET {job} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await,
        ),
        ("Unauthorized", ctx.get_raw(&job, &[]).await),
        (
            "Unauthorized",
            ctx.get_raw(&job, &[("Authorization", "Bearer a.b.c")])
                .await,
        ),
        (
            "Forbidden",
            ctx.get_raw(&job, &[("Authorization", &wrong_scope)]).await,
        ),
        (
            "TaskNotFound",
            ctx.get_raw(&job_path(Uuid::new_v4()), &auth).await,
        ),
        ("TaskNotFound", ctx.get_raw("/nowhere", &[]).await),
        (
            "MethodNotAllowed",
            raw::request(addr, "DELETE", &job, &auth).await,
        ),
        (
            "UriTooLong",
            ctx.get_raw(&format!("/{}", "a".repeat(4000)), &[]).await,
        ),
    ];
    let many: Vec<(String, String)> = (0..80)
        .map(|n| (format!("x-{n}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    cases.push((
        "RequestHeaderFieldsTooLarge",
        ctx.get_raw(&job, &many).await,
    ));
    // The burst of 2 is spent above (TaskFound) and here.
    ctx.get_raw(&job, &auth).await;
    cases.push(("TooManyRequests", ctx.get_raw(&job, &auth).await));
    // Two long polls fill the instance; the third request is shed.
    let other = job_path(ctx.create_job("mis-2").await.id);
    let bearer2 = format!("Bearer {}", tokens::valid("mis-2"));
    let held: Vec<_> = (0..2)
        .map(|_| {
            raw::spawn_get(
                addr,
                other.clone(),
                vec![
                    ("Authorization", bearer2.clone()),
                    ("Prefer", "wait=3".into()),
                ],
            )
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cases.push(("ServiceUnavailable", ctx.get_raw("/nowhere", &[]).await));
    for poll in held {
        poll.await.unwrap();
    }
    // A real store failure: the table disappears under the running service.
    rusqlite::Connection::open(ctx.dir.path().join("jobs.db"))
        .unwrap()
        .execute_batch("DROP TABLE jobs")
        .unwrap();
    cases.push((
        "SubordinateServiceError",
        ctx.get_raw(&job_path(Uuid::new_v4()), &auth).await,
    ));

    for (response_id, response) in cases {
        let code = declared(response_id);
        assert_eq!(
            response.status,
            code,
            "{response_id}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.json()["meta"]["code"], code, "{response_id}");
    }
}
