//! The limits on what one request and one instance take on.
//!
//! hyper refuses requests beyond its own buffers by itself, with a bare status
//! and no body. So hyper is configured with room to spare ([`Limits::hyper_max_headers`],
//! [`Limits::hyper_max_buf_size`]) and the service's limits are checked here, below
//! hyper's, where the answer can be the contract's envelope: a request just over
//! a limit gets 414 or 431 in JSON; one far beyond it is refused by hyper, whose
//! answer `conn` puts in the same envelope.
//!
//! Load is shed, not queued: past `max_in_flight` requests or `max_connections`
//! connections, the answer is 503 with `Retry-After`, so callers (and load
//! balancers) go elsewhere instead of every caller slowing down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::header::{CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use hyper::{Method, Request};

use super::context::is_valid_host;
use super::error::RequestError;
use crate::config::HttpConfig;

/// Connections beyond `max_connections` that are still answered (503) rather
/// than dropped: enough to tell callers why, without a task per attacker socket.
const SHEDDING_CONNECTIONS: usize = 1024;

/// hyper's header count limit when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The limits of one instance and its counters.
#[derive(Debug)]
pub struct Limits {
    max_headers: usize,
    max_header_bytes: usize,
    max_uri_bytes: usize,
    max_in_flight: usize,
    max_connections: usize,
    header_read_timeout: Duration,
    keep_alive_timeout: Duration,
    in_flight: AtomicUsize,
    connections: AtomicUsize,
    shedding: AtomicUsize,
    closed_idle: AtomicU64,
    cut_slow_heads: AtomicU64,
}

