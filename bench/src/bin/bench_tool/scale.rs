//! make bench-scale's connection steps: what one more idle keep-alive connection
//! and one more long-poll waiter cost the service, from its RSS before and after
//! (so each step needs a fresh service process), and how fast that many waiters
//! hear of their jobs.
//!
//! Tens of thousands of connections from one address would run out of ephemeral
//! ports (about 28,000 per source and destination), so they come from
//! 127.0.0.1 .. 127.0.0.N in turn; they open at most `CONNECTING` at a time, under
//! the listen backlog.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compositions_jobs::JobStore;
use compositions_jobs::jobs::Timestamp;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::Failed;
use crate::client::{Connection, get};
use crate::measure::{self, quantile};

const CONNECTING: usize = 256;

/// `bench-tool connections`' options.
#[derive(clap::Args, Debug)]
pub(crate) struct ConnectionsArgs {
    #[arg(long)]
    address: SocketAddr,
    #[arg(long)]
    server_pid: u32,
    #[arg(long)]
    connections: usize,
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Each connection long-polls a job of this file (PENDING, of the token's
    /// client), `connections / lines` waiters a job; absent, each sends one
    /// request and stays idle.
    #[arg(long, requires_all = ["token", "database"])]
    jobs: Option<PathBuf>,
    #[arg(long)]
    token: Option<String>,
    /// The store, to finish the jobs from this process once everyone waits.
    #[arg(long)]
    database: Option<String>,
}

fn source(n: usize, sources: u8) -> IpAddr {
    let last = 1 + u8::try_from(n % usize::from(sources.max(1))).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn open_all(args: &ConnectionsArgs) -> Result<Vec<Connection>, Failed> {
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let tasks: Vec<_> = (0..args.connections)
        .map(|n| {
            let (gate, address, from) = (Arc::clone(&gate), args.address, source(n, args.sources));
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                Connection::open(address, Some(from)).await
            })
        })
        .collect();
    let mut open = Vec::with_capacity(tasks.len());
    for task in tasks {
        open.push(task.await??);
    }
    Ok(open)
}

fn rss(pid: u32) -> u64 {
    measure::status_kib(pid, "VmRSS").unwrap_or(0)
}

/// RSS settles a moment after the last connection.
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss(pid)
}

pub(crate) async fn connections(args: ConnectionsArgs) -> Result<(), Failed> {
    let pid = args.server_pid;
    let (rss_before, ticks_before) = (rss(pid), measure::cpu_ticks(pid));
    let started = Instant::now();
    let mut open = open_all(&args).await?;
    let opened_in = started.elapsed();
    let Some(jobs) = &args.jobs else {
        // Idle: one request each (the connection is then set up in full), then held.
        let gate = Arc::new(Semaphore::new(CONNECTING));
        let tasks: Vec<_> = open
            .drain(..)
            .map(|mut connection| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    connection.send(&get("/nothing-here", "")).await?;
                    Ok::<_, Failed>(connection)
                })
            })
            .collect();
        for task in tasks {
            open.push(task.await??);
        }
        let rss_held = settled_rss(pid).await;
        println!(
            "{}",
            serde_json::json!({
                "connections": open.len(), "rss_before_kib": rss_before, "rss_kib": rss_held,
                "kib_each": (rss_held as f64 - rss_before as f64) / open.len().max(1) as f64,
                "cpu_ticks": measure::cpu_ticks(pid) - ticks_before,
                "open_seconds": opened_in.as_secs_f64(),
            })
        );
        return Ok(());
    };
    let rss_connected = settled_rss(pid).await;
    let ids: Vec<Uuid> = std::fs::read_to_string(jobs)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let store = crate::open(args.database.as_deref().unwrap_or_default()).await?;
    let headers = format!(
        "Authorization: Bearer {}\r\nPrefer: wait=120\r\n",
        args.token.as_deref().unwrap_or_default()
    );
    let waiters = open.len();
    let tasks: Vec<_> = open
        .into_iter()
        .enumerate()
        .map(|(n, mut connection)| {
            let request = get(
                &format!("/api/patients/composition/job/{}", ids[n % ids.len()]),
                &headers,
            );
            tokio::spawn(async move {
                let answer = connection.send(&request).await?;
                Ok::<_, Failed>((answer.status, Instant::now()))
            })
        })
        .collect();
    // Every request reaches the server and waits (none can answer before its job finishes).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_waiting = settled_rss(pid).await;
    let ticks_waiting = measure::cpu_ticks(pid);
    // Finish the jobs over about 5 s, as producers would, and time each wake-up.
    let pause = Duration::from_secs(5) / u32::try_from(ids.len().max(1)).unwrap_or(u32::MAX);
    let mut finished = Vec::with_capacity(ids.len());
    for id in &ids {
        store.finish(*id, crate::done()?, Timestamp::now()).await?;
        finished.push(Instant::now());
        tokio::time::sleep(pause).await;
    }
    let (mut wakes, mut errors) = (Vec::with_capacity(waiters), 0);
    for (n, task) in tasks.into_iter().enumerate() {
        match task.await? {
            Ok((200, at)) => wakes.push(
                at.saturating_duration_since(finished[n % ids.len()])
                    .as_micros() as u64,
            ),
            _ => errors += 1,
        }
    }
    wakes.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "waiters": waiters, "jobs": ids.len(), "rss_before_kib": rss_before,
            "rss_connected_kib": rss_connected, "rss_kib": rss_waiting,
            "kib_each": (rss_waiting as f64 - rss_before as f64) / waiters.max(1) as f64,
            "request_kib_each": (rss_waiting as f64 - rss_connected as f64) / waiters.max(1) as f64,
            "setup_cpu_ticks": ticks_waiting - ticks_before,
            "wake_cpu_ticks": measure::cpu_ticks(pid) - ticks_waiting,
            "wake_p50_us": quantile(&wakes, 0.5), "wake_p99_us": quantile(&wakes, 0.99),
            "errors": errors, "open_seconds": opened_in.as_secs_f64(),
        })
    );
    if errors > 0 {
        return Err(format!("{errors} waiters were not answered 200").into());
    }
    Ok(())
}
