//! Scenario S: does a 404 tell another client's job from an unknown id?
//!
//! The owner polls its job all along, so the job sits in the read cache. Another
//! client asks, in pairs, for that job and for an id nobody has; both must be 404,
//! and if the two take the same path their times differ only by noise: the
//! other-client lookup is faster in about half of the pairs, and the median
//! difference is near zero. Each pair alternates which request goes first, so a
//! warm path left by the first does not favour one kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::Failed;
use crate::client::{Connection, get};
use crate::measure::quantile;

/// `bench-tool side-channel`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct SideArgs {
    #[arg(long)]
    address: SocketAddr,
    /// The owner's job (PENDING).
    #[arg(long)]
    job: Uuid,
    #[arg(long)]
    owner_token: String,
    /// A token of another client.
    #[arg(long)]
    other_token: String,
    #[arg(long, default_value_t = 2000)]
    pairs: usize,
    /// How often the owner polls (ms): well within the cache's max age.
    #[arg(long, default_value_t = 100)]
    owner_every_ms: u64,
}

pub(crate) async fn side_channel(args: SideArgs) -> Result<(), Failed> {
    let path = |id: Uuid| format!("/api/patients/composition/job/{id}");
    let stop = Arc::new(AtomicBool::new(false));
    let owner_wrong = Arc::new(AtomicU64::new(0));
    let owner = {
        let (stop, wrong) = (Arc::clone(&stop), Arc::clone(&owner_wrong));
        let request = get(
            &path(args.job),
            &format!("Authorization: Bearer {}\r\n", args.owner_token),
        );
        let (address, every) = (args.address, Duration::from_millis(args.owner_every_ms));
        tokio::spawn(async move {
            let mut connection = Connection::open(address, None).await?;
            while !stop.load(Ordering::Acquire) {
                if connection.send(&request).await?.status != 200 {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
            Ok::<_, Failed>(())
        })
    };
    // Let the owner's first poll fill the cache.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let other = format!("Authorization: Bearer {}\r\n", args.other_token);
    let theirs = get(&path(args.job), &other);
    let mut connection = Connection::open(args.address, None).await?;
    let mut timed = async |request: &[u8]| -> Result<Duration, Failed> {
        let started = Instant::now();
        let status = connection.send(request).await?.status;
        let took = started.elapsed();
        if status != 404 {
            return Err(format!("another client's request answered {status}, not 404").into());
        }
        Ok(took)
    };
    // A warm-up of the other client's path (its token verified, the connection set up).
    for _ in 0..50 {
        timed(&theirs).await?;
        timed(&get(&path(Uuid::new_v4()), &other)).await?;
    }
    let (mut differences, mut faster) = (Vec::with_capacity(args.pairs), 0);
    let (mut other_times, mut unknown_times) = (Vec::new(), Vec::new());
    for n in 0..args.pairs {
        let unknown = get(&path(Uuid::new_v4()), &other);
        let (their_time, unknown_time) = if n % 2 == 0 {
            let t = timed(&theirs).await?;
            (t, timed(&unknown).await?)
        } else {
            let u = timed(&unknown).await?;
            (timed(&theirs).await?, u)
        };
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        differences.push(nanos(their_time) - nanos(unknown_time));
        faster += usize::from(their_time < unknown_time);
        other_times.push(nanos(their_time));
        unknown_times.push(nanos(unknown_time));
    }
    stop.store(true, Ordering::Release);
    owner.await??;
    differences.sort_unstable();
    other_times.sort_unstable();
    unknown_times.sort_unstable();
    let us = |nanos: i64| nanos as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "pairs": args.pairs,
            "other_faster": faster,
            "median_difference_us": us(quantile(&differences, 0.5)),
            "p25_difference_us": us(quantile(&differences, 0.25)),
            "p75_difference_us": us(quantile(&differences, 0.75)),
            "other_median_us": us(quantile(&other_times, 0.5)),
            "unknown_median_us": us(quantile(&unknown_times, 0.5)),
            "owner_not_200": owner_wrong.load(Ordering::Relaxed),
        })
    );
    if owner_wrong.load(Ordering::Relaxed) > 0 {
        return Err("the owner's polls were not all 200".into());
    }
    Ok(())
}
