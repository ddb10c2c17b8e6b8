//! The one place where the domain meets the generated API: jobs become models,
//! errors become answers, and answers become HTTP.
//!
//! Every conversion is an exhaustive `match` or reads fields by name, so a contract
//! change (a new response, status value or required field, a renamed property)
//! stops this file compiling until it is handled. Optional fields are assigned
//! after `new`, so adding one to the spec still compiles.
//!
//! No status code is written here: each comes from the spec through
//! [`crate::responses`], for the HTTP status and `meta.code` alike. Errors
//! become an [`ErrorAnswer`] first, which belongs to no operation: the layers
//! around the router send it as it is ([`encode_error`]), and an operation's
//! handler turns it into its own generated response.

use std::convert::Infallible;

use bytes::Bytes;
use compositions_api::GetAsyncJobStatusResponse;
use compositions_api::models;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::context::RequestMeta;
use super::error::{RequestError, Unparsable};
use crate::auth::AuthError;
use crate::chain::ErrorChain;
use crate::jobs::{DEFAULT_ENTITY, Failure, Job, Link, State, Status};
use crate::polling::{self, Answer};
use crate::responses::{self, Common};

/// The body type the generated router uses, and so do we.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// What `Vary` names on every answer with a job: how long it may wait.
const VARY: &str = "Prefer";

/// The job, or why there is none, as the generated response of
/// getAsyncJobStatus (which the generated router serializes).
pub(crate) fn respond(
    result: Result<Answer, RequestError>,
    meta: &RequestMeta,
) -> GetAsyncJobStatusResponse {
    let response = match result {
        Ok(answer) => job_response(answer, meta),
        Err(error) => for_get_async_job_status(error_answer(error, meta)),
    };
    with_meta_code(response)
}

fn job_response(answer: Answer, meta: &RequestMeta) -> GetAsyncJobStatusResponse {
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
            // The code is set by `with_meta_code`.
            body: models::JobEnvelope::new(meta_model(meta, 0), job_model(&answer.job)),
            e_tag: answer.etag,
            cache_control,
            vary: VARY.into(),
            retry_after,
            preference_applied,
        }
    }
}

