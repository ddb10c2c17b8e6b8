//! The helpers `bench/run.sh` drives: tokens, seeded jobs, idle connections and
//! long-poll waiters. Each prints what the script needs on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use compositions_jobs::config::{Config, DatabaseUrl, JobsConfig, PostgresConfig};
use compositions_jobs::jobs::{Failure, Kind, Link, NewJob, Outcome, Timestamp};
use compositions_jobs::store::{JobStore, Store};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use uuid::Uuid;

/// The issuer and audience the benchmarked service is configured with.
const ISSUER: &str = "https://auth.bench.ehealth.example";
const AUDIENCE: &str = "compositions-jobs";
const TTL: Duration = Duration::from_secs(7 * 24 * 3600);

type Failed = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// RS256 tokens for one client, one per line.
    Tokens {
        /// The PKCS#8 PEM key (the test key set's RSA key).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Break each signature, so that verification fails at the last step.
        #[arg(long)]
        bad_signature: bool,
    },
    /// Jobs of one client: PENDING (due in a day), DONE and FAILED in turn; prints ids.
    Seed {
        #[arg(long)]
        database: String,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Only PENDING jobs.
        #[arg(long)]
        pending: bool,
    },
    /// Opens keep-alive connections, one request each, and holds them.
    Idle {
        #[arg(long)]
        address: SocketAddr,
        #[arg(long)]
        connections: usize,
        /// How long to hold them once all are open.
        #[arg(long, default_value_t = 5)]
        hold_seconds: u64,
    },
    /// Long polls: `per_job` waiters on each job of `jobs`, then finishes the jobs
    /// one by one and reports how long each waiter took to hear of it.
    Longpoll {
        /// The service to poll; absent, one is started in this process and the
        /// jobs are finished through its own store.
        #[arg(long)]
        address: Option<SocketAddr>,
        #[arg(long)]
        database: String,
        /// A file with one job id per line (all PENDING, of `client_id`).
        #[arg(long)]
        jobs: PathBuf,
        #[arg(long, default_value_t = 10)]
        per_job: usize,
        #[arg(long)]
        token: String,
        /// The server's pid, to report its RSS while everyone waits.
        #[arg(long)]
        server_pid: Option<u32>,
        /// For the in-process server: its JWKS, issuer and audience come from here.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<(), Failed> {
    match Cli::parse().command {
        Command::Tokens {
            key,
            client_id,
            count,
            bad_signature,
        } => tokens(&key, &client_id, count, bad_signature),
        Command::Seed {
            database,
            client_id,
            count,
            pending,
        } => seed(&database, &client_id, count, pending).await,
        Command::Idle {
            address,
            connections,
            hold_seconds,
        } => idle(address, connections, Duration::from_secs(hold_seconds)).await,
        Command::Longpoll {
            address,
            database,
            jobs,
            per_job,
            token,
            server_pid,
            jwks,
        } => longpoll(address, &database, &jobs, per_job, &token, server_pid, jwks).await,
    }
}

fn tokens(key: &PathBuf, client_id: &str, count: usize, bad_signature: bool) -> Result<(), Failed> {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(key)?)?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let now = jsonwebtoken::get_current_timestamp();
    for n in 0..count {
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{n}"), "client_id": client_id,
            "scope": "openid composition:read", "iat": now, "exp": now + 24 * 3600, "jti": n,
        });
        let mut token = jsonwebtoken::encode(&header, &claims, &key)?;
        if bad_signature {
            // Same length and alphabet, wrong bytes.
            let flipped = if token.ends_with('A') { 'B' } else { 'A' };
            token.pop();
            token.push(flipped);
        }
        println!("{token}");
    }
    Ok(())
}

async fn open(database: &str) -> Result<Store, Failed> {
    let url: DatabaseUrl = database.parse()?;
    let jobs = JobsConfig {
        ttl: TTL,
        ..JobsConfig::default()
    };
    Ok(Store::open(&url, &jobs, &PostgresConfig::default()).await?)
}

