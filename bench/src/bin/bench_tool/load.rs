//! Scenario L: a realistic load, and the answers checked.
//!
//! Thousands of clients, each with its own token, own tens of thousands of
//! PENDING jobs. Each job is polled when the `Retry-After` it was last given says,
//! plus jitter (a share of them as long polls, `Prefer: wait`), while a producer
//! in this process (not the service's: the change feed carries its transitions)
//! finishes the job whose eta comes first, at a steady rate, and creates a new
//! one for a random client. Every answer is checked against what the producer
//! did; any wrong one fails the run.
//!
//! Against the baseline (bare hyper, a fixed PENDING body) the same clients,
//! jobs and producer run in memory only: each poll waits the `Retry-After` the
//! service would have given (computed from the eta), and a long poll, answered at
//! once, waits out the rest of its hold before the next one. So both servers get
//! the same requests at the same rate, and CPU per poll compares like with like.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use compositions_jobs::jobs::{Kind, NewJob, Timestamp};
use compositions_jobs::{JobStore, Store};
use uuid::Uuid;

use crate::client::{Answer, Connection, get};
use crate::measure::{self, Counters};
use crate::{Failed, SplitMix};

/// `bench-tool load`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct LoadArgs {
    /// The server to poll.
    #[arg(long)]
    address: SocketAddr,
    /// The service's store, for the producer; absent with `--baseline`.
    #[arg(long, required_unless_present = "baseline")]
    database: Option<String>,
    /// The server is bare hyper: no producer writes, no checks (see the module doc).
    #[arg(long)]
    baseline: bool,
    /// One token per line, line n for client n (`bench-tool tokens --numbered-clients`).
    #[arg(long)]
    tokens: PathBuf,
    /// The client ids' prefix: client n is `<prefix>-<n>`, as in the tokens.
    #[arg(long, default_value = "mis-load")]
    client_prefix: String,
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// PENDING jobs at the start, spread over the clients.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs finished (and as many created) a second.
    #[arg(long, default_value_t = 50.0)]
    finish_rate: f64,
    /// The share of jobs polled with `Prefer: wait=<wait>`.
    #[arg(long, default_value_t = 0.2)]
    long_poll_share: f64,
    #[arg(long, default_value_t = 20)]
    wait: u64,
    /// Seconds of load before the measured window (every job polled at least once).
    #[arg(long, default_value_t = 12)]
    warmup: u64,
    /// The measured window, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The server's pid: its CPU and RSS.
    #[arg(long)]
    server_pid: u32,
    /// The service's admin listener: its counters before and after the window.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The private PostgreSQL instance's postmaster: the CPU of all its processes.
    #[arg(long)]
    postgres_pid: Option<u32>,
    /// Connect from 127.0.0.1 .. 127.0.0.N, for more ephemeral ports.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// A PENDING answer to a poll sent this long after the producer's commit is
    /// wrong (the read cache promises at most `jobs.read_cache_max_age`, 1 s).
    #[arg(long, default_value_t = 2000)]
    stale_ms: u64,
}

/// What the producer did to a job, as the checks need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Done,
    Failed,
}

impl Fate {
    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "DONE",
            Self::Failed => "FAILED",
        }
    }
}

#[derive(Debug)]
struct Job {
    id: Uuid,
    client: usize,
    /// Unix milliseconds.
    eta: i64,
    long: bool,
    /// Set just before the producer's finish call...
    fate: OnceLock<Fate>,
    /// ...and this when it returned: the transition is committed.
    finished_at: OnceLock<Instant>,
}

