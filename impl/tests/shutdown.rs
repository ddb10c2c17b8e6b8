//! Graceful shutdown of the real binary (issue 8), with real signals.
//!
//! On SIGTERM or SIGINT `serve` stops accepting (a new connection is refused at
//! once), answers the waiting long polls at once with the current state, lets the
//! requests in flight finish, closes its connections and exits 0 within
//! `http.shutdown_timeout`.
//!
//! "In flight" is what hyper's graceful shutdown means by it: a connection whose
//! request the server has begun to read. A keep-alive connection between two
//! requests is idle and is closed at once; a request written on it in that very
//! instant gets no byte of a response (the close), which HTTP/1.1 allows and
//! clients retry. No response is ever cut in the middle.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use compositions_tests::RawResponse;
use compositions_tests::postgres::{self, TestSchema};
use compositions_tests::raw::Unanswered;
use compositions_tests::raw::blocking::{read_end, read_response};
use support::{Server, cli, dev_token, stdout};

/// Long polls waiting when the signal comes, each on its own keep-alive connection.
const LONG_POLLS: usize = 4;
/// Ordinary polls whose head the server is reading when the signal comes.
const MID_REQUEST: usize = 8;
/// Connections polling back to back, as fast as they are answered, through the signal.
const HAMMERS: usize = 6;
/// The default `http.shutdown_timeout`.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Long enough that a test never mistakes a slow answer for a closed connection.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A pending job of `mis-1` and a token that may poll it.
fn job_and_token(command: impl Fn() -> Command) -> (String, String) {
    let job = stdout(
        &command()
            .args(["jobs", "create", "--client-id", "mis-1"])
            .output()
            .unwrap(),
    );
    let token = dev_token(command(), "mis-1");
    (job, token)
}

/// The server for the drain tests: every poll of the one job is answered (the
/// per-job rate limit would turn the hammering into 429s).
fn unlimited(mut command: Command) -> Command {
    command.env("COMPOSITIONS_POLLING__LIMIT_PER_SECOND", "0");
    command
}

/// A keep-alive poll of `job`.
fn poll_request(job: &str, token: &str, extra: &str) -> String {
    format!(
        "GET /api/patients/composition/job/{job} HTTP/1.1\r\nHost: shutdown.test\r\n\
         Authorization: Bearer {token}\r\n{extra}\r\n"
    )
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A complete response, and when its last byte came.
#[derive(Debug)]
struct Answer {
    response: RawResponse,
    at: Instant,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.response.header(name)
    }

    /// The server said it closes the connection after this response.
    fn closes(&self) -> bool {
        self.response.closes()
    }

    fn assert_pending(&self, what: &str) {
        let body: serde_json::Value = serde_json::from_slice(&self.response.body)
            .unwrap_or_else(|e| panic!("{what}: a body that is not JSON ({e}): {self:?}"));
        assert_eq!(
            (self.response.status, body["data"]["status"].as_str()),
            (200, Some("PENDING")),
            "{what}: {:?}",
            self.response
        );
    }
}

/// What a client read after sending a request.
#[derive(Debug)]
enum Reply {
    Answer(Answer),
    /// The connection ended before a single byte of a response ("EOF" or the error).
    Nothing(String),
    /// Part of a response, then the end: never acceptable.
    Cut(String),
}

impl Reply {
    fn answer(self, what: &str) -> Answer {
        match self {
            Self::Answer(answer) => answer,
            other => panic!("{what}: no complete answer but {other:?}"),
        }
    }
}

/// Reads one response exactly (head, then `content-length` bytes).
fn read_reply(stream: &mut TcpStream) -> Reply {
    match read_response(stream) {
        Ok(response) => Reply::Answer(Answer {
            response,
            at: Instant::now(),
        }),
        Err(Unanswered::Nothing(why)) => Reply::Nothing(why),
        Err(Unanswered::Cut(why)) => Reply::Cut(why),
    }
}

