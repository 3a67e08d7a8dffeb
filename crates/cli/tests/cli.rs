//! The `escalator` binary as users run it: real processes against real databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use escalator_testkit::{TestDb, free_port};

fn escalator(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run escalator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn migrate_then_seed(db: &TestDb) {
    let out = escalator(&db.url, &["migrate"]);
    assert!(
        out.status.success(),
        "migrate failed: {}",
        text(&out.stderr)
    );
    let args = [
        "seed",
        "--workflows",
        "1000",
        "--seed",
        "3",
        "--now",
        "2026-11-25T12:00:00Z",
    ];
    let out = escalator(&db.url, &args);
    assert!(out.status.success(), "seed failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("seeded 1000 workflows and 1000 users"),
        "{stdout}"
    );
    assert!(
        stdout.contains("700 ok, 150 warning, 150 breached"),
        "{stdout}"
    );

    let counts = db.store.table_counts().await.unwrap();
    assert_eq!((counts.workflows, counts.audit_logs), (1000, 1000));
    assert_eq!(db.store.list_users(None, 1000).await.unwrap().len(), 1000);

    // seeding the same data twice is refused, and nothing is written
    let out = escalator(&db.url, &args);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already holds the workflows of --seed 3"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(db.store.table_counts().await.unwrap().workflows, 1000);
}

#[tokio::test]
async fn migrate_and_seed_on_postgres_give_the_workload_distribution() {
    migrate_then_seed(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn migrate_and_seed_on_sqlite_give_the_workload_distribution() {
    migrate_then_seed(&TestDb::sqlite().await).await;
}

#[test]
fn migrate_creates_a_missing_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let out = escalator(&format!("sqlite://{}", path.display()), &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(path.exists());
}

#[test]
fn an_unsupported_database_url_is_named_in_the_error() {
    let out = escalator("mysql://root:secret@localhost/db", &["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("expected postgres://"), "{stderr}");
    assert!(!stderr.contains("secret"), "password leaked: {stderr}");
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let out = escalator("postgres://postgres@127.0.0.1:1/none", &["migrate"]);
    // 3: could not be reached (not a failed migration)
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("cannot connect to DATABASE_URL"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn seed_before_migrate_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // a database file without the schema (a missing one is refused: the test below)
    std::fs::File::create(dir.path().join("empty.db")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("empty.db").display());
    let out = escalator(&url, &["seed", "--workflows", "10"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("escalator migrate"),
        "{}",
        text(&out.stderr)
    );
    // status still reports the queues first: it is what an operator reads mid-upgrade
    let queue = format!("sqlite://{}", dir.path().join("empty.db.queue").display());
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("status")
        .env("DATABASE_URL", &url)
        .env("ESCALATOR_QUEUE_URL", &queue)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("queues ("),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("run `escalator migrate`"),
        "{}",
        text(&out.stderr)
    );
    // so does every command that reads the schema (verify said "no such table: audit_logs")
    for args in [
        &["verify"][..],
        &["check", "--dry-run"],
        &["outbox", "list"],
    ] {
        let out = escalator(&url, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("run `escalator migrate`"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// A mistyped SQLite path made every command create an empty database there and advise
/// `escalator migrate`, which then made it a healthy-looking database with nothing in it
/// (`verify`: "ok over 0 workflows"). Only `migrate` creates a missing file; the rest name it.
#[test]
fn only_migrate_creates_a_missing_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.db");
    let url = format!("sqlite://{}", file.display());
    let queue = format!("sqlite://{}", dir.path().join("typo.db.queue").display());
    for args in [
        &["verify"][..],
        &["status"],
        &["check", "--dry-run"],
        &["outbox", "list"],
        &["seed", "--workflows", "10"],
        &["enqueue", "check"],
        &["worker"],
        &["beat"],
        &["api"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("ESCALATOR_QUEUE_URL", &queue)
            .env("ESCALATOR_METRICS_ADDR", "127.0.0.1:0")
            .env("ESCALATOR_API_ADDR", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "there is no SQLite database at {}",
                file.display()
            )),
            "{args:?}: {stderr}"
        );
        assert!(!file.exists(), "{args:?} created {}", file.display());
    }
    // migrate creates it, and says what it applied; a second run that nothing was
    let out = escalator(&url, &["migrate"]);
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("migrations applied"), "{log}");
    // naming the database it migrated
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert!(!log.contains("DATABASE_URL is not set"), "{log}");
    assert!(file.exists());
    let out = escalator(&url, &["migrate"]);
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        log.contains("already up to date; nothing to apply"),
        "{log}"
    );
    let out = escalator(&url, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `seed --now 1970-01-01T00:00:00Z` wrote stages started in 1969, outside the years every
/// other write is held to; refused before the database is touched.
#[test]
fn seed_refuses_a_now_whose_workflows_fall_outside_the_stored_years() {
    for (now, extra) in [
        ("1970-01-01T00:00:00Z", &[][..]),
        ("9999-12-31T12:00:00Z", &[]),
        ("2026-12-07T00:00:00Z", &["--due-within", "999999999999"]),
    ] {
        let mut args = vec!["seed", "--now", now];
        args.extend_from_slice(extra);
        let out = escalator("sqlite://never-created.db", &args);
        assert_eq!(out.status.code(), Some(1), "{now}");
        assert!(
            text(&out.stderr).contains("1970-9999"),
            "{now}: {}",
            text(&out.stderr)
        );
    }
    assert!(!std::path::Path::new("never-created.db").exists());
}

/// A bad ESCALATOR_LOG_FORMAT was refused naming only `--log-format`.
#[test]
fn a_bad_log_format_names_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("status")
        .env("ESCALATOR_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("'xml'") && stderr.contains("ESCALATOR_LOG_FORMAT"),
        "{stderr}"
    );
    // empty counts as unset, as for every other variable: it stopped every command
    // (exit 3: it got as far as the database, which is not there)
    let unreachable = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("verify")
        .env("ESCALATOR_LOG_FORMAT", "")
        .env("DATABASE_URL", &unreachable)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

/// `escalator status 2>&1 | head -1`: the command's error written to a reader already gone
/// panicked (exit 101) instead of exiting 1.
#[test]
fn an_error_written_to_a_closed_stderr_is_still_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("verify")
        .env("DATABASE_URL", &url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the reader goes before the command has anything to say
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

/// A limit or timeout of 0 answered nonsense: "0 dead job(s)" with dead jobs there, "is a
/// worker running?" with one running. Both are refused as usage errors (exit 2), as is a
/// timeout past a week (the largest values panicked on an overflow, after the run was written).
#[test]
fn zero_limits_and_timeouts_are_usage_errors() {
    for (args, flag) in [
        (
            &[
                "enqueue",
                "check",
                "--wait",
                "--timeout",
                "18446744073709551615",
            ][..],
            "--timeout",
        ),
        (
            &["enqueue", "noop", "--wait", "--timeout", "604801"],
            "--timeout",
        ),
        (&["jobs", "dead", "--limit", "0"][..], "--limit"),
        (&["outbox", "list", "--limit", "0"], "--limit"),
        (
            &["enqueue", "check", "--wait", "--timeout", "0"],
            "--timeout",
        ),
        (
            &["enqueue", "noop", "--wait", "--timeout", "0"],
            "--timeout",
        ),
    ] {
        let out = escalator("sqlite://unused.db", args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr.contains("invalid value '") && stderr.contains(flag),
            "{args:?}: {stderr}"
        );
    }
}

/// A retry that names nothing to retry is called wrong (2), not refused (1): a script could not
/// tell the two apart.
#[test]
fn a_retry_without_what_to_retry_is_a_usage_error() {
    for args in [
        &["jobs", "retry"][..],
        &["jobs", "retry", "escalator:batches"],
        &["outbox", "retry"],
    ] {
        let out = escalator("sqlite://unused.db", args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("required arguments were not provided"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_malformed_time_is_refused_with_the_expected_format() {
    let out = escalator("sqlite://unused.db", &["seed", "--now", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );
}

/// Out-of-range counts and ports are refused by the command line, as the api refuses them:
/// `--limit 0` evaluated nothing and said so, `dev --port 0` printed URLs on port 0.
#[test]
fn zero_limits_and_ports_are_refused() {
    let out = escalator(
        "sqlite://unused.db",
        &["check", "--dry-run", "--limit", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--limit"),
        "{}",
        text(&out.stderr)
    );
    let out = escalator("sqlite://unused.db", &["dev", "--port", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--port"),
        "{}",
        text(&out.stderr)
    );
}

/// A dry run's scratch queue is removed with the files SQLite adds beside it: each run left an
/// `escalator-dry-run-<pid>.db-shm` and `-wal` in the temporary folder.
#[test]
fn a_dry_run_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("d.db").display());
    assert!(escalator(&db, &["migrate"]).status.success());
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["check", "--dry-run"])
        .env("DATABASE_URL", &db)
        .env("TMPDIR", tmp.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("nothing was written"),
        "{}",
        text(&out.stdout)
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `dev` on a port already taken loaded its demo and started its worker before it found out:
/// three more demo workflows at every failed start. It now stops before touching anything.
#[test]
fn dev_on_a_taken_port_stops_before_it_writes_anything() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let db = dir.path().join("clash.db");
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["dev", "--demo", "--port", &port, "--db"])
        .arg(&db)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("cannot listen"),
        "{}",
        text(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `jobs retry --all-dead` stopped at a dead job that cannot run again (an SQLite queue row
/// whose id apalis cannot read) and left every job after it dead: it says so and goes on.
#[tokio::test]
async fn retrying_every_dead_job_passes_over_one_that_cannot_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db.queue").display());
    let queues = escalator_jobs::Queues::connect(&url, escalator_jobs::QueueNames::default())
        .await
        .unwrap();
    queues.push_noops(2).await.unwrap();
    let escalator_jobs::Queues::Sqlite { pool, .. } = &queues else {
        unreachable!()
    };
    for sql in [
        "UPDATE Jobs SET id = 'NOT-A-ULID' WHERE rowid = (SELECT min(rowid) FROM Jobs)",
        "UPDATE Jobs SET status = 'Killed', done_at = strftime('%s', 'now')",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    pool.close().await;
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["jobs", "retry", "--all-dead"])
        .env("ESCALATOR_QUEUE_URL", &url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        text(&out.stdout).contains("1 job(s) back in their queue"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("skipped: job \"NOT-A-ULID\" cannot be retried"),
        "{stderr}"
    );
}

/// The queue file given as the database (an easy slip with two files side by side) read as a
/// schema to migrate, and `migrate` then failed on apalis' own migrations. It is named.
#[tokio::test]
async fn the_queue_file_given_as_the_database_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dev.db.queue");
    let url = format!("sqlite://{}", file.display());
    let queues = escalator_jobs::Queues::connect(&url, escalator_jobs::QueueNames::default())
        .await
        .unwrap();
    drop(queues);
    for args in [&["verify"][..], &["migrate"]] {
        let out = escalator(&url, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is a queue file"), "{args:?}: {stderr}");
        assert!(stderr.contains("ESCALATOR_QUEUE_URL"), "{args:?}: {stderr}");
    }
}

/// Runs `escalator args` whose reader of standard output is gone before its first line.
fn with_closed_stdout(database_url: &str, queue_url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_escalator"));
    command
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(queue) = queue_url {
        command.env("ESCALATOR_QUEUE_URL", queue);
    }
    let mut child = command.spawn().unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// `escalator status | head -1` ended in a panic and exit 101 once `head` had closed the pipe.
#[test]
fn a_report_read_by_a_reader_that_goes_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("e.db").display());
    let queue = format!("sqlite://{}", dir.path().join("e.db.queue").display());
    assert!(escalator(&db, &["migrate"]).status.success());
    for args in [&["status"][..], &["outbox", "list"], &["verify"]] {
        let out = with_closed_stdout(&db, Some(&queue), args);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `verify`'s exit status is its verdict: a reader that stops early (`escalator verify |
/// head -1`) must not turn violations into success.
#[tokio::test]
async fn verify_fails_on_violations_whoever_reads_its_listing() {
    let db = TestDb::sqlite().await;
    assert!(
        escalator(&db.url, &["seed", "--workflows", "20", "--seed", "1"])
            .status
            .success()
    );
    let escalator_store::Store::Sqlite(p) = &db.store else {
        unreachable!()
    };
    sqlx::query("UPDATE workflows SET escalation_level = 1, status = 'escalated'")
        .execute(p.pool())
        .await
        .unwrap();
    let out = with_closed_stdout(&db.url, None, &["verify"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("violation(s) found"), "{stderr}");
}

#[test]
fn help_describes_every_command() {
    let out = escalator("sqlite://unused.db", &["--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success());
    for cmd in ["migrate", "seed"] {
        assert!(help.contains(cmd), "{help}");
    }
    let out = escalator("sqlite://unused.db", &["seed", "--help"]);
    assert!(text(&out.stdout).contains("--workflows"));
}

#[test]
fn a_redis_that_may_evict_jobs_is_refused_at_start_up() {
    // a private Redis with an evicting policy: the shared one must stay as it is
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--maxmemory-policy",
            "allkeys-lru",
            "--dir",
            &dir.path().display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/services.sh)");
    let url = format!("redis://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let out = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
            .args(["jobs", "dead"])
            .env("REDIS_URL", &url)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        if !stderr.contains("Connection refused") || started.elapsed().as_secs() > 10 {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = redis.kill();
    let _ = redis.wait();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("maxmemory-policy is \"allkeys-lru\""),
        "{stderr}"
    );
    assert!(stderr.contains("noeviction"), "{stderr}");
}

/// In a Redis incident `status` still reports the database (the first command of every
/// runbook), says the queues are unreachable, and exits non-zero.
#[tokio::test]
async fn status_reports_the_database_when_the_queues_are_unreachable() {
    let db = TestDb::postgres().await;
    migrate_then_seed(&db).await;
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("status")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    // 3: a service could not be reached (not a failed run, not a usage error)
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("queues: UNREACHABLE"), "{stdout}");
    assert!(stdout.contains("workflows: ok="), "{stdout}");
    assert!(stdout.contains("recent check runs:"), "{stdout}");
    assert!(
        text(&out.stderr).contains("the queues could not be read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn retrying_a_job_of_an_unknown_queue_names_the_queues() {
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["jobs", "retry", "batchez", "17"])
        .env("ESCALATOR_QUEUE_NAMESPACE", "cli-unknown-queue")
        .env("REDIS_URL", escalator_testkit::redis_url())
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown queue \"batchez\""), "{stderr}");
    assert!(stderr.contains("cli-unknown-queue:batches"), "{stderr}");
}

/// api, worker and beat refuse a database whose schema is older than the build (no schema at
/// all: a forgotten `DATABASE_URL` opening an empty SQLite file; one migration missing: an
/// upgrade whose migration has not run yet) instead of taking jobs and failing each one.
#[tokio::test]
async fn services_refuse_a_database_without_this_builds_schema() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("empty.db")).unwrap();
    let empty = format!("sqlite://{}", dir.path().join("empty.db").display());
    let db = TestDb::postgres().await;
    let escalator_store::Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    for (url, missing) in [(empty.as_str(), "lacks "), (db.url.as_str(), "lacks 1 of")] {
        for role in ["worker", "beat", "api"] {
            let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
                .arg(role)
                .env("DATABASE_URL", url)
                .env("ESCALATOR_METRICS_ADDR", "127.0.0.1:0")
                .env("ESCALATOR_API_ADDR", "127.0.0.1:0")
                .env("ESCALATOR_QUEUE_NAMESPACE", "cli-schema")
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{role}: {stderr}");
            assert!(stderr.contains(missing), "{role}: {stderr}");
            assert!(
                stderr.contains("run `escalator migrate`"),
                "{role}: {stderr}"
            );
        }
    }
}

/// A database that cannot be reached is named with the reason, each cause once: the pool's
/// retries ended in "pool timed out while waiting for an open connection" (nothing about a
/// refused port), and a missing database was said twice over.
#[test]
fn an_unreachable_or_missing_database_is_reported_with_its_cause_once() {
    let closed = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let out = escalator(&closed, &["verify"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");

    let missing = escalator_testkit::replace_database(
        &escalator_testkit::admin_url(),
        "escalator_no_such_database",
    );
    let out = escalator(&missing, &["verify"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.matches("\"escalator_no_such_database\" does not exist")
            .count(),
        1,
        "{err}"
    );
}

/// A one-shot command keeps sqlx's slow-statement warnings (whole SQL statements) off its
/// stderr: `verify` here waits 1.5 s on a lock, past sqlx's 1 s threshold. Its own output and
/// errors still print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_statement_is_not_printed_by_a_one_shot_command() {
    let db = TestDb::postgres().await;
    let escalator_store::Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let mut tx = pg.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE workflows IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let url = db.url.clone();
    let verify = tokio::task::spawn_blocking(move || escalator(&url, &["verify"]));
    // released only once verify has waited on it for longer than the threshold
    let mut waited = false;
    for _ in 0..300 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        if waiting > 0 {
            waited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(waited, "verify never waited on the lock");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    tx.rollback().await.unwrap();
    let out = verify.await.unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
    assert!(!stderr.contains("slow statement"), "{stderr}");
    assert!(!stderr.contains("SELECT"), "{stderr}");
}

/// The placeholder Secret's values (deploy/k8s/base/secret.yaml) started an api whose admin
/// token is published in the repository. Every command refuses them, naming the variable.
#[test]
fn a_placeholder_credential_is_refused_naming_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    for (name, value) in [
        (
            "ESCALATOR_API_TOKENS",
            "ops:REPLACE-ME-admin-token-0000:admin",
        ),
        (
            "REDIS_URL",
            "redis://:REPLACE-ME-redis-password@127.0.0.1:6379",
        ),
        // the production overlay's sender
        ("ESCALATOR_EMAIL_FROM", "escalator <REPLACE-ME@example.com>"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
            .arg("api")
            .env("DATABASE_URL", &db)
            .env("ESCALATOR_API_ADDR", "127.0.0.1:0")
            .env(name, value)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name} holds a placeholder")),
            "{stderr}"
        );
        assert!(
            !stderr.contains("admin-token-0000"),
            "the value is not echoed: {stderr}"
        );
    }
    let placeholder_db = "postgres://escalator:REPLACE-ME-db-password@127.0.0.1:5432/escalator";
    let out = escalator(placeholder_db, &["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("DATABASE_URL holds a placeholder"),
        "{}",
        text(&out.stderr)
    );
}

/// In a database outage `status` still reports the queues (depths and dead jobs: what an
/// operator reads first), says the database could not be read, and exits non-zero. It printed
/// nothing but the connection error.
#[test]
fn status_reports_the_queues_when_the_database_is_unreachable() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("status")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/test"),
        )
        .env("REDIS_URL", escalator_testkit::redis_url())
        .env("ESCALATOR_QUEUE_NAMESPACE", "cli-status-db-down")
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("cli-status-db-down:checks"), "{stdout}");
    assert!(
        stderr.contains("the database could not be read (the queues are above)"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

/// `status` says why a run failed (the runbooks' first step reads it there; only the api
/// showed it) and who leads the beat.
#[tokio::test]
async fn status_names_a_failed_runs_error_and_the_beats_leader() {
    let db = TestDb::postgres().await;
    let now = chrono::Utc::now();
    let run = escalator_testkit::queued_run(&db.store, "beat", "all", now).await;
    db.store
        .fail_check_run(
            run.id,
            "the check could not be enqueued: redis: connection refused",
            now,
        )
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("status")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", escalator_testkit::redis_url())
        .env("ESCALATOR_QUEUE_NAMESPACE", "cli-status-runs")
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("beat: no beat has led yet"), "{stdout}");
    assert!(
        stdout.contains("error: the check could not be enqueued: redis: connection refused"),
        "{stdout}"
    );
    db.store
        .acquire_lease("beat", "beat-7f", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("status")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", escalator_testkit::redis_url())
        .env("ESCALATOR_QUEUE_NAMESPACE", "cli-status-runs")
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("beat: beat epoch=1 holder=beat-7f (leading, lease for"),
        "{stdout}"
    );
}

/// Scripts tell outcomes apart by the exit status: 3 when the database cannot be reached (it
/// was 1, like violations found, and a cron job paged "invariant violated" for a database
/// blip), 2 for usage (`--timeout` without `--wait` did nothing and said nothing).
#[test]
fn an_unreachable_database_and_a_usage_slip_have_exit_statuses_of_their_own() {
    let port = free_port();
    let unreachable = format!("postgres://postgres@127.0.0.1:{port}/test");
    for args in [
        &["verify"][..],
        &["check", "--dry-run"],
        &["outbox", "list"],
    ] {
        let out = escalator(&unreachable, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot connect to DATABASE_URL"),
            "{stderr}"
        );
    }
    let out = escalator(&unreachable, &["enqueue", "check", "--timeout", "3"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--wait"), "{stderr}");
    // the exit statuses are in --help
    let out = escalator(&unreachable, &["--help"]);
    assert!(
        text(&out.stdout).contains("Exit status: 0 done"),
        "{}",
        text(&out.stdout)
    );
}

/// `enqueue check --wait` started with no worker running, and the run it recorded (queued
/// until the test finishes it as a worker would).
async fn waiting_enqueue(
    db: &TestDb,
    ns: &escalator_testkit::RedisNamespace,
) -> (std::process::Child, escalator_store::CheckRun) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["enqueue", "check", "--wait", "--timeout", "60"])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", escalator_testkit::redis_url())
        .env("ESCALATOR_QUEUE_NAMESPACE", &ns.name)
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if let Some(run) = db.store.recent_check_runs(1).await.unwrap().pop() {
            return (child, run);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("enqueue recorded no run");
}

/// `enqueue check --wait | true`: the reader gone before the result line turned a failed run
/// into exit 0. The verdict is the exit status, whoever reads the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_exit_1_whoever_reads_its_line() {
    let db = TestDb::postgres().await;
    let ns = escalator_testkit::RedisNamespace::new("cli-wait-closed");
    let (mut child, run) = waiting_enqueue(&db, &ns).await;
    drop(child.stdout.take());
    db.store
        .fail_check_run(run.id, "the planner failed", chrono::Utc::now())
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the planner failed"), "{stderr}");
}

/// `escalator migrate` with neither DATABASE_URL nor --database-url migrated a new
/// `./escalator.db` without a word: a deploy step that lost the variable went green.
#[test]
fn migrate_without_a_database_url_says_which_database_it_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: DATABASE_URL is not set: migrating the default, sqlite://escalator.db"
        ),
        "{stderr}"
    );
    assert!(dir.path().join("escalator.db").exists());
}

/// A `--as-of` in the future is refused (exit 1, naming it) before any service is reached: it
/// was checked after connecting, so with Redis or the database down a script saw exit 3,
/// "unreachable", and retried bad input as an outage.
#[test]
fn a_future_as_of_is_refused_before_the_services_are_reached() {
    let unreachable = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["enqueue", "check", "--as-of", "2099-01-01T00:00:00Z"])
        .env("DATABASE_URL", &unreachable)
        .env("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()))
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--as-of 2099-01-01"), "{stderr}");
}

/// A Redis that stops answering between the connection and the push is an outage (exit 3),
/// as one unreachable at the connection is; the error was kept only as text, and a script
/// read exit 1, "failed". Here Redis holds every write (`CLIENT PAUSE … WRITE`) after the
/// command has connected and read its settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_at_the_push_is_exit_3() {
    let db = TestDb::postgres().await;
    let redis = escalator_testkit::services::PrivateRedis::start();
    let paused = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "PAUSE",
            "30000",
            "WRITE",
        ])
        .output()
        .expect("redis-cli");
    assert!(paused.status.success(), "{}", text(&paused.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["enqueue", "check"])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis.url())
        .env_remove("ESCALATOR_QUEUE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("enqueueing check run"), "{stderr}");
    assert!(stderr.contains("if the job went in after all"), "{stderr}");
    let run = db.store.recent_check_runs(1).await.unwrap().pop().unwrap();
    assert_eq!(run.status, "failed", "{run:?}");
}

/// `enqueue check --wait` on a run that finished with workflows it could not evaluate (set
/// aside: their policy unreadable) exits 1 after its line: it exited 0, and `&& echo ok` said
/// all was well while they went unescalated. No worker runs here; the run's outcome is
/// written as a worker writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_workflows_it_could_not_evaluate_is_exit_1() {
    let db = TestDb::postgres().await;
    let ns = escalator_testkit::RedisNamespace::new("cli-wait-set-aside");
    let (child, run) = waiting_enqueue(&db, &ns).await;
    let escalator_store::Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    sqlx::query(
        "UPDATE check_runs SET status = 'succeeded', batches = 1, batches_done = 1,
             checked = 5, escalated = 3, failed = 2, started_at = now(), finished_at = now()
         WHERE id = $1",
    )
    .bind(run.id)
    .execute(pg.pool())
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("status=succeeded") && stdout.contains("failed=2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("2 workflow(s) could not be evaluated"),
        "{stderr}"
    );
}

/// `outbox list` says how long the longest-waiting due delivery has waited, as the
/// DeliveriesOverdue alert's runbook has the operator read it; a delivery due only now is no
/// news and is not mentioned.
#[tokio::test]
async fn outbox_list_names_the_longest_wait_of_a_due_delivery() {
    let db = TestDb::sqlite().await;
    let delivery = |key: &str| escalator_store::NewOutbox {
        channel: "email",
        recipient: "alice@example.com".into(),
        workflow_id: None,
        payload: serde_json::json!({"to": ["alice@example.com"], "cc": [], "subject": key}),
        idempotency_key: key.into(),
    };
    let write = async |key: &str, at: chrono::DateTime<chrono::Utc>| {
        let effects = escalator_store::BatchEffects {
            outbox: vec![delivery(key)],
            ..Default::default()
        };
        let mut tx = db.store.begin_batch().await.unwrap();
        tx.apply(&effects, at).await.unwrap();
        tx.commit().await.unwrap();
    };
    write("fresh", chrono::Utc::now()).await;
    let out = escalator(&db.url, &["outbox", "list"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("1 waiting to be sent, 1 due now\n"),
        "{stdout}"
    );
    let since = "2026-11-25T12:00:00Z".parse().unwrap();
    write("stuck", since).await;
    let stdout = text(&escalator(&db.url, &["outbox", "list"]).stdout);
    assert!(
        stdout.contains(
            "2 waiting to be sent, 2 due now (the longest-waiting since 2026-11-25T12:00:00Z, "
        ),
        "{stdout}"
    );
}

/// Rolling back to the previous release runs its `escalator migrate` (the Kubernetes Job the
/// deploy waits for) on a schema the newer release upgraded: it failed on the migration it
/// does not know, and the rollback stopped there. It now says so and succeeds, and `verify`
/// runs on that schema.
#[tokio::test]
async fn migrate_succeeds_on_a_schema_a_newer_release_upgraded() {
    for db in [TestDb::postgres().await, TestDb::sqlite().await] {
        let newer = "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                     execution_time) VALUES (99991231000000, 'a later release', true, ";
        match &db.store {
            escalator_store::Store::Postgres(pg) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{newer}'\\x00'::bytea, 1)")))
                    .execute(pg.pool())
                    .await
                    .unwrap();
            }
            escalator_store::Store::Sqlite(lite) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{newer}x'00', 1)")))
                    .execute(lite.pool())
                    .await
                    .unwrap();
            }
        }
        let out = escalator(&db.url, &["migrate"]);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", db.url);
        assert!(stderr.contains("newer than this build"), "{stderr}");
        let out = escalator(&db.url, &["verify"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}
