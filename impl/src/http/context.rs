//! What the layers around the generated router learn about a request and hand on:
//! its id, its `meta.url`, and the authenticated caller.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use compositions_api::server::Authorization;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{HeaderMap, Uri};
use swagger::{Has, XSpanIdString};
use uuid::Uuid;

use crate::auth::Caller;

/// The request id header, read from callers and always sent back. A
/// `HeaderName` rather than a `&str`, which every lookup would parse again.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The generated router's name for the request id, which it adds to answers.
pub(crate) const X_SPAN_ID: HeaderName = HeaderName::from_static("x-span-id");

/// W3C Trace Context: the caller's trace, whose id goes into the access log.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The longest caller-supplied request id that is reused.
const MAX_REQUEST_ID: usize = 64;

/// The request's identity in every response body (`meta`) and in the logs.
#[derive(Clone, Debug)]
pub(crate) struct RequestMeta {
    /// `meta.url`: `<scheme>://<host>[:port]<path>`.
    pub url: String,
    /// `meta.request_id`, also the `x-request-id` header.
    pub request_id: XSpanIdString,
    /// When the request arrived, for the access log.
    pub started: Instant,
    /// The trace id of a well-formed `traceparent`, for the access log.
    trace_id: Option<TraceId>,
    /// The operation whose handler answered, as the spec names it: the label of
    /// the metrics and the access log.
    operation: OnceLock<&'static str>,
    /// Who called, once authenticated: read by the router's scope check, the API
    /// implementation and the access log, all through this one handle.
    caller: OnceLock<Arc<Caller>>,
}

impl RequestMeta {
    /// Reads the caller's request id (or makes one) and builds `meta.url`, from
    /// `public_url` when configured, else from the `Host` header.
    pub(crate) fn new(
        headers: &HeaderMap,
        uri: &Uri,
        public_url: Option<&str>,
        local: SocketAddr,
    ) -> Self {
        let path = uri.path();
        // Concatenated rather than format!ted: this runs on every request.
        let local_text;
        let (scheme, authority) = match (
            public_url,
            headers
                .get(HOST)
                .filter(|host| is_valid_host(host.as_bytes())),
        ) {
            (Some(base), _) => ("", base),
            // `is_valid_host` admits only ASCII, so the conversion cannot fail.
            (None, Some(host)) => ("http://", host.to_str().unwrap_or_default()),
            (None, None) => {
                local_text = local.to_string();
                ("http://", local_text.as_str())
            }
        };
        let mut url = String::with_capacity(scheme.len() + authority.len() + path.len());
        url.push_str(scheme);
        url.push_str(authority);
        url.push_str(path);
        let request_id = match headers
            .get(&X_REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .filter(|id| is_sane_request_id(id))
        {
            Some(id) => XSpanIdString(id.to_owned()),
            None => XSpanIdString(
                Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .to_owned(),
            ),
        };
        let trace_id = headers
            .get(&TRACEPARENT)
            .and_then(|value| TraceId::of(value.as_bytes()));
        Self {
            url,
            request_id,
            started: Instant::now(),
            trace_id,
            operation: OnceLock::new(),
            caller: OnceLock::new(),
        }
    }

    /// Records the operation whose handler runs (the first one set stays).
    pub(crate) fn set_operation(&self, operation: &'static str) {
        let _ = self.operation.set(operation);
    }

    /// The operation whose handler answered, if one did.
    pub(crate) fn operation(&self) -> Option<&'static str> {
        self.operation.get().copied()
    }

    /// The caller's trace id (32 lowercase hex digits), if it sent a
    /// well-formed `traceparent`.
    pub(crate) fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_ref().map(TraceId::as_str)
    }

    /// Records the authenticated caller (the first one set stays).
    pub(crate) fn set_caller(&self, caller: Arc<Caller>) {
        // Set once per request, right after authentication.
        let _ = self.caller.set(caller);
    }

    /// The authenticated caller, if any.
    pub(crate) fn caller(&self) -> Option<&Caller> {
        self.caller.get().map(Arc::as_ref)
    }

    /// The request id as a header value.
    pub(crate) fn request_id_header(&self) -> HeaderValue {
        // Generated ids are UUIDs and reused ones passed `is_sane_request_id`.
        HeaderValue::from_str(&self.request_id.0).unwrap_or(HeaderValue::from_static("invalid"))
    }
}

/// The trace id of a `traceparent` header (W3C Trace Context §3.2), kept as
/// its 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TraceId([u8; 32]);

impl TraceId {
    /// The trace id of `value`, if it is a well-formed `traceparent`:
    /// `version-trace_id-parent_id-flags`, lowercase hex of 2, 32, 16 and 2
    /// digits, the version not `ff`, neither id all zeros; a version other than
    /// `00` may carry more after a further `-`. Anything else is ignored, as
    /// the spec asks: a malformed header starts no trace, and is no error.
    fn of(value: &[u8]) -> Option<Self> {
        let hex = |part: &[u8]| {
            part.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        };
        let nonzero = |part: &[u8]| part.iter().any(|b| *b != b'0');
        let (head, rest) = value.split_at_checked(55)?;
        let [version @ .., b'-'] = head.get(..3)? else {
            return None;
        };
        let ok = hex(version)
            && version != b"ff"
            && match (version, rest) {
                (b"00", []) => true,
                (b"00", _) => false,
                (_, rest) => rest.is_empty() || rest.first() == Some(&b'-'),
            }
            && head[35] == b'-'
            && head[52] == b'-'
            && hex(&head[3..35])
            && nonzero(&head[3..35])
            && hex(&head[36..52])
            && nonzero(&head[36..52])
            && hex(&head[53..55]);
        let mut id = [0; 32];
        id.copy_from_slice(&head[3..35]);
        ok.then_some(Self(id))
    }

