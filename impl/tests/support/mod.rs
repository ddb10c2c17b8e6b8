//! Driving the `compositions-jobs` binary: commands, a server process, raw GETs.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_compositions-jobs");

/// The binary with its state under `dir`.
pub fn cli(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.env_clear().env("COMPOSITIONS_DATA_DIR", dir).env(
        "COMPOSITIONS_DATABASE",
        format!("sqlite:{}", dir.join("jobs.db").display()),
    );
    command
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    cli(dir).args(args).output().unwrap()
}

pub fn stdout(output: &Output) -> String {
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
pub struct Server {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `serve --dev` with its state under `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::spawn(cli(dir))
    }

    /// `serve --dev` from a prepared command (environment, database).
    pub fn spawn(mut command: Command) -> Self {
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
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the server exited with {exit} on SIGTERM");
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// `GET path` with a bearer token; returns the status and the JSON body.
pub fn get(address: SocketAddr, path: &str, token: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = get_with_headers(address, path, token);
    (status, body)
}

/// `GET path` with a bearer token; returns the status, the raw head and the JSON body.
pub fn get_with_headers(
    address: SocketAddr,
    path: &str,
    token: &str,
) -> (u16, String, serde_json::Value) {
    get_sending(address, path, token, "")
}

/// `GET path` with a bearer token and extra header lines (each ending in `\r\n`).
pub fn get_sending(
    address: SocketAddr,
    path: &str,
    token: &str,
    extra: &str,
) -> (u16, String, serde_json::Value) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), serde_json::from_str(body).unwrap())
}

/// `GET path` until `wanted` holds for the answer, for up to three seconds: what
/// another process wrote reaches an instance's read cache within its change
/// detection delay, and never later than `jobs.read_cache_max_age` (1 s).
pub fn get_until(
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
