//! Where the key set comes from, and how it is kept fresh while the service runs.
//!
//! - **A file** (`auth.jwks`): read at start, where any problem stops the
//!   service; then read again every [`FILE_CHECK_INTERVAL`] and on SIGHUP. A
//!   changed file goes through the same checks as at start: a good one comes into
//!   force, a bad one is logged (once per content) and the keys in force stay.
//! - **The issuer's URL** (`auth.jwks_url`): fetched at start (until a usable set
//!   arrives the instance is not ready and answers 503), then refreshed when the
//!   issuer's `Cache-Control: max-age` says, held within
//!   `auth.jwks_refresh_min`..`auth.jwks_refresh_max`, and early when a token
//!   names an unknown `kid`, at most once per `auth.jwks_unknown_kid_interval`,
//!   so a flood of made-up `kid`s cannot make the service hammer the issuer. A
//!   failed fetch or a bad document keeps the keys in force, logged with the
//!   real wait before the next try.
//!
//! Requests never wait for any of this: they read the set in force.

use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::fetch::Fetcher;
use super::keys::{KeySet, KeySetError, Keys};

/// How often the key file is read again to see whether it changed.
pub(crate) const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The first wait after a failed fetch; it doubles up to `auth.jwks_refresh_min`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// How often the issuer's URL is fetched.
#[derive(Clone, Copy, Debug)]
pub struct Refresh {
    /// The shortest interval, whatever the issuer says.
    pub min: Duration,
    /// The longest interval, and the interval when the issuer says nothing.
    pub max: Duration,
    /// The shortest interval between fetches caused by unknown `kid`s.
    pub unknown_kid_interval: Duration,
}

/// Where the keys come from.
#[derive(Debug)]
pub enum Source {
    /// A JWKS file, and a hash of the content in force.
    File {
        /// The file.
        path: PathBuf,
        /// The content in force (hashed), so an unchanged file is not parsed again.
        in_force: u64,
    },
    /// The issuer's JWKS URL.
    Url {
        /// The fetcher.
        fetcher: Fetcher,
        /// How often.
        refresh: Refresh,
    },
}

impl Source {
    /// Reads `path` now and puts its keys in force: any problem is returned, for
    /// the service to stop with it.
    pub fn load_file(path: PathBuf, keys: &Keys) -> Result<Self, KeySetError> {
        let origin = path.display().to_string();
        let document = std::fs::read(&path).map_err(|e| KeySetError::Unreadable {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        keys.install(KeySet::parse(&document, &origin)?);
        Ok(Self::File {
            in_force: content_hash(&document),
            path,
        })
    }

    /// Keeps `keys` fresh from this source until `shutdown` changes.
    pub async fn keep_fresh(self, keys: Arc<Keys>, mut shutdown: watch::Receiver<bool>) {
        match self {
            Self::File { path, in_force } => {
                watch_file(path, in_force, &keys, &mut shutdown).await;
            }
            Self::Url { fetcher, refresh } => {
                refresh_from_url(&fetcher, refresh, &keys, &mut shutdown).await;
            }
        }
    }
}

fn content_hash(document: &[u8]) -> u64 {
    // A fixed seed: only this process compares these, and only for equality.
    foldhash::fast::FixedState::with_seed(0).hash_one(document)
}

/// What is wrong with the key file, as last reported (so each problem is
/// logged once, not every check).
#[derive(PartialEq, Eq)]
enum FileProblem {
    None,
    Unreadable,
    /// This content (hashed) cannot be used.
    Refused(u64),
}

async fn watch_file(
    path: PathBuf,
    mut in_force: u64,
    keys: &Keys,
    shutdown: &mut watch::Receiver<bool>,
) {
    let origin = path.display().to_string();
    let mut problem = FileProblem::None;
    loop {
        // Asked by an operator (SIGHUP): always say what happened.
        let asked = tokio::select! {
            () = tokio::time::sleep(FILE_CHECK_INTERVAL) => false,
            () = keys.reload.notified() => true,
            _ = shutdown.changed() => return,
        };
        let document = match tokio::fs::read(&path).await {
            Ok(document) => document,
            Err(e) => {
                keys.failed();
                if asked || problem != FileProblem::Unreadable {
                    tracing::error!(file = %origin, error = %e,
                        "cannot read the key set file; the keys in force stay");
                }
                problem = FileProblem::Unreadable;
                continue;
            }
        };
        let hash = content_hash(&document);
        if hash == in_force {
            keys.confirm();
            if asked {
                tracing::info!(file = %origin, "the key set file is unchanged");
            }
            problem = FileProblem::None;
            continue;
        }
        if problem == FileProblem::Refused(hash) && !asked {
            keys.failed();
            continue;
        }
        match KeySet::parse(&document, &origin) {
            Ok(set) => {
                keys.install(set);
                in_force = hash;
                problem = FileProblem::None;
            }
            Err(e) => {
                keys.failed();
                problem = FileProblem::Refused(hash);
                tracing::error!(error = %e,
                    "the key set file changed but cannot be used; the keys in force stay");
            }
        }
    }
}

async fn refresh_from_url(
    fetcher: &Fetcher,
    refresh: Refresh,
    keys: &Keys,
    shutdown: &mut watch::Receiver<bool>,
) {
    let origin = fetcher.url().to_owned();
    let mut next = Instant::now();
    let mut last_fetch: Option<Instant> = None;
    let mut unknown_kid = false;
    let mut failures = 0_u32;
    loop {
        // An unknown kid brings the next fetch forward, but no closer than the
        // interval to the last one.
        let due = match (unknown_kid, last_fetch) {
            (true, Some(last)) => next.min(last + refresh.unknown_kid_interval),
            (true, None) => Instant::now(),
            (false, _) => next,
        };
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = keys.unknown_kid.notified(), if !unknown_kid => {
                unknown_kid = true;
                continue;
            }
            () = keys.reload.notified() => {
                tracing::info!(url = %origin, "fetching the token signing keys now, as asked");
            }
            _ = shutdown.changed() => return,
        }
        let started = Instant::now();
        last_fetch = Some(started);
        unknown_kid = false;
        let fetched = tokio::select! {
            fetched = fetcher.fetch() => fetched,
            _ = shutdown.changed() => return,
        };
        let result = fetched.and_then(|fetched| {
            KeySet::parse(&fetched.document, &origin)
                .map(|set| (set, fetched.max_age))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok((set, max_age)) => {
                let interval = max_age
                    .unwrap_or(refresh.max)
                    .clamp(refresh.min, refresh.max);
                if failures > 0 {
                    tracing::info!(url = %origin, failures, "the token signing keys are fetched again");
                }
                failures = 0;
                if !keys.install(set) {
                    tracing::debug!(url = %origin, "the token signing keys are unchanged");
                }
                next = started + interval;
            }
            Err(reason) => {
                failures += 1;
                keys.failed();
                let retry_in = FIRST_RETRY
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(refresh.min);
                let in_force = keys.current().map(|current| current.set.kids().join(","));
                tracing::error!(
                    url = %origin,
                    error = %reason,
                    failures,
                    retry_in = ?retry_in,
                    keys_in_force = in_force.as_deref().unwrap_or("none"),
                    "cannot refresh the token signing keys; the keys in force stay"
                );
                next = started + retry_in;
            }
        }
    }
}
