//! Every reason this service answers with something other than a job.
//!
//! Each variant names what failed, never a status code; [`super::mapping`] turns
//! them into responses in one exhaustive `match`.

use crate::auth::AuthError;
use crate::store::StoreError;

/// Why a request gets an error envelope instead of a job.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A parameter does not have its declared type.
    #[error("{location} {parameter} is not {expected}")]
    MalformedParameter {
        /// Where it is: `path_parameter` or `header`.
        location: &'static str,
        /// The parameter's name in the spec.
        parameter: String,
        /// What it should be, e.g. `uuid`.
        expected: &'static str,
    },
    /// No `Host` header, more than one, or one that is not a host and port.
    #[error("{count} Host headers, or one that is not a host[:port]")]
    InvalidHost {
        /// How many `Host` header lines the request has.
        count: usize,
    },
    /// A GET with a body: it has no meaning here, so it is refused, not ignored.
    #[error("a GET request takes no body")]
    BodyNotAllowed,
    /// The path and query are longer than `http.max_uri_bytes`.
    #[error("the request URI is {length} bytes long")]
    UriTooLong {
        /// Its length.
        length: usize,
    },
    /// More headers than `http.max_headers`, or more bytes of them than
    /// `http.max_header_bytes`.
    #[error("{count} request headers of {bytes} bytes")]
    HeadersTooLarge {
        /// How many headers there are.
        count: usize,
        /// The bytes of their names and values.
        bytes: usize,
    },
    /// hyper could not parse the request, and refused it before the service saw it.
    #[error("unparsable request: {0:?}")]
    Unparsable(Unparsable),
    /// This instance is at its limit of connections or requests in flight.
    #[error("overloaded: at the limit of {limit} {what}")]
    Overloaded {
        /// `connections` or `requests in flight`.
        what: &'static str,
        /// The limit reached.
        limit: usize,
    },
    /// No or bad credentials.
    #[error("not authenticated")]
    Unauthenticated(#[source] AuthError),
    /// Authenticated, but without a scope the operation requires.
    #[error("missing scopes: {}", missing.join(" "))]
    MissingScopes {
        /// The required scopes the caller lacks.
        missing: Vec<String>,
    },
    /// The caller polls this job too often.
    #[error("polled too often; retry after {retry_after:?}")]
    TooManyRequests {
        /// How long until the next poll is accepted.
        retry_after: std::time::Duration,
    },
    /// No job with this id belongs to the caller (or it has expired).
    #[error("job not found")]
    JobNotFound,
    /// The path matches no operation.
    #[error("no route for this path")]
    RouteNotFound,
    /// The path exists, but not with this method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// The methods the path answers, for the `Allow` header.
        allow: String,
    },
    /// The job store failed.
    #[error("the job store failed")]
    Store(#[source] StoreError),
    /// The generated router failed in a way the contract does not describe.
    #[error("the generated router failed: {0}")]
    Router(String),
}

/// Why hyper refused a request by itself (see `conn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unparsable {
    /// Not HTTP/1.x syntax: the request line or a header line.
    Malformed,
    /// A request target longer than hyper can hold.
    UriTooLong,
    /// A head past hyper's buffer, or more headers than it parses.
    HeadTooLarge,
}