/// Waits for the line containing `needle` in the server's log (the log is read on
/// a thread of its own, so the last lines may come a moment after the exit).
fn log_has(server: &Server, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if server.log_so_far().iter().any(|line| line.contains(needle)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Timings of one drain, for the test output.
struct Drained {
    /// The slowest long poll's answer, after the signal.
    long_polls_answered: Duration,
    /// Hammered polls answered after the signal was sent.
    hammered_after_signal: usize,
    /// Hammer connections whose last request met the close of an idle connection.
    hammers_closed_while_idle: usize,
    /// From the signal to the exit.
    exited: Duration,
}

/// The drain scenario on a running server: long polls, requests whose head is
/// being read and back-to-back polls are all in flight when `signal` arrives.
fn drain(server: &mut Server, signal: &str, job: &str, token: &str) -> Drained {
    let address = server.address;
    let ready = Arc::new(Barrier::new(LONG_POLLS + HAMMERS + 1));

    // Each has sent all of a poll's head but the blank line that ends it (first,
    // while the server is not yet busy with the hammering below).
    let mut mid_request: Vec<TcpStream> = (0..MID_REQUEST)
        .map(|_| {
            let mut stream = connect(address);
            let request = poll_request(job, token, "");
            stream
                .write_all(request.trim_end_matches("\r\n").as_bytes())
                .unwrap();
            stream.write_all(b"\r\n").unwrap();
            stream
        })
        .collect();

    let long_polls: Vec<_> = (0..LONG_POLLS)
        .map(|_| {
            let (ready, request) = (Arc::clone(&ready), poll_request(job, token, ""));
            let long = poll_request(job, token, "Prefer: wait=25\r\n");
            thread::spawn(move || {
                let mut stream = connect(address);
                // An ordinary poll first: the connection is accepted and kept alive.
                stream.write_all(request.as_bytes()).unwrap();
                read_reply(&mut stream)
                    .answer("the poll before the long poll")
                    .assert_pending("the poll before the long poll");
                stream.write_all(long.as_bytes()).unwrap();
                ready.wait();
                let reply = read_reply(&mut stream);
                (reply, read_end(&mut stream))
            })
        })
        .collect();

    let hammers: Vec<_> = (0..HAMMERS)
        .map(|_| {
            let (ready, request) = (Arc::clone(&ready), poll_request(job, token, ""));
            thread::spawn(move || {
                let mut stream = connect(address);
                let mut replies = Vec::new();
                loop {
                    let reply = match stream.write_all(request.as_bytes()) {
                        Ok(()) => read_reply(&mut stream),
                        Err(e) => Reply::Nothing(format!("write: {:?}", e.kind())),
                    };
                    let at = Instant::now();
                    let go_on = matches!(&reply, Reply::Answer(answer) if !answer.closes());
                    replies.push((at, reply));
                    if replies.len() == 1 {
                        ready.wait();
                    }
                    if !go_on {
                        return replies;
                    }
                }
            })
        })
        .collect();

    ready.wait();
    // Time for the server to read the long polls and the unfinished heads.
    thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    server.send_signal(signal);

    // Long polls: answered at once with the current state, then the server closes.
    let mut long_polls_answered = Duration::ZERO;
    for long_poll in long_polls {
        let (reply, end) = long_poll.join().unwrap();
        let answer = reply.answer("a long poll");
        answer.assert_pending("a long poll");
        assert_eq!(answer.header("preference-applied"), Some("wait=25"));
        let after = answer.at.duration_since(signalled);
        assert!(
            after < Duration::from_secs(2),
            "a long poll answered {after:?} after the signal"
        );
        long_polls_answered = long_polls_answered.max(after);
        assert_eq!(end, "EOF", "a long poll's connection after its answer");
    }

    // The listener is gone by now (the long polls' connections were closed by the
    // graceful shutdown, which starts after it is dropped): a new connection is
    // refused, while the server still runs for the unfinished heads.
    assert!(server.exited().is_none(), "exited with requests in flight");
    match TcpStream::connect(address) {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a new connection during shutdown"
        ),
        Ok(_) => panic!("a new connection was accepted during shutdown"),
    }
    assert!(server.exited().is_none(), "exited with requests in flight");

    // The requests whose head was being read are answered in full, then closed.
    for stream in &mut mid_request {
        stream.write_all(b"\r\n").unwrap();
    }
    for stream in &mut mid_request {
        let answer = read_reply(stream).answer("a request in flight");
        answer.assert_pending("a request in flight");
        assert!(
            answer.closes(),
            "no `connection: close`: {:?}",
            answer.response
        );
        assert_eq!(read_end(stream), "EOF");
    }
    let last_answered = Instant::now();

    // Back-to-back polls: every response whole, nothing ever cut; each connection
    // ends with a `connection: close` answer, or (its request meeting the close of
    // the idle connection) with no byte of a response at all.
    let mut hammered_after_signal = 0;
    let mut hammers_closed_while_idle = 0;
    for hammer in hammers {
        let replies = hammer.join().unwrap();
        let count = replies.len();
        for (i, (at, reply)) in replies.into_iter().enumerate() {
            match reply {
                Reply::Answer(answer) => {
                    answer.assert_pending("a hammered poll");
                    if at > signalled {
                        hammered_after_signal += 1;
                    }
                }
                Reply::Nothing(why) => {
                    assert_eq!(i, count - 1, "a poll refused before the end: {why}");
                    assert!(at > signalled, "a poll refused before the signal: {why}");
                    assert!(
                        why == "EOF"
                            || why.contains("ConnectionReset")
                            || why.contains("BrokenPipe"),
                        "{why}"
                    );
                    hammers_closed_while_idle += 1;
                }
                Reply::Cut(why) => panic!("a hammered poll was cut: {why}"),
            }
        }
    }

    let status = server
        .wait_for_exit(DEFAULT_DEADLINE)
        .expect("still running at the shutdown deadline");
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        last_answered.elapsed() < Duration::from_secs(2),
        "exited {:?} after the last request",
        last_answered.elapsed()
    );
    assert!(log_has(server, "shutting down"));
    assert!(
        !server
            .log_so_far()
            .iter()
            .any(|line| line.contains("deadline passed")),
        "{:?}",
        server.log_so_far()
    );
    Drained {
        long_polls_answered,
        hammered_after_signal,
        hammers_closed_while_idle,
        exited,
    }
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "long polls answered within {:?} of the signal; {} back-to-back polls answered \
             after it, {} of {HAMMERS} hammering connections closed while idle; exit 0 after {:?}",
            self.long_polls_answered,
            self.hammered_after_signal,
            self.hammers_closed_while_idle,
            self.exited
        )
    }
}

