//! Driving the `compositions-jobs` binary: commands, a server process, its dev
//! tokens, GETs to it, and a producer process. What is not about the binary
//! (raw HTTP, PostgreSQL schemas) is the `compositions-tests` library's.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use compositions_tests::{RawResponse, job_path, raw};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_compositions-jobs");

/// The binary with its state under `dir`.
pub(crate) fn cli(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    // Servers run side by side: each gets its own admin port too.
    command
        .env_clear()
        .env("COMPOSITIONS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("COMPOSITIONS_DATA_DIR", dir)
        .env(
            "COMPOSITIONS_DATABASE",
            format!("sqlite:{}", dir.join("jobs.db").display()),
        );
    command
}

/// The binary with its state under `dir`, run with `args` to its end.
pub(crate) fn run(dir: &Path, args: &[&str]) -> Output {
    cli(dir).args(args).output().unwrap()
}

/// What a command that succeeded printed, trimmed; panics with its stderr if it
/// failed.
pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

/// A `serve --dev` process on a free port, with its log collected.
pub(crate) struct Server {
    child: Child,
    /// Where it listens.
    pub(crate) address: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `serve --dev` with its state under `dir`.
    pub(crate) fn start(dir: &Path) -> Self {
        Self::spawn(cli(dir))
    }

    /// `serve --dev` from a prepared command (environment, database).
    pub(crate) fn spawn(mut command: Command) -> Self {
        let mut child = command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("the server exited before serving")
                .unwrap();
            if let Some((_, rest)) = line.split_once("address=") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep reading the log so the server never blocks on a full pipe.
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .for_each(|line| sink.lock().unwrap().push(line));
        });
        Self {
            child,
            address,
            log,
        }
    }

    /// Stops the server with SIGTERM, checks that it exits cleanly, returns its log.
    pub(crate) fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the server exited with {exit} on SIGTERM");
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A token that `command`'s `serve --dev` server accepts for `client_id`, made by
/// the binary itself (`dev token`) with the dev key in its data folder. A `--dev`
/// server trusts that key alone, so the committed test keys of
/// [`compositions_tests::tokens`] are of no use here.
pub(crate) fn dev_token(mut command: Command, client_id: &str) -> String {
    stdout(
        &command
            .args(["dev", "token", "--client-id", client_id])
            .output()
            .unwrap(),
    )
}

/// `GET path` with a bearer token; returns the status and the JSON body.
pub(crate) fn get(address: SocketAddr, path: &str, token: &str) -> (u16, serde_json::Value) {
    let response = get_sending(address, path, token, &[]);
    (response.status, response.json())
}

