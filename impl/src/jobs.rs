//! Jobs and their lifecycle: the rules every store applies to every transition.
//!
//! A job is created `PENDING` and finished once, as `DONE` (with the links its
//! producer recorded) or `FAILED` (with a business error). [`State`] makes the
//! illegal combinations unrepresentable, and [`decide`] is the only place that says
//! which transitions are allowed, so SQLite and PostgreSQL cannot disagree.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The entity a job works on, as eHealth's documented examples name it.
pub const DEFAULT_ENTITY: &str = "eHealth/resources";

/// The longest text a producer may record in any one field.
const MAX_TEXT: usize = 2048;

/// Milliseconds since the Unix epoch, the resolution of every time on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time, truncated to milliseconds.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// A time from milliseconds since the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time moved forward (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(duration)))
    }

    /// This time moved back (saturating).
    pub fn minus(self, duration: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(duration)))
    }

    /// A system time, truncated to milliseconds.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(duration_millis(after)),
            Err(before) => Self(-duration_millis(before.duration())),
        }
    }

    /// This time as a system time.
    pub fn to_system_time(self) -> SystemTime {
        let millis = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH + millis
        } else {
            UNIX_EPOCH - millis
        }
    }

    /// RFC 3339 in UTC with exactly three fraction digits, as the contract requires.
    /// Written digit by digit from the civil date: this runs on every poll, and
    /// chrono's formatting machinery cost ten times as much.
    pub fn to_rfc3339(self) -> String {
        let (days, millis) = (self.0.div_euclid(86_400_000), self.0.rem_euclid(86_400_000));
        let (year, month, day) = civil_from_days(days);
        let Ok(year @ 0..=9999) = u32::try_from(year) else {
            return DateTime::<Utc>::from_timestamp_millis(self.0)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
                .to_rfc3339_opts(SecondsFormat::Millis, true);
        };
        // `millis` is below a day, so every part fits in u32.
        let millis = millis as u32;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, millis / 3_600_000);
        put(14, 2, millis / 60_000 % 60);
        put(17, 2, millis / 1000 % 60);
        put(20, 3, millis % 1000);
        // Only ASCII digits and punctuation were written, so this never falls back.
        String::from_utf8(text.to_vec()).unwrap_or_default()
    }
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

/// Which request of the Compositions API started the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// createComposition
    Create,
    /// signComposition
    Sign,
    /// cancelComposition
    Cancel,
    /// resending a composition to ERLN
    ErlnResend,
}

impl Kind {
    /// The name stored in the `kind` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Sign => "sign",
            Self::Cancel => "cancel",
            Self::ErlnResend => "erln_resend",
        }
    }
}

impl FromStr for Kind {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "create" => Self::Create,
            "sign" => Self::Sign,
            "cancel" => Self::Cancel,
            "erln_resend" => Self::ErlnResend,
            _ => {
                return Err(invalid(
                    "kind",
                    "must be create, sign, cancel or erln_resend",
                ));
            }
        })
    }
}

/// Where a job is in its lifecycle, without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Still running.
    Pending,
    /// Finished with a result.
    Done,
    /// Finished with an error.
    Failed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 3] = [Self::Pending, Self::Done, Self::Failed];

    /// The name stored in the `status` column and sent on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
        }
    }
}

/// How many jobs are in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pending: u64,
    done: u64,
    failed: u64,
}

impl StatusCounts {
    /// The jobs in `status`.
    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Pending => self.pending,
            Status::Done => self.done,
            Status::Failed => self.failed,
        }
    }

    /// Counts `count` more jobs in `status`.
    pub fn add(&mut self, status: Status, count: u64) {
        let counted = match status {
            Status::Pending => &mut self.pending,
            Status::Done => &mut self.done,
            Status::Failed => &mut self.failed,
        };
        *counted += count;
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "PENDING" => Self::Pending,
            "DONE" => Self::Done,
            "FAILED" => Self::Failed,
            _ => return Err(invalid("status", "must be PENDING, DONE or FAILED")),
        })
    }
}

/// A result a finished job points to, e.g. `composition/<uuid>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Link {
    /// The kind of resource.
    pub entity: String,
    /// The resource, relative to the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
}

impl Link {
    /// A result link, checked: both parts non-empty, printable and bounded.
    pub fn new(entity: impl Into<String>, href: impl Into<String>) -> Result<Self, LifecycleError> {
        let link = Self {
            entity: entity.into(),
            href: Some(href.into()),
        };
        check_text("entity", &link.entity)?;
        check_text("href", link.href.as_deref().unwrap_or_default())?;
        Ok(link)
    }
}

