//! The generated router's floor: the router made from the spec, serving one
//! constant PENDING answer, with no authentication, no store and no layers around
//! it. It is a measuring point, not a service: `make bench` reports it beside the
//! baseline so that bench/README.md can say how much of the service's cost the
//! generated code takes before any of ours runs. Prints `address=<ip:port>`.

use std::collections::BTreeSet;
use std::sync::Arc;

use compositions_api::models::{Job, JobEnvelope, JobLink, JobStatus, Meta};
use compositions_api::server::{Authorization, Service as Router};
use compositions_api::{Api, GetAsyncJobStatusResponse};
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use swagger::auth::Scopes;
use swagger::{ApiError, Has, XSpanIdString};
use tokio::net::TcpListener;
use uuid::Uuid;

/// The service's allocator, so that the two differ only by the service's own code.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The least context the router accepts: a span id and a caller with the scope,
/// shared rather than cloned per request.
struct Context {
    span: XSpanIdString,
    authorization: Arc<Option<Authorization>>,
}

impl Has<XSpanIdString> for Context {
    fn get(&self) -> &XSpanIdString {
        &self.span
    }
    fn get_mut(&mut self) -> &mut XSpanIdString {
        &mut self.span
    }
    fn set(&mut self, value: XSpanIdString) {
        self.span = value;
    }
}

impl Has<Option<Authorization>> for Context {
    fn get(&self) -> &Option<Authorization> {
        &self.authorization
    }
    fn get_mut(&mut self) -> &mut Option<Authorization> {
        Arc::make_mut(&mut self.authorization)
    }
    fn set(&mut self, value: Option<Authorization>) {
        self.authorization = Arc::new(value);
    }
}

/// Answers every id with the same PENDING job, built afresh as the service does.
#[derive(Clone)]
struct Constant;

#[async_trait::async_trait]
impl Api<Context> for Constant {
    async fn get_async_job_status(
        &self,
        id: Uuid,
        _if_none_match: Option<String>,
        _prefer: Option<String>,
        context: &Context,
    ) -> Result<GetAsyncJobStatusResponse, ApiError> {
        let meta = Meta::new(
            format!("http://127.0.0.1:40000/api/patients/composition/job/{id}"),
            "object".into(),
            200,
            context.span.0.clone(),
        );
        let links = vec![JobLink::new("eHealth/resources".into())];
        let data = Job::new(
            id,
            JobStatus::Pending,
            "2026-11-27T12:00:00.000Z".into(),
            links,
        );
        Ok(GetAsyncJobStatusResponse::TaskFound {
            body: JobEnvelope::new(meta, data),
            e_tag: "\"0123456789abcdef\"".into(),
            cache_control: "no-store".into(),
            vary: "Prefer".into(),
            retry_after: Some(1),
            preference_applied: None,
        })
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(listen).await?;
    println!("address={}", listener.local_addr()?);
    let router = Router::new(Constant, false);
    let authorization = Arc::new(Some(Authorization {
        subject: "mis-bench".into(),
        scopes: Scopes::Some(BTreeSet::from(["composition:read".to_owned()])),
        issuer: None,
    }));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (router, authorization) = (router.clone(), authorization.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let context = Context {
                    span: XSpanIdString::get_or_generate(&request),
                    authorization: Arc::clone(&authorization),
                };
                let answer = router.call((request, context));
                async move {
                    answer
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))
                }
            });
            // A broken connection ends only itself.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