/// `GET path` with a bearer token and `extra` headers, over raw HTTP/1.1.
pub(crate) fn get_sending(
    address: SocketAddr,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> RawResponse {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    raw::blocking::request(address, "GET", path, &headers)
}

/// `GET path` until `wanted` holds for the answer, for up to three seconds: what
/// another process wrote reaches an instance's read cache within its change
/// detection delay, and never later than `jobs.read_cache_max_age` (1 s).
pub(crate) fn get_until(
    address: SocketAddr,
    path: &str,
    token: &str,
    wanted: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = get(address, path, token);
        if wanted(status, &body) || started.elapsed() > std::time::Duration::from_secs(3) {
            return (status, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// For the shutdown tests: the process itself, its signals and its exit.
impl Server {
    /// Sends `signal` (a name `kill -s` takes: `TERM`, `INT`, `KILL`) to the server.
    pub(crate) fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// How it exited, if it has.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub(crate) fn wait_for_exit(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

// ---- Crash and fault tests: a producer process, servers that may not start ----

impl Server {
    /// As [`Server::spawn`], but a server that exits before serving is returned as
    /// its exit status and everything it wrote to stderr.
    pub(crate) fn try_spawn(
        mut command: Command,
    ) -> Result<Self, (std::process::ExitStatus, String)> {
        let mut child = command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut before = Vec::new();
        let address = loop {
            let Some(line) = lines.next().and_then(Result::ok) else {
                let status = child.wait().unwrap();
                return Err((status, before.join("\n")));
            };
            if let Some((_, rest)) = line.split_once("address=") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            before.push(line);
        };
        let log = Arc::new(Mutex::new(before));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .for_each(|line| sink.lock().unwrap().push(line));
        });
        Ok(Self {
            child,
            address,
            log,
        })
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far.
    pub(crate) fn log_so_far(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Kills the server with SIGKILL, as a crash would; returns its log.
    pub(crate) fn kill(mut self) -> Vec<String> {
        use std::os::unix::process::ExitStatusExt;

        self.child.kill().unwrap();
        let exit = self.child.wait().unwrap();
        assert_eq!(exit.signal(), Some(9), "the server was not killed: {exit}");
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A test that fails before it stops its server must not leave it running.
impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Set to a database URL, the test binary's producer test writes jobs there
/// (see [`producer_main`]); unset, that test returns at once.
pub(crate) const PRODUCER_DATABASE: &str = "COMPOSITIONS_TEST_PRODUCER_DATABASE";
/// How many jobs the producer writes at once (default 1).
pub(crate) const PRODUCER_WORKERS: &str = "COMPOSITIONS_TEST_PRODUCER_WORKERS";
/// How many jobs the producer makes before it stops (default: until killed).
pub(crate) const PRODUCER_JOBS: &str = "COMPOSITIONS_TEST_PRODUCER_JOBS";
/// After this many failed writes in a row the producer prints `blocked` and waits
/// for a line on stdin before it goes on (default: never).
pub(crate) const PRODUCER_PAUSE_AFTER_ERRORS: &str =
    "COMPOSITIONS_TEST_PRODUCER_PAUSE_AFTER_ERRORS";
/// The client every produced job belongs to.
pub(crate) const PRODUCER_CLIENT: &str = "mis-durable";
/// A producer stops by itself after this long, should its test die without killing it.
const PRODUCER_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// The status the producer means its `n`-th job to end in: a third stay PENDING.
pub(crate) fn planned_status(n: u64) -> &'static str {
    ["PENDING", "DONE", "FAILED"][usize::try_from(n % 3).unwrap()]
}

/// The outcome the producer writes for `id` when it finishes it as `status`.
pub(crate) fn planned_outcome(id: uuid::Uuid, status: &str) -> compositions_jobs::jobs::Outcome {
    use compositions_jobs::jobs::{DEFAULT_ENTITY, Failure, Link, Outcome};
    match status {
        "DONE" => Outcome::Done(vec![
            Link::new(DEFAULT_ENTITY, format!("composition/{id}")).unwrap(),
        ]),
        "FAILED" => Outcome::Failed(
            Failure::new(
                1127,
                "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
                format!("job {id} failed"),
            )
            .unwrap(),
        ),
        other => panic!("no outcome for {other}"),
    }
}

/// The command that re-runs this test binary as a producer process: only the
/// test `test_name` (which must call [`producer_main`]) runs, writing to
/// `database`; stdin, stdout and stderr are piped.
pub(crate) fn producer_command(test_name: &str, database: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(PRODUCER_DATABASE, database)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// `command` run through `sh` with its file size limit (soft, so it may be raised
/// again with `prlimit`) at `bytes`, and SIGXFSZ ignored so that a write beyond
/// it fails with EFBIG instead of killing the process. Its program, arguments and
/// environment are kept (the process id too: `sh` execs it); stdio is piped.
pub(crate) fn with_file_size_limit(command: &Command, bytes: u64) -> Command {
    let mut limited = Command::new("/bin/sh");
    // What `command` was given, and nothing else (`cli` starts from an empty
    // environment: the service reads every `COMPOSITIONS_*` variable).
    limited.env_clear();
    limited
        .args([
            "-c",
            "trap '' XFSZ; ulimit -S -f \"$1\"; shift; exec \"$@\"",
            "sh",
            // sh counts in blocks of 512 bytes.
            &(bytes / 512).to_string(),
        ])
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    limited
}

/// Acts as a producer process when [`PRODUCER_DATABASE`] is set, else returns.
///
/// Job after job, through the real store: creates it, then finishes it as
/// [`planned_status`] says. Prints `ack <id> <status> <plan>` only once the store
/// has returned Ok (stdout flushed each time), and `err <id> <status> <error>`
/// when it returned an error; `blocked` when it waits (see
/// [`PRODUCER_PAUSE_AFTER_ERRORS`]); `end` when it is done. It never panics on a
/// store error.
pub(crate) async fn producer_main() {
    use compositions_jobs::config::{Config, DatabaseUrl};
    use compositions_jobs::jobs::{Kind, NewJob, Timestamp};
    use compositions_jobs::{Access, JobStore, Store};
    use std::sync::atomic::{AtomicU64, Ordering};

    let Ok(url) = std::env::var(PRODUCER_DATABASE) else {
        return;
    };
    let number = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    let workers = number(PRODUCER_WORKERS).unwrap_or(1);
    let jobs = number(PRODUCER_JOBS).unwrap_or(u64::MAX);
    let pause_after = number(PRODUCER_PAUSE_AFTER_ERRORS).unwrap_or(u64::MAX);
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        // The test may be gone; then there is nobody to tell.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    // Every error with its causes, as the service logs them.
    let chain = |e: compositions_jobs::StoreError| compositions_jobs::ErrorChain(&e).to_string();
    say(String::new());

    let url: DatabaseUrl = url.parse().unwrap();
    let store = match Store::open(
        &Config {
            database: url,
            ..Config::default()
        },
        Access::ReadWrite,
    )
    .await
    {
        Ok(store) => store,
        Err(e) => {
            say(format!("open-failed {}", chain(e)));
            return;
        }
    };
    let next = Arc::new(AtomicU64::new(0));
    let failures_in_a_row = Arc::new(AtomicU64::new(0));
    let pause = Arc::new(tokio::sync::Mutex::new(()));
    let deadline = tokio::time::Instant::now() + PRODUCER_LIFETIME;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (store, next, failures_in_a_row, pause) = (
                store.clone(),
                Arc::clone(&next),
                Arc::clone(&failures_in_a_row),
                Arc::clone(&pause),
            );
            tokio::spawn(async move {
                let note = |result: Result<(), String>, id, status: &str, plan: &str| match result {
                    Ok(()) => {
                        failures_in_a_row.store(0, Ordering::SeqCst);
                        say(format!("ack {id} {status} {plan}"));
                        true
                    }
                    Err(e) => {
                        failures_in_a_row.fetch_add(1, Ordering::SeqCst);
                        say(format!("err {id} {status} {e}"));
                        false
                    }
                };
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= jobs || tokio::time::Instant::now() > deadline {
                        return;
                    }
                    if failures_in_a_row.load(Ordering::SeqCst) >= pause_after {
                        let _paused = pause.lock().await;
                        if failures_in_a_row.load(Ordering::SeqCst) >= pause_after {
                            say("blocked".into());
                            tokio::task::spawn_blocking(|| {
                                std::io::stdin().lines().next();
                            })
                            .await
                            .unwrap();
                            failures_in_a_row.store(0, Ordering::SeqCst);
                        }
                    }
                    let plan = planned_status(n);
                    let kinds = [Kind::Create, Kind::Sign, Kind::Cancel, Kind::ErlnResend];
                    let new = NewJob {
                        id: uuid::Uuid::new_v4(),
                        client_id: PRODUCER_CLIENT.into(),
                        kind: kinds[usize::try_from(n % 4).unwrap()],
                        expected_duration: std::time::Duration::from_secs(60),
                        dedup_hash: None,
                    };
                    let id = new.id;
                    let created = store.create(new, Timestamp::now()).await;
                    if !note(created.map(drop).map_err(chain), id, "PENDING", plan)
                        || plan == "PENDING"
                    {
                        continue;
                    }
                    let finished = store
                        .finish(id, planned_outcome(id, plan), Timestamp::now())
                        .await;
                    note(finished.map(drop).map_err(chain), id, plan, plan);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    say("end".into());
}

/// What a producer process said, as the test reads it.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Every acknowledged job: its last acknowledged status and its plan.
    pub(crate) acked: std::collections::HashMap<uuid::Uuid, (String, String)>,
    /// Acknowledged jobs in the order of their creation.
    pub(crate) order: Vec<uuid::Uuid>,
    /// Acknowledged transitions, creations included.
    pub(crate) transitions: usize,
    /// Writes the store refused: the job, the status tried, the error.
    pub(crate) errors: Vec<(uuid::Uuid, String, String)>,
    /// Every line that was not an acknowledgement or an error.
    pub(crate) other: Vec<String>,
}

impl Ledger {
    /// Records one line of the producer's stdout.
    pub(crate) fn record(&mut self, line: &str) {
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        match words[..] {
            ["ack", id, status, plan] => {
                let id: uuid::Uuid = id.parse().unwrap();
                if status == "PENDING" {
                    self.order.push(id);
                }
                self.acked.insert(id, (status.into(), plan.into()));
                self.transitions += 1;
            }
            ["err", id, status, error] => {
                self.errors
                    .push((id.parse().unwrap(), status.into(), error.into()));
            }
            _ => self.other.push(line.to_owned()),
        }
    }

    /// The status each acknowledged job may have now: the acknowledged one, or,
    /// while a transition of it was not acknowledged (it failed, or was in flight
    /// when the producer died), the one it tried.
    pub(crate) fn may_be(&self, id: uuid::Uuid) -> Vec<&str> {
        let (status, plan) = &self.acked[&id];
        if status == "PENDING" && plan != "PENDING" {
            vec![status.as_str(), plan.as_str()]
        } else {
            vec![status.as_str()]
        }
    }

    /// Acknowledged PENDING jobs whose planned transition was neither acknowledged
    /// nor refused: at most one per worker, in flight when the producer stopped.
    pub(crate) fn in_flight(&self) -> usize {
        let refused: std::collections::HashSet<_> =
            self.errors.iter().map(|(id, _, _)| *id).collect();
        self.acked
            .iter()
            .filter(|(id, (status, plan))| {
                status == "PENDING" && plan != "PENDING" && !refused.contains(id)
            })
            .count()
    }
}

/// A running producer process; killed on drop if the test did not stop it.
pub(crate) struct Producer {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// What it said so far.
    pub(crate) ledger: Ledger,
}

impl Producer {
    /// Starts `command` (from [`producer_command`]).
    pub(crate) fn start(mut command: Command) -> Self {
        let mut child = command.spawn().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            stderr: Some(stderr),
            ledger: Ledger::default(),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads what it says until `until` holds for the ledger or the line, for at
    /// most `timeout`; false when it did not (or the producer ended first).
    pub(crate) fn read_until(
        &mut self,
        timeout: std::time::Duration,
        until: impl Fn(&Ledger, &str) -> bool,
    ) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                return false;
            };
            self.ledger.record(&line);
            if until(&self.ledger, &line) {
                return true;
            }
        }
    }

    /// Sends a line to its stdin (what a `blocked` producer waits for).
    pub(crate) fn tell(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Kills it with SIGKILL, then reads every acknowledgement it had already
    /// written; returns its stderr.
    pub(crate) fn kill(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;

        self.child.kill().unwrap();
        let exit = self.child.wait().unwrap();
        assert_eq!(
            exit.signal(),
            Some(9),
            "the producer was not killed: {exit}"
        );
        self.drain()
    }

    /// Waits for it to end by itself, checks that it succeeded, returns its stderr.
    pub(crate) fn wait(&mut self) -> String {
        let exit = self.child.wait().unwrap();
        let stderr = self.drain();
        assert!(exit.success(), "the producer failed ({exit}): {stderr}");
        stderr
    }

    fn drain(&mut self) -> String {
        while let Ok(line) = self.lines.recv() {
            self.ledger.record(&line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        assert!(
            !stderr.contains("panicked"),
            "the producer panicked: {stderr}"
        );
        stderr
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Already ended is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks through the store that every acknowledged job is there, owned by the
/// producer's client, in a status [`Ledger::may_be`] allows, with exactly the
/// links or error the producer wrote. Returns how many jobs show a transition
/// that was never acknowledged, and each job's status.
pub(crate) async fn check_every_ack(
    store: &compositions_jobs::Store,
    ledger: &Ledger,
) -> (usize, std::collections::HashMap<uuid::Uuid, String>) {
    use compositions_jobs::JobStore;
    use compositions_jobs::jobs::State;

    let mut landed_unacked = 0;
    let mut statuses = std::collections::HashMap::new();
    for &id in &ledger.order {
        let job = store
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("job {id}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged job {id} is lost"));
        let status = job.state.status().as_str();
        assert_eq!(job.client_id, PRODUCER_CLIENT);
        let allowed = ledger.may_be(id);
        assert!(
            allowed.contains(&status),
            "job {id} is {status}; acknowledged {:?}",
            ledger.acked[&id]
        );
        if status != ledger.acked[&id].0 {
            landed_unacked += 1;
        }
        match &job.state {
            State::Pending { .. } => {}
            State::Done { links, .. } => {
                assert_eq!(
                    compositions_jobs::jobs::Outcome::Done(links.clone()),
                    planned_outcome(id, "DONE")
                );
            }
            State::Failed { failure, .. } => {
                assert_eq!(
                    compositions_jobs::jobs::Outcome::Failed(failure.clone()),
                    planned_outcome(id, "FAILED")
                );
            }
        }
        statuses.insert(id, status.to_owned());
    }
    (landed_unacked, statuses)
}

/// Checks over HTTP that `ids` read as the statuses in `expected`, with the links
/// or error the producer wrote (what another process wrote may take the server a
/// change check to see).
pub(crate) fn check_over_http(
    address: SocketAddr,
    token: &str,
    ids: &[uuid::Uuid],
    expected: &std::collections::HashMap<uuid::Uuid, String>,
) {
    for id in ids {
        let status = &expected[id];
        let (code, body) = get_until(address, &job_path(id), token, |code, body| {
            code == 200 && body["data"]["status"] == status.as_str()
        });
        assert_eq!(code, 200, "job {id}: {body}");
        let data = &body["data"];
        assert_eq!(data["id"], id.to_string());
        assert_eq!(data["status"], status.as_str(), "job {id}");
        match status.as_str() {
            "DONE" => assert_eq!(data["links"][0]["href"], format!("composition/{id}")),
            "FAILED" => {
                assert_eq!(data["error"]["code"], 1127);
                assert_eq!(data["error"]["message"], format!("job {id} failed"));
            }
            _ => {}
        }
    }
}
