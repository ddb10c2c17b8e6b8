//! The one place where the domain meets the generated API: jobs become models,
//! errors become responses, and responses become HTTP.
//!
//! Every conversion is an exhaustive `match` or reads fields by name, so a contract
//! change (a new response, status value or required field, a renamed property)
//! stops this file compiling until it is handled. Optional fields are assigned
//! after `new`, so adding one to the spec still compiles.

use std::convert::Infallible;
use std::error::Error;
use std::fmt;

use bytes::Bytes;
use compositions_api::GetAsyncJobStatusResponse;
use compositions_api::models;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderName, HeaderValue, RETRY_AFTER,
    VARY as VARY_HEADER, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};

use super::context::RequestMeta;
use super::error::{RequestError, Unparsable};
use crate::auth::AuthError;
use crate::jobs::{DEFAULT_ENTITY, Failure, Job, Link, State, Status};
use crate::polling::{self, Answer};

/// The body type the generated router uses, and so do we.
pub type Body = BoxBody<Bytes, Infallible>;

/// What `Vary` names on every answer with a job: how long it may wait.
const VARY: &str = "Prefer";

/// The job, or why there is none, as the generated response.
pub fn respond(
    result: Result<Answer, RequestError>,
    meta: &RequestMeta,
) -> GetAsyncJobStatusResponse {
    let answer = match result {
        Ok(answer) => answer,
        Err(error) => return error_response(error, meta),
    };
    let cache_control = polling::cache_control(answer.job.state.status()).to_owned();
    let retry_after = answer
        .retry_after
        .map(|seconds| i32::try_from(seconds).unwrap_or(i32::MAX));
    let preference_applied = answer
        .granted_wait
        .map(|wait| format!("wait={}", wait.as_secs()));
    if answer.not_modified {
        GetAsyncJobStatusResponse::NotModified {
            e_tag: answer.etag,
            cache_control,
            vary: VARY.into(),
            retry_after,
            preference_applied,
        }
    } else {
        GetAsyncJobStatusResponse::TaskFound {
            body: models::JobEnvelope::new(
                meta_model(meta, StatusCode::OK),
                job_model(&answer.job),
            ),
            e_tag: answer.etag,
            cache_control,
            vary: VARY.into(),
            retry_after,
            preference_applied,
        }
    }
}

/// The mapping from errors to HTTP, exactly once.
fn error_response(error: RequestError, meta: &RequestMeta) -> GetAsyncJobStatusResponse {
    use GetAsyncJobStatusResponse as R;
    log_error(&error, meta);
    let envelope = |status: StatusCode, kind: &str, message: String| {
        models::ErrorEnvelope::new(
            meta_model(meta, status),
            models::ApiError::new(kind.into(), message),
        )
    };
    match error {
        RequestError::MalformedParameter {
            location,
            parameter,
            expected,
        } => {
            let mut body = envelope(
                StatusCode::BAD_REQUEST,
                "request_malformed",
                "Invalid request format".into(),
            );
            let description = format!("{parameter} must be a {}", expected.to_ascii_uppercase());
            let mut rule = models::InvalidRule::new("format".into(), description);
            rule.params = Some(vec![expected.into()]);
            body.error.invalid = Some(vec![models::InvalidEntry::new(
                location.into(),
                parameter,
                vec![rule],
            )]);
            R::InvalidRequestFormat(body)
        }
        RequestError::InvalidHost { .. } => R::InvalidRequestFormat(envelope(
            StatusCode::BAD_REQUEST,
            "request_malformed",
            "A request must carry exactly one valid Host header".into(),
        )),
        RequestError::BodyNotAllowed => R::InvalidRequestFormat(envelope(
            StatusCode::BAD_REQUEST,
            "request_malformed",
            "A GET request takes no body".into(),
        )),
        RequestError::UriTooLong { .. } | RequestError::Unparsable(Unparsable::UriTooLong) => {
            R::UriTooLong(envelope(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "Request URI too long".into(),
            ))
        }
        RequestError::HeadersTooLarge { .. }
        | RequestError::Unparsable(Unparsable::HeadTooLarge) => {
            R::RequestHeaderFieldsTooLarge(envelope(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_fields_too_large",
                "Request header fields too large".into(),
            ))
        }
        RequestError::Unparsable(Unparsable::Malformed) => R::InvalidRequestFormat(envelope(
            StatusCode::BAD_REQUEST,
            "request_malformed",
            "Malformed HTTP request".into(),
        )),
        // Shedding load: the next try may well succeed, here or elsewhere.
        RequestError::Overloaded { .. } => R::ServiceUnavailable {
            body: envelope(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "Service overloaded; retry after the Retry-After delay".into(),
            ),
            retry_after: Some(1),
        },
        // 401 is for who you are: no token, or one that fails verification.
        RequestError::Unauthenticated(auth) => {
            let (kind, message, challenge) = match auth {
                // Nobody's token can be checked yet: the service's state, so a
                // 503 to come back, never a 401 that would blame the token.
                AuthError::KeysUnavailable => {
                    return R::ServiceUnavailable {
                        body: envelope(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "service_unavailable",
                            "Service starting: token signing keys are not loaded yet; retry after the Retry-After delay".into(),
                        ),
                        retry_after: Some(1),
                    };
                }
                AuthError::MissingToken => (
                    "access_denied",
                    "Authorization header is not set or doesn't contain Bearer token".to_owned(),
                    "Bearer",
                ),
                AuthError::Expired => (
                    "jwt_expired",
                    "JWT expired".to_owned(),
                    r#"Bearer error="invalid_token""#,
                ),
                AuthError::InvalidToken { .. } | AuthError::NotYetValid => (
                    "access_denied",
                    "Invalid access token".to_owned(),
                    r#"Bearer error="invalid_token""#,
                ),
                AuthError::MissingHeader(name) => {
                    ("access_denied", format!("Missing header {name}"), "Bearer")
                }
                AuthError::InvalidHeader(name) => {
                    ("access_denied", format!("Invalid header {name}"), "Bearer")
                }
            };
            R::Unauthorized {
                body: envelope(StatusCode::UNAUTHORIZED, kind, message),
                www_authenticate: challenge.to_owned(),
            }
        }
        // 403 is for what you may do: a valid token without the scope.
        RequestError::MissingScopes { missing } => R::Forbidden(envelope(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "Your scope does not allow to access this resource. Missing allowances: {}",
                missing.join(", ")
            ),
        )),
        // 404 for whose it is: another client's job reads exactly like no job, so
        // the answer never reveals that it exists.
        RequestError::TooManyRequests { retry_after } => R::TooManyRequests {
            body: envelope(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "This job is polled too often; retry after the Retry-After delay".into(),
            ),
            // Required by the spec; the generator keys headers by name across
            // responses and takes the optional one of 200 for it.
            retry_after: Some(whole_seconds(retry_after)),
        },
        RequestError::JobNotFound => R::TaskNotFound(envelope(
            StatusCode::NOT_FOUND,
            "not_found",
            "Task not found".into(),
        )),
        RequestError::RouteNotFound => R::TaskNotFound(envelope(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found".into(),
        )),
        RequestError::MethodNotAllowed { allow } => R::MethodNotAllowed {
            body: envelope(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed".into(),
            ),
            allow,
        },
        // The cause went to the log above; the body never carries it.
        RequestError::Store(_) | RequestError::Router(_) => R::SubordinateServiceError(envelope(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Subordinate service error".into(),
        )),
    }
}