/// Why a job failed: one of eHealth's numbered business errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The number, e.g. 1127.
    pub code: i32,
    /// The name, e.g. `FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS`.
    #[serde(rename = "type")]
    pub name: String,
    /// Human-readable text.
    pub message: String,
}

impl Failure {
    /// A failure, checked: a positive code and non-empty, bounded text.
    pub fn new(
        code: i32,
        name: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<Self, LifecycleError> {
        let failure = Self {
            code,
            name: name.into(),
            message: message.into(),
        };
        if failure.code <= 0 {
            return Err(invalid("code", "must be a positive number"));
        }
        check_text("type", &failure.name)?;
        check_text("message", &failure.message)?;
        Ok(failure)
    }

    /// The text MIS clients show: `"<code>: <message>"`, or the message alone
    /// when it already starts with a code.
    ///
    /// Producers often write the code into the message themselves. Clients
    /// prefix `data.error.message` with its code unless it begins with 3 to 5
    /// digits and a colon (the PHP client's rule), and they show `links[].error`
    /// beside it as it is: a second prefix there would read as a second error.
    pub fn display_text(&self) -> String {
        if self.message_is_coded() {
            self.message.clone()
        } else {
            format!("{}: {}", self.code, self.message)
        }
    }

    /// Whether the message begins with its own code, or with any code as
    /// clients recognize one (`\d{3,5}:`), followed by a colon.
    fn message_is_coded(&self) -> bool {
        let digits = self.message.bytes().take_while(u8::is_ascii_digit).count();
        let coded = self.message.as_bytes().get(digits) == Some(&b':');
        let own = self.message[..digits] == self.code.to_string();
        coded && (own || (3..=5).contains(&digits))
    }
}

/// A job's state together with what only that state carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "UPPERCASE")]
pub enum State {
    /// Running; `eta` is the estimated finish.
    Pending {
        /// When the producer expects the job to finish.
        eta: Timestamp,
    },
    /// Finished with a result.
    Done {
        /// What the producer recorded, e.g. the created composition.
        links: Vec<Link>,
        /// When the job finished.
        finished_at: Timestamp,
    },
    /// Finished with an error.
    Failed {
        /// The business error.
        #[serde(rename = "error")]
        failure: Failure,
        /// When the job failed.
        finished_at: Timestamp,
    },
}

impl State {
    /// The state's name.
    pub const fn status(&self) -> Status {
        match self {
            Self::Pending { .. } => Status::Pending,
            Self::Done { .. } => Status::Done,
            Self::Failed { .. } => Status::Failed,
        }
    }

    /// The estimate while pending, then the time the job finished.
    pub const fn eta(&self) -> Timestamp {
        match self {
            Self::Pending { eta } => *eta,
            Self::Done { finished_at, .. } | Self::Failed { finished_at, .. } => *finished_at,
        }
    }
}

/// An asynchronous job, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    /// The job's id (UUID v4).
    pub id: Uuid,
    /// The MIS client that created the job, and the only one that may read it.
    pub client_id: String,
    /// Which request started it.
    pub kind: Kind,
    /// Where it is in its lifecycle.
    #[serde(flatten)]
    pub state: State,
    /// When it was created.
    pub created_at: Timestamp,
    /// The producer's hash of the request body, for deduplication.
    pub dedup_hash: Option<String>,
}

/// What a producer asks for when it creates a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// The job's id: usually a fresh UUID v4, or the one the producer has
    /// already handed to the MIS.
    pub id: Uuid,
    /// The owner.
    pub client_id: String,
    /// Which request started it.
    pub kind: Kind,
    /// How long the producer expects it to take.
    pub expected_duration: Duration,
    /// The producer's hash of the request body, if it wants deduplication.
    pub dedup_hash: Option<String>,
}

impl NewJob {
    /// Checks the producer's input before anything is written.
    pub fn validate(&self) -> Result<(), LifecycleError> {
        if self.id.is_nil() {
            return Err(invalid("id", "must not be the nil UUID"));
        }
        check_text("client_id", &self.client_id)?;
        if let Some(hash) = &self.dedup_hash {
            check_text("dedup_hash", hash)?;
        }
        Ok(())
    }
}

/// How a producer finishes a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The job succeeded with these results.
    Done(Vec<Link>),
    /// The job failed with this error.
    Failed(Failure),
}

