//! Authentication, then authorization, then ownership, as one table: every
//! operation in the spec × every kind of caller. A second test fails when the spec
//! gains an operation that the table does not list.

use std::collections::BTreeSet;

use compositions_tests::tokens::{self, TestKey};
use compositions_tests::{RawResponse, TestContext, raw};
use serde_json::{Value, json};

/// An operation of the spec and how to reach it for one job.
struct Operation {
    id: &'static str,
    method: &'static str,
    path: &'static str,
}

impl Operation {
    fn path_for(&self, job_id: &str) -> String {
        self.path.replace("{asyncJobId}", job_id)
    }
}

/// Every operation in `spec/compositions.yaml`.
const OPERATIONS: &[Operation] = &[Operation {
    id: "getAsyncJobStatus",
    method: "GET",
    path: "/api/patients/composition/job/{asyncJobId}",
}];

/// Who calls, and how.
#[derive(Clone, Copy, Debug)]
enum Caller {
    NoToken,
    MalformedHeader,
    BadSignature,
    Expired,
    WrongAudience,
    WrongIssuer,
    AlgNone,
    Hs256WithThePublicKey,
    MissingScope,
    AnotherClient,
    TheOwner,
}

const CALLERS: [Caller; 11] = [
    Caller::NoToken,
    Caller::MalformedHeader,
    Caller::BadSignature,
    Caller::Expired,
    Caller::WrongAudience,
    Caller::WrongIssuer,
    Caller::AlgNone,
    Caller::Hs256WithThePublicKey,
    Caller::MissingScope,
    Caller::AnotherClient,
    Caller::TheOwner,
];

/// The job belongs to this client.
const OWNER: &str = "mis-1";

impl Caller {
    /// The `Authorization` header this caller sends, if any.
    fn authorization(self) -> Option<String> {
        let claims = tokens::claims(OWNER);
        let with = |key: &str, value: Value| {
            let mut claims = claims.clone();
            claims[key] = value;
            tokens::sign(&claims, TestKey::Rsa)
        };
        let token = match self {
            Self::NoToken => return None,
            Self::MalformedHeader => return Some("Bearer not.a-jwt".into()),
            Self::BadSignature => tokens::sign(&claims, TestKey::Untrusted),
            Self::Expired => with("exp", json!(tokens::now() - 120)),
            Self::WrongAudience => with("aud", json!("another-service")),
            Self::WrongIssuer => with("iss", json!("https://evil.example")),
            Self::AlgNone => tokens::forge(
                &json!({"alg": "none", "typ": "JWT", "kid": "test-rsa"}),
                &claims.to_string(),
                b"",
            ),
            Self::Hs256WithThePublicKey => tokens::hs256_with_public_key(OWNER),
            Self::MissingScope => with("scope", json!("openid composition:write")),
            Self::AnotherClient => tokens::valid("mis-2"),
            Self::TheOwner => tokens::valid(OWNER),
        };
        Some(format!("Bearer {token}"))
    }

    /// The cell: status, `WWW-Authenticate`, and the error (`None` for the job).
    fn expected(self) -> (u16, Option<&'static str>, Option<Value>) {
        let denied = |message: &str| Some(json!({"type": "access_denied", "message": message}));
        let invalid = (
            401,
            Some(r#"Bearer error="invalid_token""#),
            denied("Invalid access token"),
        );
        match self {
            // Who you are: 401.
            Self::NoToken => (
                401,
                Some("Bearer"),
                denied("Authorization header is not set or doesn't contain Bearer token"),
            ),
            Self::Expired => (
                401,
                Some(r#"Bearer error="invalid_token""#),
                Some(json!({"type": "jwt_expired", "message": "JWT expired"})),
            ),
            Self::MalformedHeader
            | Self::BadSignature
            | Self::WrongAudience
            | Self::WrongIssuer
            | Self::AlgNone
            | Self::Hs256WithThePublicKey => invalid,
            // What you may do: 403.
            Self::MissingScope => (
                403,
                None,
                Some(json!({
                    "type": "forbidden",
                    "message": "Your scope does not allow to access this resource. Missing allowances: composition:read",
                })),
            ),
            // Whose it is: 404, exactly as for a job that does not exist.
            Self::AnotherClient => (
                404,
                None,
                Some(json!({"type": "not_found", "message": "Task not found"})),
            ),
            Self::TheOwner => (200, None, None),
        }
    }
}

fn assert_cell(
    ctx: &TestContext,
    operation: &Operation,
    caller: Caller,
    path: &str,
    job_id: &str,
    response: &RawResponse,
) {
    let cell = format!("{} × {caller:?}", operation.id);
    let (status, challenge, error) = caller.expected();
    assert_eq!(
        response.status,
        status,
        "{cell}: {}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{cell}"
    );
    assert_eq!(response.header("www-authenticate"), challenge, "{cell}");
    match error {
        Some(error) => assert_eq!(
            response.json(),
            ctx.expected_error(response, path, error),
            "{cell}"
        ),
        None => {
            let body = response.json();
            assert_eq!(body["data"]["id"], job_id, "{cell}");
            assert_eq!(body["data"]["status"], "PENDING", "{cell}");
        }
    }
}

#[tokio::test]
async fn every_operation_answers_every_caller_as_the_table_says() {
    let ctx = TestContext::new().await;
    let job_id = ctx.create_job(OWNER).await.id.to_string();
    for operation in OPERATIONS {
        let path = operation.path_for(&job_id);
        for caller in CALLERS {
            let authorization = caller.authorization();
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|value| ("Authorization", value.as_str()))
                .collect();
            let response = raw::request(ctx.addr, operation.method, &path, &headers).await;
            assert_cell(&ctx, operation, caller, &path, &job_id, &response);
        }
    }
}

#[test]
fn the_table_lists_every_operation_in_the_spec() {
    let spec: Value = serde_norway::from_str(include_str!("../../spec/compositions.yaml")).unwrap();
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let in_spec: BTreeSet<(String, String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            methods.iter().filter_map(move |method| {
                let operation = item.get(*method)?;
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or("<no operationId>");
                Some((id.to_owned(), method.to_uppercase(), path.clone()))
            })
        })
        .collect();
    let in_table: BTreeSet<(String, String, String)> = OPERATIONS
        .iter()
        .map(|op| (op.id.to_owned(), op.method.to_owned(), op.path.to_owned()))
        .collect();
    assert_eq!(
        in_table, in_spec,
        "add every operation of the spec to OPERATIONS"
    );
}
