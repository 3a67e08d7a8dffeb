//! One module per subcommand.

/// `println!` for a command's report: a closed stdout (`escalator status | head -1`) is an
/// error the command returns, which `main` ends quietly, instead of `println!`'s panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err($crate::commands::stdout_failed)?;
    }};
}

/// The reader of standard output went away: `main` ends the command quietly. Only [`out!`]
/// raises it, so a database or Redis socket's broken pipe stays an error.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// What a failed write to standard output is.
pub fn stdout_failed(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

pub mod api;
pub mod beat;
pub mod check;
pub mod dev;
pub mod enqueue;
pub mod jobs;
pub mod migrate;
pub mod outbox;
pub mod seed;
pub mod status;
pub mod verify;
pub mod worker;

use anyhow::Context as _;
use escalator_runtime::config::redact;
use escalator_store::{Store, StoreConfig};

/// Connections a long-running process (worker, api, beat) keeps open while idle: enough for
/// a check's planner and both default batch slots to start without opening one.
pub const KEPT_OPEN: u32 = 4;

/// Connects to the database named by `url` for a one-shot command, with an error that names
/// the variable; like services, refuses a database without this build's schema (`verify` on
/// an unmigrated file said only "no such table: audit_logs").
pub async fn connect(url: &str) -> anyhow::Result<Store> {
    require_schema(connect_with(one_shot(url).existing_only()).await?, url).await
}

/// How long a one-shot command waits for PostgreSQL to give a connection: a refused or
/// unreachable database is reported after this, not after a service's 10 s.
const ONE_SHOT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

fn one_shot(url: &str) -> StoreConfig {
    StoreConfig::new(url).patient_for(ONE_SHOT_PATIENCE)
}

/// [`connect`] whatever the schema, for `escalator migrate`, which brings it (creating a
/// missing SQLite file).
pub async fn connect_any_schema(url: &str) -> anyhow::Result<Store> {
    connect_with(one_shot(url)).await
}

/// [`connect`] whatever the schema, to an existing database: for `status`, which reports the
/// queues before it checks the schema ([`require_schema`]).
pub async fn connect_existing(url: &str) -> anyhow::Result<Store> {
    connect_with(one_shot(url).existing_only()).await
}

/// Binds `ESCALATOR_METRICS_ADDR` at start-up, so that a taken port stops a worker or beat
/// with a message instead of leaving it running without `/metrics` and `/healthz`.
pub async fn bind_metrics(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on ESCALATOR_METRICS_ADDR={addr} (another worker or beat on this \
             host may hold it: give each process its own port)"
        )
    })
}

/// Connects for a long-running process: [`KEPT_OPEN`] connections stay open while it is idle.
///
/// Refuses a database whose schema is older than this build (none at all, a forgotten
/// `DATABASE_URL` that opened an empty SQLite file, or a migration not yet applied during an
/// upgrade): the process would otherwise take jobs and fail every one of them.
pub async fn connect_service(url: &str) -> anyhow::Result<Store> {
    require_schema(
        connect_with(
            StoreConfig::new(url)
                .keeping_open(KEPT_OPEN)
                .existing_only(),
        )
        .await?,
        url,
    )
    .await
}

/// `store`, or an error saying to migrate when it lacks any of this build's migrations.
pub async fn require_schema(store: Store, url: &str) -> anyhow::Result<Store> {
    let missing = store
        .missing_migrations()
        .await
        .context("reading the schema version")?;
    if let Some(first) = missing.first() {
        refuse_a_queue_file(&store, url).await?;
        store.close().await;
        anyhow::bail!(
            "the database at DATABASE_URL={} lacks {} of this build's migrations (from {first}): \
             run `escalator migrate` against it first",
            redact(url),
            missing.len()
        );
    }
    Ok(store)
}

/// An error naming the slip when the database at `url` is a queue file.
pub async fn refuse_a_queue_file(store: &Store, url: &str) -> anyhow::Result<()> {
    if store.holds_job_queues().await {
        anyhow::bail!(
            "DATABASE_URL={} is a queue file (it holds job queues, not escalator's data): \
             give it as ESCALATOR_QUEUE_URL, and the database itself (the file without \
             `.queue`) as DATABASE_URL",
            redact(url)
        );
    }
    Ok(())
}

