//! Notifications end to end: real worker processes, real Redis and PostgreSQL, and a real SMTP
//! listener counting what arrives — digests decided once per run and recipient, every
//! message delivered once, none on a second check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{SEED_TIME, World, free_port, rows, stop};
use escalator_store::{NewWorkflow, Store, User};

fn user(id: &str, manager: Option<&str>) -> User {
    User {
        id: id.into(),
        display_name: format!("User {id}"),
        email: Some(format!("{id}@example.com")),
        phone: None,
        slack: None,
        manager_id: manager.map(Into::into),
        active: true,
        channels: None,
    }
}

/// Waits until the sink holds `n` messages and every outbox row is sent, then a little longer
/// to catch extras.
async fn delivered(received: &Arc<Mutex<Vec<String>>>, store: &Store, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let got = received.lock().unwrap().len();
        let unsent = rows(store, "SELECT count(*) FROM outbox WHERE status <> 'sent'").await;
        if got >= n && unsent == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let stuck = store
                .list_outbox(&["pending", "failed", "dead"], 30)
                .await
                .unwrap();
            let stuck: Vec<_> = stuck
                .into_iter()
                .map(|o| (o.idempotency_key, o.status, o.attempts, o.last_error))
                .take(10)
                .collect();
            panic!("{got} of {n} messages arrived, {unsent} outbox rows not sent: {stuck:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    received.lock().unwrap().clone()
}

/// The Message-ID each outbox row is sent with (its idempotency key or, for a digest, the key
/// naming its items, made header-safe, on the default sender's domain).
fn message_id(key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<{safe}@localhost>")
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l[name.len() + 1..].trim())
}

async fn outbox_keys(store: &Store) -> BTreeSet<String> {
    let escalator_store::Store::Postgres(pg) = store else {
        panic!("PostgreSQL expected")
    };
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT COALESCE(payload->>'message_key', idempotency_key) FROM outbox \
             WHERE channel = 'email'",
    )
    .fetch_all(pg.pool())
    .await
    .unwrap();
    keys.iter().map(|k| message_id(k)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_escalations_to_one_department_head_make_one_digest() {
    let (port, received) = escalator_testkit::smtp::smtp_sink(None).await;
    let mut w = World::new().await;
    w.extra_env.extend([
        (
            "ESCALATOR_SMTP_URL".into(),
            format!("smtp://127.0.0.1:{port}"),
        ),
        ("ESCALATOR_DIGEST_THRESHOLD".into(), "5".into()),
        // four batches: the digest must gather escalations written by different batches
        ("ESCALATOR_BATCH_SIZE".into(), "50".into()),
    ]);
    let s = &w.db.store;
    let mut users = vec![user("head", None)];
    users.extend((0..20).map(|i| user(&format!("mgr{i:02}"), Some("head"))));
    users.extend((0..20).map(|i| user(&format!("emp{i:02}"), Some(&format!("mgr{i:02}")))));
    s.upsert_users(&users).await.unwrap();
    let t: DateTime<Utc> = SEED_TIME.parse().unwrap();
    for i in 0..200 {
        let new = NewWorkflow {
            external_id: format!("digest-{i}"),
            title: format!("Purchase <{i}>"),
            kind: "purchase".into(),
            stage: "approval".into(),
            assignee: format!("mgr{:02}", i % 20),
            initiator: format!("emp{:02}", i % 20),
            escalation_target: None,
            policy_id: None,
            stage_started_at: Some(t - chrono::Duration::hours(25)),
            metadata: serde_json::json!({}),
        };
        s.create_workflow(&new, t - chrono::Duration::hours(25))
            .await
            .unwrap();
    }
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (0, 200));
    // the worker decides the run's digests right after the run finishes
    wait_until_nothing_is_held(s).await;
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM outbox WHERE payload->>'kind' = 'digest'"
        )
        .await,
        1
    );
    // in-app stays per workflow
    assert_eq!(
        rows(
            s,
            "SELECT count(*) FROM notifications WHERE recipient = 'head' AND role = 'to'"
        )
        .await,
        200
    );
    // the head's one digest, and the copies of each escalation for the people cc'd on it
    let expected = outbox_keys(s).await;
    assert_eq!(expected.len(), 1 + 200);
    let messages = delivered(&received, s, expected.len()).await;
    assert_eq!(messages.len(), 201);
    let to_head: Vec<&String> = messages
        .iter()
        .filter(|m| header(m, "To").is_some_and(|to| to.contains("head@example.com")))
        .collect();
    assert_eq!(to_head.len(), 1, "the head got more than the digest");
    let digest = to_head[0];
    assert!(
        header(digest, "Subject")
            .unwrap()
            .starts_with("200 workflows were escalated to you"),
        "{digest}"
    );
    let got: BTreeSet<String> = messages
        .iter()
        .map(|m| header(m, "Message-ID").unwrap().to_owned())
        .collect();
    assert_eq!(got, expected);

    // a second check escalates nothing and sends nothing
    assert_eq!(w.check(), (0, 0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().unwrap().len(), 201);
    w.verify();
    assert!(stop(worker).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_check_delivers_exactly_the_expected_email_once() {
    let (port, received) = escalator_testkit::smtp::smtp_sink(None).await;
    let mut w = World::new().await;
    w.extra_env.extend([
        (
            "ESCALATOR_SMTP_URL".into(),
            format!("smtp://127.0.0.1:{port}"),
        ),
        ("ESCALATOR_DIGEST_THRESHOLD".into(), "5".into()),
    ]);
    w.seed(10_000);
    let worker = w.worker(free_port());
    assert_eq!(w.check(), (1_500, 1_500));
    let s = &w.db.store;
    // the worker decides the run's digests right after the run finishes
    wait_until_nothing_is_held(s).await;
    // the expected messages, from the database: one per outbox row
    let expected = outbox_keys(s).await;
    let digests = rows(
        s,
        "SELECT count(*) FROM outbox WHERE payload->>'kind' = 'digest'",
    )
    .await;
    eprintln!(
        "{} email messages expected, {digests} of them digests",
        expected.len()
    );
    assert!(
        digests > 0,
        "the seed's managers get more than 5 escalations each"
    );
    let messages = delivered(&received, s, expected.len()).await;
    assert_eq!(messages.len(), expected.len(), "extra or missing messages");
    let got: BTreeSet<String> = messages
        .iter()
        .map(|m| header(m, "Message-ID").unwrap().to_owned())
        .collect();
    assert_eq!(got, expected, "each row sent once, as itself");

    assert_eq!(w.check(), (0, 0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().unwrap().len(), expected.len());
    w.verify();
    assert!(stop(worker).success());
}

/// Waits (up to 30 s) until every held delivery has been decided.
async fn wait_until_nothing_is_held(s: &escalator_store::Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = rows(s, "SELECT count(*) FROM outbox_held").await;
        if held == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{held} deliveries still held 30 s after the run finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
