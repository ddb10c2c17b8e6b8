//! The `compositions-jobs` binary as operators and the README use it.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use compositions_tests::{job_path, postgres, tokens};
use support::{Server, cli, dev_token, get, get_sending, get_until, run, stdout};
use uuid::Uuid;

#[test]
fn the_readme_walkthrough_polls_a_job_from_pending_to_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let address = server.address;

    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let token = dev_token(cli(dir.path()), "mis-1");
    let path = job_path(&id);

    let (status, body) = get(address, &path, &token);
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (200, Some("PENDING"))
    );

    let composition = Uuid::new_v4();
    let href = format!("composition/{composition}");
    stdout(&run(
        dir.path(),
        &["jobs", "complete", &id, "--href", &href],
    ));
    // Another process wrote it: the server sees it at its next look (50 ms).
    let (status, body) = get_until(address, &path, &token, |_, body| {
        body["data"]["status"] == "DONE"
    });
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (200, Some("DONE"))
    );
    assert_eq!(body["data"]["links"][0]["href"], href.as_str());

    // A token for another client sees nothing.
    let other = dev_token(cli(dir.path()), "mis-2");
    assert_eq!(get(address, &path, &other).0, 404);

    server.stop();
}

#[test]
fn a_long_poll_wakes_when_another_process_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let token = dev_token(cli(dir.path()), "mis-1");
    let (address, path) = (server.address, job_path(&id));
    let waiting = std::thread::spawn(move || {
        let response = get_sending(address, &path, &token, &[("Prefer", "wait=20")]);
        (response, std::time::Instant::now())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));

    let finished = std::time::Instant::now();
    let href = format!("composition/{}", Uuid::new_v4());
    stdout(&run(
        dir.path(),
        &["jobs", "complete", &id, "--href", &href],
    ));
    let (response, answered) = waiting.join().unwrap();

    assert_eq!(
        (response.status, response.json()["data"]["status"].as_str()),
        (200, Some("DONE"))
    );
    assert_eq!(
        response.header("preference-applied"),
        Some("wait=20"),
        "{response:?}"
    );
    let latency = answered.duration_since(finished);
    // The CLI's own start-up is part of it; the detector alone takes ~50 ms.
    assert!(latency < std::time::Duration::from_secs(3), "{latency:?}");
    server.stop();
}

#[test]
fn a_store_failure_is_a_500_envelope_with_the_cause_only_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let token = dev_token(cli(dir.path()), "mis-1");
    // A real fault: the table disappears under the running service.
    let database = rusqlite::Connection::open(dir.path().join("jobs.db")).unwrap();
    database.execute_batch("DROP TABLE jobs").unwrap();

    let response = get_sending(server.address, &job_path(&id), &token, &[]);
    let body = response.json();

    assert_eq!(response.status, 500);
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{response:?}"
    );
    assert_eq!(
        body["error"],
        serde_json::json!({"type": "internal_error", "message": "Subordinate service error"})
    );
    assert_eq!(body["meta"]["code"], 500);
    let request_id = body["meta"]["request_id"].as_str().unwrap().to_owned();
    let log = server.stop();
    let line = log
        .iter()
        .find(|line| line.contains(&request_id))
        .expect("no log line with the request id");
    assert!(
        line.contains("no such table"),
        "the cause is not logged: {line}"
    );
}

#[test]
fn jobs_commands_report_through_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(&run(
        dir.path(),
        &[
            "jobs",
            "create",
            "--client-id",
            "mis-1",
            "--kind",
            "erln_resend",
        ],
    ));

    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&run(dir.path(), &["jobs", "show", &id]))).unwrap();
    assert_eq!(
        (shown["status"].as_str(), shown["kind"].as_str()),
        (Some("PENDING"), Some("erln_resend"))
    );

    let fail = [
        "jobs",
        "fail",
        &id,
        "--code",
        "1127",
        "--type",
        "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
        "--message",
        "exists",
    ];
    let failed: serde_json::Value = serde_json::from_str(&stdout(&run(dir.path(), &fail))).unwrap();
    assert_eq!(failed["error"]["code"], 1127);
    // The same transition again succeeds and changes nothing.
    let again: serde_json::Value = serde_json::from_str(&stdout(&run(dir.path(), &fail))).unwrap();
    assert_eq!(again, failed);

    let exit = |args: &[&str]| run(dir.path(), args).status.code();
    let href = format!("composition/{}", Uuid::new_v4());
    assert_eq!(
        exit(&["jobs", "complete", &id, "--href", &href]),
        Some(4),
        "conflict"
    );
    assert_eq!(
        exit(&["jobs", "show", &Uuid::new_v4().to_string()]),
        Some(3),
        "not found"
    );
    assert_eq!(
        exit(&[
            "jobs",
            "fail",
            &id,
            "--code",
            "0",
            "--type",
            "X",
            "--message",
            "m"
        ]),
        Some(2),
        "bad input"
    );
    assert_eq!(
        exit(&["jobs", "create", "--client-id", "mis-1", "--kind", "delete"]),
        Some(2),
        "bad kind"
    );
    let taken = ["jobs", "create", "--client-id", "mis-1", "--id", &id];
    assert_eq!(exit(&taken), Some(4), "an id that is taken");
}