fn log_error(error: &RequestError, meta: &RequestMeta) {
    let request_id = &meta.request_id.0;
    match error {
        RequestError::Store(_) | RequestError::Router(_) => {
            tracing::error!(request_id, error = %ErrorChain(error), "request failed");
        }
        RequestError::Overloaded { .. } => {
            tracing::warn!(request_id, error = %ErrorChain(error), "load shed");
        }
        _ => tracing::debug!(request_id, error = %ErrorChain(error), "request refused"),
    }
}

/// A delay in whole seconds, rounded up, at least 1.
fn whole_seconds(delay: std::time::Duration) -> i32 {
    let seconds = delay.as_millis().div_ceil(1000).max(1);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// An error and its sources, `a: b: c`, for the log. A source whose text its
/// error already shows (some libraries print their cause and also return it as
/// the source) is not repeated.
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            let text = error.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = error.source();
        }
        Ok(())
    }
}

fn meta_model(meta: &RequestMeta, status: StatusCode) -> models::Meta {
    models::Meta::new(
        meta.url.clone(),
        "object".into(),
        i32::from(status.as_u16()),
        meta.request_id.0.clone(),
    )
}

/// A job as the contract shows it.
pub fn job_model(job: &Job) -> models::Job {
    let (links, error) = match &job.state {
        State::Pending { .. } => (vec![models::JobLink::new(DEFAULT_ENTITY.into())], None),
        State::Done { links, .. } => (links.iter().map(link_model).collect(), None),
        State::Failed { failure, .. } => {
            // Older clients read the error from `links[].error`; newer ones from
            // `data.error`. Both get it.
            let mut link = models::JobLink::new(DEFAULT_ENTITY.into());
            link.error = Some(failure.display_text());
            let error =
                models::JobError::new(failure.code, failure.name.clone(), failure.message.clone());
            (vec![link], Some(error))
        }
    };
    let mut model = models::Job::new(
        job.id,
        job.state.status().into(),
        job.state.eta().to_rfc3339(),
        links,
    );
    model.error = error;
    model
}

fn link_model(link: &Link) -> models::JobLink {
    let mut model = models::JobLink::new(link.entity.clone());
    model.href.clone_from(&link.href);
    model
}

impl From<Status> for models::JobStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Pending => Self::Pending,
            Status::Done => Self::Done,
            Status::Failed => Self::Failed,
        }
    }
}

