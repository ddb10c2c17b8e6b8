//! The request path through the whole service, in-process: a real server on a
//! loopback port (started once), fed a request built from the input: the path,
//! the `Authorization` value (or a valid token), `Prefer`, `If-None-Match` and
//! any other header lines. Whatever comes in, the answer is a complete HTTP
//! response, never a 5xx but 503, and every error has the JSON envelope, even
//! those hyper makes by itself for what it cannot parse.
//!
//! Input: lines separated by `\n`. The first byte's bits pick a valid token (1),
//! and whether to send `Prefer` (2) and `If-None-Match` (4); then the lines are
//! the path (a job id, or a whole path when it starts with `/`), the
//! `Authorization` value, the `Prefer` value, the `If-None-Match` value, and
//! extra header lines.

#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use compositions_jobs::config::{Config, DatabaseUrl};
use compositions_jobs::jobs::{Kind, NewJob, Timestamp};
use compositions_jobs::{Access, JobStore, Store};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

#[path = "common.rs"]
mod common;

struct Service {
    addr: SocketAddr,
    job: Uuid,
    token: String,
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            runtime.block_on(async move {
                let dir = tempfile::tempdir().expect("a folder");
                let mut config = Config {
                    database: DatabaseUrl::Sqlite(dir.path().join("jobs.db")),
                    data_dir: dir.path().to_path_buf(),
                    admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    auth: common::auth_config(),
                    ..Config::default()
                };
                config.polling.limit_per_second = 0.0;
                config.polling.max_wait = Duration::from_millis(1);
                let config = config.validated().expect("valid");
                let store = Store::open(&config, Access::ReadWrite)
                    .await
                    .expect("a store");
                let job = NewJob {
                    id: Uuid::new_v4(),
                    client_id: common::CLIENT.into(),
                    kind: Kind::Create,
                    expected_duration: Duration::from_secs(30),
                    dedup_hash: None,
                };
                let job = store
                    .create(job, Timestamp::now())
                    .await
                    .expect("created")
                    .job
                    .id;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bound");
                let server = compositions_jobs::start_server(config, listener)
                    .await
                    .expect("started");
                sender
                    .send(Service {
                        addr: server.local_addr(),
                        job,
                        token: common::valid_token(),
                    })
                    .expect("handed over");
                // Serve for as long as the fuzzer runs.
                std::future::pending::<()>().await;
                drop((server, dir));
            });
        });
        receiver.recv().expect("the service")
    })
}

/// A header value or path piece: no line breaks, which would end the request.
fn clean(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let service = service();
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|b| *b == b'\n');
    let path = lines.next().unwrap_or_default();
    let authorization = lines.next().unwrap_or_default();
    let prefer = lines.next().unwrap_or_default();
    let if_none_match = lines.next().unwrap_or_default();

    let mut request = b"GET ".to_vec();
    match path.first() {
        Some(b'/') => request.extend(clean(path)),
        _ => {
            request.extend_from_slice(b"/api/patients/composition/job/");
            if path.is_empty() {
                request.extend_from_slice(service.job.to_string().as_bytes());
            } else {
                request.extend(clean(path));
            }
        }
    }
    request.extend_from_slice(b" HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n");
    request.extend_from_slice(b"Authorization: ");
    if flags & 1 == 1 {
        request.extend_from_slice(b"Bearer ");
        request.extend_from_slice(service.token.as_bytes());
    } else {
        request.extend(clean(authorization));
    }
    request.extend_from_slice(b"\r\n");
    for (bit, name, value) in [
        (2, &b"Prefer: "[..], prefer),
        (4, b"If-None-Match: ", if_none_match),
    ] {
        if flags & bit != 0 {
            request.extend_from_slice(name);
            request.extend(clean(value));
            request.extend_from_slice(b"\r\n");
        }
    }
    for line in lines {
        request.extend(clean(line));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");

    let mut stream = TcpStream::connect(service.addr).expect("connected");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    // The server may answer and close before reading everything: not an error.
    let _ = stream.write_all(&request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);

    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 "),
        "no answer to {:?}: {text:?}",
        String::from_utf8_lossy(&request)
    );
    let status: u16 = text[9..12].parse().expect("a status");
    assert!(
        status < 500 || status == 503,
        "{status} for {:?}: {text}",
        String::from_utf8_lossy(&request)
    );
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    if status >= 400 {
        let json: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {body:?}"));
        assert!(
            json["meta"].is_object() && json["error"]["type"].is_string(),
            "{body}"
        );
    }
});
