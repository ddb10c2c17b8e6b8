//! PostgreSQL for tests: a schema of its own per test, dropped afterwards.
//!
//! The server comes from `COMPOSITIONS_TEST_DATABASE_URL`. When it is unset the
//! PostgreSQL half of a suite is skipped (`make unit` says so in one line); CI
//! always sets it.

use std::process::Command;
use std::sync::Once;

use tokio_postgres::NoTls;
use uuid::Uuid;

/// Names the PostgreSQL server the tests may use.
pub const URL_VARIABLE: &str = "COMPOSITIONS_TEST_DATABASE_URL";

/// The server's URL, if PostgreSQL tests are enabled.
pub fn server_url() -> Option<String> {
    let url = std::env::var(URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() {
        static SAID: Once = Once::new();
        SAID.call_once(|| eprintln!("{URL_VARIABLE} is unset: skipping the PostgreSQL tests"));
    }
    url
}

/// A schema that exists for one test; `url` points every connection at it and
/// names them after it, so that they can be found and closed.
#[derive(Debug)]
pub struct TestSchema {
    server: String,
    name: String,
    /// A URL whose connections use only this schema.
    pub url: String,
}

impl TestSchema {
    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new empty schema, or `None` when PostgreSQL tests are disabled.
    pub async fn create() -> Option<Self> {
        let server = server_url()?;
        let name = format!("test_{}", Uuid::new_v4().simple());
        execute(&server, &format!("CREATE SCHEMA {name}")).await;
        let separator = if server.contains('?') { '&' } else { '?' };
        let url =
            format!("{server}{separator}options=-csearch_path%3D{name}&application_name={name}");
        Some(Self { server, name, url })
    }

    /// Runs SQL in this schema; an error is the server's message.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        let message = |e: tokio_postgres::Error| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |db| db.message().to_owned())
        };
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(message)?;
        tokio::spawn(connection);
        client.batch_execute(sql).await.map_err(message)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // The test's own connections may still be open, even inside a transaction
        // whose rollback the (now blocked) test runtime never sent: close them
        // first, or the DROP would wait for their locks for ever.
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{name}' AND pid <> pg_backend_pid(); \
             DROP SCHEMA IF EXISTS {name} CASCADE",
            name = self.name
        );
        let server = self.server.clone();
        // Drop runs on the test's runtime, which cannot be blocked on; a thread of
        // its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(execute(&server, &sql));
            Ok::<_, std::io::Error>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}", self.name);
        }
    }
}

async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {URL_VARIABLE}: {e}"));
    tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A PostgreSQL server of the test's own, on a free port, that the test may stop
/// and start (the machine's shared server is never touched).
#[derive(Debug)]
pub struct PrivateServer {
    dir: tempfile::TempDir,
    port: u16,
}

/// How a private server accepts connections over TLS.
#[derive(Clone, Debug)]
pub enum ServerTls {
    /// No TLS at all (`ssl = off`).
    Off,
    /// TLS with this certificate; password-less `trust` otherwise.
    On(ServerCertificate),
    /// TLS only, and clients must present a certificate the CA signed whose
    /// common name is the user (`hostssl … cert`).
    ClientCertificates(ServerCertificate),
}

/// The server's certificate and key, and the CA that signs its clients', PEM.
#[derive(Clone, Debug)]
pub struct ServerCertificate {
    /// The certificate.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
    /// The CA whose client certificates are accepted.
    pub ca: std::path::PathBuf,
}

impl PrivateServer {
    /// `initdb` and start a new cluster; `None` when PostgreSQL tests are disabled.
    pub fn start() -> Option<Self> {
        Self::start_with(ServerTls::Off)
    }

    /// As [`Self::start`], with `tls`.
    pub fn start_with(tls: ServerTls) -> Option<Self> {
        server_url()?;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let server = Self { dir, port };
        server.hand_over_to_postgres_user();
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.configure_tls(tls);
        server.start_again();
        Some(server)
    }

    fn configure_tls(&self, tls: ServerTls) {
        let files = match &tls {
            ServerTls::Off => return,
            ServerTls::On(files) | ServerTls::ClientCertificates(files) => files,
        };
        let data = std::path::PathBuf::from(self.data());
        for (from, to) in [
            (&files.cert, "server.pem"),
            (&files.key, "server-key.pem"),
            (&files.ca, "ca.pem"),
        ] {
            std::fs::copy(from, data.join(to)).expect("a certificate file");
            std::fs::set_permissions(
                data.join(to),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("permissions");
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server-key.pem'\nssl_ca_file = 'ca.pem'\n",
        )
        .expect("postgresql.conf");
        if let ServerTls::ClientCertificates(_) = tls {
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
            )
            .expect("pg_hba.conf");
        }
        self.hand_over_to_postgres_user();
    }

    /// A URL for the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the stopped server on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server the hard way, as a crash would.
    pub fn kill(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// PostgreSQL refuses to run as root; as root, run it as `postgres`.
    fn running_as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
    }

    fn hand_over_to_postgres_user(&self) {
        if Self::running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(self.dir.path())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "cannot hand the folder to the postgres user"
            );
        }
    }

    /// A server program: on `PATH`, or where Debian keeps it.
    fn program(name: &str) -> String {
        let on_path = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output();
        if on_path.is_ok_and(|out| out.status.success()) {
            return name.to_owned();
        }
        let mut installed: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|version| version.path().join("bin").join(name))
            .filter(|path| path.exists())
            .collect();
        installed.sort();
        installed
            .pop()
            .map_or_else(|| name.to_owned(), |path| path.display().to_string())
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = &Self::program(program);
        let mut command = if Self::running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        };
        let output = command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} is needed for the PostgreSQL fault tests: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // Already stopped is fine.
        let _ = std::panic::catch_unwind(|| self.kill());
    }
}