impl From<models::JobStatus> for Status {
    fn from(status: models::JobStatus) -> Self {
        match status {
            models::JobStatus::Pending => Self::Pending,
            models::JobStatus::Done => Self::Done,
            models::JobStatus::Failed => Self::Failed,
        }
    }
}

impl From<&models::JobError> for Failure {
    fn from(error: &models::JobError) -> Self {
        Self {
            code: error.code,
            name: error.r#type.clone(),
            message: error.message.clone(),
        }
    }
}

impl From<&models::JobLink> for Link {
    fn from(link: &models::JobLink) -> Self {
        Self {
            entity: link.entity.clone(),
            href: link.href.clone(),
        }
    }
}

/// Serializes a generated response, for the answers the layers around the router
/// make themselves (the router serializes what the API implementation returns).
pub fn encode(response: GetAsyncJobStatusResponse) -> Response<Body> {
    use GetAsyncJobStatusResponse as R;
    let mut headers = Vec::new();
    let (status, body) = match response {
        R::TaskFound {
            body,
            e_tag,
            cache_control,
            vary,
            retry_after,
            preference_applied,
        } => {
            headers = job_headers(e_tag, cache_control, vary, retry_after, preference_applied);
            (StatusCode::OK, Some(to_json(&body)))
        }
        R::NotModified {
            e_tag,
            cache_control,
            vary,
            retry_after,
            preference_applied,
        } => {
            headers = job_headers(e_tag, cache_control, vary, retry_after, preference_applied);
            (StatusCode::NOT_MODIFIED, None)
        }
        R::InvalidRequestFormat(body) => (StatusCode::BAD_REQUEST, Some(to_json(&body))),
        R::Unauthorized {
            body,
            www_authenticate,
        } => {
            headers.push((WWW_AUTHENTICATE, www_authenticate));
            (StatusCode::UNAUTHORIZED, Some(to_json(&body)))
        }
        R::Forbidden(body) => (StatusCode::FORBIDDEN, Some(to_json(&body))),
        R::TaskNotFound(body) => (StatusCode::NOT_FOUND, Some(to_json(&body))),
        R::MethodNotAllowed { body, allow } => {
            headers.push((ALLOW, allow));
            (StatusCode::METHOD_NOT_ALLOWED, Some(to_json(&body)))
        }
        R::TooManyRequests { body, retry_after } => {
            headers.extend(retry_after.map(|seconds| (RETRY_AFTER, seconds.to_string())));
            (StatusCode::TOO_MANY_REQUESTS, Some(to_json(&body)))
        }
        R::SubordinateServiceError(body) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Some(to_json(&body)))
        }
        R::UriTooLong(body) => (StatusCode::URI_TOO_LONG, Some(to_json(&body))),
        R::RequestHeaderFieldsTooLarge(body) => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Some(to_json(&body)),
        ),
        R::ServiceUnavailable { body, retry_after } => {
            headers.extend(retry_after.map(|seconds| (RETRY_AFTER, seconds.to_string())));
            (StatusCode::SERVICE_UNAVAILABLE, Some(to_json(&body)))
        }
    };
    let json = body.is_some();
    let mut response = Response::new(BoxBody::new(Full::new(body.unwrap_or_default())));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    if json {
        response_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in headers {
        insert_header(response_headers, name, &value);
    }
    response
}

/// The headers of an answer with a job (200 or 304).
fn job_headers(
    e_tag: String,
    cache_control: String,
    vary: String,
    retry_after: Option<i32>,
    preference_applied: Option<String>,
) -> Vec<(HeaderName, String)> {
    let mut headers = vec![
        (ETAG, e_tag),
        (CACHE_CONTROL, cache_control),
        (VARY_HEADER, vary),
    ];
    headers.extend(retry_after.map(|seconds| (RETRY_AFTER, seconds.to_string())));
    headers.extend(
        preference_applied.map(|applied| (HeaderName::from_static("preference-applied"), applied)),
    );
    headers
}

fn insert_header(headers: &mut hyper::HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            tracing::error!(header = %name, "dropped a response header that is not a valid value")
        }
    }
}

fn to_json(body: &impl serde::Serialize) -> Bytes {
    // The models hold only strings, numbers and lists, which always serialize.
    serde_json::to_vec(body).map_or_else(
        |_| {
            Bytes::from_static(
                br#"{"error":{"type":"internal_error","message":"Subordinate service error"}}"#,
            )
        },
        Bytes::from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    /// Shows its cause and returns it as the source, as some libraries do.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Connect(#[source] Refused);

    #[derive(Debug, thiserror::Error)]
    #[error("the job store failed")]
    struct Store(#[source] Connect);

    #[test]
    fn an_error_chain_says_each_cause_once() {
        assert_eq!(
            ErrorChain(&Store(Connect(Refused))).to_string(),
            "the job store failed: cannot connect: connection refused"
        );
        assert_eq!(ErrorChain(&Refused).to_string(), "connection refused");
    }
}
