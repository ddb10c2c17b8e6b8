#![allow(missing_docs, trivial_casts, unused_variables, unused_mut, unused_imports, unused_extern_crates, unused_attributes, non_camel_case_types)]
#![allow(clippy::derive_partial_eq_without_eq, clippy::disallowed_names)]

use async_trait::async_trait;
use futures::Stream;
#[cfg(feature = "mock")]
use mockall::automock;
use std::error::Error;
use std::collections::BTreeSet;
use std::task::{Poll, Context};
use swagger::{ApiError, ContextWrapper, auth::Authorization};
use serde::{Serialize, Deserialize};

#[cfg(any(feature = "client", feature = "server"))]
type ServiceError = Box<dyn Error + Send + Sync + 'static>;

pub const BASE_PATH: &str = "";
pub const API_VERSION: &str = "2.39.2";

mod auth;
pub use auth::{AuthenticationApi, Claims};


#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[must_use]
pub enum GetAsyncJobStatusResponse {
    /// Task found. The job exists and belongs to the caller.
    TaskFound
    {
        body: models::JobEnvelope,
        e_tag:
        String
        ,
        cache_control:
        String
        ,
        vary:
        String
        ,
        retry_after:
        Option<
        i32
        >
        ,
        preference_applied:
        Option<
        String
        >
    }
    ,
    /// Not modified: the `If-None-Match` tag is still current (after waiting, when `Prefer: wait` was sent). No body; the headers are those of a 200. 
    NotModified
    {
        e_tag:
        String
        ,
        cache_control:
        String
        ,
        vary:
        String
        ,
        retry_after:
        Option<
        i32
        >
        ,
        preference_applied:
        Option<
        String
        >
    }
    ,
    /// Invalid request format: `asyncJobId` is not a UUID (`error.invalid` names it), the request has a body, which a GET never takes, or it does not carry exactly one valid `Host` header. 
    InvalidRequestFormat
    (models::ErrorEnvelope)
    ,
    /// No token, or a token that is malformed, badly signed, expired, or not meant for this service. 
    Unauthorized
    {
        body: models::ErrorEnvelope,
        www_authenticate:
        String
    }
    ,
    /// The token is valid but lacks the scope `composition:read`. (One eHealth method page says 401 here; the gateway answers 403, and so does this service.) 
    Forbidden
    (models::ErrorEnvelope)
    ,
    /// Task not found: no such job, a job of another client (which is never revealed to exist), or a finished job older than the retention time. 
    TaskNotFound
    (models::ErrorEnvelope)
    ,
    /// The path exists but answers only GET. `Allow` lists the methods.
    MethodNotAllowed
    {
        body: models::ErrorEnvelope,
        allow:
        String
    }
    ,
    /// The path and query are longer than the service accepts (2 KiB by default). A job's URL is far shorter: check how it was built. 
    UriTooLong
    (models::ErrorEnvelope)
    ,
    /// Too many requests: this client polls this job faster than the service allows (by default 10 at once, then 1 a second; a 304 is not counted). Wait `Retry-After` seconds. eHealth has no error type for 429; this service uses `too_many_requests`. 
    TooManyRequests
    {
        body: models::ErrorEnvelope,
        retry_after:
        Option<
        i32
        >
    }
    ,
    /// More request headers, or more bytes of them, than the service accepts (64 headers and 32 KiB by default). Far beyond that, the connection's HTTP layer refuses the request before the service sees it (see docs/operations.md). 
    RequestHeaderFieldsTooLarge
    (models::ErrorEnvelope)
    ,
    /// Subordinate service error: the job store failed. The body never carries internal detail; quote `meta.request_id` to the operators. 
    SubordinateServiceError
    (models::ErrorEnvelope)
    ,
    /// This instance is at its limit of open connections or of requests in flight, and sheds load rather than slow every caller down; or it is starting and has no usable token signing keys yet. Wait `Retry-After` seconds; a load balancer may try another instance. 
    ServiceUnavailable
    {
        body: models::ErrorEnvelope,
        retry_after:
        Option<
        i32
        >
    }
}

/// API
#[cfg_attr(feature = "mock", automock)]
#[async_trait]
#[allow(clippy::too_many_arguments, clippy::ptr_arg)]
pub trait Api<C: Send + Sync> {
    /// Get the status of a composition's async job
    async fn get_async_job_status(
        &self,
        async_job_id: uuid::Uuid,
        if_none_match: Option<String>,
        prefer: Option<String>,
        context: &C) -> Result<GetAsyncJobStatusResponse, ApiError>;

}

/// API where `Context` isn't passed on every API call
#[cfg_attr(feature = "mock", automock)]
#[async_trait]
#[allow(clippy::too_many_arguments, clippy::ptr_arg)]
pub trait ApiNoContext<C: Send + Sync> {
    // The std::task::Context struct houses a reference to std::task::Waker with the lifetime <'a>.
    // Adding an anonymous lifetime `'a` to allow mockall to create a mock object with the right lifetimes.
    // This is needed because the compiler is unable to determine the lifetimes on F's trait bound
    // where F is the closure created by mockall. We use higher-rank trait bounds here to get around this.

    fn context(&self) -> &C;

    /// Get the status of a composition's async job
    async fn get_async_job_status(
        &self,
        async_job_id: uuid::Uuid,
        if_none_match: Option<String>,
        prefer: Option<String>,
        ) -> Result<GetAsyncJobStatusResponse, ApiError>;

}

/// Trait to extend an API to make it easy to bind it to a context.
pub trait ContextWrapperExt<C: Send + Sync> where Self: Sized
{
    /// Binds this API to a context.
    fn with_context(self, context: C) -> ContextWrapper<Self, C>;
}

impl<T: Api<C> + Send + Sync, C: Clone + Send + Sync> ContextWrapperExt<C> for T {
    fn with_context(self: T, context: C) -> ContextWrapper<T, C> {
         ContextWrapper::<T, C>::new(self, context)
    }
}

#[async_trait]
impl<T: Api<C> + Send + Sync, C: Clone + Send + Sync> ApiNoContext<C> for ContextWrapper<T, C> {
    fn context(&self) -> &C {
        ContextWrapper::context(self)
    }

    /// Get the status of a composition's async job
    async fn get_async_job_status(
        &self,
        async_job_id: uuid::Uuid,
        if_none_match: Option<String>,
        prefer: Option<String>,
        ) -> Result<GetAsyncJobStatusResponse, ApiError>
    {
        let context = self.context().clone();
        self.api().get_async_job_status(async_job_id, if_none_match, prefer, &context).await
    }

}


#[cfg(feature = "client")]
pub mod client;

// Re-export Client as a top-level name
#[cfg(feature = "client")]
pub use client::Client;

#[cfg(feature = "server")]
pub mod server;

// Re-export router() as a top-level name
#[cfg(feature = "server")]
pub use self::server::Service;

#[cfg(feature = "server")]
pub mod context;

pub mod models;

#[cfg(any(feature = "client", feature = "server"))]
pub(crate) mod header;