/// Wrong answers, by kind; the first few are also printed.
#[derive(Debug, Default)]
struct Violations(Mutex<BTreeMap<&'static str, u64>>);

impl Violations {
    fn add(&self, kind: &'static str, job: &Job, detail: &str) {
        let mut kinds = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = kinds.entry(kind).or_default();
        *count += 1;
        if *count <= 3 {
            eprintln!("load: wrong answer ({kind}) for job {}: {detail}", job.id);
        }
    }
}

/// Samples of the measured window.
#[derive(Debug, Default)]
struct Window {
    /// Answers to short polls: latency (µs).
    latencies: Vec<u32>,
    /// Long polls answered with the finished job: commit to answer (µs).
    wakes: Vec<u32>,
    long_polls: u64,
    statuses: BTreeMap<u16, u64>,
}

struct Shared {
    args: LoadArgs,
    request_headers: Vec<String>,
    store: Option<Store>,
    connections: Mutex<Vec<Connection>>,
    opened: AtomicUsize,
    next_source: AtomicUsize,
    /// Set while the window is measured.
    measuring: AtomicBool,
    stopping: AtomicBool,
    window: Mutex<Window>,
    violations: Violations,
    answers: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    async fn connection(&self) -> Result<Connection, Failed> {
        let idle = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(connection) = idle {
            return Ok(connection);
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        let n = self.next_source.fetch_add(1, Ordering::Relaxed) % usize::from(self.args.sources);
        let source = (self.args.sources > 1)
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + u8::try_from(n).unwrap_or(0))));
        Connection::open(self.args.address, source).await
    }

    fn give_back(&self, connection: Connection) {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(connection);
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_millis() -> i64 {
    Timestamp::now().as_millis()
}

/// The `Retry-After` the service gives a job with this eta (its default bounds).
fn expected_retry_after(eta: i64) -> u32 {
    let millis = (eta - now_millis()).max(0);
    u32::try_from((millis + 999) / 1000)
        .unwrap_or(u32::MAX)
        .clamp(1, 10)
}

pub(crate) async fn load(args: LoadArgs) -> Result<(), Failed> {
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)?
        .lines()
        .map(str::to_owned)
        .collect();
    if tokens.len() < args.clients {
        return Err(format!(
            "{} holds {} tokens, not {}",
            args.tokens.display(),
            tokens.len(),
            args.clients
        )
        .into());
    }
    let request_headers = tokens[..args.clients]
        .iter()
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .collect();
    let store = match (&args.database, args.baseline) {
        (Some(database), false) => Some(crate::open(database).await?),
        _ => None,
    };
    let mut random = SplitMix::new();
    // The backlog is drained at finish_rate in eta order, so jobs finish near
    // their eta: the seeded ones are due over the next backlog, new ones one
    // backlog (± 10 %) after their creation.
    let backlog = Duration::from_secs_f64(args.jobs as f64 / args.finish_rate.max(0.001));
    let started = Instant::now();
    let mut jobs = Vec::with_capacity(args.jobs);
    for n in 0..args.jobs {
        let expected =
            backlog.mul_f64((n as f64 + 1.0) / args.jobs as f64) + Duration::from_secs(2);
        jobs.push(new_job(
            n % args.clients,
            expected,
            args.long_poll_share,
            &mut random,
        ));
    }
    if let Some(store) = &store {
        create_all(store, &jobs, &args.client_prefix).await?;
    }
    eprintln!(
        "load: {} jobs of {} clients ready in {:.1} s",
        jobs.len(),
        args.clients,
        started.elapsed().as_secs_f64()
    );
    let shared = Arc::new(Shared {
        args,
        request_headers,
        store,
        connections: Mutex::new(Vec::new()),
        opened: AtomicUsize::new(0),
        next_source: AtomicUsize::new(0),
        measuring: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        window: Mutex::new(Window::default()),
        violations: Violations::default(),
        answers: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let pending = Arc::new(Mutex::new(BinaryHeap::new()));
    let mut tasks = Vec::new();
    for job in jobs {
        let job = Arc::new(job);
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Reverse(Due(job.eta, Arc::clone(&job))));
        // The first polls spread over the longest Retry-After.
        let first = Duration::from_millis(random.next() % 10_000);
        tasks.push(tokio::spawn(poller(Arc::clone(&shared), job, first)));
    }
    let producer = tokio::spawn(produce(Arc::clone(&shared), pending));

    tokio::time::sleep(Duration::from_secs(shared.args.warmup)).await;
    let ports = measure::own_ports();
    let before = Snapshot::take(&shared, &ports, true).await?;
    shared.measuring.store(true, Ordering::Release);
    let window_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(shared.args.seconds)).await;
    shared.measuring.store(false, Ordering::Release);
    let elapsed = window_started.elapsed();
    // Connections the producer opened since are counted as its own too.
    let ports = measure::own_ports();
    let after = Snapshot::take(&shared, &ports, false).await?;
    shared.stopping.store(true, Ordering::Release);
    let created = producer.await??;
    for task in &tasks {
        task.abort();
    }
    report(&shared, &before, &after, elapsed, created)
}

fn new_job(client: usize, expected: Duration, long_share: f64, random: &mut SplitMix) -> Job {
    Job {
        id: Uuid::new_v4(),
        client,
        eta: now_millis() + i64::try_from(expected.as_millis()).unwrap_or(i64::MAX),
        long: (random.next() % 10_000) as f64 / 10_000.0 < long_share,
        fate: OnceLock::new(),
        finished_at: OnceLock::new(),
    }
}

