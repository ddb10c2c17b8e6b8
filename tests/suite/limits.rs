//! The limits on hostile input, each sent just over (and just within) its line:
//! header count and bytes, URI length, a GET with a body, requests in flight,
//! connections, the header-read timeout against slowloris and the keep-alive
//! timeout; and the requests hyper refuses by itself, in the same envelope.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use compositions_jobs::Limits;
use compositions_jobs::config::HttpConfig;
use compositions_tests::tokens;
use compositions_tests::{RawResponse, TestContext, job_path, raw, sample};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `count` headers, each `x-filler-N: <value>`, on top of the bearer token.
fn filler(count: usize, value: &str) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-filler-{i}"), value.to_owned()))
        .collect()
}

async fn get_with(ctx: &TestContext, path: &str, extra: &[(String, String)]) -> RawResponse {
    let token = format!("Bearer {}", tokens::valid("mis-1"));
    let mut headers = vec![("Authorization", token.as_str())];
    headers.extend(extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    ctx.get_raw(path, &headers).await
}

/// Waits for the server to close the connection without sending anything.
async fn assert_closed_unanswered(stream: &mut TcpStream, within: Duration) {
    let received = raw::read_until_closed(stream, within).await;
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test]
async fn headers_just_over_the_count_or_the_bytes_get_431() {
    let ctx = TestContext::with_config(|c| {
        c.http.max_headers = 20;
        c.http.max_header_bytes = 4096;
    })
    .await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    // Host and Authorization come with every request: 20 in all is within.
    assert_eq!(get_with(&ctx, &path, &filler(17, "x")).await.status, 200);
    let over = get_with(&ctx, &path, &filler(19, "x")).await;
    let error = json!({"type": "request_header_fields_too_large", "message": "Request header fields too large"});
    ctx.assert_envelope(&over, &path, 431, error.clone());

    // Bytes: the token is about 700 bytes; fill up to just under and just over.
    let token_bytes = "authorization".len() + "Bearer ".len() + tokens::valid("mis-1").len();
    let host_bytes = "host".len() + ctx.addr.to_string().len() + "connection".len() + "close".len();
    let room = 4096 - token_bytes - host_bytes - "x-filler-0".len();
    assert_eq!(
        get_with(&ctx, &path, &filler(1, &"a".repeat(room)))
            .await
            .status,
        200
    );
    let over = get_with(&ctx, &path, &filler(1, &"a".repeat(room + 1))).await;
    ctx.assert_envelope(&over, &path, 431, error);
}

#[tokio::test]
async fn a_uri_just_over_the_limit_gets_414() {
    let ctx = TestContext::with_config(|c| c.http.max_uri_bytes = 256).await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let within = format!("{path}?{}", "q".repeat(256 - path.len() - 1));
    assert_eq!(get_with(&ctx, &within, &[]).await.status, 200);
    let over = format!("{within}q");
    let response = get_with(&ctx, &over, &[]).await;
    // meta.url is the path without the query.
    ctx.assert_envelope(
        &response,
        &path,
        414,
        json!({"type": "uri_too_long", "message": "Request URI too long"}),
    );
}

#[tokio::test]
async fn a_get_with_a_body_is_refused() {
    let ctx = TestContext::new().await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let token = tokens::valid("mis-1");
    let error = json!({"type": "request_malformed", "message": "A GET request takes no body"});
    for framing in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
        let body = if framing.starts_with("Content") {
            "hello"
        } else {
            "5\r\nhello\r\n0\r\n\r\n"
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n{framing}Connection: close\r\n\r\n{body}",
            ctx.addr
        );
        let response = raw::send(ctx.addr, request.as_bytes()).await;
        ctx.assert_envelope(&response, &path, 400, error.clone());
    }
    // An empty body declared as such is no body.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ctx.addr
    );
    assert_eq!(raw::send(ctx.addr, request.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn requests_just_over_the_in_flight_limit_get_503() {
    let ctx = TestContext::with_config(|c| c.http.max_in_flight = 2).await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let token = format!("Bearer {}", tokens::valid("mis-1"));
    // Two long polls hold both places.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            raw::spawn_get(
                ctx.addr,
                path.clone(),
                vec![
                    ("Authorization", token.clone()),
                    ("Prefer", "wait=2".into()),
                ],
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shed = ctx.get_raw(&path, &[("Authorization", &token)]).await;
    ctx.assert_envelope(
        &shed,
        &path,
        503,
        json!({"type": "service_unavailable", "message": "Service overloaded; retry after the Retry-After delay"}),
    );
    assert_eq!(shed.header("retry-after"), Some("1"));
    for waiter in waiting {
        assert_eq!(
            waiter.await.unwrap().status,
            200,
            "the long polls are not disturbed"
        );
    }
    // The places are given back.
    assert_eq!(
        ctx.get_raw(&path, &[("Authorization", &token)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_connection_just_over_the_limit_gets_503_then_closes() {
    let ctx = TestContext::with_config(|c| c.http.max_connections = 2).await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let token = tokens::valid("mis-1");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        ctx.addr
    );
    // Two kept-alive connections, each answered once and left open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(ctx.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = raw::read_response(&mut stream).await.unwrap();
        assert_eq!(response.status, 200);
        open.push(stream);
    }
    let mut third = TcpStream::connect(ctx.addr).await.unwrap();
    third.write_all(request.as_bytes()).await.unwrap();
    let refused = raw::parse(&raw::read_until_closed(&mut third, Duration::from_secs(5)).await);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "service_unavailable");

    // A place comes back when a connection closes.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = ctx
        .get_raw(&path, &[("Authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(response.status, 200);
}

async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

#[tokio::test]
async fn a_slow_request_head_is_cut_after_the_header_read_timeout() {
    let timeout = Duration::from_secs(1);
    let ctx = TestContext::with_config(|c| {
        c.http.header_read_timeout = timeout;
        c.http.keep_alive_timeout = timeout * 3;
    })
    .await;
    let path = job_path(ctx.create_job("mis-1").await.id);

    // Slowloris: a request line and one header, then nothing.
    let started = Instant::now();
    let mut slow = connect_and_send(
        ctx.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes(),
    )
    .await;
    assert_closed_unanswered(&mut slow, timeout * 4).await;
    let took = started.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(100) && took < timeout * 2,
        "closed after {took:?}, not the header-read timeout"
    );
    let cut = r#"compositions_jobs_connections_timed_out_total{reason="header_read"}"#;
    assert_eq!(sample(&ctx.metrics().await, cut), 1.0);

    // Just within: the last header line arrives before the deadline.
    let token = tokens::valid("mis-1");
    let mut patient = connect_and_send(
        ctx.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes(),
    )
    .await;
    tokio::time::sleep(timeout / 2).await;
    patient
        .write_all(format!("Authorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let received = raw::read_until_closed(&mut patient, timeout * 4).await;
    assert_eq!(raw::parse(&received).status, 200);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_keep_alive_timeout() {
    // Longer than the header-read timeout, to tell the two clocks apart.
    let (header_read, keep_alive) = (Duration::from_millis(500), Duration::from_secs(2));
    let ctx = TestContext::with_config(|c| {
        c.http.header_read_timeout = header_read;
        c.http.keep_alive_timeout = keep_alive;
    })
    .await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let token = tokens::valid("mis-1");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");

    // Just within: idle for longer than the header-read timeout, then a request,
    // whose head has its own clock from its first byte.
    let mut kept = connect_and_send(ctx.addr, request.as_bytes()).await;
    assert_eq!(raw::read_response(&mut kept).await.unwrap().status, 200);
    tokio::time::sleep(keep_alive - Duration::from_millis(500)).await;
    kept.write_all(request.as_bytes()).await.unwrap();
    let again = raw::read_response(&mut kept).await;
    assert!(matches!(&again, Ok(r) if r.status == 200), "{again:?}");

    // Just over: idle past the keep-alive timeout, the connection is closed
    // cleanly (no answer), counting from the end of the last response.
    let started = Instant::now();
    assert_closed_unanswered(&mut kept, keep_alive * 2).await;
    let took = started.elapsed();
    assert!(
        took >= keep_alive - Duration::from_millis(100)
            && took < keep_alive + Duration::from_secs(1),
        "closed after {took:?}, not the keep-alive timeout"
    );

    // A connection that never sends anything is idle too.
    let started = Instant::now();
    let mut silent = TcpStream::connect(ctx.addr).await.unwrap();
    assert_closed_unanswered(&mut silent, keep_alive * 2).await;
    assert!(started.elapsed() >= keep_alive - Duration::from_millis(100));
    let metrics = ctx.metrics().await;
    let idle = r#"compositions_jobs_connections_timed_out_total{reason="keep_alive"}"#;
    assert_eq!(sample(&metrics, idle), 2.0);
    let cut = r#"compositions_jobs_connections_timed_out_total{reason="header_read"}"#;
    assert_eq!(sample(&metrics, cut), 0.0);
}

#[tokio::test]
async fn a_long_poll_outlives_both_connection_timeouts() {
    // The clocks cover reading a head and waiting for one, never a request
    // being answered.
    let ctx = TestContext::with_config(|c| {
        c.http.header_read_timeout = Duration::from_secs(1);
        c.http.keep_alive_timeout = Duration::from_secs(1);
        // The whole wait, without its random spread.
        c.polling.jitter = 0.0;
    })
    .await;
    let path = job_path(ctx.create_job("mis-1").await.id);
    let token = format!("Bearer {}", tokens::valid("mis-1"));
    let started = Instant::now();
    let response = ctx
        .get_raw(&path, &[("Authorization", &token), ("Prefer", "wait=3")])
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("preference-applied"), Some("wait=3"));
    assert!(started.elapsed() >= Duration::from_millis(2900));
}

#[tokio::test]
async fn requests_hyper_refuses_by_itself_get_the_envelope() {
    let ctx = TestContext::new().await;
    let malformed = json!({"type": "request_malformed", "message": "Malformed HTTP request"});
    let too_large = json!({"type": "request_header_fields_too_large", "message": "Request header fields too large"});
    let uri_too_long = json!({"type": "uri_too_long", "message": "Request URI too long"});
    let many_headers: String = (0..101).map(|i| format!("x-{i}: a\r\n")).collect();
    // hyper's buffer is sized from the limits; a head that fills it unfinished.
    let buffer = Limits::new(&HttpConfig::default()).hyper_max_buf_size();
    let unfinished = format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(buffer));
    let cases = [
        (
            "a header line without a colon",
            "GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n".to_owned(),
            400,
            &malformed,
        ),
        (
            "a control byte in the method",
            "G\u{1}T / HTTP/1.1\r\n\r\n".to_owned(),
            400,
            &malformed,
        ),
        (
            "an unknown HTTP version",
            "GET / HTTP/3.0\r\n\r\n".to_owned(),
            400,
            &malformed,
        ),
        (
            "more headers than hyper parses",
            format!("GET / HTTP/1.1\r\n{many_headers}\r\n"),
            431,
            &too_large,
        ),
        (
            "a head past hyper's buffer",
            unfinished[..buffer].to_owned(),
            431,
            &too_large,
        ),
        (
            "a URI past what hyper holds",
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000)),
            414,
            &uri_too_long,
        ),
    ];
    for (case, request, status, error) in cases {
        let response = raw::send(ctx.addr, request.as_bytes()).await;
        assert_eq!(response.status, status, "{case}");
        assert_eq!(response.header("connection"), Some("close"), "{case}");
        ctx.assert_envelope(&response, "/", status, error.clone());
    }
}
