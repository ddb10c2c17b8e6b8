//! Hostile bearer tokens, over raw HTTP against the real service. Every one is a
//! 401 with the eHealth envelope and `WWW-Authenticate: Bearer
//! error="invalid_token"`; a valid token for the same job is the control.
//!
//! Each case is aimed at a job that the token's `client_id` (`mis-1`) owns, so
//! that a token wrongly accepted shows as a 200 rather than hiding behind a 404.

use std::io::ErrorKind;
use std::time::Duration;

use compositions_tests::tokens::{self, TestKey};
use compositions_tests::{RawResponse, TestContext, job_path};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const INVALID: &str = "Invalid access token";
const CHALLENGE_INVALID: &str = r#"Bearer error="invalid_token""#;
const OWNER: &str = "mis-1";

fn denied(message: &str) -> Value {
    json!({"type": "access_denied", "message": message})
}

fn expired_error() -> Value {
    json!({"type": "jwt_expired", "message": "JWT expired"})
}

/// A service and one job that `mis-1` owns.
struct Target {
    ctx: TestContext,
    path: String,
}

impl Target {
    async fn new() -> Self {
        let ctx = TestContext::new().await;
        let path = job_path(ctx.create_job(OWNER).await.id);
        Self { ctx, path }
    }

    async fn send(&self, token: &str) -> RawResponse {
        self.ctx
            .get_raw(&self.path, &[("Authorization", &format!("Bearer {token}"))])
            .await
    }

    /// A 401 with `error` and the `invalid_token` challenge for `token`.
    async fn assert_refused(&self, case: &str, token: &str, error: Value) {
        println!("case: {case}");
        let response = self.send(token).await;
        // Printed, so that a failing assertion below names its case.
        eprintln!("case: {case}");
        self.ctx.assert_envelope(&response, &self.path, 401, error);
        assert_eq!(
            response.header("www-authenticate"),
            Some(CHALLENGE_INVALID),
            "{case}"
        );
    }

    async fn assert_invalid(&self, case: &str, token: &str) {
        self.assert_refused(case, token, denied(INVALID)).await;
    }

    /// The control: a valid token of the owner still reads the job.
    async fn assert_valid_still_works(&self) {
        let response = self.send(&tokens::valid(OWNER)).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.json()["data"]["status"], "PENDING");
    }
}

/// The standard claims of the owner, as JSON members without the braces, so
/// that a case can add members (duplicates included) around them.
fn members_except(skip: &[&str]) -> String {
    let claims = tokens::claims(OWNER);
    claims
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
        .map(|(key, value)| format!("{}:{value}", json!(key)))
        .collect::<Vec<_>>()
        .join(",")
}

fn rs256_header() -> String {
    json!({"alg": "RS256", "typ": "JWT", "kid": "test-rsa"}).to_string()
}

