//! Disk and file faults on SQLite: a read-only database, a database folder that
//! does not exist, a full disk. Each is a clear start error (exit code 1, the
//! database and the cause named, no panic) or clean failures of the writes while
//! the server goes on answering polls; and once the fault is gone the file passes
//! `PRAGMA integrity_check`, holds every acknowledged write, and takes new ones.
//! The `--dev` key files, too, fail cleanly on a disk that takes nothing.
//!
//! All real: files made read-only (`chmod`, or as root `chattr +i` and a read-only
//! bind mount), a file size limit (`RLIMIT_FSIZE`, no root needed) and, as root, a
//! tmpfs that fills up. What cannot be done on this machine is skipped with a line
//! saying so. Writes come from a producer process (this test binary run again, the
//! `producer` test) that prints an acknowledgement only after the store returned Ok.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use compositions_jobs::config::Config;
use compositions_jobs::{Access, Store};
use support::{
    Ledger, PRODUCER_CLIENT, PRODUCER_JOBS, PRODUCER_PAUSE_AFTER_ERRORS, Producer, Server,
    check_every_ack, check_over_http, cli, dev_token, producer_command, with_file_size_limit,
};
use uuid::Uuid;

/// The producer process's role; as an ordinary test it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer() {
    support::producer_main().await;
}

/// Failed writes in a row after which the producer waits for the fault to go.
const PAUSE_AFTER: u64 = 3;

