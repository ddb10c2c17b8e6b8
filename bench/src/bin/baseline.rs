//! The benchmark's ceiling: bare hyper 1 answering the job path with a fixed JSON
//! body the size of a real PENDING response. Nothing else: no routing, no auth,
//! no store. Prints `address=<ip:port>` once listening.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A PENDING answer as the service gives it on 127.0.0.1 (the same bytes count).
const BODY: &str = concat!(
    r#"{"meta":{"url":"http://127.0.0.1:40000/api/patients/composition/job/89678f60-4cdc-4fe3-ae83-e8b3ebd35c59","#,
    r#""type":"object","code":200,"request_id":"2b4d6f80-1a3c-4e5f-8a9b-0c1d2e3f4a5b"},"#,
    r#""data":{"id":"89678f60-4cdc-4fe3-ae83-e8b3ebd35c59","status":"PENDING","eta":"2026-11-27T12:00:00.000Z","#,
    r#""links":[{"entity":"eHealth/resources"}]}}"#
);

async fn answer(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(listen).await?;
    println!("address={}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // A broken connection ends only itself.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
