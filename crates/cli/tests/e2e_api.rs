//! `escalator api` as operators run it: a real process on a real port, stopped by SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::*;

const TOKEN: &str = "e2e-admin-secret-0123456789";

/// One HTTP/1.0 request; returns the status line's code and the whole response.
async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

/// Waits (30 s at most) until something listens on `port`.
async fn listening(port: u16) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the api did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_workflows_and_metrics_and_stops_on_sigterm() {
    let world = World::new().await;
    world.run(&["migrate"]);
    let port = free_port();
    let child = world
        .command(&["api"])
        .env("ESCALATOR_API_ADDR", format!("127.0.0.1:{port}"))
        .env("ESCALATOR_API_TOKENS", format!("e2e:{TOKEN}:admin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    listening(port).await;
    let (code, res) = http(port, "GET", "/readyz", None).await;
    assert_eq!(code, 200, "{res}");
    let body = r#"{"external_id":"E2E-1","title":"t","kind":"k","stage":"s","assignee":"alice","initiator":"bob"}"#;
    let (code, res) = http(port, "POST", "/api/v1/workflows", Some(body)).await;
    assert_eq!(code, 201, "{res}");
    assert!(res.to_ascii_lowercase().contains("x-request-id"), "{res}");
    let (code, res) = http(port, "GET", "/metrics", None).await;
    assert_eq!(code, 200, "{res}");
    assert!(res.contains("workflow_open{sla_status=\"ok\"} 1"), "{res}");
    assert!(stop(child).success());
}

/// Everything but enqueueing works without Redis, and Kubernetes keeps a replica whose queue is
/// gone in the Service (`/readyz?optional=queue`). One (re)started during a Redis outage exited
/// 3 instead and crash-looped until Redis was back: it now serves, and enqueues once Redis
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_started_while_redis_is_down_serves_and_enqueues_once_it_is_back() {
    let world = World::new().await;
    world.run(&["migrate"]);
    let mut redis = escalator_testkit::services::PrivateRedis::start();
    redis.kill();
    let port = free_port();
    let child = world
        .command(&["api"])
        .env("REDIS_URL", redis.url())
        .env("ESCALATOR_API_ADDR", format!("127.0.0.1:{port}"))
        .env("ESCALATOR_API_TOKENS", format!("e2e:{TOKEN}:admin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    listening(port).await;
    let (code, res) = http(port, "GET", "/readyz?optional=queue", None).await;
    assert_eq!(code, 200, "{res}");
    assert!(res.contains(r#""status":"degraded""#), "{res}");
    let body = r#"{"external_id":"E2E-R","title":"t","kind":"k","stage":"s","assignee":"alice","initiator":"bob"}"#;
    let (code, res) = http(port, "POST", "/api/v1/workflows", Some(body)).await;
    assert_eq!(code, 201, "{res}");
    let (code, res) = http(port, "POST", "/api/v1/checks", Some("{}")).await;
    assert_eq!(code, 503, "{res}");

    redis.restart();
    let back = Instant::now();
    loop {
        let (code, res) = http(port, "POST", "/api/v1/checks", Some("{}")).await;
        if code == 202 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no enqueue once Redis was back: {res}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, res) = http(port, "GET", "/readyz", None).await;
    assert_eq!(code, 200, "{res}");
    assert!(stop(child).success());
}

/// `escalator api` on `ip` and a free port, over the migrated database of `world`, with the
/// environment `env` sets, once it answers `/healthz`.
async fn answering_api(
    world: &World,
    ip: &str,
    env: impl FnOnce(&mut std::process::Command),
) -> (std::process::Child, u16) {
    world.run(&["migrate"]);
    let port = free_port();
    let mut command = world.command(&["api"]);
    command
        .env("ESCALATOR_API_ADDR", format!("{ip}:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    env(&mut command);
    let child = command.spawn().unwrap();
    let started = Instant::now();
    while http_get(port, "/healthz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the api did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

/// Without tokens on loopback the api answers only to local names: a web page reaching it by
/// DNS rebinding (its own name resolving to 127.0.0.1) read it, and wrote to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_api_without_tokens_answers_only_to_localhost() {
    let world = World::new().await;
    let (child, port) = answering_api(&world, "127.0.0.1", |c| {
        c.env_remove("ESCALATOR_API_TOKENS")
            .env_remove("ESCALATOR_API_INSECURE");
    })
    .await;
    let (code, body) = http_get(port, "/api/v1/workflows").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_request(
        port,
        "GET",
        "/api/v1/workflows",
        &[("Host", "rebound.example:80")],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = http_request(
        port,
        "POST",
        "/api/v1/checks",
        &[("Host", "localhost"), ("Sec-Fetch-Site", "cross-site")],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(stop(child).success());
}

/// With tokens, an api given `ESCALATOR_API_ALLOWED_HOSTS` (as docker-compose gives it, whose
/// default token is published) refuses data requests naming another Host, token or not, and
/// answers probes whatever they name.
#[tokio::test]
async fn an_api_with_tokens_and_allowed_hosts_refuses_other_hosts() {
    let world = World::new().await;
    let (child, port) = answering_api(&world, "0.0.0.0", |c| {
        c.env("ESCALATOR_API_TOKENS", "dev:dev-only-token-change-me:admin")
            .env("ESCALATOR_API_ALLOWED_HOSTS", "localhost");
    })
    .await;
    let token = ("Authorization", "Bearer dev-only-token-change-me");
    let (code, body) = http_request(
        port,
        "GET",
        "/api/v1/workflows",
        &[("Host", "rebound.example:5000"), token],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = http_request(
        port,
        "GET",
        "/api/v1/workflows",
        &[("Host", "localhost"), token],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_request(port, "GET", "/healthz", &[("Host", "10.0.0.7:5000")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(stop(child).success());
}

#[test]
fn an_unauthenticated_api_beyond_loopback_is_refused_naming_both_variables() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("api")
        .env("ESCALATOR_API_ADDR", "0.0.0.0:5999")
        .env_remove("ESCALATOR_API_TOKENS")
        .env_remove("ESCALATOR_API_INSECURE")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ESCALATOR_API_TOKENS"), "{stderr}");
    assert!(stderr.contains("ESCALATOR_API_INSECURE=1"), "{stderr}");
}

/// A second SIGTERM (or Ctrl-C) ends the process at once, exit 130: the graceful stop waits for
/// requests in flight (here one whose body never comes) for up to `ESCALATOR_API_TIMEOUT`, and
/// a second signal did nothing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_graceful_stop_at_once() {
    let world = World::new().await;
    world.run(&["migrate"]);
    let port = free_port();
    let mut child = world
        .command(&["api"])
        .env("ESCALATOR_API_ADDR", format!("127.0.0.1:{port}"))
        .env("ESCALATOR_API_TOKENS", format!("e2e:{TOKEN}:admin"))
        .env("ESCALATOR_API_TIMEOUT", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut held = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the api did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // a request in flight: its headers, and half its body
    held.write_all(
        format!(
            "POST /api/v1/workflows HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"external_id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().to_string();
    let term = || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
    };
    assert!(term().success());
    // the graceful stop waits for that request
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(child.try_wait().unwrap().is_none(), "the api did not wait");
    assert!(term().success());
    let second = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed() < Duration::from_secs(10),
            "a second SIGTERM did not end the api"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(130));
    drop(held);
}
