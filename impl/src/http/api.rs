//! The implementation of the generated `Api` trait: the thin handler.
//!
//! By the time it runs, the layers around the router have authenticated the caller
//! and the router has checked the scope, parsed the id and read the headers. It
//! applies the polling limit, asks [`Polling`] and hands the result to
//! [`super::mapping`].

use std::sync::Arc;

use compositions_api::{Api, GetAsyncJobStatusResponse};
use swagger::ApiError;
use uuid::Uuid;

use super::context::RequestContext;
use super::error::RequestError;
use super::limiter::RateLimiter;
use super::mapping;
use crate::auth::AuthError;
use crate::polling::Polling;

/// The operation this handler answers, as the spec (and so the access log and
/// the metrics, through [`super::context::RequestMeta::set_operation`]) names it.
const OPERATION_ID: &str = crate::responses::get_async_job_status::OPERATION_ID;

/// The service's answer to the generated API.
#[derive(Clone, Debug)]
pub(crate) struct JobsApi {
    polling: Polling,
    limiter: Arc<RateLimiter>,
}

impl JobsApi {
    /// An API that answers with `polling`, limited by `limiter`.
    pub(crate) fn new(polling: Polling, limiter: RateLimiter) -> Self {
        Self {
            polling,
            limiter: Arc::new(limiter),
        }
    }
}

#[async_trait::async_trait]
impl Api<RequestContext> for JobsApi {
    async fn get_async_job_status(
        &self,
        async_job_id: Uuid,
        if_none_match: Option<String>,
        prefer: Option<String>,
        context: &RequestContext,
    ) -> Result<GetAsyncJobStatusResponse, ApiError> {
        context.meta().set_operation(OPERATION_ID);
        let result = match context.client_id() {
            Some(client_id) => match self.limiter.check(client_id, async_job_id) {
                Err(retry_after) => Err(RequestError::TooManyRequests { retry_after }),
                Ok(()) => self
                    .polling
                    .poll(
                        client_id,
                        async_job_id,
                        if_none_match.as_deref(),
                        prefer.as_deref(),
                    )
                    .await
                    .map_err(RequestError::Store)
                    .and_then(|answer| answer.ok_or(RequestError::JobNotFound))
                    .inspect(|answer| {
                        if answer.not_modified {
                            self.limiter.give_back(client_id, async_job_id);
                        }
                    }),
            },
            // Unreachable through `App`, which authenticates before routing.
            None => Err(RequestError::Unauthenticated(AuthError::MissingToken)),
        };
        Ok(mapping::respond(result, context.meta()))
    }
}
