//! Polling done right: what a poll learns besides the job, and the long poll.
//!
//! - `ETag`: a strong validator of the job's representation (the `data` object),
//!   a hash of exactly what `data` shows, so it is the same on every instance and
//!   changes only when the job does; never of the request id or the time.
//! - `Retry-After`: while pending, the seconds until `eta`, clamped.
//! - `Cache-Control`: `no-store` while pending; `private, no-cache` once finished.
//! - `Prefer: wait=N` (RFC 7240): hold the request while the job is pending, or
//!   while its representation is the one the client already has, for up to N
//!   seconds (capped), then answer with the current state. A waiter subscribes to
//!   its job's wake-ups before reading it, so no transition slips between.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use std::sync::Arc;

use crate::config::PollingConfig;
use crate::jobs::{Job, State, Status, Timestamp};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// A job as a poll answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The job's current state.
    pub job: Job,
    /// Its strong validator, quoted.
    pub etag: String,
    /// True when the client's `If-None-Match` is still current: answer 304.
    pub not_modified: bool,
    /// Seconds to wait before polling again; only while pending.
    pub retry_after: Option<u32>,
    /// The wait granted for `Prefer: wait`, if the client asked for one.
    pub granted_wait: Option<Duration>,
}

/// Answers polls from a store, waiting when asked to.
#[derive(Clone, Debug)]
pub(crate) struct Polling {
    store: Store,
    config: PollingConfig,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl Polling {
    /// Polls against `store`, its reads of the database counted in `metrics`;
    /// waits end early when `shutdown` turns true.
    pub(crate) fn new(
        store: Store,
        config: PollingConfig,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            config,
            shutdown,
            metrics,
        }
    }

    /// The job from the read cache, or else from the database (timed).
    async fn read(&self, id: Uuid, client_id: &str) -> Result<Option<Job>, StoreError> {
        let now = Timestamp::now();
        if let Some(answer) = self.store.cached(id, client_id, now) {
            self.metrics.record_cache_hit();
            return Ok(answer);
        }
        let started = std::time::Instant::now();
        // Boxed: a held long poll keeps its future, which would otherwise be as
        // large as the database read's, for the whole wait.
        let found = Box::pin(self.store.read_through(id, client_id, now)).await;
        self.metrics
            .database_reads()
            .record(started.elapsed(), found.is_ok());
        found
    }

    /// The job `id` of `client_id` as the poll should answer it, or `None` when the
    /// client has no such job.
    pub(crate) async fn poll(
        &self,
        client_id: &str,
        id: Uuid,
        if_none_match: Option<&str>,
        prefer: Option<&str>,
    ) -> Result<Option<Answer>, StoreError> {
        let granted_wait = prefer
            .and_then(requested_wait)
            .map(|seconds| Duration::from_secs(seconds).min(self.config.max_wait));
        // A little earlier than granted, at random: waits that began together
        // end apart.
        let deadline = granted_wait
            .map(|wait| Instant::now() + wait - wait.mul_f64(self.config.jitter * fastrand::f64()));
        // Subscribed before the first read, so a transition in between still wakes us.
        let mut subscription = granted_wait
            .filter(|wait| !wait.is_zero())
            .map(|_| self.store.changes().subscribe(id));
        let mut shutdown = self.shutdown.clone();
        let mut stopping = *shutdown.borrow();
        loop {
            let Some(job) = self.read(id, client_id).await? else {
                return Ok(None);
            };
            let etag = etag(&job);
            let not_modified = if_none_match.is_some_and(|tags| tag_matches(tags, &etag));
            // A finished job never changes again, and a stale tag is answered at once.
            let unchanged =
                job.state.status() == Status::Pending && (if_none_match.is_none() || not_modified);
            match (subscription.as_mut(), deadline) {
                (Some(subscription), Some(deadline))
                    if unchanged && !stopping && Instant::now() < deadline =>
                {
                    // Read again on waking: nothing of this read is kept
                    // through the wait, which thousands of polls may share.
                    drop((job, etag));
                    tokio::select! {
                        () = subscription.changed() => {}
                        () = tokio::time::sleep_until(deadline) => {}
                        // Shutting down: answer with the current state, never an error.
                        _ = shutdown.changed() => stopping = true,
                    }
                }
                _ => {
                    let (min, max) = (self.config.retry_after_min, self.config.retry_after_max);
                    let retry_after =
                        retry_after(&job, Timestamp::now(), min, max).map(|seconds| {
                            spread(seconds, min, max, self.config.jitter, |range| {
                                fastrand::u32(range)
                            })
                        });
                    return Ok(Some(Answer {
                        job,
                        etag,
                        not_modified,
                        retry_after,
                        granted_wait,
                    }));
                }
            }
        }
    }
}

