//! TLS to PostgreSQL, against a private server the test starts with `ssl = on`
//! and a CA and server certificate the test makes (for `localhost`): each
//! `sslmode` does what libpq's does, and each way a connection must not be
//! trusted stops the service at start with an error naming the cause.

use compositions_jobs::ErrorChain;
use compositions_jobs::config::{Config, DatabaseUrl};
use compositions_jobs::start_server;
use compositions_tests::postgres::{PrivateServer, ServerTls};
use compositions_tests::tls::TestCa;
use compositions_tests::{TestContext, tokens};
use tokio::net::TcpListener;

fn database(host: &str, server: &PrivateServer, query: &str) -> DatabaseUrl {
    format!(
        "postgres://postgres@{host}:{}/postgres?{query}",
        server.port()
    )
    .parse()
    .unwrap()
}

/// The service on `database`: a job polled through the generated client.
async fn serves(database: DatabaseUrl) {
    let ctx = TestContext::with_config(|config| config.database = database).await;
    let job = ctx.create_job("mis-1").await;
    let answer = ctx
        .poll(job.id, Some(tokens::valid("mis-1")))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            compositions_api::GetAsyncJobStatusResponse::TaskFound { .. }
        ),
        "{answer:?}"
    );
}

/// Why the service will not start on `database`.
async fn refused(database: DatabaseUrl) -> String {
    let mut config = Config {
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        dev: true,
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..Config::default()
    };
    config.database = database;
    config.postgres.connect_timeout = std::time::Duration::from_secs(2);
    let config = config.validated().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    match start_server(config, listener).await {
        Ok(_) => panic!("the service started"),
        Err(e) => ErrorChain(&e).to_string(),
    }
}

#[tokio::test]
async fn verify_full_connects_to_the_server_its_ca_signed_for_its_name() {
    let ca = TestCa::new(&["localhost"]);
    let Some(server) = PrivateServer::start_with(ca.postgres(false)) else {
        return;
    };
    let root = ca.ca_file().display().to_string();
    serves(database(
        "localhost",
        &server,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .await;
    // verify-ca checks the chain, not the name: 127.0.0.1 is not in the certificate.
    serves(database(
        "127.0.0.1",
        &server,
        &format!("sslmode=verify-ca&sslrootcert={root}"),
    ))
    .await;
    // The same from the configuration keys instead of the URL.
    let ctx = TestContext::with_config(|config| {
        config.database = database("localhost", &server, "");
        config.postgres.sslmode = compositions_jobs::config::SslMode::VerifyFull;
        config.postgres.sslrootcert = Some(ca.ca_file());
    })
    .await;
    ctx.create_job("mis-1").await;
}

#[tokio::test]
async fn a_server_that_cannot_be_trusted_stops_the_service_at_start_naming_why() {
    let ca = TestCa::new(&["localhost"]);
    let Some(server) = PrivateServer::start_with(ca.postgres(false)) else {
        return;
    };
    let root = ca.ca_file().display().to_string();
    let stranger = TestCa::new(&["localhost"]);
    let other_root = stranger.ca_file().display().to_string();

    let wrong_ca = refused(database(
        "localhost",
        &server,
        &format!("sslmode=verify-full&sslrootcert={other_root}"),
    ))
    .await;
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");

    let wrong_name = refused(database(
        "127.0.0.1",
        &server,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .await;
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");

    let Some(plain) = PrivateServer::start_with(ServerTls::Off) else {
        return;
    };
    let no_tls = refused(database("localhost", &plain, "sslmode=require")).await;
    assert!(no_tls.contains("server does not support TLS"), "{no_tls}");
    // prefer falls back to plain, as libpq's does.
    serves(database("localhost", &plain, "sslmode=prefer")).await;
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_asks_for_one() {
    let ca = TestCa::new(&["localhost"]);
    let Some(server) = PrivateServer::start_with(ca.postgres(true)) else {
        return;
    };
    let root = ca.ca_file().display().to_string();
    let (cert, key) = ca.client_files("postgres");
    serves(database(
        "localhost",
        &server,
        &format!(
            "sslmode=verify-full&sslrootcert={root}&sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        ),
    ))
    .await;
    let without = refused(database(
        "localhost",
        &server,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .await;
    assert!(without.contains("certificate"), "{without}");
}