    fn as_str(&self) -> &str {
        // Checked to be ASCII hex digits when made.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Letters, digits, `-`, `_` and `.`, at most 64 of them: safe in logs and headers.
fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether a `Host` value is a URI authority without userinfo (RFC 9112 §3.2,
/// RFC 3986 §3.2.2): a name or an IPv4 address made of unreserved, sub-delims
/// and percent-encoded bytes, or a bracketed IP literal, then an optional
/// `:port`. An empty value is refused: every request here names a server.
pub(super) fn is_valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IPv6 literal.
        Some(colon) if !host[colon..].contains(&b']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    let name_ok = match name {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        _ => {
            !name.is_empty()
                && name.iter().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(
                            b,
                            b'-' | b'.'
                                | b'_'
                                | b'~'
                                | b'%'
                                | b'!'
                                | b'$'
                                | b'&'
                                | b'\''
                                | b'('
                                | b')'
                                | b'*'
                                | b'+'
                                | b','
                                | b';'
                                | b'='
                        )
                })
        }
    };
    let port_ok = port.is_none_or(|port| port.len() <= 5 && port.iter().all(u8::is_ascii_digit));
    host.len() <= 255 && name_ok && port_ok
}

/// The context the generated router passes to the API implementation.
pub(crate) struct RequestContext {
    meta: Arc<RequestMeta>,
    /// Set only if the generated stack replaces the caller's authorization
    /// (nothing on this service's path does); boxed, since the generated
    /// futures hold the context by value for as long as a long poll waits.
    replaced: Option<Box<Option<Authorization>>>,
}

impl RequestContext {
    /// A context for the request `meta` describes, with its caller if one was
    /// authenticated (requests that reach no operation are answered 404 or 405
    /// by the router before any check).
    pub(crate) fn new(meta: Arc<RequestMeta>) -> Self {
        Self {
            meta,
            replaced: None,
        }
    }

    /// The request's meta.
    pub(crate) fn meta(&self) -> &RequestMeta {
        &self.meta
    }

    /// The MIS client the caller acts for.
    pub(crate) fn client_id(&self) -> Option<&str> {
        self.meta.caller().map(|caller| caller.client_id.as_str())
    }
}

impl Has<XSpanIdString> for RequestContext {
    fn get(&self) -> &XSpanIdString {
        &self.meta.request_id
    }

    fn get_mut(&mut self) -> &mut XSpanIdString {
        &mut Arc::make_mut(&mut self.meta).request_id
    }

    fn set(&mut self, value: XSpanIdString) {
        Arc::make_mut(&mut self.meta).request_id = value;
    }
}

/// What the router's scope check reads: the caller's own authorization, lent.
impl Has<Option<Authorization>> for RequestContext {
    fn get(&self) -> &Option<Authorization> {
        match (&self.replaced, self.meta.caller()) {
            (Some(replaced), _) => replaced,
            (None, Some(caller)) => &caller.authorization,
            (None, None) => &None,
        }
    }

    fn get_mut(&mut self) -> &mut Option<Authorization> {
        let caller = self.meta.caller();
        self.replaced
            .get_or_insert_with(|| Box::new(caller.and_then(|c| c.authorization.clone())))
    }

    fn set(&mut self, value: Option<Authorization>) {
        self.replaced = Some(Box::new(value));
    }
}

#[cfg(test)]
mod tests {
    use super::{TraceId, is_valid_host};

    #[test]
    fn a_trace_id_is_read_from_a_well_formed_traceparent_only() {
        let id = |value: &str| TraceId::of(value.as_bytes()).map(|id| id.as_str().to_owned());
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            id(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(),
            Some(trace)
        );
        assert_eq!(
            id(&format!("01-{trace}-00f067aa0ba902b7-00-later")).as_deref(),
            Some(trace),
            "a later version may say more"
        );
        for bad in [
            String::new(),
            "garbage".into(),
            format!("00-{trace}-00f067aa0ba902b7-01-more"),
            format!("ff-{trace}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{trace}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase()),
            format!("00-{trace}-00f067aa0ba902b7-1"),
            format!("00_{trace}_00f067aa0ba902b7_01"),
            format!("01-{trace}-00f067aa0ba902b7-01x"),
            format!("00-{}-00f067aa0ba902b7-01", trace.replace('4', "g")),
        ] {
            assert_eq!(id(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_host_is_an_authority_without_userinfo() {
        for host in [
            "api.ehealth.gov.ua",
            "api.ehealth.gov.ua:443",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "my_service:80",
            "xn--80ak6aa92e.com",
        ] {
            assert!(is_valid_host(host.as_bytes()), "{host}");
        }
        for host in [
            "",
            ":80",
            "user@host",
            "host:port",
            "host:123456",
            "host/path",
            "two hosts",
            "[::1",
            "[]:80",
            "host\r\nx: y",
        ] {
            assert!(!is_valid_host(host.as_bytes()), "{host:?}");
        }
        assert!(!is_valid_host("a".repeat(256).as_bytes()));
    }
}
