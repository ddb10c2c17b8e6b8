//! Raw HTTP/1.1 over TCP, for requests the generated client cannot send: the one
//! response reader of the tests (httparse), over tokio streams and, for tests that
//! drive the binary from threads, over blocking ones ([`blocking`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }

    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Why reading a response gave none.
#[derive(Debug)]
pub enum Unanswered {
    /// The connection ended before a single byte of a response: `EOF`, or the
    /// kind of the read error.
    Nothing(String),
    /// Part of a response (or bytes that are none), then the end.
    Cut(String),
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    send(addr, &head(addr, method, path, headers)).await
}

/// [`request`] `GET path` in a task of its own: a long poll the test holds
/// while it goes on.
pub fn spawn_get(
    addr: SocketAddr,
    path: String,
    headers: Vec<(&'static str, String)>,
) -> tokio::task::JoinHandle<RawResponse> {
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        request(addr, "GET", &path, &headers).await
    })
}

/// Sends raw bytes and parses whatever comes back until the server closes.
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.unwrap();
    parse(&received)
}

/// Reads one response off a connection that may stay open (its end is its
/// `content-length`), for one request at a time: nothing is pipelined.
pub async fn read_response(stream: &mut TcpStream) -> Result<RawResponse, Unanswered> {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(response) = complete(&received, false)? {
            return Ok(response);
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return complete(&received, true)?.ok_or_else(|| ended(&received, "EOF")),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ended(&received, &format!("{:?}", e.kind()))),
        }
    }
}

/// Reads until the server closes the connection, for at most `within`
/// (panicking after it); the bytes it sent first, [`parse`] reads them.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .expect("the server kept the connection open");
    received
}

/// The response in everything a server sent before it closed the connection;
/// panics if that is not one whole response.
pub fn parse(received: &[u8]) -> RawResponse {
    complete(received, true)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no whole response: {}", String::from_utf8_lossy(received)))
}

/// Blocking twins of the readers above, over `std::net`, for tests that drive the
/// binary from threads of their own.
pub mod blocking {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use super::{RawResponse, Unanswered, complete, ended, head, parse};

    /// Sends one request with `Connection: close` and reads the whole response.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        send(addr, &head(addr, method, path, headers))
    }

    /// Sends raw bytes and parses whatever comes back until the server closes.
    pub fn send(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(bytes).unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        parse(&received)
    }

    /// Reads one response off a connection that may stay open (its end is its
    /// `content-length`), for one request at a time: nothing is pipelined.
    pub fn read_response(stream: &mut TcpStream) -> Result<RawResponse, Unanswered> {
        let mut received = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            if let Some(response) = complete(&received, false)? {
                return Ok(response);
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return complete(&received, true)?.ok_or_else(|| ended(&received, "EOF"));
                }
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(ended(&received, &format!("{:?}", e.kind()))),
            }
        }
    }

    /// How the connection ended, once nothing more is expected on it: `EOF` when
    /// the server closed it cleanly, `more bytes`, or the kind of the read error.
    pub fn read_end(stream: &mut TcpStream) -> String {
        let mut byte = [0_u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => "EOF".into(),
            Ok(_) => "more bytes".into(),
            Err(e) => format!("{:?}", e.kind()),
        }
    }
}

/// A request's head with `Host` and `Connection: close`, then `headers`.
fn head(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The first response in `received`, once all of it is there: its head, then
/// `content-length` bytes of body, or (without one) everything up to the close.
/// `closed` says the connection has ended, so nothing more will come.
fn complete(received: &[u8], closed: bool) -> Result<Option<RawResponse>, Unanswered> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(received) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if closed => return Err(ended(received, "EOF")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ended(received, &format!("not HTTP ({e})"))),
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| value.trim().parse::<usize>());
    let status = response.code.unwrap_or_default();
    // These never have a body, whatever their headers say (RFC 9110, 6.4.1).
    let length = if matches!(status, 100..=199 | 204 | 304) {
        Some(Ok(0))
    } else {
        length
    };
    let body = match length {
        Some(Err(_)) => return Err(ended(received, "a bad content-length")),
        Some(Ok(length)) if received.len() >= head_len + length => {
            &received[head_len..head_len + length]
        }
        Some(Ok(_)) if closed => return Err(ended(received, "EOF")),
        None if closed => &received[head_len..],
        Some(Ok(_)) | None => return Ok(None),
    };
    Ok(Some(RawResponse {
        status,
        headers,
        body: body.to_vec(),
    }))
}

/// No whole response in `received`, for reason `why`.
fn ended(received: &[u8], why: &str) -> Unanswered {
    if received.is_empty() {
        Unanswered::Nothing(why.to_owned())
    } else {
        Unanswered::Cut(format!(
            "{why} after {:?}",
            String::from_utf8_lossy(received)
        ))
    }
}
