//! End-to-end: real `escalator` processes against real PostgreSQL and Redis — seed, worker,
//! `enqueue check --wait`, `verify` — including duplicate checks, two workers, a worker killed
//! mid-run and garbage on every queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_escalates_and_reminds_exactly_once() {
    let w = World::new().await;
    w.seed(10_000);
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (1_500, 1_500));
    let s = &w.db.store;
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM audit_logs WHERE action = 'escalate'"
        )
        .await,
        1_500
    );
    assert_eq!(
        rows(s, "SELECT count(*) FROM audit_logs WHERE action = 'remind'").await,
        1_500
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM workflows WHERE status = 'escalated' AND escalation_level = 1"
        )
        .await,
        1_500
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM workflows WHERE assignee = escalation_target"
        )
        .await,
        1_500
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM workflows WHERE reminded_at IS NOT NULL"
        )
        .await,
        1_500
    );
    // escalation: new assignee, cc previous assignee and initiator; reminder: the assignee
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE kind = 'escalation'"
        )
        .await,
        4_500
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE kind = 'escalation' AND role = 'to'"
        )
        .await,
        1_500
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE kind = 'reminder'"
        )
        .await,
        1_500
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM outbox WHERE channel = 'email' AND status = 'pending'"
        )
        .await,
        3_000
    );
    // one email per escalation: to the new assignee, cc the previous assignee and initiator
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM outbox WHERE jsonb_array_length(payload->'cc') = 2 \
             AND payload->>'kind' = 'escalation'"
        )
        .await,
        1_500
    );
    let before = s.table_counts().await.unwrap();

    // a second check of the same instant finds nothing and writes nothing
    assert_eq!(w.check(), (0, 0));
    let after = s.table_counts().await.unwrap();
    assert_eq!(
        (after.audit_logs, after.notifications, after.outbox),
        (before.audit_logs, before.notifications, before.outbox)
    );
    w.verify();
    assert!(stop(worker).success(), "worker exited non-zero on SIGTERM");
}

