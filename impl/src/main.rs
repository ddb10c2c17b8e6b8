//! The `compositions-jobs` binary: parses the command line and calls the library.
//!
//! Exit codes, for scripts: 0 success (including repeating a transition that
//! already happened), 1 failure, 2 bad usage or input, 3 job not found,
//! 4 a conflicting transition was refused.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use compositions_jobs::DevKey;
use compositions_jobs::ErrorChain;
use compositions_jobs::StartError;
use compositions_jobs::config::{Config, Overrides};
use compositions_jobs::jobs::{
    DEFAULT_ENTITY, Failure, Kind, LifecycleError, Link, NewJob, Outcome, Timestamp, Transition,
};
use compositions_jobs::{Access, JobStore, Store, StoreError, purge};
use compositions_jobs::{JsonLines, LogWriter, LogWriterGuard};
use tokio::net::TcpListener;
use uuid::Uuid;

/// mimalloc rather than the system allocator: the request path allocates a few
/// dozen small blocks, and glibc's malloc and free were a tenth of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "getAsyncJobStatus for the eHealth Compositions API")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// A TOML config file (see config.example.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The job store, e.g. sqlite:var/jobs.db [default: sqlite:var/jobs.db].
    #[arg(long, global = true, value_name = "URL")]
    database: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        /// The address to listen on [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// The operators' address: health and metrics [default: 127.0.0.1:9090].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
        /// Trust a signing key made under the data folder. For trying the service out only.
        #[arg(long)]
        dev: bool,
    },
    /// Create, finish and inspect jobs, as a producer or an operator.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Tools for trying the service out.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Create a PENDING job and print its id.
    Create {
        /// The MIS client that owns the job.
        #[arg(long)]
        client_id: String,
        /// The job's id, if the producer has already handed one out [default: a new UUID v4].
        #[arg(long)]
        id: Option<Uuid>,
        /// The request that started it.
        #[arg(long, default_value = "create", value_parser = parse_kind)]
        kind: Kind,
        /// Seconds until the job is expected to finish [default: jobs.default_eta].
        #[arg(long)]
        eta_seconds: Option<u64>,
        /// The request body's hash; a PENDING job of the client with the same hash is returned instead.
        #[arg(long)]
        dedup_hash: Option<String>,
    },
    /// Finish a PENDING job as DONE with a link to its result.
    Complete {
        /// The job.
        id: Uuid,
        /// The result, e.g. composition/<uuid>.
        #[arg(long)]
        href: String,
        /// The kind of the result.
        #[arg(long, default_value = DEFAULT_ENTITY)]
        entity: String,
    },
    /// Finish a PENDING job as FAILED with a business error.
    Fail {
        /// The job.
        id: Uuid,
        /// The error's number, e.g. 1127.
        #[arg(long)]
        code: i32,
        /// The error's name, e.g. FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS.
        #[arg(long = "type", value_name = "NAME")]
        name: String,
        /// Human-readable text.
        #[arg(long)]
        message: String,
    },
    /// Print a job as JSON, whoever owns it.
    Show {
        /// The job.
        id: Uuid,
    },
    /// Delete the jobs that finished longer than jobs.ttl ago, once; print how many.
    Purge,
}

#[derive(Subcommand)]
enum DevCommand {
    /// Print a JWT that a --dev server accepts.
    Token {
        /// The MIS client the token acts for.
        #[arg(long)]
        client_id: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "composition:read")]
        scope: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
}

fn parse_kind(kind: &str) -> Result<Kind, LifecycleError> {
    kind.parse()
}

/// A failure and the exit code it means.
struct Failed {
    code: u8,
    message: String,
}

impl Failed {
    fn new(code: u8, error: &dyn std::error::Error) -> Self {
        Self {
            code,
            message: ErrorChain(error).to_string(),
        }
    }
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Self {
        let code = match &error {
            StoreError::NotFound(_) => 3,
            StoreError::Lifecycle(LifecycleError::Conflict { .. }) | StoreError::IdTaken(_) => 4,
            StoreError::Lifecycle(LifecycleError::Invalid { .. }) => 2,
            StoreError::Backend { .. }
            | StoreError::SchemaTooOld { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Corrupt { .. } => 1,
        };
        Self::new(code, &error)
    }
}

impl From<LifecycleError> for Failed {
    fn from(error: LifecycleError) -> Self {
        Self::new(2, &error)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    let dev = matches!(cli.command, Command::Serve { dev: true, .. });
    // Held to the end: dropping it flushes the log lines still queued.
    let _log_writer = init_logging(serving && !dev);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            // Not eprintln!: it panics when stderr cannot be written (a full disk).
            let _ = writeln!(std::io::stderr(), "error: {}", failed.message);
            ExitCode::from(failed.code)
        }
    }
}

/// JSON lines when serving in production; readable text otherwise. Lines are
/// written to stderr by a thread of their own ([`LogWriter`]), so that a
/// request never waits on a write(2), and in batches, so that a busy service
/// makes one write(2) for many lines. None is ever dropped.
fn init_logging(json: bool) -> Option<LogWriterGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    // Without a thread, log straight to stderr rather than not at all.
    let Ok((writer, guard)) = LogWriter::spawn(std::io::stderr()) else {
        builder.with_writer(std::io::stderr).init();
        return None;
    };
    let builder = builder.with_writer(writer);
    if json {
        builder.event_format(JsonLines).init();
    } else {
        builder.init();
    }
    Some(guard)
}