async fn connect_with(config: StoreConfig) -> anyhow::Result<Store> {
    config.backend().context("DATABASE_URL")?;
    Store::connect(&config)
        .await
        .with_context(|| format!("cannot connect to DATABASE_URL={}", redact(&config.url)))
}

/// The exit status of a command that could not reach its database or queue (refused,
/// unreachable, timed out): scripts tell it from a failed run or violations (1), a usage error
/// (2) and a `--wait` that ran out of time (4).
pub const EXIT_UNREACHABLE: u8 = 3;

/// The exit status of `enqueue --wait` whose `--timeout` ran out (the run may still finish).
pub const EXIT_TIMED_OUT: i32 = 4;

/// Whether `e` says a service could not be reached, at connection or later (a failover
/// while `verify` reads, Redis gone before a push): `main` exits [`EXIT_UNREACHABLE`]. Read
/// off the causes themselves, wherever the command met them (a wrong password or a missing
/// SQLite file is no outage: exit 1).
pub fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<escalator_store::StoreError>()
            .is_some_and(escalator_store::StoreError::is_unreachable)
            || cause
                .downcast_ref::<escalator_jobs::QueueError>()
                .is_some_and(escalator_jobs::QueueError::is_unreachable)
    })
}

/// Connects a service (api, worker, beat) to the queue backend, retrying an unreachable Redis
/// for a few seconds, with an error that names the variable.
pub async fn connect_queues(
    config: &crate::config::QueueConfig,
) -> anyhow::Result<escalator_jobs::Queues> {
    queues(config, false).await
}

/// [`connect_queues`] for a one-shot command: an unreachable Redis is reported at once.
pub async fn connect_queues_once(
    config: &crate::config::QueueConfig,
) -> anyhow::Result<escalator_jobs::Queues> {
    queues(config, true).await
}

async fn queues(
    config: &crate::config::QueueConfig,
    once: bool,
) -> anyhow::Result<escalator_jobs::Queues> {
    use escalator_jobs::{QueueNames, Queues};
    let names = QueueNames::new(&config.namespace);
    let connected = if once {
        Queues::connect_once(&config.url, names).await
    } else {
        Queues::connect(&config.url, names).await
    };
    connected.with_context(|| format!("cannot connect to the queue at {}", redact(&config.url)))
}

/// Parses an RFC 3339 instant for `--as-of`/`--now`.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-11-25T12:00:00Z: {e}"))?;
    escalator_store::time::check_instant("time", t).map_err(|_| {
        format!(
            "must be between {} and {}",
            escalator_store::time::EARLIEST,
            escalator_store::time::LATEST
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exit 3 is for a service out of reach wherever the command meets it (a failover while
    /// `verify` reads exited 1, as violations found do), not for a statement refused.
    #[test]
    fn a_service_out_of_reach_is_told_from_a_refusal_anywhere_in_the_chain() {
        use escalator_jobs::QueueError;
        use escalator_store::StoreError;
        let timed_out = anyhow::Error::new(StoreError::Database(sqlx::Error::PoolTimedOut))
            .context("reading the runs");
        assert!(unreachable(&timed_out));
        let refused = anyhow::Error::new(StoreError::NotFound {
            entity: "workflow",
            id: "w-1".into(),
        })
        .context("enqueueing");
        assert!(!unreachable(&refused));
        let queue = anyhow::Error::new(QueueError::TimedOut(std::time::Duration::from_secs(5)))
            .context("enqueueing check run 7");
        assert!(unreachable(&queue));
        let backlog = anyhow::Error::new(QueueError::Backlogged {
            queue: "escalator:checks".into(),
            due: 9_000,
        });
        assert!(!unreachable(&backlog));
        let at_connect = anyhow::Error::new(QueueError::Connect("connection refused".into()))
            .context("cannot connect to the queue at redis://127.0.0.1:1");
        assert!(unreachable(&at_connect));
    }
}