impl Outcome {
    /// The status this outcome leads to.
    pub const fn status(&self) -> Status {
        match self {
            Self::Done(_) => Status::Done,
            Self::Failed(_) => Status::Failed,
        }
    }

    /// The state a pending job enters with this outcome.
    pub fn into_state(self, finished_at: Timestamp) -> State {
        match self {
            Self::Done(links) => State::Done { links, finished_at },
            Self::Failed(failure) => State::Failed {
                failure,
                finished_at,
            },
        }
    }
}

/// What a store must do with a requested transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Write it: the job is pending.
    Apply,
    /// Nothing to write: the job already finished exactly this way.
    AlreadyApplied,
}

/// A rule of the lifecycle that a request breaks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    /// The job has finished differently; terminal states never change.
    #[error("the job is already {current}; it cannot become {requested}")]
    Conflict {
        /// Where the job is.
        current: Status,
        /// What was asked for.
        requested: Status,
    },
    /// The producer's input breaks a rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// The rule it breaks.
        reason: &'static str,
    },
}

/// The lifecycle's single rule book: PENDING → DONE | FAILED, once.
///
/// Repeating the transition that already happened is idempotent, so a producer
/// that retries after a lost acknowledgement succeeds; any other change to a
/// finished job is refused.
pub fn decide(current: &State, outcome: &Outcome) -> Result<Transition, LifecycleError> {
    match (current, outcome) {
        (State::Pending { .. }, _) => Ok(Transition::Apply),
        (State::Done { links, .. }, Outcome::Done(requested)) if links == requested => {
            Ok(Transition::AlreadyApplied)
        }
        (State::Failed { failure, .. }, Outcome::Failed(requested)) if failure == requested => {
            Ok(Transition::AlreadyApplied)
        }
        (State::Done { .. } | State::Failed { .. }, _) => Err(LifecycleError::Conflict {
            current: current.status(),
            requested: outcome.status(),
        }),
    }
}

/// Finished jobs at or before this time have expired and read as not found.
pub fn expiry_cutoff(now: Timestamp, ttl: Duration) -> Timestamp {
    now.minus(ttl)
}

fn invalid(field: &'static str, reason: &'static str) -> LifecycleError {
    LifecycleError::Invalid { field, reason }
}

fn check_text(field: &'static str, value: &str) -> Result<(), LifecycleError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_TEXT {
        return Err(invalid(field, "is longer than 2048 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_format_agrees_with_chrono() {
        // Edges, leap days and centuries, then a day-and-a-bit stride through
        // four centuries, each a different time of day.
        let edges = [
            0,
            1,
            999,
            -1,
            1_666_614_949_956,
            253_402_300_799_999,
            253_402_300_800_000,
            -62_167_219_200_000,
            -62_167_219_200_001,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
        ];
        let stride = (0..146_097_i64).map(|n| -1_000_000_000_000 + n * 90_061_001);
        for millis in edges.into_iter().chain(stride) {
            let chrono = DateTime::<Utc>::from_timestamp_millis(millis)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(Timestamp::from_millis(millis).to_rfc3339(), chrono);
        }
    }

    #[test]
    fn eta_always_has_three_fraction_digits() {
        assert_eq!(
            Timestamp::from_millis(1_666_614_949_000).to_rfc3339(),
            "2022-10-24T12:35:49.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_666_614_949_956).to_rfc3339(),
            "2022-10-24T12:35:49.956Z"
        );
    }

    #[test]
    fn failure_display_text_prefixes_the_code() {
        let failure =
            Failure::new(1127, "X", "Final composition exists").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(failure.display_text(), "1127: Final composition exists");
    }

    #[test]
    fn failure_display_text_never_prefixes_a_coded_message() {
        let text = |code, message| {
            Failure::new(code, "X", message)
                .unwrap_or_else(|e| panic!("{e}"))
                .display_text()
        };
        // Its own code, and any code as clients read one (3 to 5 digits).
        assert_eq!(text(1127, "1127: Final exists"), "1127: Final exists");
        assert_eq!(text(1127, "1002: Other code"), "1002: Other code");
        assert_eq!(text(12, "12: Short code"), "12: Short code");
        // Not a code prefix: digits without a colon, or too many of them.
        assert_eq!(text(1127, "1127 composition"), "1127: 1127 composition");
        assert_eq!(text(1127, "123456: x"), "1127: 123456: x");
        assert_eq!(text(1127, ": x"), "1127: : x");
    }
}
