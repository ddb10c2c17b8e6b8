//! Several stateless instances on one PostgreSQL database: one shared truth.
//!
//! Runs when `COMPOSITIONS_TEST_DATABASE_URL` is set (CI always sets it).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use compositions_tests::job_path;
use compositions_tests::postgres::TestSchema;
use support::{Server, cli, dev_token, get, get_sending, get_until, stdout};
use uuid::Uuid;

/// The binary with its dev key under `dir` and its jobs in `schema`.
fn on_postgres(dir: &Path, schema: &TestSchema) -> Command {
    let mut command = cli(dir);
    command.env("COMPOSITIONS_DATABASE", &schema.url);
    command
}

#[tokio::test]
async fn two_instances_read_what_any_process_writes() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        stdout(
            &on_postgres(dir.path(), &schema)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let first = Server::spawn(on_postgres(dir.path(), &schema));
    let second = Server::spawn(on_postgres(dir.path(), &schema));

    let id = run(&["jobs", "create", "--client-id", "mis-1"]);
    let token = dev_token(on_postgres(dir.path(), &schema), "mis-1");
    for server in [&first, &second] {
        let (status, body) = get(server.address, &job_path(&id), &token);
        assert_eq!(
            (status, body["data"]["status"].as_str()),
            (200, Some("PENDING"))
        );
    }

    // A producer in another language finishes the job with plain SQL, following
    // the contract in the README.
    let composition = Uuid::new_v4();
    schema
        .execute(&format!(
            "UPDATE jobs SET status = 'DONE', finished_at = now(), \
             links = '[{{\"entity\": \"eHealth/resources\", \"href\": \"composition/{composition}\"}}]' \
             WHERE id = '{id}' AND status = 'PENDING'"
        ))
        .await
        .unwrap();
    // Every instance hears of it (NOTIFY) and answers with it.
    for server in [&first, &second] {
        let (status, body) = get_until(server.address, &job_path(&id), &token, |_, body| {
            body["data"]["status"] == "DONE"
        });
        assert_eq!(
            (status, body["data"]["status"].as_str()),
            (200, Some("DONE"))
        );
        assert_eq!(
            body["data"]["links"][0]["href"],
            format!("composition/{composition}")
        );
    }

    // Once expired, one process purges it and every instance sees it gone.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let purged = stdout(
        &on_postgres(dir.path(), &schema)
            .env("COMPOSITIONS_JOBS__TTL", "10ms")
            .args(["jobs", "purge"])
            .output()
            .unwrap(),
    );
    assert_eq!(purged, "1");
    for server in [&first, &second] {
        let (status, _) = get_until(server.address, &job_path(&id), &token, |status, _| {
            status == 404
        });
        assert_eq!(status, 404);
    }
    first.stop();
    second.stop();
}

#[tokio::test]
async fn one_transition_wakes_the_long_polls_of_every_instance() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        stdout(
            &on_postgres(dir.path(), &schema)
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let instances = [
        Server::spawn(on_postgres(dir.path(), &schema)),
        Server::spawn(on_postgres(dir.path(), &schema)),
    ];
    let id = run(&["jobs", "create", "--client-id", "mis-1"]);
    let token = dev_token(on_postgres(dir.path(), &schema), "mis-1");

    let waiters: Vec<_> = instances
        .iter()
        .map(|instance| {
            let (address, path, token) = (instance.address, job_path(&id), token.clone());
            std::thread::spawn(move || {
                let response = get_sending(address, &path, &token, &[("Prefer", "wait=20")]);
                (response, std::time::Instant::now())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let finished = std::time::Instant::now();
    let href = format!("composition/{}", Uuid::new_v4());
    run(&["jobs", "complete", &id, "--href", &href]);

    for waiter in waiters {
        let (response, answered) = waiter.join().unwrap();
        assert_eq!(
            (response.status, response.json()["data"]["status"].as_str()),
            (200, Some("DONE"))
        );
        let latency = answered.duration_since(finished);
        assert!(latency < std::time::Duration::from_secs(3), "{latency:?}");
    }
    for instance in instances {
        instance.stop();
    }
}

#[tokio::test]
async fn concurrent_conflicting_transitions_from_many_processes_leave_one_winner() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = stdout(
        &on_postgres(dir.path(), &schema)
            .args(["jobs", "create", "--client-id", "mis-1"])
            .output()
            .unwrap(),
    );

    // Eight processes, eight different outcomes, all at once.
    let outcomes: Vec<Vec<String>> = (0..8)
        .map(|i| {
            let args = if i % 2 == 0 {
                format!("jobs complete {id} --href composition/{}", Uuid::new_v4())
            } else {
                format!(
                    "jobs fail {id} --code {} --type CODE_{i} --message attempt-{i}",
                    1000 + i
                )
            };
            args.split(' ').map(str::to_owned).collect()
        })
        .collect();
    let children: Vec<_> = outcomes
        .iter()
        .map(|args| {
            let mut command = on_postgres(dir.path(), &schema);
            command
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    let exits: Vec<(i32, String)> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            (
                output.status.code().unwrap(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        })
        .collect();

    let winners: Vec<&(i32, String)> = exits.iter().filter(|(code, _)| *code == 0).collect();
    assert_eq!(winners.len(), 1, "{exits:?}");
    assert!(
        exits.iter().all(|(code, _)| *code == 0 || *code == 4),
        "{exits:?}"
    );
    // What is stored is the winner's outcome, whole.
    let shown: serde_json::Value = serde_json::from_str(&stdout(
        &on_postgres(dir.path(), &schema)
            .args(["jobs", "show", &id])
            .output()
            .unwrap(),
    ))
    .unwrap();
    let winner: serde_json::Value = serde_json::from_str(&winners[0].1).unwrap();
    assert_eq!(shown, winner);
}