fn drains_on_sqlite(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (job, token) = job_and_token(|| cli(dir.path()));
    let mut server = Server::spawn(unlimited(cli(dir.path())));
    let drained = drain(&mut server, signal, &job, &token);
    eprintln!("SIG{signal} on SQLite: {drained}");
}

#[test]
fn sigterm_answers_everything_in_flight_refuses_new_connections_and_exits_0() {
    drains_on_sqlite("TERM");
}

#[test]
fn sigint_answers_everything_in_flight_refuses_new_connections_and_exits_0() {
    drains_on_sqlite("INT");
}

#[test]
fn a_half_sent_request_holds_shutdown_only_until_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (job, token) = job_and_token(|| cli(dir.path()));
    let mut command = cli(dir.path());
    command.env("COMPOSITIONS_HTTP__SHUTDOWN_TIMEOUT", "1s");
    let mut server = Server::spawn(command);
    let address = server.address;

    // The request line and one header, and no more: the server waits for the rest.
    let mut half = connect(address);
    write!(
        half,
        "GET /api/patients/composition/job/{job} HTTP/1.1\r\nHost: shutdown.test\r\n"
    )
    .unwrap();
    // A keep-alive connection, idle after its answer.
    let mut idle = connect(address);
    idle.write_all(poll_request(&job, &token, "").as_bytes())
        .unwrap();
    read_reply(&mut idle)
        .answer("a poll")
        .assert_pending("a poll");
    // A connection that never sends anything.
    let mut silent = connect(address);
    thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    server.send_signal("TERM");
    for (name, stream) in [("idle", &mut idle), ("silent", &mut silent)] {
        assert_eq!(read_end(stream), "EOF", "the {name} connection");
        let closed = signalled.elapsed();
        assert!(
            closed < Duration::from_millis(500),
            "the {name} connection was closed {closed:?} after the signal"
        );
    }
    // Never answered: closed when the deadline passes and the process exits.
    let reply = read_reply(&mut half);
    let closed = signalled.elapsed();
    assert!(matches!(reply, Reply::Nothing(_)), "{reply:?}");
    let status = server
        .wait_for_exit(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM with a 1 s deadline");
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        exited >= Duration::from_millis(900) && exited < Duration::from_millis(2500),
        "exited {exited:?} after SIGTERM, with a 1 s deadline"
    );
    assert!(log_has(
        &server,
        "shutdown deadline passed with connections still open"
    ));
    eprintln!(
        "deadline 1s: the half-sent request closed after {closed:?}, exit 0 after {exited:?}"
    );
}

