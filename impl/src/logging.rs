//! The log's format and its writer.
//!
//! Every request writes an access line, so the line is on the request path's
//! bill. Measured against bare hyper's whole request, the general-purpose
//! parts cost about as much again: a JSON formatter that went through serde
//! for each field and formatted the time from scratch, and a writer thread
//! woken for every line (a futex wake, a context switch and a write(2) each).
//!
//! - [`JsonLines`]: one JSON object per event, in the shape
//!   tracing-subscriber's JSON format writes (`timestamp`, `level`, `fields`,
//!   `target`), written directly: strings escaped in place, numbers as they
//!   are, the date formatted once a second per thread. Spans are not written:
//!   the service opens none.
//! - [`LogWriter`]: lines are appended to one buffer in memory, and a thread of
//!   its own writes the buffer out every few milliseconds (or as soon as it
//!   holds a lot), with one write(2), so that no request waits on the output.
//!   A full buffer makes the logging thread wait: lines are never dropped.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// How often the writer thread writes out what has been logged.
const WRITE_EVERY: Duration = Duration::from_millis(5);
/// Written out at once from this size, without waiting for the next tick.
const WRITE_SOON: usize = 256 * 1024;
/// Loggers wait from this size until the writer has caught up.
const FULL: usize = 8 * 1024 * 1024;

/// Log lines, buffered in memory and written out by a thread of their own.
#[derive(Clone, Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written out everything.
#[derive(Debug)]
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Buffered>,
    /// Wakes the writer: a lot to write, or the end.
    soon: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
}

#[derive(Debug, Default)]
struct Buffered {
    lines: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, Buffered> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LogWriter {
    /// A writer to `out`, and the guard that ends it.
    pub fn spawn(mut out: impl io::Write + Send + 'static) -> io::Result<(Self, LogWriterGuard)> {
        let shared = Arc::new(Shared::default());
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    let closed = {
                        let mut state = writer.state();
                        if !state.closed && state.lines.len() < WRITE_SOON {
                            state = writer
                                .soon
                                .wait_timeout(state, WRITE_EVERY)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        std::mem::swap(&mut state.lines, &mut batch);
                        state.closed
                    };
                    writer.room.notify_all();
                    if !batch.is_empty() {
                        // Nowhere to report a failure to write the log.
                        let _ = out.write_all(&batch).and_then(|()| out.flush());
                        batch.clear();
                    }
                    if closed && writer.state().lines.is_empty() {
                        return;
                    }
                }
            })?;
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            LogWriterGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

impl io::Write for &LogWriter {
    /// Appends `bytes` whole: tracing writes each event with one call, so lines
    /// never interleave.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.state();
        while state.lines.len() >= FULL && !state.closed {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.lines.extend_from_slice(bytes);
        if state.lines.len() >= WRITE_SOON {
            self.shared.soon.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.soon.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Formats each event as one JSON object on a line.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(metadata.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("},\"target\":")?;
        write_string(&mut writer, metadata.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `"name":value`.
struct Fields<'w, 'a> {
    writer: &'w mut Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(',')?;
            }
            write_string(self.writer, field.name())?;
            self.writer.write_char(':')?;
            value(self.writer)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn write_string(writer: &mut impl fmt::Write, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(&mut *writer).write_str(text)?;
    writer.write_char('"')
}

/// Writes what it is given escaped for the inside of a JSON string (RFC 8259 §7).
struct Escaped<'w, W: fmt::Write>(&'w mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..0x20 | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

thread_local! {
    /// The second last formatted on this thread, and its text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `at` in RFC 3339, UTC, to the microsecond: `2026-12-02T13:05:09.123456Z`.
fn write_timestamp(writer: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            text.clear();
            let (year, month, day) = civil_from_days(second / 86_400);
            let of_day = second % 86_400;
            write!(
                text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            )?;
            *cached = second;
        }
        writer.write_str(text)
    })?;
    write!(writer, ".{:06}Z", since.subsec_micros())
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn logged(log: impl FnOnce()) -> serde_json::Value {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(lines.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = lines
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn a_line_is_the_json_object_of_its_event() {
        let line = logged(|| {
            tracing::info!(
                target: "access",
                request_id = "r-1",
                status = 200_u64,
                delta = -3_i64,
                cached = true,
                wait = ?Duration::from_millis(5),
                "quoted \"text\"\n\u{1} \\ ✓"
            );
        });
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "access");
        let fields = &line["fields"];
        assert_eq!(fields["message"], "quoted \"text\"\n\u{1} \\ ✓");
        assert_eq!(fields["request_id"], "r-1");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["delta"], -3);
        assert_eq!(fields["cached"], true);
        assert_eq!(fields["wait"], "5ms");
        let timestamp = line["timestamp"].as_str().unwrap_or_default();
        assert_eq!(
            timestamp.len(),
            "2026-12-02T13:05:09.123456Z".len(),
            "{timestamp}"
        );
    }

    #[test]
    fn every_line_is_written_whole_and_in_order_by_the_end() {
        let out = Lines::default();
        let (writer, guard) = LogWriter::spawn(out.clone()).unwrap_or_else(|e| panic!("{e}"));
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000 {
                        let line = format!("{thread} {n} {}\n", "x".repeat(n % 300));
                        io::Write::write_all(&mut &writer, line.as_bytes())
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("a logger panicked"));
        }
        drop(guard);
        let bytes = out.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut next = [0_usize; 4];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let thread: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(9);
            let n: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            assert_eq!(
                n, next[thread],
                "thread {thread}: a line lost or out of order"
            );
            assert_eq!(parts.next().map(str::len), Some(n % 300), "a line cut");
            next[thread] += 1;
        }
        assert_eq!(next, [20_000; 4]);
    }

    #[test]
    fn timestamps_are_rfc_3339_in_utc() {
        let text = |seconds: u64, micros: u64| {
            let mut out = String::new();
            write_timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            out
        };
        assert_eq!(text(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(text(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(text(1_796_216_709, 123_456), "2026-12-02T13:05:09.123456Z");
        assert_eq!(text(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }
}
