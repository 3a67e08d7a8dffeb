//! Helpers shared by the end-to-end tests: a world of one fresh database and one Redis
//! namespace, and the `escalator` binary run as a real process in it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use escalator_store::Store;
use escalator_testkit::{RedisNamespace, TestDb};

pub const SEED_TIME: &str = "2026-11-25T12:00:00Z";

/// One test's world: a fresh database and its own Redis namespace.
pub struct World {
    pub db: TestDb,
    /// Its Redis keys, deleted with it.
    pub namespace: RedisNamespace,
    pub extra_env: Vec<(String, String)>,
}

impl World {
    /// The same world on the embedded backends: a SQLite database and a SQLite queue file.
    pub async fn sqlite() -> World {
        let db = TestDb::sqlite().await;
        let queue = db.url.replace("escalator.db", "queue.db");
        World {
            db,
            namespace: RedisNamespace::new("e2e"),
            extra_env: vec![("ESCALATOR_QUEUE_URL".into(), queue)],
        }
    }

    pub async fn new() -> World {
        World {
            db: TestDb::postgres().await,
            namespace: RedisNamespace::new("e2e"),
            extra_env: Vec::new(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_escalator"));
        c.args(args)
            .env("DATABASE_URL", &self.db.url)
            // the Redis the test itself uses (TEST_REDIS_URL); a private one overrides it
            .env("REDIS_URL", escalator_testkit::redis_url())
            .env("ESCALATOR_QUEUE_NAMESPACE", &self.namespace.name)
            .env("ESCALATOR_POLL_INTERVAL", "0.05")
            // the engine and fault suites count one email per escalation; digests (on by
            // default) are tested in e2e_notify, which sets its threshold through extra_env
            .env("ESCALATOR_DIGEST_THRESHOLD", "0")
            .env_remove("RUST_LOG");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run escalator");
        assert!(
            out.status.success(),
            "escalator {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn seed(&self, n: u32) {
        self.run(&[
            "seed",
            "--workflows",
            &n.to_string(),
            "--seed",
            "7",
            "--now",
            SEED_TIME,
        ]);
    }

    pub fn beat(&self, metrics_port: u16) -> Child {
        self.command(&["beat"])
            .env(
                "ESCALATOR_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a beat")
    }

    pub fn worker(&self, metrics_port: u16) -> Child {
        // the queue store exists before the worker races a producer to create it
        self.run(&["status"]);
        self.command(&["worker"])
            .env(
                "ESCALATOR_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a worker")
    }

    /// Runs `enqueue check --wait` and returns (reminded, escalated) from its output.
    pub fn check(&self) -> (i64, i64) {
        let out = self.run(&CHECK_AT_SEED_TIME);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (field(&text, "reminded"), field(&text, "escalated"))
    }

    pub fn verify(&self) {
        let out = self.run(&["verify"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("verify: ok"));
    }
}

/// `enqueue check` as of the seed time, waited for.
pub const CHECK_AT_SEED_TIME: [&str; 7] = [
    "enqueue",
    "check",
    "--as-of",
    SEED_TIME,
    "--wait",
    "--timeout",
    "120",
];

pub fn field(text: &str, name: &str) -> i64 {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {text:?}"))
}

pub use escalator_testkit::free_port;

pub fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn rows(store: &Store, sql: &'static str) -> i64 {
    match store {
        Store::Postgres(s) => sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(s.pool())
            .await
            .unwrap(),
        Store::Sqlite(s) => sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(s.pool())
            .await
            .unwrap(),
    }
}

/// Reads a worker's /metrics with a bare HTTP/1.0 request.
pub async fn reqwest_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// GET `path` on 127.0.0.1:`port` with a bare HTTP/1.0 request: (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[("Host", "localhost")]).await
}

/// A bodiless request with these headers; (0, "") when nothing listens on `port`.
#[allow(dead_code)]
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let mut request = format!("{method} {path} HTTP/1.0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A TCP relay to a database whose link can be cut: every connection through it dropped and
/// new ones refused until it is restored (a database restarting, a failover), without touching
/// the database other tests share.
#[allow(dead_code)]
pub struct Relay {
    /// The relay's address on 127.0.0.1.
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

#[allow(dead_code)]
impl Relay {
    /// A relay to the server of `url` (`scheme://user@host:port/db…`) and `url` through it.
    pub async fn to_server_of(url: &str) -> (Relay, String) {
        use std::sync::atomic::Ordering;
        let after_at = url.split_once('@').map(|(_, rest)| rest).unwrap();
        let authority = after_at.split(['/', '?']).next().unwrap().to_owned();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (down, links, upstream) = (down.clone(), links.clone(), authority.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let upstream = upstream.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        let through = url.replacen(&authority, &format!("127.0.0.1:{port}"), 1);
        (
            Relay {
                port,
                down,
                links,
                accept,
            },
            through,
        )
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}