#[tokio::test]
async fn a_valid_token_reads_its_own_job() {
    let target = Target::new().await;
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let target = Target::new().await;
    let claims = tokens::claims(OWNER).to_string();
    let valid = tokens::valid(OWNER);
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [Some("test-rsa"), None] {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let unsigned = tokens::forge(&header, &claims, b"");
            target
                .assert_invalid(
                    &format!("alg {alg}, kid {kid:?}, empty signature"),
                    &unsigned,
                )
                .await;
            // The same, with no signature part at all.
            let bare = unsigned.trim_end_matches('.');
            target
                .assert_invalid(&format!("alg {alg}, kid {kid:?}, two parts"), bare)
                .await;
        }
    }
    // alg none over the claims of a valid token, keeping its real RS256 signature.
    let header = json!({"alg": "none", "typ": "JWT", "kid": "test-rsa"});
    let none = tokens::forge(&header, "", b"");
    let none_head = none.split('.').next().unwrap();
    let (_, signed) = valid.split_once('.').unwrap();
    target
        .assert_invalid(
            "alg none with a real RS256 signature",
            &format!("{none_head}.{signed}"),
        )
        .await;
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn hs256_keyed_with_public_material_is_refused() {
    let target = Target::new().await;
    target
        .assert_invalid(
            "HS256 keyed with the RSA public key (PEM)",
            &tokens::hs256_with_public_key(OWNER),
        )
        .await;
    // Other public material an attacker could use as the HMAC secret.
    let jwks = std::fs::read(compositions_tests::fixture("jwks.json")).unwrap();
    let jwks_json: Value = serde_json::from_slice(&jwks).unwrap();
    let modulus = jwks_json["keys"][0]["n"].as_str().unwrap().to_owned();
    let secrets: [(&str, Vec<u8>); 2] = [
        ("the JWKS file", jwks),
        ("the RSA modulus text", modulus.into_bytes()),
    ];
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        for (what, secret) in &secrets {
            let token = tokens::hmac(&tokens::claims(OWNER), alg, secret);
            target
                .assert_invalid(&format!("{alg:?} keyed with {what}"), &token)
                .await;
        }
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn an_unknown_or_hostile_kid_is_refused() {
    let target = Target::new().await;
    let claims = tokens::claims(OWNER);
    for kid in [
        "nobody",
        "",
        "TEST-RSA",
        "test-rsa ",
        " test-rsa",
        "test-rsa\u{0}",
        "../../etc/passwd",
        "/dev/null",
        "file:///dev/null",
        "' OR 1=1 --",
        "test-rsa' OR '1'='1",
        "\"; DROP TABLE jobs; --",
    ] {
        let token = tokens::sign_with_header(&claims, TestKey::Rsa, Algorithm::RS256, Some(kid));
        target.assert_invalid(&format!("kid {kid:?}"), &token).await;
    }
    // A kid that is not a string at all.
    for kid in [
        json!(1),
        json!(null),
        json!(["test-rsa"]),
        json!({"kid": "test-rsa"}),
    ] {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string();
        let token = tokens::sign_raw(&header, &claims.to_string(), TestKey::Rsa);
        target.assert_invalid(&format!("kid {kid}"), &token).await;
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn key_urls_and_embedded_keys_in_the_header_are_never_used() {
    let target = Target::new().await;
    // Anything that connects here is the service fetching a key.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    let claims = tokens::claims(OWNER).to_string();
    let untrusted_jwk = tokens::public_jwk(TestKey::Untrusted);

    let mut headers = Vec::new();
    for kid in ["test-ed", "attacker-key"] {
        let base = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        for (parameter, value) in [
            ("jku", json!(url)),
            ("x5u", json!(url)),
            ("jwk", untrusted_jwk.clone()),
        ] {
            let mut header = base.clone();
            header[parameter] = value;
            headers.push((format!("{parameter} with kid {kid}"), header));
        }
        let mut all = base.clone();
        all["jku"] = json!(url);
        all["x5u"] = json!(url);
        all["jwk"] = untrusted_jwk.clone();
        headers.push((format!("jku, x5u and jwk with kid {kid}"), all));
    }
    let mut no_kid = json!({"alg": "EdDSA", "typ": "JWT", "jku": url, "x5u": url});
    headers.push(("jku and x5u without kid".into(), no_kid.clone()));
    no_kid["jwk"] = untrusted_jwk;
    headers.push(("jku, x5u and jwk without kid".into(), no_kid));

    for (case, header) in headers {
        let token = tokens::sign_raw(&header.to_string(), &claims, TestKey::Untrusted);
        target.assert_invalid(&case, &token).await;
    }

    // Verification is synchronous, but give a background fetch the chance to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match trap.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the service fetched the key URL (connection from {peer})"),
        Err(e) => panic!("accept on the trap failed: {e}"),
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn expired_early_and_foreign_tokens_are_refused() {
    let target = Target::new().await;
    let with = |key: &str, value: Value| tokens::with_claim(OWNER, key, value);
    let without = |key: &str| tokens::without_claim(OWNER, key);
    let now = tokens::now();
    // Beyond the 30 s leeway either way.
    for (case, token) in [
        ("expired 2 min ago", with("exp", json!(now - 120))),
        ("expired a day ago", with("exp", json!(now - 86_400))),
        ("exp 0", with("exp", json!(0))),
    ] {
        target.assert_refused(case, &token, expired_error()).await;
    }
    for (case, token) in [
        ("nbf 60 s ahead", with("nbf", json!(now + 60))),
        ("nbf an hour ahead", with("nbf", json!(now + 3600))),
        ("wrong iss", with("iss", json!("https://evil.example"))),
        (
            "iss with a trailing slash",
            with("iss", json!(format!("{}/", tokens::ISSUER))),
        ),
        (
            "iss in upper case",
            with("iss", json!(tokens::ISSUER.to_uppercase())),
        ),
        ("no iss", without("iss")),
        // RFC 7519 §4.1.1: one string; a list that holds ours is still a list.
        (
            "iss as a list holding ours",
            with("iss", json!([tokens::ISSUER])),
        ),
        (
            "iss as a list of ours and another",
            with("iss", json!([tokens::ISSUER, "https://evil.example"])),
        ),
        ("wrong aud", with("aud", json!("another-service"))),
        ("aud list without ours", with("aud", json!(["a", "b"]))),
        (
            "aud in upper case",
            with("aud", json!(tokens::AUDIENCE.to_uppercase())),
        ),
        ("no aud", without("aud")),
        (
            "exp as a string",
            with("exp", json!((now + 300).to_string())),
        ),
    ] {
        target.assert_invalid(case, &token).await;
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn an_oversized_token_is_a_clean_401() {
    let target = Target::new().await;
    // Past the verifier's 8 KiB limit on the token, still under the 32 KiB that
    // the HTTP layer allows for all headers (beyond that it answers 431).
    for size in [16 * 1024, 24 * 1024] {
        // A validly signed token for the owner, padded with a claim.
        let mut claims = tokens::claims(OWNER);
        claims["padding"] = json!("x".repeat(size * 3 / 4));
        let token = tokens::sign(&claims, TestKey::Rsa);
        assert!(token.len() >= size, "{}", token.len());
        target
            .assert_invalid(&format!("signed token of {} bytes", token.len()), &token)
            .await;
        let junk = "a".repeat(size);
        target
            .assert_invalid(&format!("junk of {size} bytes"), &junk)
            .await;
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn invalid_base64_in_any_part_is_refused() {
    let target = Target::new().await;
    let valid = tokens::valid(OWNER);
    let parts: Vec<&str> = valid.split('.').collect();
    for (index, name) in ["header", "payload", "signature"].into_iter().enumerate() {
        for bad in ["!", "+", "/", "=", "*", " ", "%"] {
            let mut broken: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
            broken[index].replace_range(5..6, bad);
            let token = broken.join(".");
            target
                .assert_invalid(&format!("{bad:?} in the {name}"), &token)
                .await;
        }
        // Standard padding after the part.
        let mut padded: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
        padded[index].push_str("==");
        target
            .assert_invalid(&format!("padding after the {name}"), &padded.join("."))
            .await;
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn a_valid_signature_over_garbage_claims_is_refused() {
    let target = Target::new().await;
    let claims = tokens::claims(OWNER).to_string();
    for (case, payload) in [
        ("not JSON", "not json at all".to_owned()),
        ("empty", String::new()),
        ("truncated JSON", claims[..claims.len() / 2].to_owned()),
        ("JSON with trailing garbage", format!("{claims}garbage")),
        ("two JSON objects", format!("{claims}{claims}")),
        ("an array", "[1,2,3]".to_owned()),
        ("the claims in an array", format!("[{claims}]")),
        ("a string", json!(claims).to_string()),
        ("a number", "42".to_owned()),
        ("null", "null".to_owned()),
        ("true", "true".to_owned()),
        ("an empty object", "{}".to_owned()),
    ] {
        let token = tokens::sign_raw(&rs256_header(), &payload, TestKey::Rsa);
        target
            .assert_invalid(&format!("payload {case}"), &token)
            .await;
    }
    target.assert_valid_still_works().await;
}

#[tokio::test]
async fn duplicate_claims_are_refused() {
    let target = Target::new().await;
    let now = tokens::now();
    let others = |skip: &[&str]| members_except(skip);
    let cases = [
        (
            "exp twice, expired first",
            format!(
                r#"{{{},"exp":{},"exp":{}}}"#,
                others(&["exp"]),
                now - 3600,
                now + 300
            ),
        ),
        (
            "exp twice, expired last",
            format!(
                r#"{{{},"exp":{},"exp":{}}}"#,
                others(&["exp"]),
                now + 300,
                now - 3600
            ),
        ),
        (
            "client_id twice, another client last",
            format!(
                r#"{{{},"client_id":"mis-1","client_id":"mis-2"}}"#,
                others(&["client_id"])
            ),
        ),
        (
            "client_id twice, another client first",
            format!(
                r#"{{{},"client_id":"mis-2","client_id":"mis-1"}}"#,
                others(&["client_id"])
            ),
        ),
        (
            "client_id twice, the same value",
            format!(
                r#"{{{},"client_id":"mis-1","client_id":"mis-1"}}"#,
                others(&["client_id"])
            ),
        ),
        (
            "client_id twice, once escaped",
            format!(
                r#"{{{},"client_id":"mis-2","client_\u0069d":"mis-1"}}"#,
                others(&["client_id"])
            ),
        ),
        (
            "iss twice",
            format!(
                r#"{{{},"iss":"https://evil.example","iss":{}}}"#,
                others(&["iss"]),
                json!(tokens::ISSUER)
            ),
        ),
        (
            "aud twice",
            format!(
                r#"{{{},"aud":{},"aud":"another-service"}}"#,
                others(&["aud"]),
                json!(tokens::AUDIENCE)
            ),
        ),
        (
            "scope twice",
            format!(
                r#"{{{},"scope":"openid","scope":"openid composition:read"}}"#,
                others(&["scope"])
            ),
        ),
        (
            "sub twice",
            format!(r#"{{{},"sub":"a","sub":"b"}}"#, others(&["sub"])),
        ),
        (
            "nbf twice",
            format!(
                r#"{{{},"nbf":{},"nbf":{}}}"#,
                others(&[]),
                now + 3600,
                now - 10
            ),
        ),
        (
            "iat twice",
            format!(r#"{{{},"iat":{now},"iat":{now}}}"#, others(&["iat"])),
        ),
        (
            "an unknown claim twice",
            format!(r#"{{{},"jti":"a","jti":"b"}}"#, others(&[])),
        ),
    ];
    for (case, payload) in cases {
        let token = tokens::sign_raw(&rs256_header(), &payload, TestKey::Rsa);
        target.assert_invalid(case, &token).await;
    }
    // The same members once each, built the same way, is accepted: the cases
    // above fail for their duplicates, not for how they were assembled.
    let payload = format!("{{{}}}", others(&[]));
    let token = tokens::sign_raw(&rs256_header(), &payload, TestKey::Rsa);
    let response = target.send(&token).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}

#[tokio::test]
async fn duplicate_header_parameters_are_refused() {
    let target = Target::new().await;
    let claims = tokens::claims(OWNER).to_string();
    for (case, header) in [
        (
            "kid twice, ours last",
            r#"{"alg":"RS256","typ":"JWT","kid":"nobody","kid":"test-rsa"}"#,
        ),
        (
            "kid twice, ours first",
            r#"{"alg":"RS256","typ":"JWT","kid":"test-rsa","kid":"nobody"}"#,
        ),
        (
            "alg twice",
            r#"{"alg":"none","alg":"RS256","typ":"JWT","kid":"test-rsa"}"#,
        ),
        (
            "alg twice, the same",
            r#"{"alg":"RS256","alg":"RS256","typ":"JWT","kid":"test-rsa"}"#,
        ),
    ] {
        let token = tokens::sign_raw(header, &claims, TestKey::Rsa);
        target.assert_invalid(case, &token).await;
    }
    target.assert_valid_still_works().await;
}

/// RFC 7515 §4.1.11: a `crit` header names extensions the verifier must
/// understand; this one understands none, so a validly signed token with it is
/// refused, whatever it lists.
#[tokio::test]
async fn critical_header_extensions_are_refused() {
    let target = Target::new().await;
    let claims = tokens::claims(OWNER).to_string();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "test-rsa", "x-policy": "strict"});
    // The control: the same header without `crit` is fine.
    let token = tokens::sign_raw(&header.to_string(), &claims, TestKey::Rsa);
    assert_eq!(target.send(&token).await.status, 200);
    for (case, crit) in [
        ("an unknown extension", json!(["x-policy"])),
        ("b64, which changes what is signed", json!(["b64"])),
        ("an empty list", json!([])),
    ] {
        let mut header = header.clone();
        header["crit"] = crit;
        let token = tokens::sign_raw(&header.to_string(), &claims, TestKey::Rsa);
        target.assert_invalid(case, &token).await;
    }
}

/// The same hostile token twice is refused twice (the second time from the
/// verifier's memory of refusals) and never spoils the answer for a good one.
#[tokio::test]
async fn a_refused_token_stays_refused() {
    let target = Target::new().await;
    let forged = tokens::forge(
        &json!({"alg": "none", "typ": "JWT", "kid": "test-rsa"}),
        &tokens::claims(OWNER).to_string(),
        b"",
    );
    let expired = {
        let mut claims = tokens::claims(OWNER);
        claims["exp"] = json!(tokens::now() - 120);
        tokens::sign(&claims, TestKey::Rsa)
    };
    for round in 0..2 {
        target
            .assert_invalid(&format!("alg none, round {round}"), &forged)
            .await;
        target
            .assert_refused(
                &format!("expired, round {round}"),
                &expired,
                expired_error(),
            )
            .await;
        target.assert_valid_still_works().await;
    }
}
