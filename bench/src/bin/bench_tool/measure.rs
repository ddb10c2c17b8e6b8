//! What a scenario reads around its measured window: CPU ticks and RSS from
//! /proc, a PostgreSQL instance's processes, and the service's /metrics.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::Failed;
use crate::client::{Connection, get};

/// utime + stime of `pid` (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid, 11, 12)
}

/// The sum of two numeric fields of `/proc/PID/stat`, counted after the command.
fn stat_fields(pid: u32, first: usize, second: usize) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command may hold spaces; the fields after its ')' are fixed.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(
                fields.get(first)?.parse::<u64>().ok()?
                    + fields.get(second)?.parse::<u64>().ok()?,
            )
        })
        .unwrap_or(0)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The postmaster `postmaster` and all its children (backends, checkpointer,
/// WAL writer, ...): every process of one private instance.
pub(crate) fn instance(postmaster: u32) -> Vec<u32> {
    let mut pids = vec![postmaster];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                && parent(pid) == Some(postmaster)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The title of a PostgreSQL backend, e.g. `postgres: postgres db 127.0.0.1(40000) idle`.
fn title(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// The local TCP ports of this process's sockets: how its own backends (the
/// producer's connections) are told apart from the service's in an instance.
pub(crate) fn own_ports() -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(local), Some(inode)) = (fields.get(1), fields.get(9))
                && inodes.contains(*inode)
                && let Some(port) = local.rsplit_once(':')
                && let Ok(port) = u16::from_str_radix(port.1, 16)
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// CPU ticks of one PostgreSQL instance, by whom they were spent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InstanceTicks {
    /// Every process, and the children already reaped (autovacuum workers).
    pub all: u64,
    /// Backends serving this process's connections (the producer's).
    pub ours: u64,
    /// Backends serving other clients' connections (the service's pool and
    /// listener); what is left of `all` is the background (WAL writer,
    /// checkpointer, autovacuum, the postmaster), which the writes drive.
    pub others: u64,
}

impl std::ops::Sub for InstanceTicks {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            all: self.all.saturating_sub(before.all),
            ours: self.ours.saturating_sub(before.ours),
            others: self.others.saturating_sub(before.others),
        }
    }
}

/// CPU ticks of an instance: all its processes, told apart by whom they serve
/// (`ports`: this process's connections).
pub(crate) fn instance_ticks(postmaster: u32, ports: &HashSet<u16>) -> InstanceTicks {
    // What the postmaster's reaped children spent (cutime + cstime).
    let mut ticks = InstanceTicks {
        all: stat_fields(postmaster, 13, 14),
        ..InstanceTicks::default()
    };
    for pid in instance(postmaster) {
        let spent = cpu_ticks(pid);
        ticks.all += spent;
        let title = title(pid);
        let port = title
            .split_once("127.0.0.1(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(port, _)| port.parse::<u16>().ok());
        match port {
            Some(port) if ports.contains(&port) => ticks.ours += spent,
            Some(_) => ticks.others += spent,
            None => {}
        }
    }
    ticks
}

/// The counters of the service's /metrics this tool reads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    /// Polls answered (`compositions_jobs_requests_total` of getAsyncJobStatus).
    pub polls: f64,
    /// Reads of the polling path that reached the database.
    pub database_reads: f64,
    /// Polls the read cache answered, where the service counts them (newer
    /// builds: `compositions_jobs_read_cache_hits_total`); else `None`.
    pub cache_hits: Option<f64>,
    pub token_hits: f64,
    pub token_misses: f64,
}

/// Reads the counters from the admin listener at `admin`.
pub(crate) async fn counters(admin: SocketAddr) -> Result<Counters, Failed> {
    let mut connection = Connection::open(admin, None).await?;
    let answer = connection.send(&get("/metrics", "")).await?;
    let text = String::from_utf8_lossy(&answer.body);
    let mut counters = Counters::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if name.starts_with("compositions_jobs_requests_total{")
            && name.contains("operation=\"getAsyncJobStatus\"")
        {
            counters.polls += value;
        } else if name == "compositions_jobs_store_read_duration_seconds_count" {
            counters.database_reads = value;
        } else if name == "compositions_jobs_read_cache_hits_total" {
            counters.cache_hits = Some(value);
        } else if name == "compositions_jobs_token_cache_hits_total" {
            counters.token_hits = value;
        } else if name == "compositions_jobs_token_cache_misses_total" {
            counters.token_misses = value;
        }
    }
    Ok(counters)
}

/// The value at quantile `q` of sorted `values`.
pub(crate) fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}