#[test]
fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (job, token) = job_and_token(|| cli(dir.path()));
    // The default deadline, 10 s: none of it should be spent on idle connections.
    let mut server = Server::start(dir.path());
    let address = server.address;
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = connect(address);
            stream
                .write_all(poll_request(&job, &token, "").as_bytes())
                .unwrap();
            read_reply(&mut stream)
                .answer("a poll")
                .assert_pending("a poll");
            stream
        })
        .collect();
    idle.extend((0..2).map(|_| connect(address)));
    thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    server.send_signal("TERM");
    for stream in &mut idle {
        assert_eq!(read_end(stream), "EOF");
    }
    let closed = signalled.elapsed();
    let status = server
        .wait_for_exit(DEFAULT_DEADLINE)
        .expect("still running at the shutdown deadline");
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        exited < Duration::from_secs(2),
        "exited {exited:?} after SIGTERM with only idle connections"
    );
    eprintln!("idle connections: all closed after {closed:?}, exit 0 after {exited:?}");
}

/// A shell that sends a signal as soon as it reads "SIGNAL PID": its builtin
/// `kill` is a system call, without the fork and exec of `kill(1)`, so the signal
/// lands within microseconds of the request.
struct Killer {
    shell: Child,
    orders: Option<ChildStdin>,
}

impl Killer {
    fn new() -> Self {
        let mut shell = Command::new("sh")
            .args([
                "-c",
                r#"while read sig pid; do kill -s "$sig" "$pid"; done"#,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let orders = shell.stdin.take();
        Self { shell, orders }
    }

    fn send(&mut self, signal: &str, pid: u32) {
        let orders = self.orders.as_mut().unwrap();
        writeln!(orders, "{signal} {pid}").unwrap();
        orders.flush().unwrap();
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        // End of input ends the loop.
        drop(self.orders.take());
        let _ = self.shell.wait();
    }
}

#[test]
fn a_signal_the_moment_serving_is_announced_still_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut killer = Killer::new();
    for (round, signal) in ["TERM", "INT"].into_iter().cycle().take(6).enumerate() {
        let mut server = Server::start(dir.path());
        killer.send(signal, server.pid());
        let status = server
            .wait_for_exit(DEFAULT_DEADLINE)
            .expect("still running at the shutdown deadline");
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: SIG{signal} right after the serving line: {status}"
        );
    }
}

/// The connections open under `application_name`, counted from a connection of
/// the test's own (which has another name).
async fn backends(application_name: &str) -> i64 {
    let server = postgres::server_url().unwrap();
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let count = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = connection.await;
    count
}

#[tokio::test]
async fn sigterm_on_postgres_answers_everything_in_flight_and_closes_its_connections() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    // Every connection of the service is named after the schema (see TestSchema).
    let name = schema
        .url
        .split("application_name=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let on_postgres = |dir: &Path| {
        let mut command = cli(dir);
        command.env("COMPOSITIONS_DATABASE", &schema.url);
        command
    };
    let (job, token) = job_and_token(|| on_postgres(dir.path()));
    // The CLI processes have exited; their backends end a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends(&name).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let baseline = backends(&name).await;
    assert_eq!(baseline, 0, "connections of earlier processes still open");

    let mut server = Server::spawn(unlimited(on_postgres(dir.path())));
    // A poll, so that the pool holds a connection besides the NOTIFY listener's.
    let mut stream = connect(server.address);
    stream
        .write_all(poll_request(&job, &token, "").as_bytes())
        .unwrap();
    read_reply(&mut stream)
        .answer("a poll")
        .assert_pending("a poll");
    drop(stream);
    // The listener connects from a task of its own, which may still be at it
    // when the server says it serves: wait for it as for the baseline above.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut serving = backends(&name).await;
    while serving < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        serving = backends(&name).await;
    }
    assert!(
        serving >= 2,
        "{serving} connections: the listener and the pool"
    );

    let drained = drain(&mut server, "TERM", &job, &token);

    // The process is gone, and so are its connections.
    let started = Instant::now();
    let mut open = backends(&name).await;
    while open != baseline && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = backends(&name).await;
    }
    assert_eq!(
        open,
        baseline,
        "connections still open {:?} after the exit",
        started.elapsed()
    );
    eprintln!(
        "SIGTERM on PostgreSQL: {drained}; {serving} connections while serving, \
         {baseline} again {:?} after the exit",
        started.elapsed()
    );
}
