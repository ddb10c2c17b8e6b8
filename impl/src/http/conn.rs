//! One connection's byte stream: its two clocks, and hyper's own refusals.
//!
//! **Clocks.** hyper has one timer, started when a response ends, which would
//! make "how long an idle connection may stay open" and "how long a client may
//! take to send a request head" the same setting. They are different things:
//! an MIS polling every few seconds wants its connection kept for a while, and
//! a slowloris must be cut quickly once it starts. So hyper's timer is off and
//! [`ConnIo`] keeps both, from what it sees:
//! - idle (no request in flight, nothing received): closed (EOF) after
//!   `http.keep_alive_timeout`;
//! - a request head started (bytes received while idle): the connection fails
//!   `http.header_read_timeout` after its first byte, with no answer, as hyper's
//!   own timer did;
//! - a request in flight, long polls included: no deadline. Bytes that arrive
//!   meanwhile (a pipelined request) start no head clock; if they are not a
//!   whole head, the keep-alive clock bounds them once the answer is out.
//!
//! The service marks a request's start and end on the shared [`Clock`]. The
//! timer is lazy: it is armed for the earliest deadline and, when it fires early
//! (the connection was used since), re-armed, so a busy connection costs a few
//! clock readings per request and a timer operation per `keep_alive_timeout`.
//!
//! **Refusals.** hyper answers a request it cannot parse (bad syntax, a head past
//! its buffer, more headers than it can hold) by itself, with a bare 400, 414 or
//! 431 and no body, before the service sees anything. It offers no hook, so the
//! head it writes is recognized here, where every answer of the service carries
//! `x-request-id` and hyper's never does, and replaced by the contract's JSON
//! envelope for the same status. hyper closes the connection after it. hyper
//! starts every head at the start of a write, except after an answer the socket
//! took only in part; a refusal queued behind such a remainder (a pipelining
//! client on a full socket) would still go out bare.
//!
//! **Held heads.** hyper parses a request head in place: its URI and header
//! values are slices of the connection's 8 KiB read buffer. While a request is
//! in flight hyper keeps reading (to notice a client that hangs up), and as
//! long as any slice is alive it cannot reuse that buffer and takes a second
//! one. For a long poll, held for seconds by thousands of clients, that was
//! the largest cost of a waiter, so [`detach_head`] copies such a head out.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::Response;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::error::Unparsable;
use super::{Body, Limits};

/// What answers, in the envelope, a request hyper refused by itself.
pub(super) type Refuse = Arc<dyn Fn(Unparsable) -> Response<Body> + Send + Sync>;

/// The phases of a connection, in the low bits of [`Clock`]'s word.
const IDLE: u64 = 0;
const HEAD: u64 = 1;
const BUSY: u64 = 2;
const PHASE_BITS: u32 = 2;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;

/// Where a connection is, and since when: shared by its byte stream and its
/// service, which run in the same task, so the atomics are never contended.
#[derive(Debug)]
pub(super) struct Clock {
    opened: Instant,
    /// Microseconds since `opened` above [`PHASE_BITS`], the phase below.
    state: AtomicU64,
}

impl Clock {
    /// A connection that has just opened: idle.
    pub(super) fn new() -> Self {
        Self {
            opened: Instant::now(),
            state: AtomicU64::new(IDLE),
        }
    }

    /// A request head was parsed: the service has it.
    pub(super) fn busy(&self) {
        self.state.store(BUSY, Ordering::Relaxed);
    }

    /// The answer to the request in flight is ready.
    pub(super) fn idle(&self) {
        self.set(IDLE);
    }

    /// Bytes arrived: on an idle connection, that starts a request head.
    fn received(&self) {
        if self.state.load(Ordering::Relaxed) & PHASE_MASK == IDLE {
            self.set(HEAD);
        }
    }

    fn set(&self, phase: u64) {
        let micros = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX >> 2);
        self.state
            .store((micros << PHASE_BITS) | phase, Ordering::Relaxed);
    }

    /// When the connection gives up, and in which phase; none while busy.
    fn deadline(&self, keep_alive: Duration, header_read: Duration) -> Option<(Instant, u64)> {
        let state = self.state.load(Ordering::Relaxed);
        let since = self.opened + Duration::from_micros(state >> PHASE_BITS);
        match state & PHASE_MASK {
            IDLE => Some((since + keep_alive, IDLE)),
            HEAD => Some((since + header_read, HEAD)),
            _ => None,
        }
    }
}