/// The worker writes effects with plain inserts. Notifications that exist already (written
/// here by hand, with the keys the engine uses) make those batches fail once; the worker redoes
/// them with idempotent inserts: the totals are exact and nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_that_exist_already_are_skipped_not_doubled() {
    let w = World::new().await;
    w.seed(1_000);
    let escalator_store::Store::Postgres(pg) = &w.db.store else {
        unreachable!("World::new is on PostgreSQL")
    };
    let written = sqlx::query(
        "INSERT INTO notifications (recipient, workflow_id, kind, role, subject, body, dedup_key)
         SELECT escalation_target, id, 'escalation', 'to', 'by hand', 'by hand',
             'escalate:' || id || ':' || cycle || ':1:' || escalation_target
         FROM workflows WHERE due_at <= $1::timestamptz ORDER BY id LIMIT 10",
    )
    .bind(SEED_TIME)
    .execute(pg.pool())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(written, 10);
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (150, 150));
    let s = &w.db.store;
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE kind = 'escalation' AND role = 'to'"
        )
        .await,
        150
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE subject = 'by hand'"
        )
        .await,
        10
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM audit_logs WHERE action = 'escalate'"
        )
        .await,
        150
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE kind = 'escalation'"
        )
        .await,
        450
    );
    w.verify();
    assert!(stop(worker).success(), "worker exited non-zero on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_checks_at_once_on_two_workers_add_up_to_the_same_totals() {
    let mut w = World::new().await;
    w.extra_env
        .push(("ESCALATOR_BATCH_SIZE".into(), "100".into()));
    w.seed(10_000);
    let a = w.worker(free_port());
    let b = w.worker(free_port());
    let runs: Vec<i64> = (0..4)
        .map(|_| {
            let out = w.run(&["enqueue", "check", "--as-of", SEED_TIME]);
            field(&String::from_utf8_lossy(&out.stdout), "check_run_id")
        })
        .collect();
    let s = &w.db.store;
    let started = Instant::now();
    let mut totals = (0, 0);
    for id in &runs {
        loop {
            let r = s.get_check_run(*id).await.unwrap();
            if r.status == "succeeded" {
                totals.0 += i64::from(r.reminded);
                totals.1 += i64::from(r.escalated);
                break;
            }
            assert_ne!(r.status, "failed", "{r:?}");
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "runs did not finish: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(totals, (1_500, 1_500));
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM audit_logs WHERE action IN ('escalate', 'remind')"
        )
        .await,
        3_000
    );
    assert_eq!(rows(s, "SELECT count(*) FROM notifications").await, 6_000);
    w.verify();
    assert!(stop(a).success());
    assert!(stop(b).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_and_doubles_nothing() {
    let mut w = World::new().await;
    // small batches and a short heartbeat: many transactions to kill in, quick orphan recovery
    w.extra_env
        .push(("ESCALATOR_BATCH_SIZE".into(), "50".into()));
    w.extra_env
        .push(("ESCALATOR_HEARTBEAT_INTERVAL".into(), "1".into()));
    // orphans are re-run after the grace period and two heartbeats: 3 s
    w.extra_env
        .push(("ESCALATOR_SHUTDOWN_TIMEOUT".into(), "1".into()));
    w.extra_env
        .push(("ESCALATOR_WORKER_CONCURRENCY".into(), "1".into()));
    w.seed(40_000);
    let mut victim = w.worker(free_port());
    let out = w.run(&["enqueue", "check", "--as-of", SEED_TIME]);
    let id = field(&String::from_utf8_lossy(&out.stdout), "check_run_id");
    let s = &w.db.store;
    let started = Instant::now();
    loop {
        let r = s.get_check_run(id).await.unwrap();
        if r.batches > 0 && r.batches_done >= r.batches / 4 {
            assert!(
                r.batches_done < r.batches,
                "the run finished before the kill: {r:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run did not progress: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let killed_at = Instant::now();
    let rescuer = w.worker(free_port());
    loop {
        let r = s.get_check_run(id).await.unwrap();
        if r.status == "succeeded" {
            assert_eq!((r.reminded, r.escalated), (6_000, 6_000), "{r:?}");
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "orphaned work not recovered: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "orphaned work completed {:.1}s after SIGKILL",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM audit_logs WHERE action = 'escalate'"
        )
        .await,
        6_000
    );
    assert_eq!(
        rows(s, "SELECT count(*) FROM audit_logs WHERE action = 'remind'").await,
        6_000
    );
    assert_eq!(rows(s, "SELECT count(*) FROM outbox").await, 12_000);
    assert_eq!(w.check(), (0, 0));
    w.verify();
    assert!(stop(rescuer).success());
}

/// A COMMIT already sent takes effect even if the attempt gives up on it. An attempt whose
/// deadline passes while it commits therefore waits for the commit: the batch is done, not
/// dead, and what it wrote is counted in the metrics (I6). A test trigger makes each batch's
/// COMMIT take 1.5 s against a 1 s attempt limit and one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_out_of_time_while_committing_waits_for_its_commit() {
    let mut w = World::new().await;
    w.extra_env
        .push(("ESCALATOR_JOB_TIMEOUT".into(), "1".into()));
    w.extra_env
        .push(("ESCALATOR_MAX_ATTEMPTS".into(), "1".into()));
    w.seed(1_000);
    let escalator_store::Store::Postgres(pg) = &w.db.store else {
        panic!("the e2e suite runs on PostgreSQL")
    };
    for sql in [
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON check_run_batches \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    ] {
        sqlx::query(sql).execute(pg.pool()).await.unwrap();
    }
    let port = free_port();
    let worker = w.worker(port);
    assert_eq!(w.check(), (150, 150));
    let out = w.run(&["jobs", "dead"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("0 dead job(s)"), "{text}");
    let metrics = reqwest_metrics(port).await;
    for line in [
        "workflow_tasks_escalated_total 150",
        "workflow_tasks_reminded_total 150",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let run = &w.db.store.recent_check_runs(1).await.unwrap()[0];
    assert_eq!(run.status, "succeeded", "{run:?}");
    w.verify();
    assert!(stop(worker).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_queue_is_dead_lettered_counted_and_survived() {
    let w = World::new().await;
    w.seed(1_000);
    let port = free_port();
    let worker = w.worker(port);
    // a worker reports its counters from 0, so that rate() sees their first increment
    let started = Instant::now();
    while http_get(port, "/healthz").await.0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest_metrics(port).await;
    for line in [
        "escalator_jobs_total{queue=\"batches\",outcome=\"dead\"} 0",
        "escalator_notifications_total{channel=\"email\",outcome=\"dead\"} 0",
        "workflow_escalation_failures_total{queue=\"checks\"} 0",
        "workflow_tasks_escalated_total 0",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    for queue in ["checks", "batches", "noop"] {
        let q = format!("{}:{queue}", w.namespace);
        escalator_testkit::raw_queue::push_raw(
            &escalator_testkit::redis_url(),
            &q,
            "{\"truncated\": ",
        )
        .await;
    }
    // the worker keeps going: a real check still completes
    assert_eq!(w.check(), (150, 150));
    let started = Instant::now();
    loop {
        let out = w.run(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let dead: usize = text.lines().filter(|l| l.contains("dead=1")).count();
        if dead == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "garbage not dead-lettered: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest_metrics(port).await;
    for queue in ["checks", "batches", "noop"] {
        let line = format!("escalator_jobs_total{{queue=\"{queue}\",outcome=\"malformed\"}} 1");
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    // escalation failures count the planner's and the batches' jobs only
    for queue in ["checks", "batches"] {
        let line = format!("workflow_escalation_failures_total{{queue=\"{queue}\"}} 1");
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    assert!(
        !metrics.contains("workflow_escalation_failures_total{queue=\"noop\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("workflow_tasks_escalated_total 150"),
        "{metrics}"
    );
    // dead jobs can be listed and put back (garbage dies again, and is counted again)
    let out = w.run(&["jobs", "dead"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 dead job(s)"));
    assert!(
        metrics.contains("workflow_escalation_duration_seconds_bucket"),
        "histograms need buckets"
    );
    let out = w.run(&["jobs", "retry", "--all-dead"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 job(s) back in their queue"));
    // ... and they were: each ran again, died again, and was counted again
    let started = Instant::now();
    loop {
        let metrics = reqwest_metrics(port).await;
        let again = ["checks", "batches", "noop"].iter().all(|queue| {
            metrics.contains(&format!(
                "escalator_jobs_total{{queue=\"{queue}\",outcome=\"malformed\"}} 2"
            ))
        });
        if again {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the retried garbage did not run again:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // counted in the handler, dead once the queue has its answer: looked for until then
    let started = Instant::now();
    loop {
        let out = w.run(&["jobs", "dead"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("3 dead job(s)") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the retried garbage is not dead again:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.verify();
    assert!(stop(worker).success());
}

#[tokio::test]
async fn verify_and_status_work_on_an_empty_database_without_a_worker() {
    let w = World::new().await;
    w.verify();
    let out = w.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("due_now=0"), "{text}");
    assert!(text.contains(&format!("{}:checks", w.namespace)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checks_email_is_delivered_once_through_smtp() {
    let (port, received) = escalator_testkit::smtp::smtp_sink(None).await;
    let mut w = World::new().await;
    w.extra_env.push((
        "ESCALATOR_SMTP_URL".into(),
        format!("smtp://127.0.0.1:{port}"),
    ));
    w.seed(1_000);
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (150, 150));
    // one message per reminder and per escalation
    let started = Instant::now();
    while received.lock().unwrap().len() < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} emails",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = &w.db.store;
    let started = Instant::now();
    while rows(s, "SELECT count(*) FROM outbox WHERE status = 'sent'").await < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "outbox rows not marked sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a second check and more time: nothing is sent twice
    assert_eq!(w.check(), (0, 0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().unwrap().len(), 300);
    let escalation = received
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.contains("Subject: Escalated to you"))
        .cloned()
        .expect("an escalation email");
    assert!(escalation.contains("Cc: "), "{escalation}");
    w.verify();
    assert!(stop(worker).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_scenario_also_holds_on_sqlite() {
    let w = World::sqlite().await;
    w.seed(10_000);
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (1_500, 1_500));
    let s = &w.db.store;
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM audit_logs WHERE action = 'escalate'"
        )
        .await,
        1_500
    );
    assert_eq!(rows(s, "SELECT count(*) FROM notifications").await, 6_000);
    assert_eq!(rows(s, "SELECT count(*) FROM outbox").await, 3_000);
    let before = s.table_counts().await.unwrap();
    assert_eq!(w.check(), (0, 0));
    let after = s.table_counts().await.unwrap();
    assert_eq!(
        (after.audit_logs, after.notifications, after.outbox),
        (before.audit_logs, before.notifications, before.outbox)
    );
    w.verify();
    assert!(stop(worker).success());
}

/// An idle worker stays healthy: every poll of its queues counts as progress. (Counting only
/// jobs, a worker failed its liveness probe after a minute without work, and Kubernetes
/// restarted idle workers between checks.) A second worker on the same metrics port stops at
/// once, naming the variable, instead of running without `/metrics` and `/healthz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_stays_healthy_and_a_second_on_its_port_stops() {
    let w = World::new().await;
    let port = free_port();
    let worker = w.worker(port);
    let started = Instant::now();
    while http_get(port, "/healthz").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "no /healthz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = http_get(port, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let silent: i64 = body
        .trim()
        .strip_prefix("ok: last progress ")
        .and_then(|s| s.strip_suffix("s ago"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /healthz body {body:?}"));
    assert!(silent <= 1, "an idle worker's polls are progress: {body}");

    let mut second = w
        .command(&["worker"])
        .env("ESCALATOR_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            panic!("a worker whose metrics port is taken kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("ESCALATOR_METRICS_ADDR=127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stop(worker).success());
}

/// One workflow whose effects the database refuses (here an escalation target too long for
/// the assignee index, as a hand edit or an older version without the api's limit could leave
/// it) holds back none of the others: the refused batch is redone one workflow at a time, the
/// culprit is set aside and counted as the run's failure, every other workflow is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_the_database_refuses_holds_back_no_other() {
    let w = World::new().await;
    w.seed(1_000);
    let escalator_store::Store::Postgres(pg) = &w.db.store else {
        unreachable!()
    };
    let poison: uuid::Uuid = sqlx::query_scalar(
        "UPDATE workflows SET escalation_target =
             (SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 300) g)
         WHERE id = (SELECT id FROM workflows WHERE due_at <= $1 ORDER BY id LIMIT 1)
         RETURNING id",
    )
    .bind(chrono::DateTime::parse_from_rfc3339(SEED_TIME).unwrap())
    .fetch_one(pg.pool())
    .await
    .unwrap();
    let worker = w.worker(free_port());
    let checked_from = chrono::Utc::now();
    let out = w.command(&CHECK_AT_SEED_TIME).output().unwrap();
    let checked_until = chrono::Utc::now();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // the run set one workflow aside: no success for a script, though the rest was done
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("1 workflow(s) could not be evaluated"),
        "{stderr}"
    );
    assert_eq!(
        (field(&stdout, "reminded"), field(&stdout, "escalated")),
        (150, 149)
    );
    let s = &w.db.store;
    assert_eq!(
        rows(
            s,
            "SELECT failed::bigint FROM check_runs ORDER BY id DESC LIMIT 1"
        )
        .await,
        1
    );
    // set aside for five minutes from when the check ran (its as_of is the seed time)
    let set_aside = s.get_workflow(poison).await.unwrap();
    assert_eq!(set_aside.escalation_level, 0);
    let next = set_aside.next_check_at.unwrap() - chrono::Duration::minutes(5);
    assert!(
        checked_from - chrono::Duration::milliseconds(1) <= next && next <= checked_until,
        "next check {next:?} + 5 min, the check ran from {checked_from} to {checked_until}"
    );
    // the others are done: a second check at the same instant finds nothing
    assert_eq!(w.check(), (0, 0));
    // and verify names the one left past its deadline, and only it
    let out = w.command(&["verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].starts_with(&format!("I1 {poison}: past its deadline")),
        "{text}"
    );
    assert!(stop(worker).success());
}

/// `enqueue check --workflow` takes a workflow's uuid or its external id, also an external id
/// that is itself a uuid (callers' own ids often are): such an id used to be looked up only as
/// escalator's uuid and reported "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workflow_is_checked_by_its_uuid_or_its_external_id() {
    let w = World::new().await;
    w.seed(1_000);
    let escalator_store::Store::Postgres(pg) = &w.db.store else {
        unreachable!()
    };
    let due: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM workflows WHERE due_at <= $1 ORDER BY id LIMIT 2")
            .bind(chrono::DateTime::parse_from_rfc3339(SEED_TIME).unwrap())
            .fetch_all(pg.pool())
            .await
            .unwrap();
    let theirs = uuid::Uuid::new_v4().simple().to_string();
    sqlx::query("UPDATE workflows SET external_id = $1 WHERE id = $2")
        .bind(&theirs)
        .bind(due[1])
        .execute(pg.pool())
        .await
        .unwrap();
    let worker = w.worker(free_port());
    let check = |workflow: &str| {
        w.command(&[
            "enqueue",
            "check",
            "--workflow",
            workflow,
            "--as-of",
            SEED_TIME,
            "--wait",
        ])
        .output()
        .unwrap()
    };
    for workflow in [due[0].to_string(), theirs] {
        let out = check(&workflow);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{workflow}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(field(&text, "escalated"), 1, "{workflow}: {text}");
    }
    let nobody = uuid::Uuid::new_v4().to_string();
    let out = check(&nobody);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&nobody) && stderr.contains("not found"),
        "{stderr}"
    );
    w.verify();
    assert!(stop(worker).success());
}

/// `rediss://`: the worker and the CLI over a Redis that speaks only TLS, its certificate
/// trusted through `SSL_CERT_FILE` (a managed Redis with in-transit encryption, a private CA);
/// the same Redis with a certificate nobody vouched for is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_run_over_tls_and_refuse_an_untrusted_certificate() {
    let redis = escalator_testkit::services::PrivateRedis::start_tls();
    let mut w = World::new().await;
    w.extra_env.push(("REDIS_URL".into(), redis.url()));
    w.seed(1_000);

    let untrusted = w
        .command(&["enqueue", "check", "--as-of", SEED_TIME])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success(), "{stderr}");
    assert!(
        stderr.contains(&redis.url()) && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );

    w.extra_env.push((
        "SSL_CERT_FILE".into(),
        redis.cert_file().display().to_string(),
    ));
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (150, 150));
    assert_eq!(w.check(), (0, 0));
    w.verify();
    let status = w.run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!text.contains("UNREACHABLE"), "{text}");
    assert!(stop(worker).success());
}

/// `enqueue check --wait` ended at the first failed read of its run, with exit 1, the code of
/// a failed check: a database restarting under a script's wait read as a failed check. It
/// keeps reading until `--timeout`, and reports the run once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_enqueue_rides_out_a_database_that_goes_away() {
    let w = World::new().await;
    w.seed(1_000);
    let (relay, through) = Relay::to_server_of(&w.db.url).await;
    let waiting = w
        .command(&CHECK_AT_SEED_TIME)
        .env("DATABASE_URL", &through)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // once the run is enqueued, the database goes away for a while (no worker yet: the run
    // stays queued meanwhile)
    let started = Instant::now();
    while rows(&w.db.store, "SELECT count(*) FROM check_runs").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing enqueued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.restore();
    let worker = w.worker(free_port());
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("status=succeeded"), "{stdout}");
    assert_eq!(field(&stdout, "escalated"), 150, "{stdout}");
    assert!(stderr.contains("cannot read it"), "{stderr}");
    assert!(stderr.contains("the database answers again"), "{stderr}");
    assert!(stop(worker).success());
}

/// With `--wait`, `enqueue check` waited the queue's own five minutes for room in a backlogged
/// checks queue, whatever `--timeout` said. It gives up at `--timeout` with exit 4, its run
/// marked failed naming the backlog. While it waits it says why it sits there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_enqueue_gives_up_on_a_backlogged_queue_at_its_timeout() {
    let w = World::new().await;
    w.run(&["migrate"]);
    let names = escalator_jobs::QueueNames::new(&w.namespace.name);
    // as many jobs due on the checks queue as a push leaves room for, and no worker
    let backlog = escalator_jobs::QueueNames {
        noop: names.checks.clone(),
        ..names
    };
    let queues = escalator_jobs::Queues::connect(&escalator_testkit::redis_url(), backlog)
        .await
        .unwrap();
    queues.push_noops(escalator_jobs::MAX_DUE).await.unwrap();
    let command = w.command(&["enqueue", "check", "--wait", "--timeout", "3"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut command = command;
        command.output()
    })
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("not enqueued within --timeout 3s"),
        "{stderr}"
    );
    // said while it waited, not only when it gave up (without --wait, that is five minutes)
    assert!(
        stderr.contains("not enqueued yet: the checks queue is full")
            && stderr.contains("trying for up to 3s"),
        "{stderr}"
    );
    assert!(stderr.contains("jobs due after waiting"), "{stderr}");
    assert_eq!(
        rows(
            &w.db.store,
            "SELECT count(*) FROM check_runs WHERE status = 'failed'"
        )
        .await,
        1
    );
}