#[test]
fn a_store_that_cannot_open_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4().to_string();
    for (database, names, cause) in [
        (
            "sqlite:/nonexistent/jobs.db",
            "sqlite:/nonexistent/jobs.db",
            "the folder /nonexistent does not exist",
        ),
        (
            // Nothing listens on port 1.
            "postgres://postgres:hunter2@127.0.0.1:1/test",
            "postgres://postgres:***@127.0.0.1:1/test",
            "Connection refused",
        ),
    ] {
        let output = run(dir.path(), &["--database", database, "jobs", "show", &id]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with(&format!("error: {names}: ")), "{stderr}");
        assert!(stderr.contains(cause), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        // Each cause once, though the driver shows its cause and returns it too.
        assert_eq!(
            stderr.matches("error connecting to server").count(),
            usize::from(database.starts_with("postgres")),
            "{stderr}"
        );
    }
}

#[test]
fn jobs_purge_deletes_what_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let href = format!("composition/{}", Uuid::new_v4());
    stdout(&run(
        dir.path(),
        &["jobs", "complete", &id, "--href", &href],
    ));
    let purge = |ttl: &str| {
        stdout(
            &cli(dir.path())
                .env("COMPOSITIONS_JOBS__TTL", ttl)
                .args(["jobs", "purge"])
                .output()
                .unwrap(),
        )
    };

    assert_eq!(purge("7days"), "0");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(purge("10ms"), "1");
    assert_eq!(
        run(dir.path(), &["jobs", "show", &id]).status.code(),
        Some(3)
    );
}

#[test]
fn a_dedup_hash_returns_the_pending_job() {
    let dir = tempfile::tempdir().unwrap();
    let create = [
        "jobs",
        "create",
        "--client-id",
        "mis-1",
        "--dedup-hash",
        "sha256:1f2e",
    ];
    let first = stdout(&run(dir.path(), &create));
    let second = run(dir.path(), &create);
    assert_eq!(stdout(&second), first);
    assert!(String::from_utf8_lossy(&second.stderr).contains("reusing"));
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[jobs]\nttl = \"soon\"\n").unwrap();
    let config = config.to_str().unwrap();
    let no_env: &[(&str, &str)] = &[];
    let cases = [
        (&["serve", "--listen", "nowhere"][..], no_env, "listen"),
        (
            &["serve", "--database", "mysql://x"][..],
            no_env,
            "database",
        ),
        (
            &["serve"][..],
            &[("COMPOSITIONS_JOBS__TTL", "0s")][..],
            "jobs.ttl",
        ),
        (&["serve", "--config", config][..], no_env, "jobs.ttl"),
    ];
    // TLS to PostgreSQL: each bad setting before any connection is tried.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    let urls = [
        (format!("{pg}?sslmode=verify"), "database"),
        (
            format!("{pg}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
            "database",
        ),
        (
            format!("{pg}?sslmode=verify-full&sslrootcert={}", garbage.display()),
            "database",
        ),
        (
            format!("{pg}?sslmode=verify-ca&sslrootcert={}", empty.display()),
            "database",
        ),
        (format!("{pg}?sslcert={}", garbage.display()), "database"),
    ];
    let keys = [
        (
            ("COMPOSITIONS_POSTGRES__SSLMODE", "allow"),
            "postgres.sslmode",
        ),
        (
            ("COMPOSITIONS_POSTGRES__SSLROOTCERT", "/nonexistent/ca.pem"),
            "postgres.sslrootcert",
        ),
        (
            (
                "COMPOSITIONS_POSTGRES__SSLROOTCERT",
                garbage.to_str().unwrap(),
            ),
            "postgres.sslrootcert",
        ),
    ];
    for (url, key) in &urls {
        let output = cli(dir.path())
            .args(["jobs", "show", &Uuid::nil().to_string(), "--database", url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(key), "{url} does not name {key}: {stderr}");
    }
    for ((name, value), key) in keys {
        let output = cli(dir.path())
            .env(name, value)
            .args(["serve", "--database", pg])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        // figment names a key from the environment in capitals.
        assert!(
            stderr.to_lowercase().contains(key),
            "{name}={value} does not name {key}: {stderr}"
        );
    }
    for (args, env, key) in cases {
        let output = cli(dir.path())
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{args:?} does not name {key}: {stderr}"
        );
    }
}