async fn run(cli: Cli) -> Result<(), Failed> {
    let mut overrides = Overrides {
        database: cli.common.database,
        ..Overrides::default()
    };
    if let Command::Serve {
        listen,
        admin_listen,
        dev,
    } = &cli.command
    {
        overrides.listen.clone_from(listen);
        overrides.admin_listen.clone_from(admin_listen);
        overrides.dev = dev.then_some(true);
    }
    let config =
        Config::load(cli.common.config.as_deref(), &overrides).map_err(|e| Failed::new(2, &e))?;
    match cli.command {
        Command::Serve { .. } => serve(config).await,
        Command::Jobs { command } => jobs(config, command).await,
        Command::Dev {
            command:
                DevCommand::Token {
                    client_id,
                    scope,
                    ttl_seconds,
                },
        } => {
            let key = DevKey::load_or_create(&config.data_dir).map_err(|e| Failed::new(1, &e))?;
            let token = key
                .mint(&client_id, &scope, Duration::from_secs(ttl_seconds))
                .map_err(|e| Failed::new(1, &e))?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> Result<(), Failed> {
    if config.dev {
        DevKey::load_or_create(&config.data_dir).map_err(|e| Failed::new(1, &e))?;
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "DEV MODE: trusting a signing key made under the data folder. Anyone who can \
             read it can mint tokens. Never run --dev in production."
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failed::new(1, &e))?;
    let database = config.database.to_string();
    let handle = compositions_jobs::start_server(config, listener)
        .await
        .map_err(|e| {
            // Unusable keys are bad configuration, like any other bad value.
            let code = if matches!(e, StartError::Keys(_)) {
                2
            } else {
                1
            };
            Failed::new(code, &e)
        })?;
    // The handlers go in before serving is announced: from then on a signal stops
    // the server gracefully, never kills it.
    let stop = shutdown_signal();
    tracing::info!(
        address = %handle.local_addr(),
        admin = %handle.admin_addr(),
        %database,
        "serving getAsyncJobStatus"
    );
    let signal = reload_keys_on_sighup(&handle, stop).await;
    tracing::info!(signal, "shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now (until then either signal kills
/// the process) and returns a future that ends at the first of them, naming it.
#[cfg(unix)]
fn shutdown_signal() -> impl Future<Output = &'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut handlers = Vec::new();
    for (name, kind) in [
        ("SIGTERM", SignalKind::terminate()),
        ("SIGINT", SignalKind::interrupt()),
    ] {
        match signal(kind) {
            Ok(handler) => handlers.push((name, handler)),
            Err(e) => {
                tracing::warn!(error = %e, signal = name, "cannot handle the signal; it will kill the server");
            }
        }
    }
    std::future::poll_fn(move |cx| {
        for (name, handler) in &mut handlers {
            if handler.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*name);
            }
        }
        std::task::Poll::Pending
    })
}

/// Waits for `stop`, reading the token signing keys again at each SIGHUP
/// meanwhile.
#[cfg(unix)]
async fn reload_keys_on_sighup(
    handle: &compositions_jobs::ServerHandle,
    stop: impl Future<Output = &'static str>,
) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; the keys are still read again when their file changes");
            return stop.await;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => return signal,
            _ = hangups.recv() => {
                tracing::info!("SIGHUP: reading the token signing keys again");
                handle.reload_keys();
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_keys_on_sighup(
    _handle: &compositions_jobs::ServerHandle,
    stop: impl Future<Output = &'static str>,
) -> &'static str {
    stop.await
}

/// Returns a future that ends at Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl Future<Output = &'static str> {
    async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

async fn jobs(config: Config, command: JobsCommand) -> Result<(), Failed> {
    // A command that only reads writes nothing, not even a migration: it works
    // with a role that may only SELECT.
    let access = match command {
        JobsCommand::Show { .. } => Access::ReadOnly,
        JobsCommand::Create { .. }
        | JobsCommand::Complete { .. }
        | JobsCommand::Fail { .. }
        | JobsCommand::Purge => Access::ReadWrite,
    };
    let store = Store::open(&config, access).await.map_err(|e| {
        let mut failed = Failed::from(e);
        failed.message = format!("{}: {}", config.database, failed.message);
        failed
    })?;
    let now = Timestamp::now();
    let job = match command {
        JobsCommand::Create {
            client_id,
            id,
            kind,
            eta_seconds,
            dedup_hash,
        } => {
            let new = NewJob {
                id: id.unwrap_or_else(Uuid::new_v4),
                client_id,
                kind,
                expected_duration: eta_seconds.map_or(config.jobs.default_eta, Duration::from_secs),
                dedup_hash,
            };
            let created = store.create(new, now).await?;
            if created.deduplicated {
                eprintln!("a PENDING job with this dedup hash exists; reusing it");
            }
            println!("{}", created.job.id);
            return Ok(());
        }
        JobsCommand::Complete { id, href, entity } => {
            finish(
                &store,
                id,
                Outcome::Done(vec![Link::new(entity, href)?]),
                now,
            )
            .await?
        }
        JobsCommand::Fail {
            id,
            code,
            name,
            message,
        } => {
            finish(
                &store,
                id,
                Outcome::Failed(Failure::new(code, name, message)?),
                now,
            )
            .await?
        }
        JobsCommand::Show { id } => store.get(id).await?.ok_or(StoreError::NotFound(id))?,
        JobsCommand::Purge => {
            println!("{}", purge(&store, now, config.jobs.purge_batch).await?);
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
    Ok(())
}

async fn finish(
    store: &Store,
    id: Uuid,
    outcome: Outcome,
    now: Timestamp,
) -> Result<compositions_jobs::jobs::Job, StoreError> {
    let finished = store.finish(id, outcome, now).await?;
    if finished.transition == Transition::AlreadyApplied {
        eprintln!("the job had already finished this way; nothing changed");
    }
    Ok(finished.job)
}
