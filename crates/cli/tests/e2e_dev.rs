//! End-to-end: the newcomer's first command. `escalator dev --demo` on a fresh SQLite file
//! shows an escalated workflow with its audit trail and inbox notifications through the api
//! within 90 s, mails into a folder, stops cleanly on Ctrl-C and resumes with the same data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

fn dev(db: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args([
            "dev",
            "--demo",
            "--db",
            &db.display().to_string(),
            "--port",
            &port.to_string(),
        ])
        .env_remove("DATABASE_URL")
        .env_remove("ESCALATOR_SMTP_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start escalator dev")
}

fn interrupt(mut child: Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "dev did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_get(port, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_demo_escalates_within_ninety_seconds_and_resumes_after_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dev.db");
    let port = free_port();
    let started = Instant::now();
    let child = dev(&db, port);
    let escalated = loop {
        let (status, body) = http_get(port, "/api/v1/workflows?status=escalated").await;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(first) = v["items"].as_array().and_then(|a| a.first()) {
                break first.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "nothing escalated within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let id = escalated["id"].as_str().unwrap().to_owned();
    assert_eq!(escalated["escalation_level"], 1);

    let audit = json(port, &format!("/api/v1/workflows/{id}/audit")).await;
    let actions: Vec<String> = audit["items"]
        .as_array()
        .or(audit.as_array())
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["create", "remind", "escalate"], "{audit}");

    let assignee = escalated["assignee"].as_str().unwrap().to_owned();
    let inbox = json(port, &format!("/api/v1/notifications?recipient={assignee}")).await;
    let items = inbox["items"]
        .as_array()
        .or(inbox.as_array())
        .unwrap()
        .clone();
    assert!(items.iter().any(|n| n["kind"] == "escalation"), "{inbox}");

    // an api without tokens: no page of another site writes to it, no other name reads it
    let (status, body) = http_request(
        port,
        "POST",
        "/api/v1/checks",
        &[("Host", "localhost"), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        http_request(port, "GET", "/api/v1/users", &[("Host", "evil.example")]).await;
    assert_eq!(status, 403, "{body}");

    // email went to the folder next to the database
    let mail = dir.path().join("dev.db.mail");
    let waited = Instant::now();
    while std::fs::read_dir(&mail).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no .eml in {}",
            mail.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(interrupt(child).success(), "dev exited non-zero on Ctrl-C");

    // a restart resumes with the same data
    let child = dev(&db, port);
    let waited = Instant::now();
    loop {
        let (status, body) = http_get(port, &format!("/api/v1/workflows/{id}")).await;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["id"], serde_json::Value::String(id.clone()));
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "restart did not serve the workflow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(interrupt(child).success());
}

/// `escalator dev` runs the worker and the beat with the same variables as the services, checked
/// the same way: it used to run with its own fixed settings, silently ignoring them (a bad value
/// included), to name the default mail folder when `ESCALATOR_EMAIL_DIR` chose another, and to
/// ignore `--database-url` without a word.
#[test]
fn dev_honours_the_settings_and_says_what_it_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dev.db");
    let escalator = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_escalator"));
        c.env_remove("DATABASE_URL")
            .env_remove("ESCALATOR_SMTP_URL")
            .env_remove("RUST_LOG");
        c
    };
    let port = free_port().to_string();
    let dev_args = ["dev", "--db", db.to_str().unwrap(), "--port", port.as_str()];

    let refused = escalator()
        .args(dev_args)
        .env("ESCALATOR_WORKER_CONCURRENCY", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("ESCALATOR_WORKER_CONCURRENCY"), "{stderr}");
    // the api's variables too: they were ignored, even a bad value
    let refused = escalator()
        .args(dev_args)
        .env("ESCALATOR_API_TOKENS", "not-a-token")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("ESCALATOR_API_TOKENS"), "{stderr}");

    let mail = dir.path().join("letters");
    let mut child = escalator()
        .args(["--database-url", "sqlite://elsewhere.db"])
        .args(dev_args)
        .env("ESCALATOR_EMAIL_DIR", &mail)
        .env(
            "ESCALATOR_API_TOKENS",
            "me:dev-secret-0123456789abcdef:admin",
        )
        .env("ESCALATOR_API_ADDR", "0.0.0.0:5000")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    while !banner.contains("ESCALATOR_API_ADDR is for `escalator api`") {
        match lines_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
            }
            Err(e) => panic!("{e}: no note in the banner:\n{banner}"),
        }
    }
    // the queue variables the other commands obey are named too
    assert!(
        banner.contains("REDIS_URL is for the other commands: dev keeps its queues in"),
        "{banner}"
    );
    // with tokens set, the api asks for one (it was open, whatever they said)
    assert!(
        banner.contains("ask for one of ESCALATOR_API_TOKENS"),
        "{banner}"
    );
    assert!(
        banner.contains("no workflows yet: `escalator dev --demo`"),
        "{banner}"
    );
    let port_number: u16 = port.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(http_get(port_number, "/api/v1/workflows"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = runtime.block_on(http_request(
        port_number,
        "GET",
        "/api/v1/workflows",
        &[("Authorization", "Bearer dev-secret-0123456789abcdef")],
    ));
    assert_eq!(status, 200, "{body}");
    assert!(
        banner.contains(&format!("one .eml per message in {}/", mail.display())),
        "{banner}"
    );
    assert!(
        banner.contains("sqlite://elsewhere.db") && banner.contains(db.to_str().unwrap()),
        "{banner}"
    );
    assert!(interrupt(child).success());
    // the hint on the way out opens this data again (a plain `escalator dev` opened the
    // default file)
    let farewell = lines_rx.iter().collect::<Vec<_>>().join("\n");
    assert!(
        farewell.contains(&format!(
            "run `escalator dev --db {} --port {port}` again to resume",
            db.display()
        )),
        "{farewell}"
    );
}
