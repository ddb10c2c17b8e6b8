//! A minimal HTTP/1.1 client over one keep-alive connection: what the load
//! generators need (status, `ETag`, `Retry-After`, the body) and nothing more, so
//! that the bench tool spends as little of the shared cores as it can.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::Failed;

/// One answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub etag: Option<String>,
    pub retry_after: Option<u32>,
    pub body: Vec<u8>,
}

/// A keep-alive connection.
pub(crate) struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects to `address`, from `source` if given (several loopback source
    /// addresses give more than one ephemeral port range to many connections).
    pub(crate) async fn open(address: SocketAddr, source: Option<IpAddr>) -> Result<Self, Failed> {
        let stream = match source {
            None => TcpStream::connect(address).await?,
            Some(ip) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(address).await?
            }
        };
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(1024),
        })
    }

    /// Sends `request` (a whole GET, headers and blank line) and reads the answer.
    pub(crate) async fn send(&mut self, request: &[u8]) -> Result<Answer, Failed> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let mut chunk = [0_u8; 4096];
        loop {
            if let Some(answer) = parse(&self.buffer)? {
                return Ok(answer);
            }
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                return Err("the server closed the connection".into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// A GET of `path` with `headers` (each ending in CRLF).
pub(crate) fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n").into_bytes()
}

/// The answer in `received`, if it is all there.
fn parse(received: &[u8]) -> Result<Option<Answer>, Failed> {
    let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&received[..end])?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.get(9..12))
        .ok_or("no status line")?
        .parse()?;
    let (mut length, mut etag, mut retry_after) = (0, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse()?;
        } else if name.eq_ignore_ascii_case("etag") {
            etag = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not expected".into());
        }
    }
    let body = end + 4;
    if received.len() < body + length {
        return Ok(None);
    }
    Ok(Some(Answer {
        status,
        etag,
        retry_after,
        body: received[body..body + length].to_vec(),
    }))
}
