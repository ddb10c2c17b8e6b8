//! Bearer tokens never reach the log. Everything an in-process server logs at
//! TRACE, spans included (and `log` records, through the subscriber's bridge),
//! is captured in both the plain and the JSON format while it answers good and
//! bad tokens; then no token, nor its payload or signature part, nor a long
//! piece of either, may appear in it.
//!
//! A subscriber is global to its test binary, hence this file of its own and a
//! single test.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use compositions_tests::tokens::{self, TestKey};
use compositions_tests::{TestContext, job_path};
use serde_json::json;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use uuid::Uuid;

/// A log sink that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs the global subscriber: one plain and one JSON sink, at TRACE.
fn capture() -> (Captured, Captured) {
    let plain = Captured::default();
    let json = Captured::default();
    let (to_plain, to_json) = (plain.clone(), json.clone());
    tracing_subscriber::registry()
        .with(LevelFilter::TRACE)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_span_events(FmtSpan::FULL)
                .with_writer(move || to_plain.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_span_events(FmtSpan::FULL)
                .with_writer(move || to_json.clone()),
        )
        .try_init()
        .unwrap();
    (plain, json)
}

/// What must not be logged of `credential`: all of it, each dot-separated part
/// but the header (which only names the algorithm and key), and every 16-byte
/// piece of those parts, so that a truncated copy is caught too.
fn secrets_of(credential: &str) -> Vec<String> {
    let mut secrets = vec![credential.to_owned()];
    let parts: Vec<&str> = credential.split('.').collect();
    let secret_parts = if parts.len() == 3 {
        &parts[1..]
    } else {
        &parts[..]
    };
    for part in secret_parts.iter().filter(|part| part.len() >= 16) {
        secrets.push((*part).to_owned());
        let bytes = part.as_bytes();
        let mut start = 0;
        while start + 16 <= bytes.len() {
            secrets.push(part[start..start + 16].to_owned());
            start += 8;
        }
        secrets.push(part[part.len() - 16..].to_owned());
    }
    secrets
}

#[tokio::test]
async fn no_token_appears_in_the_logs() {
    let (plain, json) = capture();
    let ctx = TestContext::new().await;
    let job = ctx.create_job("mis-1").await;
    let path = job_path(job.id);

    let valid = tokens::valid("mis-1");
    let expired = {
        let mut claims = tokens::claims("mis-1");
        claims["exp"] = json!(tokens::now() - 3600);
        tokens::sign(&claims, TestKey::Rsa)
    };
    // One signature byte changed: a well-formed token that fails verification.
    let tampered = {
        let token = tokens::valid("mis-1");
        let at = token.len() - 20;
        let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
        format!("{}{swapped}{}", &token[..at], &token[at + 1..])
    };
    let untrusted = tokens::sign(&tokens::claims("mis-1"), TestKey::Untrusted);
    let other_client = tokens::valid("mis-2");
    let no_scope = {
        let mut claims = tokens::claims("mis-1");
        claims["scope"] = json!("openid");
        tokens::sign(&claims, TestKey::Rsa)
    };
    let alg_none = tokens::forge(
        &json!({"alg": "none", "typ": "JWT", "kid": "test-rsa"}),
        &tokens::claims("mis-1").to_string(),
        b"",
    );
    let garbage_claims = tokens::sign_raw(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "test-rsa"}).to_string(),
        "not json, but signed",
        TestKey::Rsa,
    );
    let oversized = {
        let mut claims = tokens::claims("mis-1");
        claims["padding"] = json!("p".repeat(12 * 1024));
        tokens::sign(&claims, TestKey::Rsa)
    };
    let not_a_jwt = "n0t-A-jwt-but-a-s3cret-looking-value-9f8e7d6c5b4a";
    let basic = "bWlzLTE6c3VwZXItc2VjcmV0LXBhc3N3b3Jk";

    let unknown_job = job_path(Uuid::new_v4());
    // (path, Authorization value, expected status, the credential in it)
    let requests: Vec<(&str, String, u16, &str)> = vec![
        (&path, format!("Bearer {valid}"), 200, &valid),
        // Again: this time from the verifier's cache.
        (&path, format!("Bearer {valid}"), 200, &valid),
        (&unknown_job, format!("Bearer {valid}"), 404, &valid),
        ("/no/such/route", format!("Bearer {valid}"), 404, &valid),
        (&path, format!("Bearer {other_client}"), 404, &other_client),
        (&path, format!("Bearer {no_scope}"), 403, &no_scope),
        (&path, format!("Bearer {expired}"), 401, &expired),
        (&path, format!("Bearer {expired}"), 401, &expired),
        (&path, format!("Bearer {tampered}"), 401, &tampered),
        (&path, format!("Bearer {untrusted}"), 401, &untrusted),
        (&path, format!("Bearer {alg_none}"), 401, &alg_none),
        (
            &path,
            format!("Bearer {garbage_claims}"),
            401,
            &garbage_claims,
        ),
        (&path, format!("Bearer {oversized}"), 401, &oversized),
        (&path, format!("Bearer {not_a_jwt}"), 401, not_a_jwt),
        (&path, format!("bearer  {valid}x"), 401, &valid),
        (&path, format!("Basic {basic}"), 401, basic),
        (&path, format!("Token {valid}"), 401, &valid),
    ];
    let mut request_ids = Vec::new();
    for (index, (path, authorization, status, _)) in requests.iter().enumerate() {
        let request_id = format!("log-secrets-{index}");
        let response = ctx
            .get_raw(
                path,
                &[
                    ("Authorization", authorization),
                    ("x-request-id", &request_id),
                ],
            )
            .await;
        assert_eq!(
            response.status,
            *status,
            "request {index}: {}",
            String::from_utf8_lossy(&response.body)
        );
        request_ids.push(request_id);
    }
    // Two Authorization headers at once.
    let response = ctx
        .get_raw(
            &path,
            &[
                ("Authorization", &format!("Bearer {valid}")),
                ("Authorization", &format!("Bearer {tampered}")),
            ],
        )
        .await;
    assert_eq!(response.status, 401);
    ctx.shutdown().await;

    let logs = [("plain", plain.text()), ("JSON", json.text())];
    for (format, text) in &logs {
        // The capture works: the refusals were logged, with their request ids.
        assert!(
            request_ids.iter().any(|id| text.contains(id.as_str())),
            "nothing about the requests was captured in the {format} log:\n{text}"
        );
        for (index, (_, _, _, credential)) in requests.iter().enumerate() {
            for secret in secrets_of(credential) {
                assert!(
                    !text.contains(&secret),
                    "request {index}: {secret:?} is in the {format} log:\n{text}"
                );
            }
        }
    }
}