#[test]
fn serve_without_keys_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    // Missing keys are bad configuration, like any other bad value.
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("auth.jwks"));
}

#[test]
fn the_example_config_is_valid_and_shows_the_defaults() {
    use compositions_jobs::config::{Config, Overrides};

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
    let loaded = Config::load(Some(&example), &Overrides::default()).unwrap();
    let defaults = Config::default().validated().unwrap();
    assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));

    // Every key is shown, set or commented out, under its section.
    let text = std::fs::read_to_string(&example).unwrap();
    let shown = |section: &str, key: &str| {
        let body = match section {
            "" => text.split("\n[").next().unwrap_or_default(),
            _ => text
                .split(&format!("\n[{section}]\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n[").next())
                .unwrap_or_default(),
        };
        body.lines().any(|line| {
            line.trim_start_matches("# ")
                .starts_with(&format!("{key} = "))
        })
    };
    let serde_json::Value::Object(tree) = serde_json::to_value(&defaults).unwrap() else {
        panic!("the configuration is a table");
    };
    for (key, value) in tree {
        match value {
            serde_json::Value::Object(section) => {
                for inner in section.keys() {
                    assert!(
                        shown(&key, inner),
                        "{key}.{inner} is not in config.example.toml"
                    );
                }
            }
            _ => assert!(shown("", &key), "{key} is not in config.example.toml"),
        }
    }
}

/// A key set with an unusable key stops the service at start with exit 2 (bad
/// configuration), naming the key and why.
#[test]
fn a_bad_key_set_at_start_exits_2_and_names_the_key() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    // 1024 bits, padded with zero bytes to the length of a 2048-bit modulus.
    let mut n = vec![0_u8; 128];
    n.extend(std::iter::repeat_n(0xC5, 128));
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n);
    for (key, named) in [
        (
            serde_json::json!({"kty": "RSA", "kid": "padded", "n": n, "e": "AQAB"}),
            ["\"padded\"", "1024 bits"],
        ),
        (
            serde_json::json!({"kty": "RSA", "kid": "e3", "n": n, "e": "Aw"}),
            ["\"e3\"", "1024 bits"],
        ),
        (
            serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"}),
            ["no signature verification key", "jwks.json"],
        ),
    ] {
        std::fs::write(&jwks, serde_json::json!({ "keys": [key] }).to_string()).unwrap();
        let output = cli(dir.path())
            .env("COMPOSITIONS_AUTH__JWKS", &jwks)
            .env("COMPOSITIONS_AUTH__ISSUER", "https://auth.test")
            .env("COMPOSITIONS_AUTH__AUDIENCE", "compositions-jobs")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        for text in named {
            assert!(stderr.contains(text), "{text:?} not in: {stderr}");
        }
    }
}

/// SIGHUP reads the key file again at once, and says what it found.
#[test]
fn sighup_reads_the_key_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let logged = |server: &Server, text: &str| {
        server
            .log_so_far()
            .iter()
            .filter(|line| line.contains(text))
            .count()
    };
    let wait_for = |server: &Server, text: &str, count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while logged(server, text) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} not logged {count} times: {:?}",
                server.log_so_far()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // (What it logged before serving is not in the log kept from then on.)
    server.send_signal("HUP");
    wait_for(&server, "SIGHUP: reading the token signing keys again", 1);
    wait_for(&server, "the key set file is unchanged", 1);

    // A second key beside the dev key: in force after the next SIGHUP.
    let file = dir.path().join("dev-jwks.json");
    let mut set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .push(tokens::trusted_jwk("test-rsa"));
    std::fs::write(&file, set.to_string()).unwrap();
    server.send_signal("HUP");
    wait_for(&server, "a key set is in force", 1);
    assert!(
        server
            .log_so_far()
            .iter()
            .any(|line| line.contains("test-rsa") && line.contains("generation=2")),
        "{:?}",
        server.log_so_far()
    );
    // Polls go on through it all.
    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let token = dev_token(cli(dir.path()), "mis-1");
    let path = job_path(&id);
    assert_eq!(get(server.address, &path, &token).0, 200);
    server.stop();
}