/// A client connection as hyper reads and writes it.
pub(super) struct ConnIo {
    stream: TcpStream,
    clock: Arc<Clock>,
    /// The clocks' durations, and the count of connections they close.
    limits: Arc<Limits>,
    /// Armed on the first wait for bytes, then re-armed as needed.
    timer: Option<Pin<Box<Sleep>>>,
    /// Makes the envelope that replaces hyper's own refusal.
    refuse: Refuse,
    /// That envelope, as far as it is not yet written.
    replacement: Option<Bytes>,
}

impl ConnIo {
    /// `stream`, timed by `clock` within `limits`; `refuse` answers what hyper
    /// refuses by itself.
    pub(super) fn new(
        stream: TcpStream,
        clock: Arc<Clock>,
        limits: Arc<Limits>,
        refuse: Refuse,
    ) -> Self {
        Self {
            stream,
            clock,
            limits,
            timer: None,
            refuse,
            replacement: None,
        }
    }

    /// Nothing to read: whether a deadline has passed meanwhile. Idle, the
    /// connection ends (EOF, which hyper takes as a clean close); in a request
    /// head, it fails. Either way a timer is left armed no later than the next
    /// deadline can come, because hyper does not read again by itself when a
    /// request in flight ends.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (keep_alive, header_read) = (
            self.limits.keep_alive_timeout(),
            self.limits.header_read_timeout(),
        );
        loop {
            let now = Instant::now();
            let deadline = match self.clock.deadline(keep_alive, header_read) {
                Some((deadline, phase)) if now >= deadline => {
                    return Poll::Ready(if phase == IDLE {
                        self.limits.closed_idle();
                        Ok(())
                    } else {
                        self.limits.cut_slow_head();
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request head did not arrive within http.header_read_timeout",
                        ))
                    });
                }
                Some((deadline, _)) => deadline,
                // In flight: idle comes no sooner than now.
                None => now + keep_alive,
            };
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            // Sooner is fine (it is re-armed when it fires); later is not.
            if timer.deadline() > deadline || timer.is_elapsed() {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
        }
    }

    /// Writes what is left of a replaced refusal; ready once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = &mut self.replacement {
            if rest.is_empty() {
                self.replacement = None;
                break;
            }
            let written = ready!(Pin::new(&mut self.stream).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// If `head` is hyper's own refusal, takes it (all of it, as far as hyper
    /// knows) and queues the envelope in its place.
    fn replaces(&mut self, head: &[u8]) -> bool {
        let Some(refusal) = hyper_refusal(head) else {
            return false;
        };
        let response = (self.refuse)(refusal);
        self.replacement = Some(serialize(response, date(head)));
        true
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.received();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        if this.replaces(buf) {
            // Taken; the envelope goes out now or on the next flush.
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        // A refusal is a head alone, so it is the first slice whole.
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty())
            && this.replaces(first)
        {
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Which refusal `head` is, if hyper wrote it: a 400, 414 or 431 status line
/// and no `x-request-id`, which every answer of the service has. Costs a
/// prefix comparison on every other write.
fn hyper_refusal(head: &[u8]) -> Option<Unparsable> {
    let refusal = match head.get(..13)? {
        b"HTTP/1.1 400 " => Unparsable::Malformed,
        b"HTTP/1.1 414 " => Unparsable::UriTooLong,
        b"HTTP/1.1 431 " => Unparsable::HeadTooLarge,
        _ => return None,
    };
    let end = find(head, b"\r\n\r\n")?;
    let ours = find(&head[..end], b"\r\nx-request-id:").is_some();
    (!ours).then_some(refusal)
}

/// `response` as HTTP/1.1 bytes, closing the connection, with hyper's `date`.
fn serialize(response: Response<Body>, date: Option<&[u8]>) -> Bytes {
    let (parts, body) = response.into_parts();
    // The envelope is a `Full` body: its one frame is ready at once.
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let body = match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    let status = parts.status;
    let reason = status.canonical_reason().unwrap_or_default();
    let mut bytes = format!("HTTP/1.1 {} {reason}\r\n", status.as_str()).into_bytes();
    let mut line = |name: &[u8], value: &[u8]| {
        for part in [name, b": ", value, b"\r\n"] {
            bytes.extend_from_slice(part);
        }
    };
    for (name, value) in &parts.headers {
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    line(b"content-length", body.len().to_string().as_bytes());
    line(b"connection", b"close");
    if let Some(date) = date {
        line(b"date", date);
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&body);
    Bytes::from(bytes)
}

/// hyper's `date` header, to keep in the replacement.
fn date(head: &[u8]) -> Option<&[u8]> {
    let start = find(head, b"\r\ndate: ")? + 8;
    let length = find(&head[start..], b"\r\n")?;
    Some(&head[start..start + length])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// `request` with its URI and header values copied out of hyper's read buffer
/// (see the module's *Held heads*), for a request that may be held: one that
/// states a `Prefer` (a long poll). Others are answered at once, and keep the
/// slices: copying costs a few allocations.
pub(super) fn detach_head<B>(request: hyper::Request<B>) -> hyper::Request<B> {
    if !request.headers().contains_key(super::PREFER) {
        return request;
    }
    let (mut parts, body) = request.into_parts();
    let mut headers = hyper::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let copied =
            hyper::header::HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
                .map(|mut copied| {
                    copied.set_sensitive(value.is_sensitive());
                    copied
                })
                .unwrap_or_else(|_| value.clone());
        headers.append(name.clone(), copied);
    }
    parts.headers = headers;
    if let Ok(uri) =
        hyper::Uri::from_maybe_shared(Bytes::copy_from_slice(parts.uri.to_string().as_bytes()))
    {
        parts.uri = uri;
    }
    hyper::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HYPER_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Fri, 27 Nov 2026 16:29:07 GMT\r\n\r\n";

    #[test]
    fn hyper_refusals_are_told_from_the_service_answers() {
        assert_eq!(hyper_refusal(HYPER_431), Some(Unparsable::HeadTooLarge));
        assert_eq!(
            hyper_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            Some(Unparsable::Malformed)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            x-request-id: abc\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(hyper_refusal(ours), None);
        assert_eq!(hyper_refusal(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(hyper_refusal(b"{\"data\""), None);
        assert_eq!(hyper_refusal(b"HTTP/1.1 431 Requ"), None, "a partial head");
    }

    #[test]
    fn the_date_is_kept() {
        assert_eq!(date(HYPER_431), Some(&b"Fri, 27 Nov 2026 16:29:07 GMT"[..]));
        assert_eq!(date(b"HTTP/1.1 400 Bad Request\r\n\r\n"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_the_phases() {
        let (keep_alive, header_read) = (Duration::from_secs(75), Duration::from_secs(10));
        let clock = Clock::new();
        let opened = Instant::now();
        let (deadline, phase) = clock.deadline(keep_alive, header_read).unwrap();
        assert_eq!((deadline - opened, phase), (keep_alive, IDLE));

        tokio::time::advance(Duration::from_secs(5)).await;
        clock.received();
        let (deadline, phase) = clock.deadline(keep_alive, header_read).unwrap();
        assert_eq!(phase, HEAD);
        assert_eq!(deadline - opened, Duration::from_secs(15));
        // More bytes of the same head do not move its deadline.
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.received();
        assert_eq!(
            clock
                .deadline(keep_alive, header_read)
                .map(|(d, _)| d - opened),
            Some(Duration::from_secs(15))
        );

        clock.busy();
        assert_eq!(clock.deadline(keep_alive, header_read), None);
        clock.received();
        assert_eq!(clock.deadline(keep_alive, header_read), None, "a body");

        tokio::time::advance(Duration::from_secs(4)).await;
        clock.idle();
        assert_eq!(
            clock
                .deadline(keep_alive, header_read)
                .map(|(d, p)| (d - opened, p)),
            Some((Duration::from_secs(10) + keep_alive, IDLE))
        );
    }

    #[test]
    fn a_held_head_is_copied_out_whole() {
        let shared = Bytes::from_static(b"Bearer token");
        let mut authorization = hyper::header::HeaderValue::from_maybe_shared(shared).unwrap();
        authorization.set_sensitive(true);
        let request = hyper::Request::get("/api/patients/composition/job/x?a=1")
            .header("prefer", "wait=20")
            .header("authorization", authorization)
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(())
            .unwrap();
        let (uri, headers) = (request.uri().clone(), request.headers().clone());
        let detached = detach_head(request);
        assert_eq!(detached.uri(), &uri);
        assert_eq!(detached.headers(), &headers);
        assert!(detached.headers()["authorization"].is_sensitive());

        // Without a Prefer, the head is left as it is.
        let request = hyper::Request::get("/x").body(()).unwrap();
        assert_eq!(detach_head(request).uri(), "/x");
    }
}
