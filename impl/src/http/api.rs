//! The implementation of the generated `Api` trait: the thin handler.
//!
//! By the time it runs, the layers around the router have authenticated the caller
//! and the router has checked the scope and parsed the id. It asks the store and
//! hands the result to [`super::mapping`].

use compositions_api::{Api, GetAsyncJobStatusResponse};
use swagger::ApiError;
use uuid::Uuid;

use super::context::RequestContext;
use super::error::RequestError;
use super::mapping;
use crate::auth::AuthError;
use crate::jobs::Timestamp;
use crate::store::{JobStore, Store};

/// The service's answer to the generated API.
#[derive(Clone, Debug)]
pub struct JobsApi {
    store: Store,
}

impl JobsApi {
    /// An API backed by `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl Api<RequestContext> for JobsApi {
    async fn get_async_job_status(
        &self,
        async_job_id: Uuid,
        context: &RequestContext,
    ) -> Result<GetAsyncJobStatusResponse, ApiError> {
        let result = match context.client_id() {
            Some(client_id) => self
                .store
                .find_for_client(async_job_id, client_id, Timestamp::now())
                .await
                .map_err(RequestError::Store)
                .and_then(|job| job.ok_or(RequestError::JobNotFound)),
            // Unreachable through `App`, which authenticates before routing.
            None => Err(RequestError::Unauthenticated(AuthError::MissingToken)),
        };
        Ok(mapping::respond(result, context.meta()))
    }
}
