//! PostgreSQL for tests: a schema of its own per test, dropped afterwards.
//!
//! The server comes from `COMPOSITIONS_TEST_DATABASE_URL`. When it is unset the
//! PostgreSQL half of a suite is skipped (`make unit` says so in one line); CI
//! always sets it.

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
pub struct TestSchema {
    server: String,
    name: String,
    /// A URL whose connections use only this schema.
    pub url: String,
}

impl TestSchema {
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
