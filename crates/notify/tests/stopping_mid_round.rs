//! A worker asked to stop mid-round starts no new send. A binary of its own, with one test:
//! the stop is process-wide and cannot be taken back (the handing back itself is checked on
//! both backends by `conformance::claimed_deliveries_handed_back_are_due_again`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::Utc;
use escalator_notify::{Deliverer, Mailer};
use escalator_testkit::TestDb;
use tokio::net::TcpListener;

/// SIGTERM in the middle of a round: the sends under way finish and are recorded, and no new
/// one starts. The round's second wave used to start after the stop, outlast the grace period
/// against a slow relay, be cut off mid-send and go out again after the lease. Its rows are
/// handed back, due at once for another sender, their claim undone.
#[tokio::test]
async fn a_stopping_sender_starts_no_send_and_hands_its_rows_back() {
    let db = TestDb::postgres().await;
    common::outbox(&db.store, 16, "boss@example.com").await;
    // a relay that accepts connections and never answers: each send runs to its deadline
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = relay.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = relay.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let d = Deliverer {
        mailer: Some(
            Mailer::smtp_with_deadline(
                &format!("smtp://127.0.0.1:{port}"),
                "escalator <e@example.com>",
                Duration::from_secs(2),
            )
            .unwrap(),
        ),
        ..common::deliverer(&db.store, port)
    };
    let drain = tokio::spawn(async move { d.drain(16, 1).await });
    // stop once the first wave (8 at a time) is in flight: each send waits 2 s for the relay
    let started = std::time::Instant::now();
    while connections.load(std::sync::atomic::Ordering::SeqCst) < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first wave never reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    escalator_runtime::shutdown::request_stop();
    let report = drain.await.unwrap().unwrap();
    assert_eq!((report.sent, report.retried), (0, 8), "{report:?}");
    assert!(report.more, "{report:?}");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 8);
    let rows = db.store.list_outbox(&[], 100).await.unwrap();
    let tried: Vec<_> = rows.iter().filter(|o| o.status == "failed").collect();
    let back: Vec<_> = rows.iter().filter(|o| o.status == "pending").collect();
    assert_eq!((tried.len(), back.len()), (8, 8), "{rows:?}");
    assert!(tried.iter().all(|o| o.attempts == 1), "{tried:?}");
    // never tried: the claim undone, due now for whoever sends next
    assert!(
        back.iter()
            .all(|o| o.attempts == 0 && o.next_attempt_at <= Utc::now()),
        "{back:?}"
    );
}