/// `jobs show` only reads: it migrates nothing and writes nothing, so a role
/// that may only SELECT can use it; a schema older than the binary is named.
#[tokio::test]
async fn jobs_show_reads_with_a_role_that_may_only_select() {
    let Some(schema) = postgres::TestSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let on = |url: &str| {
        let mut command = cli(dir.path());
        command.env("COMPOSITIONS_DATABASE", url);
        command
    };
    let id = stdout(
        &on(&schema.url)
            .args(["jobs", "create", "--client-id", "mis-1"])
            .output()
            .unwrap(),
    );
    let role = format!("reader_{}", Uuid::new_v4().simple());
    let name = schema.name().to_owned();
    schema
        .execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {name} TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA {name} TO {role}"
        ))
        .await
        .unwrap();
    let reader = schema.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(reader, schema.url);

    let shown = on(&reader).args(["jobs", "show", &id]).output().unwrap();
    let job: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(job["id"], id.as_str());
    // Writing is refused to this role: a write would have failed the command.
    let refused = on(&reader)
        .args([
            "jobs",
            "complete",
            &id,
            "--href",
            &format!("composition/{}", Uuid::new_v4()),
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));

    schema
        .execute("UPDATE jobs_schema_version SET version = 1")
        .await
        .unwrap();
    let old = on(&reader).args(["jobs", "show", &id]).output().unwrap();
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert_eq!(old.status.code(), Some(1), "{stderr}");
    let known = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert!(
        stderr.contains(&format!(
            "schema is version 1, older than this binary's {known}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("serve"), "{stderr}");
    schema
        .execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

/// The same on SQLite: `jobs show` opens the file read-only and checks its
/// schema; it never migrates one.
#[test]
fn jobs_show_never_migrates_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let file = dir.path().join("jobs.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .pragma_update(None, "user_version", 0)
        .unwrap();
    let old = run(dir.path(), &["jobs", "show", &id]);
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert_eq!(old.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("older than this binary's"), "{stderr}");
    let version: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 0, "jobs show migrated the file");
    // A missing file is not made.
    let missing = cli(dir.path())
        .env(
            "COMPOSITIONS_DATABASE",
            format!("sqlite:{}", dir.path().join("none.db").display()),
        )
        .args(["jobs", "show", &id])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(!dir.path().join("none.db").exists());
}

/// Served as in production (no `--dev`): the log is JSON lines, and each
/// request's access line carries what operators correlate by, the caller's
/// W3C trace id among them; a malformed `traceparent` is ignored, never an error.
#[test]
fn the_access_log_is_json_lines_with_the_callers_trace_id() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(&run(
        dir.path(),
        &["jobs", "create", "--client-id", "mis-1"],
    ));
    let mut child = cli(dir.path())
        .env(
            "COMPOSITIONS_AUTH__JWKS",
            compositions_tests::fixture("jwks.json"),
        )
        .env("COMPOSITIONS_AUTH__ISSUER", tokens::ISSUER)
        .env("COMPOSITIONS_AUTH__AUDIENCE", tokens::AUDIENCE)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next = || -> serde_json::Value {
        let line = lines.next().expect("the log ended").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let address: std::net::SocketAddr = loop {
        if let Some(address) = next()["fields"]["address"].as_str() {
            break address.parse().unwrap();
        }
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let token = tokens::valid("mis-1");
    for (value, expected) in [(traceparent.as_str(), trace), ("00-nonsense-01", "-")] {
        let response = get_sending(
            address,
            &job_path(&id),
            &token,
            &[("traceparent", value), ("x-request-id", "poll-1")],
        );
        assert_eq!(response.status, 200, "{value}");
        let line = loop {
            let line = next();
            if line["target"] == "access" {
                break line;
            }
        };
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        let fields = &line["fields"];
        assert_eq!(fields["trace_id"], expected, "{line}");
        assert_eq!(fields["request_id"], "poll-1");
        assert_eq!(fields["method"], "GET");
        assert_eq!(fields["operation"], "getAsyncJobStatus");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["client_id"], "mis-1");
        assert!(fields["latency_us"].is_u64(), "{line}");
        assert!(!line.to_string().contains(&token), "never the token");
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}