impl Limits {
    /// The limits `config` sets.
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            max_headers: config.max_headers,
            max_header_bytes: config.max_header_bytes,
            max_uri_bytes: config.max_uri_bytes,
            max_in_flight: config.max_in_flight,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            keep_alive_timeout: config.keep_alive_timeout,
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            shedding: AtomicUsize::new(0),
            closed_idle: AtomicU64::new(0),
            cut_slow_heads: AtomicU64::new(0),
        }
    }

    /// hyper's own header count limit, past ours so that ours answers first:
    /// none (hyper's 100, parsed on the stack) while ours is below it; any limit
    /// set makes hyper allocate its header arrays on every request.
    pub fn hyper_max_headers(&self) -> Option<usize> {
        (self.max_headers >= HYPER_DEFAULT_MAX_HEADERS).then(|| self.max_headers.saturating_mul(2))
    }

    /// hyper's read buffer: room for a request line and headers twice our limits.
    pub fn hyper_max_buf_size(&self) -> usize {
        (self.max_header_bytes + self.max_uri_bytes)
            .saturating_mul(2)
            .saturating_add(8192)
    }

    /// How long a request head may take, from its first byte.
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// How long a connection may stay open with no request in flight.
    pub fn keep_alive_timeout(&self) -> Duration {
        self.keep_alive_timeout
    }

    /// Whether the request's shape is within the limits: URI length, header
    /// count and bytes, exactly one valid `Host`, and no body on a GET.
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), RequestError> {
        let uri = request
            .uri()
            .path_and_query()
            .map_or(0, |path| path.as_str().len());
        if uri > self.max_uri_bytes {
            return Err(RequestError::UriTooLong { length: uri });
        }
        // One pass: the sizes, the `Host` lines, and any sign of a body.
        let headers = request.headers();
        let (mut bytes, mut has_body, mut hosts) = (0, false, 0);
        for (name, value) in headers {
            bytes += name.as_str().len() + value.len();
            has_body |=
                name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && value.as_bytes() != b"0");
            hosts += usize::from(name == HOST);
        }
        if headers.len() > self.max_headers || bytes > self.max_header_bytes {
            return Err(RequestError::HeadersTooLarge {
                count: headers.len(),
                bytes,
            });
        }
        // RFC 9112 §3.2: a server must refuse a request without `Host`, with more
        // than one, or with one that is not an authority. hyper leaves it to us.
        // HTTP/1.0 requests are held to it too: every client has sent `Host`
        // since 1997, and `meta.url` is made from it.
        let host = headers.get(HOST).map(HeaderValue::as_bytes);
        if hosts != 1 || !host.is_some_and(is_valid_host) {
            return Err(RequestError::InvalidHost { count: hosts });
        }
        if has_body && (request.method() == Method::GET || request.method() == Method::HEAD) {
            return Err(RequestError::BodyNotAllowed);
        }
        Ok(())
    }

    /// A place for one more request in flight, held until the guard drops.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, RequestError> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(RequestError::Overloaded {
                what: "requests in flight",
                limit: self.max_in_flight,
            });
        }
        Ok(InFlight(Arc::clone(self)))
    }

    /// What a new connection gets: a slot, a 503 and a close, or nothing at all.
    pub fn connect(self: &Arc<Self>) -> Connection {
        if self.connections.fetch_add(1, Ordering::AcqRel) < self.max_connections {
            return Connection::Admitted(Slot {
                limits: Arc::clone(self),
                shed: false,
            });
        }
        self.connections.fetch_sub(1, Ordering::AcqRel);
        if self.shedding.fetch_add(1, Ordering::AcqRel) < SHEDDING_CONNECTIONS {
            return Connection::Shed(Slot {
                limits: Arc::clone(self),
                shed: true,
            });
        }
        self.shedding.fetch_sub(1, Ordering::AcqRel);
        Connection::Dropped
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Connections open now (not counting those being shed).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection closed after `keep_alive_timeout` idle.
    pub fn closed_idle(&self) {
        self.closed_idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection cut for a head slower than `header_read_timeout`.
    pub fn cut_slow_head(&self) {
        self.cut_slow_heads.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed idle, and cut for a slow head, so far.
    pub fn timed_out(&self) -> (u64, u64) {
        (
            self.closed_idle.load(Ordering::Relaxed),
            self.cut_slow_heads.load(Ordering::Relaxed),
        )
    }

    /// Why a shed connection is answered 503.
    pub fn overloaded_connections(&self) -> RequestError {
        RequestError::Overloaded {
            what: "connections",
            limit: self.max_connections,
        }
    }
}

/// One request in flight; the count goes down when it drops.
#[derive(Debug)]
pub struct InFlight(Arc<Limits>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What becomes of a new connection.
#[derive(Debug)]
pub enum Connection {
    /// Served as usual.
    Admitted(Slot),
    /// Over the limit: each request is answered 503, then the connection closes.
    Shed(Slot),
    /// Far over the limit: closed at once.
    Dropped,
}

/// An open connection, counted until it drops.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    shed: bool,
}

impl Slot {
    /// Whether this connection is past the limit and only gets a 503.
    pub fn is_shed(&self) -> bool {
        self.shed
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = if self.shed {
            &self.limits.shedding
        } else {
            &self.limits.connections
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits(configure: impl FnOnce(&mut HttpConfig)) -> Arc<Limits> {
        let mut config = HttpConfig::default();
        configure(&mut config);
        Arc::new(Limits::new(&config))
    }

    #[test]
    fn requests_in_flight_are_counted_back_down() {
        let limits = limits(|c| c.max_in_flight = 2);
        let first = limits.admit().unwrap();
        let _second = limits.admit().unwrap();
        assert!(matches!(
            limits.admit(),
            Err(RequestError::Overloaded { limit: 2, .. })
        ));
        drop(first);
        assert!(limits.admit().is_ok());
    }

    #[test]
    fn connections_past_the_limit_are_shed_then_dropped() {
        let limits = limits(|c| c.max_connections = 1);
        let admitted = limits.connect();
        assert!(matches!(admitted, Connection::Admitted(_)));
        let shed: Vec<_> = (0..SHEDDING_CONNECTIONS)
            .map(|_| limits.connect())
            .collect();
        assert!(shed.iter().all(|c| matches!(c, Connection::Shed(_))));
        assert!(matches!(limits.connect(), Connection::Dropped));
        drop(shed);
        drop(admitted);
        assert!(matches!(limits.connect(), Connection::Admitted(_)));
    }

    #[test]
    fn hyper_leaves_room_above_the_service_limits() {
        let limits = limits(|_| {});
        assert_eq!(
            limits.hyper_max_headers(),
            None,
            "hyper's own 100 is above 64"
        );
        assert!(limits.hyper_max_buf_size() > 32 * 1024 + 2048);
        let many = self::limits(|c| c.max_headers = 150);
        assert_eq!(many.hyper_max_headers(), Some(300));
    }
}