fn sqlite_url(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// The binary with its dev key under `dir` and its jobs in `database`.
fn on(dir: &Path, database: &str) -> Command {
    let mut command = cli(dir);
    command.env("COMPOSITIONS_DATABASE", database);
    command
}

/// A producer process writing `jobs` jobs to `database`, one at a time, pausing
/// after `PAUSE_AFTER` failures in a row.
fn producer_for(database: &str, jobs: u64) -> Command {
    let mut command = producer_command("producer", database);
    command
        .env(PRODUCER_JOBS, jobs.to_string())
        .env(PRODUCER_PAUSE_AFTER_ERRORS, PAUSE_AFTER.to_string());
    command
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// Runs a command of the machine's; true when it succeeded.
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Undoes a fault when dropped, so that a failing test leaves no mount or
/// immutable file behind.
struct Fault(Option<Box<dyn FnOnce()>>);

impl Fault {
    fn new(undo: impl FnOnce() + 'static) -> Self {
        Self(Some(Box::new(undo)))
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}

/// `chattr +i` on each file (what `chmod` is to others, for root too).
fn immutable(files: &[PathBuf]) -> Option<Fault> {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = vec!["+i"];
    args.extend(names.iter().map(String::as_str));
    if !succeeds("chattr", &args) {
        return None;
    }
    Some(Fault::new(move || {
        let mut args = vec!["-i"];
        args.extend(names.iter().map(String::as_str));
        assert!(succeeds("chattr", &args), "chattr -i {names:?}");
    }))
}

/// Unmounts `folder` when dropped.
fn mounted(folder: &Path) -> Fault {
    let folder = folder.display().to_string();
    Fault::new(move || {
        // Lazily: a process of a failed test may still hold a file there.
        let _ = succeeds("umount", &["-l", &folder]);
    })
}

/// A start that failed the way it should: exit code 1, the database named, one
/// of `causes` given, no panic.
fn assert_clear_start_error(status: ExitStatus, stderr: &str, database: &str, causes: &[&str]) {
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot open the job store {database}")),
        "the database is not named: {stderr}"
    );
    assert!(
        causes.iter().any(|cause| stderr.contains(cause)),
        "none of {causes:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or_default()
}

/// A CLI command that failed cleanly: exit code 1, one of `causes`, no panic.
fn assert_clean_failure(output: &Output, causes: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        causes.iter().any(|cause| stderr.contains(cause)),
        "none of {causes:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The producer's write failures: each names what failed and why.
fn assert_clean_write_errors(ledger: &Ledger, causes: &[&str]) {
    assert!(!ledger.errors.is_empty());
    eprintln!("first failed write: {}", ledger.errors[0].2);
    for (id, status, error) in &ledger.errors {
        assert!(
            error.starts_with("job store failed to ")
                && causes.iter().any(|cause| error.contains(cause)),
            "{id} → {status}: {error}"
        );
    }
}

/// The acknowledged jobs whose status is certain (no transition of theirs failed
/// or is in flight), with that status.
fn settled(ledger: &Ledger) -> (Vec<Uuid>, HashMap<Uuid, String>) {
    let ids: Vec<Uuid> = ledger
        .order
        .iter()
        .copied()
        .filter(|id| ledger.may_be(*id).len() == 1)
        .collect();
    let statuses = ids
        .iter()
        .map(|id| (*id, ledger.acked[id].0.clone()))
        .collect();
    (ids, statuses)
}

/// After the fault: the file is sound and every acknowledged write of each
/// ledger is there, as the store reads it. Returns the jobs checked.
async fn check_after_fault(path: &Path, ledgers: &[&Ledger]) -> usize {
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let store = Store::open(
        &Config {
            database: sqlite_url(path).parse().unwrap(),
            ..Config::default()
        },
        Access::ReadWrite,
    )
    .await
    .unwrap();
    let mut checked = 0;
    for ledger in ledgers {
        check_every_ack(&store, ledger).await;
        checked += ledger.order.len();
    }
    checked
}

/// The same producer process, the fault gone, writes again: it was waiting
/// after its failures; told to go on, it finishes its jobs without one.
fn resume(producer: &mut Producer) {
    let failed = producer.ledger.errors.len();
    let acked = producer.ledger.transitions;
    producer.tell("go");
    producer.wait();
    assert_eq!(
        producer.ledger.errors.len(),
        failed,
        "{:?}",
        producer.ledger.errors
    );
    assert!(
        producer.ledger.transitions > acked,
        "nothing written after the fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_folder_that_does_not_exist_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("missing");
    let path = folder.join("jobs.db");
    let database = sqlite_url(&path);
    let cause = format!("the folder {} does not exist", folder.display());

    let Err((status, stderr)) = Server::try_spawn(on(dir.path(), &database)) else {
        panic!("the server started without its folder");
    };
    assert_clear_start_error(status, &stderr, &database, &[&cause]);
    eprintln!("missing folder: {}", last_line(&stderr));
    let output = on(dir.path(), &database)
        .args(["jobs", "create", "--client-id", "mis-1"])
        .output()
        .unwrap();
    assert_clean_failure(&output, &[&cause]);
    assert!(!folder.exists(), "a failed start made the folder");

    // With the folder made, the same command serves and keeps what it is given.
    std::fs::create_dir(&folder).unwrap();
    let server = Server::spawn(on(dir.path(), &database));
    let mut producer = Producer::start(producer_for(&database, 12));
    producer.wait();
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(
        server.address,
        &dev_token(cli(dir.path()), PRODUCER_CLIENT),
        &ids,
        &statuses,
    );
    assert_eq!(check_after_fault(&path, &[&producer.ledger]).await, 12);
    server.stop();
}

/// Makes the database read-only by `mechanism`; returns what undoes it and what
/// the operating system says to a write, or `None` when this machine does not
/// allow it.
fn read_only(mechanism: &str, file: &Path) -> Option<(Fault, &'static str)> {
    use std::os::unix::fs::PermissionsExt;

    match mechanism {
        "chmod 0444" => {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)).unwrap();
            let file = file.display().to_string();
            let fault = Fault::new(move || {
                // SQLite makes the -wal and -shm files with the database's mode:
                // those made while it was read-only are read-only too.
                for suffix in ["", "-wal", "-shm"] {
                    let file = format!("{file}{suffix}");
                    if Path::new(&file).exists() {
                        let writable = std::fs::Permissions::from_mode(0o644);
                        std::fs::set_permissions(&file, writable).unwrap();
                    }
                }
            });
            Some((fault, "Permission denied"))
        }
        "chattr +i" => {
            immutable(&[file.to_path_buf()]).map(|fault| (fault, "Operation not permitted"))
        }
        "a read-only bind mount" => {
            let folder = file.parent().unwrap().display().to_string();
            if !succeeds("mount", &["--bind", &folder, &folder]) {
                return None;
            }
            let fault = mounted(Path::new(&folder));
            succeeds("mount", &["-o", "remount,bind,ro", &folder])
                .then_some((fault, "Read-only file system"))
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_refuses_writes_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("db");
    std::fs::create_dir(&folder).unwrap();
    let path = folder.join("jobs.db");
    let database = sqlite_url(&path);
    let token = dev_token(cli(dir.path()), PRODUCER_CLIENT);
    let mut before = Producer::start(producer_for(&database, 30));
    before.wait();
    let (ids, statuses) = settled(&before.ledger);

    let root = running_as_root();
    let mut after = Vec::new();
    let mut checked = Vec::new();
    for mechanism in ["chmod 0444", "chattr +i", "a read-only bind mount"] {
        if root == (mechanism == "chmod 0444") {
            if root {
                eprintln!(
                    "running as root: chmod 0444 does not stop root from writing; the \
                     database is made read-only with chattr +i and a read-only bind mount"
                );
            }
            continue;
        }
        let Some((fault, refusal)) = read_only(mechanism, &path) else {
            eprintln!("{mechanism} is not possible here: not checked");
            continue;
        };
        // A server on a read-only database answers polls from it (a read-only
        // file), or refuses to start naming the file and what the system said
        // (a read-only folder: SQLite cannot make its -shm file there).
        let cause = format!("cannot write {}: {refusal}", path.display());
        match Server::try_spawn(on(dir.path(), &database)) {
            Err((status, stderr)) => {
                assert_clear_start_error(status, &stderr, &database, &[&cause]);
                eprintln!("{mechanism}: {}", last_line(&stderr));
            }
            Ok(server) => {
                check_over_http(server.address, &token, &ids, &statuses);
                server.stop();
                eprintln!("{mechanism}: the server started and answered polls");
            }
        }
        // A producer cannot write, and says why.
        let output = on(dir.path(), &database)
            .args(["jobs", "create", "--client-id", PRODUCER_CLIENT])
            .output()
            .unwrap();
        assert_clean_failure(&output, &[&cause]);
        drop(fault);

        // Writable again: everything is there and writes work.
        let mut producer = Producer::start(producer_for(&database, 6));
        producer.wait();
        assert!(producer.ledger.errors.is_empty());
        after.push(producer);
        checked.push(mechanism);
    }
    let mut ledgers = vec![&before.ledger];
    ledgers.extend(after.iter().map(|p| &p.ledger));
    let jobs = check_after_fault(&path, &ledgers).await;
    let server = Server::spawn(on(dir.path(), &database));
    check_over_http(server.address, &token, &ids, &statuses);
    server.stop();
    if checked.is_empty() {
        eprintln!(
            "no way to make a file read-only for root here (no chattr, no mount): only \
             checked that the database is sound and complete afterwards"
        );
    } else {
        eprintln!(
            "read-only database ({}): {jobs} jobs checked",
            checked.join(", ")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_made_read_only_while_serving_fails_writes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let database = sqlite_url(&path);
    let server = Server::spawn(on(dir.path(), &database));
    let mut producer = Producer::start(producer_for(&database, 200));
    assert!(
        producer.read_until(Duration::from_secs(20), |ledger, _| ledger.transitions
            >= 20)
    );

    // Open files stay writable after a chmod; only an immutable file stops the
    // writes of a process that has it open.
    let wal = dir.path().join("jobs.db-wal");
    let Some(fault) = running_as_root()
        .then(|| immutable(&[path.clone(), wal]))
        .flatten()
    else {
        eprintln!(
            "a file cannot be made read-only under a running process here (needs root \
             and chattr): not checked"
        );
        producer.kill();
        server.stop();
        return;
    };
    assert!(
        producer.read_until(Duration::from_secs(20), |_, line| line == "blocked"),
        "{:?}",
        producer.ledger
    );
    assert_clean_write_errors(&producer.ledger, &["disk I/O error", "readonly"]);
    let failed = producer.ledger.errors.len();
    // Polls are reads: the server answers every settled job as before.
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(
        server.address,
        &dev_token(cli(dir.path()), PRODUCER_CLIENT),
        &ids,
        &statuses,
    );

    drop(fault);
    resume(&mut producer);
    let jobs = check_after_fault(&path, &[&producer.ledger]).await;
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(
        server.address,
        &dev_token(cli(dir.path()), PRODUCER_CLIENT),
        &ids,
        &statuses,
    );
    let log = server.stop();
    assert!(!log.iter().any(|line| line.contains("panicked")), "{log:?}");
    eprintln!(
        "database made read-only while serving: {failed} writes failed cleanly, {jobs} jobs \
         checked after"
    );
}

/// Lets `pid` write files as large as its hard limit allows again.
fn lift_file_size_limit(pid: u32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard = limits
        .lines()
        .find(|line| line.starts_with("Max file size"))
        .and_then(|line| line.split_whitespace().nth(4))
        .unwrap()
        .to_owned();
    let pid = pid.to_string();
    assert!(
        succeeds("prlimit", &["--pid", &pid, &format!("--fsize={hard}:")]),
        "prlimit could not lift the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_fails_writes_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let database = sqlite_url(&path);
    let token = dev_token(cli(dir.path()), PRODUCER_CLIENT);

    // A server whose files cannot grow cannot make its database, and says so.
    let limited = with_file_size_limit(&on(dir.path(), &database), 8 * 1024);
    let Err((status, stderr)) = Server::try_spawn(limited) else {
        panic!("the server started with an 8 KiB file size limit");
    };
    assert_clear_start_error(status, &stderr, &database, &["disk I/O error"]);
    eprintln!("file size limit at start: {}", last_line(&stderr));
    // What it left is sound: without the limit, the server starts on it.
    let server = Server::spawn(on(dir.path(), &database));

    // A producer whose files cannot grow past 160 KiB fills them, then fails.
    let limited = with_file_size_limit(&producer_for(&database, 150), 160 * 1024);
    let mut producer = Producer::start(limited);
    assert!(
        producer.read_until(Duration::from_secs(30), |_, line| line == "blocked"),
        "{:?}",
        producer.ledger
    );
    assert!(producer.ledger.transitions >= 10, "{:?}", producer.ledger);
    assert_clean_write_errors(&producer.ledger, &["disk I/O error"]);
    let (acked, failed) = (producer.ledger.transitions, producer.ledger.errors.len());
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(server.address, &token, &ids, &statuses);

    lift_file_size_limit(producer.pid());
    resume(&mut producer);
    let jobs = check_after_fault(&path, &[&producer.ledger]).await;
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(server.address, &token, &ids, &statuses);
    let log = server.stop();
    assert!(!log.iter().any(|line| line.contains("panicked")), "{log:?}");
    eprintln!(
        "file size limit: {acked} transitions acknowledged before it, then {failed} writes \
         failed cleanly; {jobs} jobs checked after"
    );
}

/// `--dev` writes its signing key and key set when it starts; on a disk that
/// takes nothing, it fails naming the file and leaves no empty file behind.
#[test]
fn the_dev_key_fails_cleanly_on_a_disk_that_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut token = cli(dir.path());
    token.args(["dev", "token", "--client-id", "mis-1"]);
    let output = with_file_size_limit(&token, 0).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_fails_writes_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let disk_name = disk.display().to_string();
    if !running_as_root()
        || !succeeds(
            "mount",
            &["-t", "tmpfs", "-o", "size=192k", "tmpfs", &disk_name],
        )
    {
        eprintln!("cannot mount a small tmpfs here (needs root): full file system not checked");
        return;
    }
    let _mounted = mounted(&disk);
    let path = disk.join("jobs.db");
    let database = sqlite_url(&path);
    let token = dev_token(cli(dir.path()), PRODUCER_CLIENT);
    let server = Server::spawn(on(dir.path(), &database));

    let mut producer = Producer::start(producer_for(&database, 400));
    assert!(
        producer.read_until(Duration::from_secs(30), |_, line| line == "blocked"),
        "{:?}",
        producer.ledger
    );
    assert!(producer.ledger.transitions >= 5, "{:?}", producer.ledger);
    assert_clean_write_errors(
        &producer.ledger,
        &["database or disk is full", "disk I/O error"],
    );
    let (acked, failed) = (producer.ledger.transitions, producer.ledger.errors.len());
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(server.address, &token, &ids, &statuses);

    // Restarted on the full disk, the server starts and answers polls: they only
    // read, and starting writes nothing when the schema is current.
    let log = server.stop();
    assert!(!log.iter().any(|line| line.contains("panicked")), "{log:?}");
    let server = match Server::try_spawn(on(dir.path(), &database)) {
        Ok(server) => server,
        Err((status, stderr)) => panic!("no restart on a full disk ({status}): {stderr}"),
    };
    check_over_http(server.address, &token, &ids, &statuses);

    // Room again: the same producer writes again, and nothing was lost.
    assert!(succeeds("mount", &["-o", "remount,size=16m", &disk_name]));
    resume(&mut producer);
    let jobs = check_after_fault(&path, &[&producer.ledger]).await;
    let (ids, statuses) = settled(&producer.ledger);
    check_over_http(server.address, &token, &ids, &statuses);
    let log = server.stop();
    assert!(!log.iter().any(|line| line.contains("panicked")), "{log:?}");
    eprintln!(
        "full file system: {acked} transitions acknowledged before it, then {failed} writes \
         failed cleanly; the server restarted on it and answered polls; {jobs} jobs checked \
         after"
    );
}