fn new_job_of(job: &Job, prefix: &str) -> NewJob {
    NewJob {
        id: job.id,
        client_id: format!("{prefix}-{}", job.client),
        kind: Kind::Create,
        expected_duration: Duration::from_millis(
            u64::try_from(job.eta - now_millis()).unwrap_or(0),
        ),
        dedup_hash: None,
    }
}

/// Creates the seeded jobs through the library, a few at a time.
async fn create_all(store: &Store, jobs: &[Job], prefix: &str) -> Result<(), Failed> {
    let next = Arc::new(AtomicUsize::new(0));
    let news: Arc<Vec<NewJob>> = Arc::new(jobs.iter().map(|job| new_job_of(job, prefix)).collect());
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (store, next, news) = (store.clone(), Arc::clone(&next), Arc::clone(&news));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(new) = news.get(n) else {
                        return Ok::<_, Failed>(());
                    };
                    store.create(new.clone(), Timestamp::now()).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// A job in the producer's queue, earliest eta first.
struct Due(i64, Arc<Job>);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Finishes the job due first (nine in ten DONE), then creates one for a random
/// client, `finish_rate` times a second; returns how many it created.
async fn produce(
    shared: Arc<Shared>,
    pending: Arc<Mutex<BinaryHeap<Reverse<Due>>>>,
) -> Result<u64, Failed> {
    let args = &shared.args;
    if args.finish_rate <= 0.0 {
        return Ok(0);
    }
    let backlog = Duration::from_secs_f64(args.jobs as f64 / args.finish_rate);
    let mut random = SplitMix::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.finish_rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut created = 0;
    while !shared.stopping.load(Ordering::Acquire) {
        ticks.tick().await;
        let next = pending.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let Some(Reverse(Due(_, job))) = next else {
            continue;
        };
        let fate = if random.next().is_multiple_of(10) {
            Fate::Failed
        } else {
            Fate::Done
        };
        let _ = job.fate.set(fate);
        if let Some(store) = &shared.store {
            let outcome = match fate {
                Fate::Done => crate::done()?,
                Fate::Failed => crate::failed()?,
            };
            store.finish(job.id, outcome, Timestamp::now()).await?;
        }
        let _ = job.finished_at.set(Instant::now());

        let client = (random.next() % args.clients as u64) as usize;
        let spread = 0.9 + (random.next() % 2000) as f64 / 10_000.0;
        let new = Arc::new(new_job(
            client,
            backlog.mul_f64(spread),
            args.long_poll_share,
            &mut random,
        ));
        if let Some(store) = &shared.store {
            store
                .create(new_job_of(&new, &args.client_prefix), Timestamp::now())
                .await?;
        }
        created += 1;
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Reverse(Due(new.eta, Arc::clone(&new))));
        // Its client polls after the Retry-After a create answer would give (1 s or so).
        let first = Duration::from_millis(1000 + random.next() % 200);
        tokio::spawn(poller(Arc::clone(&shared), new, first));
    }
    Ok(created)
}

