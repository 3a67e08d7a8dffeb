//! A worker asked to stop (SIGTERM: every rolling deploy) claims no more deliveries. It kept
//! claiming rounds past its grace period; those cut off when the process exited could not
//! record what the relay had taken, and were sent again after their lease. A binary of its
//! own: the stop is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use escalator_testkit::TestDb;
use escalator_testkit::smtp::smtp_sink;

#[tokio::test]
async fn a_stopping_worker_claims_no_more_deliveries() {
    let db = TestDb::postgres().await;
    common::outbox(&db.store, 40, "boss@example.com").await;
    let (port, received) = smtp_sink(None).await;
    let deliverer = common::deliverer(&db.store, port);
    // a first round goes out as usual
    let report = deliverer.drain(16, 1).await.unwrap();
    assert_eq!(report.sent, 16);

    escalator_runtime::shutdown::request_stop();
    let report = deliverer.drain(16, 10).await.unwrap();
    assert_eq!(report.sent, 0, "{report:?}");
    assert!(report.more, "the next worker goes on: {report:?}");
    assert_eq!(received.lock().unwrap().len(), 16);
    // nothing claimed: the rest is due at once for whoever drains next, not after a lease
    let waiting = db.store.list_outbox(&["pending"], 100).await.unwrap();
    assert_eq!(waiting.len(), 24);
    assert!(waiting.iter().all(|o| o.attempts == 0), "{waiting:?}");
}