async fn seed(database: &str, client_id: &str, count: usize, pending: bool) -> Result<(), Failed> {
    let store = open(database).await?;
    for n in 0..count {
        let new = NewJob {
            id: Uuid::new_v4(),
            client_id: client_id.into(),
            kind: Kind::Create,
            expected_duration: Duration::from_secs(24 * 3600),
            dedup_hash: None,
        };
        let id = store.create(new, Timestamp::now()).await?.job.id;
        match (pending, n % 3) {
            (true, _) | (false, 0) => {}
            (false, 1) => {
                let link = Link::new(
                    "eHealth/resources",
                    format!("composition/{}", Uuid::new_v4()),
                )?;
                store
                    .finish(id, Outcome::Done(vec![link]), Timestamp::now())
                    .await?;
            }
            _ => {
                let failure = Failure::new(
                    1127,
                    "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
                    "Already exists",
                )?;
                store
                    .finish(id, Outcome::Failed(failure), Timestamp::now())
                    .await?;
            }
        }
        println!("{id}");
    }
    Ok(())
}

/// Sends one GET and reads the whole answer; the connection stays open.
async fn get(stream: &mut TcpStream, path: &str, headers: &str) -> Result<u16, Failed> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n").as_bytes())
        .await?;
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err("the server closed the connection".into());
        }
        received.extend_from_slice(&buffer[..read]);
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(Ok(0), |value| value.trim().parse())?;
        if received.len() >= end + 4 + length {
            return Ok(head.get(9..12).unwrap_or("0").parse()?);
        }
    }
}

async fn idle(address: SocketAddr, connections: usize, hold: Duration) -> Result<(), Failed> {
    let mut open = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(address).await?;
        get(&mut stream, "/nothing-here", "").await?;
        open.push(stream);
    }
    println!("open={}", open.len());
    tokio::time::sleep(hold).await;
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn longpoll(
    address: Option<SocketAddr>,
    database: &str,
    jobs: &PathBuf,
    per_job: usize,
    token: &str,
    server_pid: Option<u32>,
    jwks: Option<PathBuf>,
) -> Result<(), Failed> {
    let ids: Vec<Uuid> = std::fs::read_to_string(jobs)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // Another process finishes the jobs through its own store, or this process
    // through the server's.
    let (address, store, _server) = match address {
        Some(address) => (address, open(database).await?, None),
        None => {
            let mut config = Config {
                database: database.parse()?,
                admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Config::default()
            };
            config.auth.jwks = jwks;
            config.auth.issuer = Some(ISSUER.into());
            config.auth.audience = Some(AUDIENCE.into());
            config.polling.limit_per_second = 0.0;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let server = compositions_jobs::start_server(config.validated()?, listener).await?;
            (server.local_addr(), server.store().clone(), Some(server))
        }
    };

    let waiters = ids.len() * per_job;
    let ready = Arc::new(Barrier::new(waiters + 1));
    let headers = format!("Authorization: Bearer {token}\r\nPrefer: wait=60\r\n");
    let mut tasks = Vec::with_capacity(waiters);
    for id in &ids {
        for _ in 0..per_job {
            let (ready, headers, path) = (
                ready.clone(),
                headers.clone(),
                format!("/api/patients/composition/job/{id}"),
            );
            tasks.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await?;
                ready.wait().await;
                let status = get(&mut stream, &path, &headers).await?;
                Ok::<_, Failed>((status, Instant::now()))
            }));
        }
    }
    ready.wait().await;
    // Let every request reach the server and start waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = server_pid
        .or_else(|| Some(std::process::id()))
        .and_then(rss_kib);

    let mut finished = Vec::with_capacity(ids.len());
    for id in &ids {
        let link = Link::new(
            "eHealth/resources",
            format!("composition/{}", Uuid::new_v4()),
        )?;
        let at = Instant::now();
        store
            .finish(*id, Outcome::Done(vec![link]), Timestamp::now())
            .await?;
        finished.push(at);
        // Spread the transitions, as producers would.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies = Vec::with_capacity(waiters);
    let mut errors = 0;
    for (n, task) in tasks.into_iter().enumerate() {
        match task.await? {
            Ok((200, answered)) => {
                latencies.push(answered.saturating_duration_since(finished[n / per_job]))
            }
            _ => errors += 1,
        }
    }
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "waiters={waiters} rss_kib={} wake_p50_ms={:.1} wake_p99_ms={:.1} wake_max_ms={:.1} errors={errors}",
        rss.unwrap_or(0),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}