/// One job's client: polls it until it learns the outcome, then once more with
/// the final ETag (which must be answered 304), then stops.
async fn poller(shared: Arc<Shared>, job: Arc<Job>, first: Duration) {
    tokio::time::sleep(first).await;
    let mut random = SplitMix::new();
    let path = format!("/api/patients/composition/job/{}", job.id);
    let auth = &shared.request_headers[job.client];
    let mut etag: Option<String> = None;
    let mut learned: Option<Fate> = None;
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let long = job.long && learned.is_none();
        let mut headers = auth.clone();
        if let Some(tag) = &etag {
            headers.push_str(&format!("If-None-Match: {tag}\r\n"));
        } else if shared.args.baseline {
            // The same request size as the service's polls.
            headers.push_str("If-None-Match: \"0000000000000000\"\r\n");
        }
        if long {
            headers.push_str(&format!("Prefer: wait={}\r\n", shared.args.wait));
        }
        let request = get(&path, &headers);
        let sent = Instant::now();
        let answer = match shared.connection().await {
            Ok(mut connection) => match connection.send(&request).await {
                Ok(answer) => {
                    shared.give_back(connection);
                    answer
                }
                Err(e) => {
                    broken(&shared, &job, &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Err(e) => {
                broken(&shared, &job, &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answered = Instant::now();
        shared.answers.fetch_add(1, Ordering::Relaxed);
        if shared.measuring.load(Ordering::Acquire) {
            let mut window = shared.window();
            *window.statuses.entry(answer.status).or_default() += 1;
            if long {
                window.long_polls += 1;
            } else {
                let micros = answered.duration_since(sent).as_micros();
                window
                    .latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
        }
        if learned.is_some() {
            // The confirmation poll: the outcome, unchanged.
            if !shared.args.baseline && answer.status != 304 {
                shared.violations.add(
                    "a finished job's unchanged ETag not answered 304",
                    &job,
                    &format!("status {}", answer.status),
                );
            }
            return;
        }
        let now_finished = if shared.args.baseline {
            baseline_poll(&shared, &job, long, sent).await
        } else {
            check(
                &shared,
                &job,
                &answer,
                etag.as_deref(),
                long,
                sent,
                answered,
            )
        };
        if let Some(tag) = answer.etag.clone() {
            etag = Some(tag);
        }
        match now_finished {
            Some(fate) => {
                learned = Some(fate);
                tokio::time::sleep(Duration::from_millis(1000 + random.next() % 1000)).await;
            }
            None if long => {}
            None => {
                let seconds = if shared.args.baseline {
                    expected_retry_after(job.eta)
                } else {
                    answer.retry_after.unwrap_or(1)
                };
                let jitter = 1.0 + (random.next() % 1000) as f64 / 5000.0;
                tokio::time::sleep(Duration::from_secs(u64::from(seconds)).mul_f64(jitter)).await;
            }
        }
    }
}

fn broken(shared: &Shared, job: &Job, error: &Failed) {
    if !shared.stopping.load(Ordering::Acquire) {
        let count = shared.errors.fetch_add(1, Ordering::Relaxed);
        if count < 3 {
            eprintln!("load: job {}: {error}", job.id);
        }
    }
}

/// The baseline's stand-in for the service's answer: the job is finished once
/// the producer says so; a long poll holds (here, in the client) until then or
/// for its wait.
async fn baseline_poll(shared: &Shared, job: &Job, long: bool, sent: Instant) -> Option<Fate> {
    if let (Some(fate), Some(_)) = (job.fate.get(), job.finished_at.get()) {
        return Some(*fate);
    }
    if long {
        let until = sent + Duration::from_secs(shared.args.wait);
        while Instant::now() < until && job.finished_at.get().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    None
}

/// Checks one answer of the service against the producer's record; returns the
/// outcome once the answer shows it.
fn check(
    shared: &Shared,
    job: &Job,
    answer: &Answer,
    sent_tag: Option<&str>,
    long: bool,
    sent: Instant,
    answered: Instant,
) -> Option<Fate> {
    let violations = &shared.violations;
    // Committed well before the poll was sent: the answer must show it.
    let stale_limit = Duration::from_millis(shared.args.stale_ms);
    let must_know = job
        .finished_at
        .get()
        .is_some_and(|at| sent.saturating_duration_since(*at) > stale_limit);
    match answer.status {
        304 => {
            if sent_tag.is_none() {
                violations.add("304 without If-None-Match", job, "");
            } else if answer.etag.as_deref() != sent_tag {
                violations.add(
                    "304 with another ETag",
                    job,
                    &format!("{:?} for {sent_tag:?}", answer.etag),
                );
            } else if must_know {
                violations.add("304 long after the job finished (stale)", job, "");
            }
            if answer.retry_after.is_none() {
                violations.add("304 of a PENDING job without Retry-After", job, "");
            }
            None
        }
        200 => {
            let body: serde_json::Value = match serde_json::from_slice(&answer.body) {
                Ok(body) => body,
                Err(e) => {
                    violations.add("200 with a body that is not JSON", job, &e.to_string());
                    return None;
                }
            };
            let data = &body["data"];
            if data["id"].as_str() != Some(job.id.to_string().as_str()) {
                violations.add("200 with another job", job, &data["id"].to_string());
            }
            if answer.etag.is_none() {
                violations.add("200 without ETag", job, "");
            } else if sent_tag.is_some() && answer.etag.as_deref() == sent_tag {
                violations.add("200 with the unchanged ETag (304 expected)", job, "");
            }
            let status = data["status"].as_str().unwrap_or_default();
            match (status, job.fate.get()) {
                ("PENDING", _) => {
                    if must_know {
                        violations.add("PENDING long after the job finished (stale)", job, "");
                    }
                    if sent_tag.is_some() {
                        // It was PENDING and still is, yet the tag (checked above) changed.
                        violations.add("a PENDING job's ETag changed", job, "");
                    }
                    if answer.retry_after.is_none() {
                        violations.add("PENDING without Retry-After", job, "");
                    }
                    None
                }
                ("DONE" | "FAILED", Some(fate)) if status == fate.as_str() => {
                    if status == "DONE"
                        && !data["links"]
                            .as_array()
                            .is_some_and(|links| links.iter().any(|l| l["href"].is_string()))
                    {
                        violations.add("DONE without a link", job, &data.to_string());
                    }
                    if answer.retry_after.is_some() {
                        violations.add("a finished job with Retry-After", job, "");
                    }
                    if long
                        && let Some(at) = job.finished_at.get()
                        && *at > sent
                        && shared.measuring.load(Ordering::Acquire)
                    {
                        let micros = answered.saturating_duration_since(*at).as_micros();
                        shared
                            .window()
                            .wakes
                            .push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                    Some(*fate)
                }
                ("DONE" | "FAILED", None) => {
                    violations.add("finished before the producer finished it", job, status);
                    None
                }
                (other, _) => {
                    violations.add("another status than the producer's", job, other);
                    None
                }
            }
        }
        status => {
            let kind = match status {
                404 => "404 for the owner's job",
                429 => "429 (polled at its Retry-After)",
                500..=599 => "5xx",
                _ => "an unexpected status",
            };
            violations.add(
                kind,
                job,
                &format!("{status} {}", String::from_utf8_lossy(&answer.body)),
            );
            None
        }
    }
}

/// The counters read at each end of the window.
struct Snapshot {
    cpu_ticks: u64,
    postgres_ticks: measure::InstanceTicks,
    counters: Counters,
    answers: u64,
}

impl Snapshot {
    /// At the start (`start`), the service's counters are read before its CPU,
    /// at the end after: rendering /metrics (a count of the jobs by status, at
    /// most every 30 s) stays out of the window.
    async fn take(shared: &Shared, ports: &HashSet<u16>, start: bool) -> Result<Self, Failed> {
        let read = || async {
            match shared.args.admin {
                Some(admin) => measure::counters(admin).await,
                None => Ok(Counters::default()),
            }
        };
        let before = if start { Some(read().await?) } else { None };
        let cpu_ticks = measure::cpu_ticks(shared.args.server_pid);
        let postgres_ticks = shared
            .args
            .postgres_pid
            .map_or_else(Default::default, |pid| measure::instance_ticks(pid, ports));
        let answers = shared.answers.load(Ordering::Relaxed);
        let counters = match before {
            Some(counters) => counters,
            None => read().await?,
        };
        Ok(Self {
            cpu_ticks,
            postgres_ticks,
            counters,
            answers,
        })
    }
}

fn report(
    shared: &Shared,
    before: &Snapshot,
    after: &Snapshot,
    elapsed: Duration,
    created: u64,
) -> Result<(), Failed> {
    let mut window = shared.window();
    window.latencies.sort_unstable();
    window.wakes.sort_unstable();
    let polls = window.statuses.values().sum::<u64>();
    let violations = shared
        .violations
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let wrong: u64 = violations.values().sum();
    let errors = shared.errors.load(Ordering::Relaxed);
    let server_polls = after.counters.polls - before.counters.polls;
    let reads = after.counters.database_reads - before.counters.database_reads;
    let postgres = after.postgres_ticks - before.postgres_ticks;
    let line = serde_json::json!({
        "seconds": elapsed.as_secs_f64(),
        "clients": shared.args.clients,
        "jobs": shared.args.jobs,
        "polls": polls,
        "long_polls": window.long_polls,
        "statuses": window.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "cpu_ticks": after.cpu_ticks - before.cpu_ticks,
        "postgres_ticks": postgres.all,
        "postgres_producer_ticks": postgres.ours,
        "postgres_service_ticks": postgres.others,
        "rss_kib": measure::status_kib(shared.args.server_pid, "VmRSS"),
        "peak_rss_kib": measure::status_kib(shared.args.server_pid, "VmHWM"),
        "p50_us": measure::quantile(&window.latencies, 0.5),
        "p99_us": measure::quantile(&window.latencies, 0.99),
        "wakes": window.wakes.len(),
        "wake_p50_us": measure::quantile(&window.wakes, 0.5),
        "wake_p99_us": measure::quantile(&window.wakes, 0.99),
        "server_polls": server_polls,
        "database_reads": reads,
        "cache_hits": after.counters.cache_hits.zip(before.counters.cache_hits).map(|(a, b)| a - b),
        "token_cache_misses": after.counters.token_misses - before.counters.token_misses,
        "connections": shared.opened.load(Ordering::Relaxed),
        "created": created,
        "answers": shared.answers.load(Ordering::Relaxed),
        "window_answers": after.answers - before.answers,
        "errors": errors,
        "wrong": wrong,
        "wrong_kinds": violations,
    });
    println!("{line}");
    if wrong > 0 || errors > 0 {
        return Err(format!("{wrong} wrong answers, {errors} broken requests").into());
    }
    Ok(())
}
