//! A message sent to each recipient alone (the relay refused one) by a sender told to stop
//! meanwhile. A binary of its own: the stop is process-wide and cannot be taken back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use escalator_store::{BatchEffects, NewOutbox};
use escalator_testkit::TestDb;
use escalator_testkit::smtp::{Picky, picky_smtp_sink};
use tokio::net::TcpListener;

/// One by one, each recipient may take the whole SMTP deadline: four of them outlasted the
/// grace period, the sender was cut off mid-message, and after its lease the whole message went
/// out again, to those who had it too. Once the sender is stopping, no further recipient is
/// tried: those left get the message later, alone (rows of their own).
#[tokio::test]
async fn a_stopping_sender_tries_no_further_recipient_alone() {
    let db = TestDb::postgres().await;
    let effects = BatchEffects {
        outbox: vec![NewOutbox {
            channel: "email",
            recipient: "boss@example.com".into(),
            workflow_id: None,
            payload: serde_json::json!({
                "to": ["boss@example.com"], "cc": ["gone@example.com", "mgr@example.com"],
                "subject": "Escalated", "body": "It is overdue."
            }),
            idempotency_key: "escalate:9:1:1:email".into(),
        }],
        ..Default::default()
    };
    let mut tx = db.store.begin_batch().await.unwrap();
    tx.apply(&effects, Utc::now()).await.unwrap();
    tx.commit().await.unwrap();
    // the relay refuses gone@ (so the message goes one recipient at a time); the process is
    // told to stop as the first of those sends connects
    let (sink, _received, envelopes) = picky_smtp_sink(Picky {
        refuse_recipients_containing: Some("gone@"),
        ..Picky::default()
    })
    .await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = relay.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            if seen.fetch_add(1, Ordering::SeqCst) == 1 {
                escalator_runtime::shutdown::request_stop();
            }
            tokio::spawn(async move {
                let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", sink))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    let report = common::deliverer(&db.store, port)
        .drain(10, 1)
        .await
        .unwrap();
    assert_eq!((report.sent, report.deferred), (1, 2), "{report:?}");
    // the whole message (refused), then boss alone; nobody else was tried
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        *envelopes.lock().unwrap(),
        [vec!["boss@example.com".to_owned()]]
    );
    // the two not tried have rows of their own, due for whoever sends next
    let rows = db.store.list_outbox(&[], 10).await.unwrap();
    let pending: Vec<&str> = rows
        .iter()
        .filter(|o| o.status == "pending")
        .map(|o| o.recipient.as_str())
        .collect();
    assert_eq!(pending.len(), 2, "{rows:?}");
}