/// `meta.code` of every answer getAsyncJobStatus sends, from the spec (the same
/// line the generated router takes the HTTP status from): a new response in the
/// spec stops this compiling until it is handled, a changed code changes both.
fn with_meta_code(mut response: GetAsyncJobStatusResponse) -> GetAsyncJobStatusResponse {
    use GetAsyncJobStatusResponse as R;
    use responses::get_async_job_status as spec;
    let (meta, code) = match &mut response {
        R::NotModified { .. } => return response,
        R::TaskFound { body, .. } => (&mut body.meta, spec::TASK_FOUND),
        R::InvalidRequestFormat(body) => (&mut body.meta, spec::INVALID_REQUEST_FORMAT),
        R::Unauthorized { body, .. } => (&mut body.meta, spec::UNAUTHORIZED),
        R::Forbidden(body) => (&mut body.meta, spec::FORBIDDEN),
        R::TaskNotFound(body) => (&mut body.meta, spec::TASK_NOT_FOUND),
        R::MethodNotAllowed { body, .. } => (&mut body.meta, spec::METHOD_NOT_ALLOWED),
        R::UriTooLong(body) => (&mut body.meta, spec::URI_TOO_LONG),
        R::TooManyRequests { body, .. } => (&mut body.meta, spec::TOO_MANY_REQUESTS),
        R::RequestHeaderFieldsTooLarge(body) => {
            (&mut body.meta, spec::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        R::SubordinateServiceError(body) => (&mut body.meta, spec::SUBORDINATE_SERVICE_ERROR),
        R::ServiceUnavailable { body, .. } => (&mut body.meta, spec::SERVICE_UNAVAILABLE),
    };
    meta.code = i32::from(code);
    response
}

/// An error answer before it belongs to any operation: which of the responses
/// every operation declares, what it says, and the header it carries.
#[derive(Debug)]
pub(crate) struct ErrorAnswer {
    response: Common,
    body: models::ErrorEnvelope,
    header: ErrorHeader,
}

/// The one header an error answer may need.
#[derive(Debug)]
enum ErrorHeader {
    None,
    WwwAuthenticate(&'static str),
    Allow(String),
    RetryAfter(i32),
}

/// The mapping from errors to answers, exactly once. The status of each comes
/// from the spec through [`Common`].
pub(crate) fn error_answer(error: RequestError, meta: &RequestMeta) -> ErrorAnswer {
    log_error(&error, meta);
    let answer = |response: Common, kind: &str, message: String, header: ErrorHeader| {
        let body = models::ErrorEnvelope::new(
            meta_model(meta, response.code()),
            models::ApiError::new(kind.into(), message),
        );
        ErrorAnswer {
            response,
            body,
            header,
        }
    };
    let malformed = |message: &str| {
        answer(
            Common::InvalidRequestFormat,
            "request_malformed",
            message.into(),
            ErrorHeader::None,
        )
    };
    match error {
        RequestError::MalformedParameter {
            location,
            parameter,
            expected,
        } => {
            let mut answer = malformed("Invalid request format");
            let description = format!("{parameter} must be a {}", expected.to_ascii_uppercase());
            let mut rule = models::InvalidRule::new("format".into(), description);
            rule.params = Some(vec![expected.into()]);
            answer.body.error.invalid = Some(vec![models::InvalidEntry::new(
                location.into(),
                parameter,
                vec![rule],
            )]);
            answer
        }
        RequestError::InvalidHost { .. } => {
            malformed("A request must carry exactly one valid Host header")
        }
        RequestError::BodyNotAllowed => malformed("A GET request takes no body"),
        RequestError::Unparsable(Unparsable::Malformed) => malformed("Malformed HTTP request"),
        RequestError::UriTooLong { .. } | RequestError::Unparsable(Unparsable::UriTooLong) => {
            answer(
                Common::UriTooLong,
                "uri_too_long",
                "Request URI too long".into(),
                ErrorHeader::None,
            )
        }
        RequestError::HeadersTooLarge { .. }
        | RequestError::Unparsable(Unparsable::HeadTooLarge) => answer(
            Common::RequestHeaderFieldsTooLarge,
            "request_header_fields_too_large",
            "Request header fields too large".into(),
            ErrorHeader::None,
        ),
        // Shedding load: the next try may well succeed, here or elsewhere.
        RequestError::Overloaded { .. } => answer(
            Common::ServiceUnavailable,
            "service_unavailable",
            "Service overloaded; retry after the Retry-After delay".into(),
            ErrorHeader::RetryAfter(1),
        ),
        // 401 is for who you are: no token, or one that fails verification.
        RequestError::Unauthenticated(auth) => {
            let (kind, message, challenge) = match auth {
                // Nobody's token can be checked yet: the service's state, so a
                // 503 to come back, never a 401 that would blame the token.
                AuthError::KeysUnavailable => {
                    return answer(
                        Common::ServiceUnavailable,
                        "service_unavailable",
                        "Service starting: token signing keys are not loaded yet; retry after the Retry-After delay".into(),
                        ErrorHeader::RetryAfter(1),
                    );
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
            answer(
                Common::Unauthorized,
                kind,
                message,
                ErrorHeader::WwwAuthenticate(challenge),
            )
        }
        // 403 is for what you may do: a valid token without the scope.
        RequestError::MissingScopes { missing } => answer(
            Common::Forbidden,
            "forbidden",
            format!(
                "Your scope does not allow to access this resource. Missing allowances: {}",
                missing.join(", ")
            ),
            ErrorHeader::None,
        ),
        RequestError::TooManyRequests { retry_after } => answer(
            Common::TooManyRequests,
            "too_many_requests",
            "This job is polled too often; retry after the Retry-After delay".into(),
            ErrorHeader::RetryAfter(whole_seconds(retry_after)),
        ),
        // 404 for whose it is: another client's job reads exactly like no job, so
        // the answer never reveals that it exists.
        RequestError::JobNotFound => answer(
            Common::TaskNotFound,
            "not_found",
            "Task not found".into(),
            ErrorHeader::None,
        ),
        RequestError::RouteNotFound => answer(
            Common::TaskNotFound,
            "not_found",
            "Not found".into(),
            ErrorHeader::None,
        ),
        RequestError::MethodNotAllowed { allow } => answer(
            Common::MethodNotAllowed,
            "method_not_allowed",
            "Method not allowed".into(),
            ErrorHeader::Allow(allow),
        ),
        // The cause went to the log above; the body never carries it.
        RequestError::Store(_) | RequestError::Router(_) => answer(
            Common::SubordinateServiceError,
            "internal_error",
            "Subordinate service error".into(),
            ErrorHeader::None,
        ),
    }
}

/// An error answer as getAsyncJobStatus's generated response.
fn for_get_async_job_status(answer: ErrorAnswer) -> GetAsyncJobStatusResponse {
    use GetAsyncJobStatusResponse as R;
    let ErrorAnswer {
        response,
        body,
        header,
    } = answer;
    let retry_after = match header {
        ErrorHeader::RetryAfter(seconds) => Some(seconds),
        _ => None,
    };
    match response {
        Common::InvalidRequestFormat => R::InvalidRequestFormat(body),
        Common::Unauthorized => R::Unauthorized {
            body,
            www_authenticate: match header {
                ErrorHeader::WwwAuthenticate(challenge) => challenge.to_owned(),
                _ => "Bearer".to_owned(),
            },
        },
        Common::Forbidden => R::Forbidden(body),
        Common::TaskNotFound => R::TaskNotFound(body),
        Common::MethodNotAllowed => R::MethodNotAllowed {
            body,
            allow: match header {
                ErrorHeader::Allow(allow) => allow,
                _ => String::new(),
            },
        },
        Common::UriTooLong => R::UriTooLong(body),
        // Required by the spec; the generator keys headers by name across
        // responses and takes the optional one of 200 for it.
        Common::TooManyRequests => R::TooManyRequests { body, retry_after },
        Common::RequestHeaderFieldsTooLarge => R::RequestHeaderFieldsTooLarge(body),
        Common::SubordinateServiceError => R::SubordinateServiceError(body),
        Common::ServiceUnavailable => R::ServiceUnavailable { body, retry_after },
    }
}

/// Serializes an error answer that no operation has claimed: those the layers
/// around the router make themselves (limits, authentication before routing,
/// the router's own refusals, unknown paths).
pub(crate) fn encode_error(answer: ErrorAnswer) -> Response<Body> {
    let ErrorAnswer {
        response,
        body,
        header,
    } = answer;
    let mut response_out = Response::new(BoxBody::new(Full::new(to_json(&body))));
    *response_out.status_mut() =
        StatusCode::from_u16(response.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response_out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match header {
        ErrorHeader::None => {}
        ErrorHeader::WwwAuthenticate(challenge) => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        ErrorHeader::Allow(allow) => insert_header(headers, ALLOW, &allow),
        ErrorHeader::RetryAfter(seconds) => {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
    }
    response_out
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

fn meta_model(meta: &RequestMeta, code: u16) -> models::Meta {
    models::Meta::new(
        meta.url.clone(),
        "object".into(),
        i32::from(code),
        meta.request_id.0.clone(),
    )
}

/// A job as the contract shows it.
pub(crate) fn job_model(job: &Job) -> models::Job {
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
