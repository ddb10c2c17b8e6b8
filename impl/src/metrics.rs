//! Prometheus metrics, served on the admin listener.
//!
//! The request path only counts: each worker thread adds to a shard of its own
//! (plain relaxed atomics on a cache line no other core writes), and a scrape sums
//! the shards. Gauges (requests in flight, connections, waiters, pools, token
//! cache) are read from their owners at scrape time, so they cost the request
//! path nothing.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::responses::{OPERATION_IDS, STATUSES};

/// Upper bounds of the latency histogram, in seconds: polls take a millisecond,
/// long polls up to 30 s.
const BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 30.0,
];

/// Tells apart the `Metrics` of several servers in one process (the tests).
static INSTANCES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard of each `Metrics` it has counted for.
    static SHARDS: RefCell<Vec<(usize, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// One thread's counts.
#[derive(Debug, Default)]
struct Shard {
    /// By status (the spec's `STATUSES`, then other), for each operation of the
    /// spec, then for requests that named none (unknown paths, `/docs`, …).
    requests: [[AtomicU64; STATUSES.len() + 1]; OPERATION_IDS.len() + 1],
    /// Cumulative counts are made at scrape; here, one count per bucket, then +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    /// Polls answered from the read cache.
    cache_hits: AtomicU64,
}

/// The polling path's reads that reached the database (the read cache's misses),
/// for `/metrics`: how many, how many failed, and how long they took.
#[derive(Debug, Default)]
pub(crate) struct DatabaseReads {
    /// Per bucket of [`DATABASE_READ_BUCKETS`], then beyond.
    buckets: [AtomicU64; DATABASE_READ_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    errors: AtomicU64,
}

/// Upper bounds of the store read histogram, in seconds.
pub(crate) const DATABASE_READ_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0,
];

impl DatabaseReads {
    /// Counts one read of `took`, failed or not.
    pub(crate) fn record(&self, took: Duration, ok: bool) {
        let bucket = bucket_of(&DATABASE_READ_BUCKETS, took);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count per bucket (not cumulative), the total seconds, and the failures.
    pub(crate) fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let buckets = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let seconds = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, seconds, self.errors.load(Ordering::Relaxed))
    }
}

/// The request counters of one server.
#[derive(Debug)]
pub(crate) struct Metrics {
    id: usize,
    shards: Mutex<Vec<Arc<Shard>>>,
    database_reads: DatabaseReads,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            id: INSTANCES.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::default(),
            database_reads: DatabaseReads::default(),
        }
    }
}

impl Metrics {
    /// The polling path's reads that reached the database.
    pub(crate) fn database_reads(&self) -> &DatabaseReads {
        &self.database_reads
    }

    /// Counts one answered request, for `operation` if it named one.
    pub(crate) fn record(&self, operation: Option<&str>, status: u16, latency: Duration) {
        let named = operation
            .and_then(|operation| OPERATION_IDS.iter().position(|id| *id == operation))
            .unwrap_or(OPERATION_IDS.len());
        let index = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        let bucket = bucket_of(&BUCKETS, latency);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with_shard(|shard| {
            shard.requests[named][index].fetch_add(1, Ordering::Relaxed);
            shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            shard.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
        });
    }

    /// Counts one poll answered from the read cache.
    pub(crate) fn record_cache_hit(&self) {
        self.with_shard(|shard| {
            shard.cache_hits.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn with_shard(&self, count: impl FnOnce(&Shard)) {
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            if let Some((_, shard)) = shards.iter().find(|(id, _)| *id == self.id) {
                count(shard);
                return;
            }
            let shard = Arc::new(Shard::default());
            self.shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(&shard));
            count(&shard);
            shards.push((self.id, shard));
        });
    }

    /// The request counters in Prometheus' text format.
    pub(crate) fn render(&self, out: &mut String) {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sum = |read: &dyn Fn(&Shard) -> u64| shards.iter().map(|s| read(s)).sum::<u64>();
        out.push_str(
            "# HELP compositions_jobs_requests_total Requests answered, by operation and status.\n\
             # TYPE compositions_jobs_requests_total counter\n",
        );
        let statuses = STATUSES
            .iter()
            .map(u16::to_string)
            .chain(["other".to_owned()]);
        for (index, status) in statuses.enumerate() {
            for (named, operation) in OPERATION_IDS.iter().chain(&["none"]).enumerate() {
                let count = sum(&|s| s.requests[named][index].load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "compositions_jobs_requests_total{{operation=\"{operation}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let counts: Vec<u64> = (0..=BUCKETS.len())
            .map(|index| sum(&|s| s.buckets[index].load(Ordering::Relaxed)))
            .collect();
        let seconds = sum(&|s| s.latency_sum_us.load(Ordering::Relaxed)) as f64 / 1e6;
        histogram(
            out,
            "compositions_jobs_request_duration_seconds",
            "Time from reading a request to answering it.",
            &BUCKETS,
            &counts,
            seconds,
        );
        counter(
            out,
            "compositions_jobs_read_cache_hits_total",
            "Polls answered from the read cache (its misses are the store reads).",
            sum(&|s| s.cache_hits.load(Ordering::Relaxed)),
        );
    }
}

/// The bucket `took` falls in: the first bound (in seconds) it does not exceed,
/// or `bounds.len()` beyond them all.
pub(crate) fn bucket_of(bounds: &[f64], took: Duration) -> usize {
    let seconds = took.as_secs_f64();
    bounds
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(bounds.len())
}

/// Writes a histogram from its count per bucket (not cumulative; one more than
/// `bounds`, for +Inf) and the sum of the observations in seconds.
pub(crate) fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[u64],
    sum_seconds: f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let bounds = bounds.iter().map(f64::to_string).chain(["+Inf".to_owned()]);
    let mut cumulative = 0;
    for (count, bound) in counts.iter().zip(bounds) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {sum_seconds}\n{name}_count {cumulative}");
}

/// Writes one gauge with its help line.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Writes one counter with its help line.
pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_add_up() {
        let metrics = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        metrics.record(Some(OPERATION_IDS[0]), 200, Duration::from_micros(700));
                    }
                    metrics.record(None, 503, Duration::from_secs(40));
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("counted");
        }
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains("{operation=\"getAsyncJobStatus\",status=\"200\"} 4000\n"),
            "{text}"
        );
        assert!(
            text.contains("{operation=\"none\",status=\"503\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("_bucket{le=\"0.0005\"} 0\n"), "{text}");
        assert!(text.contains("_bucket{le=\"0.001\"} 4000\n"), "{text}");
        assert!(text.contains("_bucket{le=\"+Inf\"} 4004\n"), "{text}");
        assert!(text.contains("_count 4004\n"), "{text}");
    }
}