/// The seconds of the first `wait` preference in a `Prefer` value, if it is
/// well-formed; anything else is ignored, as RFC 7240 asks.
pub(crate) fn requested_wait(prefer: &str) -> Option<u64> {
    let wait = prefer.split(',').find_map(|preference| {
        let preference = preference.split(';').next().unwrap_or_default();
        let (name, value) = preference.split_once('=').unwrap_or((preference, ""));
        name.trim()
            .eq_ignore_ascii_case("wait")
            .then(|| value.trim())
    })?;
    let digits = wait
        .strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(wait);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Absurdly long waits are capped later; an overflow is just "very long".
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// A strong validator of what `data` shows for `job`: a 64-bit FNV-1a hash of the
/// fields `data` is made of, length-prefixed so that no two representations feed
/// it the same bytes. It distinguishes a job's few representations, the same on
/// every instance; nothing here needs a cryptographic hash, and SHA-256 cost
/// a tenth of a request.
pub(crate) fn etag(job: &Job) -> String {
    let mut hash = Fnv1a::default();
    let text = |hash: &mut Fnv1a, text: &str| {
        hash.write(&(text.len() as u64).to_be_bytes());
        hash.write(text.as_bytes());
    };
    text(&mut hash, job.state.status().as_str());
    match &job.state {
        State::Pending { .. } => {}
        State::Done { links, .. } => {
            for link in links {
                text(&mut hash, &link.entity);
                text(&mut hash, link.href.as_deref().unwrap_or_default());
            }
        }
        State::Failed { failure, .. } => {
            hash.write(&failure.code.to_be_bytes());
            text(&mut hash, &failure.name);
            text(&mut hash, &failure.message);
        }
    }
    hash.write(job.id.as_bytes());
    hash.write(&job.state.eta().as_millis().to_be_bytes());
    // "…" around 16 hex digits, written directly: this runs on every poll.
    let mut tag = String::with_capacity(18);
    tag.push('"');
    for shift in (0..16).rev().map(|i| 4 * i) {
        tag.push(char::from(
            b"0123456789abcdef"[((hash.0 >> shift) & 0xf) as usize],
        ));
    }
    tag.push('"');
    tag
}

/// FNV-1a, 64 bits: defined by its constants, so stable everywhere.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110
/// requires for `If-None-Match`), or is `*`.
pub(crate) fn tag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// While pending, the whole seconds until `eta`, clamped to `[min, max]`.
pub(crate) fn retry_after(job: &Job, now: Timestamp, min: Duration, max: Duration) -> Option<u32> {
    let State::Pending { eta } = job.state else {
        return None;
    };
    let millis = u64::try_from(eta.as_millis() - now.as_millis()).unwrap_or(0);
    let seconds = millis.div_ceil(1000).clamp(min.as_secs(), max.as_secs());
    Some(u32::try_from(seconds).unwrap_or(u32::MAX))
}

/// `seconds` moved at random (`pick` draws from the range it is given) over up
/// to `jitter` of itself, and at least a second when `jitter` is on: upwards,
/// within `[min, max]`, or downwards where `max` leaves no room.
pub(crate) fn spread(
    seconds: u32,
    min: Duration,
    max: Duration,
    jitter: f64,
    pick: impl FnOnce(std::ops::RangeInclusive<u32>) -> u32,
) -> u32 {
    if jitter <= 0.0 {
        return seconds;
    }
    let whole = |bound: Duration| u32::try_from(bound.as_secs()).unwrap_or(u32::MAX);
    // At most `u32::MAX`, as `seconds` is.
    let width = ((f64::from(seconds) * jitter).ceil() as u32).max(1);
    let high = seconds.saturating_add(width).min(whole(max)).max(seconds);
    let low = high.saturating_sub(width).max(whole(min)).min(seconds);
    pick(low..=high)
}

/// `no-store` while the job may change; `private, no-cache` once it cannot.
pub(crate) const fn cache_control(status: Status) -> &'static str {
    match status {
        Status::Pending => "no-store",
        Status::Done | Status::Failed => "private, no-cache",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Failure, Kind, Link};

    fn pending(eta: Timestamp) -> Job {
        Job {
            id: Uuid::from_u128(7),
            client_id: "mis-1".into(),
            kind: Kind::Create,
            state: State::Pending { eta },
            created_at: Timestamp::from_millis(0),
            dedup_hash: None,
        }
    }

    #[test]
    fn wait_preferences_follow_rfc_7240() {
        assert_eq!(requested_wait("wait=10"), Some(10));
        assert_eq!(requested_wait("respond-async, WAIT = 5 ; x=y"), Some(5));
        assert_eq!(requested_wait("wait=\"7\""), Some(7));
        assert_eq!(requested_wait("wait=3, wait=9"), Some(3));
        assert_eq!(
            requested_wait("wait=99999999999999999999999"),
            Some(u64::MAX)
        );
        for ignored in [
            "",
            "wait",
            "wait=",
            "wait=-1",
            "wait=1.5",
            "wait=abc",
            "handling=lenient",
        ] {
            assert_eq!(requested_wait(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn retry_after_counts_down_to_the_eta_within_bounds() {
        let now = Timestamp::from_millis(1_000_000);
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let after = |millis: i64| {
            let eta = Timestamp::from_millis(now.as_millis() + millis);
            retry_after(&pending(eta), now, min, max)
        };
        assert_eq!(after(-60_000), Some(1), "an eta in the past");
        assert_eq!(after(0), Some(1));
        assert_eq!(after(2_001), Some(3), "rounded up");
        assert_eq!(after(4_000), Some(4));
        assert_eq!(after(600_000), Some(10), "clamped");
        let done = Job {
            state: State::Done {
                links: vec![],
                finished_at: now,
            },
            ..pending(now)
        };
        assert_eq!(retry_after(&done, now, min, max), None);
    }

    #[test]
    fn retry_after_is_spread_within_its_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let range = |seconds, jitter| {
            spread(seconds, min, max, jitter, |range| {
                // Both ends, packed: the range itself is what is checked.
                range.start() * 100 + range.end()
            })
        };
        assert_eq!(range(1, 0.2), 102, "at least a second of spread");
        assert_eq!(range(4, 0.5), 406);
        assert_eq!(
            range(9, 0.2),
            810,
            "no higher than max: the window moves down"
        );
        assert_eq!(range(10, 0.2), 810, "downwards at max");
        assert_eq!(range(10, 0.0), 10, "off");
        for _ in 0..1000 {
            let seconds = spread(1, min, max, 0.2, fastrand::u32);
            assert!((1..=2).contains(&seconds), "{seconds}");
        }
    }

    #[test]
    fn the_etag_follows_the_representation_only() {
        let job = pending(Timestamp::from_millis(5));
        assert_eq!(etag(&job), etag(&job.clone()));
        let other_client = Job {
            client_id: "mis-2".into(),
            created_at: Timestamp::from_millis(99),
            ..job.clone()
        };
        assert_eq!(etag(&job), etag(&other_client), "not shown in data");
        let failed = |message: &str| Job {
            state: State::Failed {
                failure: Failure::new(1127, "X", message).unwrap_or_else(|e| panic!("{e}")),
                finished_at: Timestamp::from_millis(5),
            },
            ..job.clone()
        };
        let done = Job {
            state: State::Done {
                links: vec![Link::new("e", "composition/x").unwrap_or_else(|e| panic!("{e}"))],
                finished_at: Timestamp::from_millis(5),
            },
            ..job.clone()
        };
        let tags = [
            etag(&job),
            etag(&failed("a")),
            etag(&failed("b")),
            etag(&done),
        ];
        for (i, a) in tags.iter().enumerate() {
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_star() {
        let tag = "\"abc\"";
        assert!(tag_matches("\"abc\"", tag));
        assert!(tag_matches("W/\"abc\"", tag));
        assert!(tag_matches("\"x\", \"abc\"", tag));
        assert!(tag_matches("*", tag));
        assert!(!tag_matches("\"abd\"", tag));
        assert!(!tag_matches("abc", tag));
    }
}
