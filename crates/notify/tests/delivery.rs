//! Delivery through a real SMTP conversation: a local SMTP sink (a test server speaking the
//! protocol, as a mail relay would) and real PostgreSQL and SQLite outboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use escalator_notify::{Deliverer, Mailer};
use escalator_store::{BatchEffects, NewOutbox, Store};
use escalator_testkit::TestDb;
use escalator_testkit::smtp::{Picky, picky_smtp_sink, smtp_sink};
use tokio::net::TcpListener;

mod common;

use common::{deliverer, outbox};

async fn statuses(store: &Store) -> Vec<String> {
    store
        .list_outbox(&[], 100)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.status)
        .collect()
}

async fn every_message_is_sent_once(db: TestDb) {
    let (port, received) = smtp_sink(None).await;
    outbox(&db.store, 3, "boss@example.com").await;
    let d = deliverer(&db.store, port);
    let report = d.drain(2, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (3, 0, 0));
    assert_eq!(statuses(&db.store).await, ["sent", "sent", "sent"]);
    assert_eq!(received.lock().unwrap().len(), 3);
    // a second drain finds nothing to send
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 0);
    assert_eq!(received.lock().unwrap().len(), 3);
    // sends run side by side: find message #0 rather than expect it first
    let first = received
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.contains("Subject: Escalated #0"))
        .cloned()
        .unwrap();
    assert!(first.contains("Subject: Escalated #0"), "{first}");
    assert!(first.contains("Cc: cc@example.com"), "{first}");
    assert!(
        first.contains("Message-ID: <escalate.0.1.1.email@example.com>"),
        "{first}"
    );
    assert_eq!(
        db.store.outbox_backlog(Utc::now()).await.unwrap(),
        escalator_store::OutboxBacklog::default()
    );
}

#[tokio::test]
async fn every_message_is_sent_once_on_postgres() {
    every_message_is_sent_once(TestDb::postgres().await).await;
}

#[tokio::test]
async fn every_message_is_sent_once_on_sqlite() {
    every_message_is_sent_once(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn a_temporary_refusal_is_retried_later_and_a_permanent_one_is_dead() {
    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "boss@example.com").await;
    let (port, _) = smtp_sink(Some("451 4.3.0 try again later\r\n")).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (0, 1, 0));
    let row = &db.store.list_outbox(&[], 10).await.unwrap()[0];
    assert_eq!((row.status.as_str(), row.attempts), ("failed", 1));
    assert!(
        row.next_attempt_at > Utc::now() + chrono::Duration::seconds(10),
        "no backoff: {row:?}"
    );
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("451"),
        "{row:?}"
    );
    // not due yet: nothing is claimed
    assert_eq!(
        deliverer(&db.store, port).drain(10, 10).await.unwrap(),
        Default::default()
    );

    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "nobody@example.com").await;
    let (port, _) = smtp_sink(Some("550 5.1.1 no such user\r\n")).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!(report.dead, 1);
    assert_eq!(statuses(&db.store).await, ["dead"]);
    // an operator can put it back in line
    assert_eq!(
        db.store
            .retry_dead_deliveries(None, Utc::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(statuses(&db.store).await, ["pending"]);
}

/// A row whose every attempt ended without an outcome written (its sender killed mid-send,
/// each time by the same message, say) was claimed again after each lease for ever, past the
/// attempt limit. Two claims past it, it is dead, unsent: the relay may have it. A claim cut
/// off before its send (a sender killed mid-round) still leaves it its attempt.
#[tokio::test]
async fn a_row_claimed_past_its_attempt_limit_without_an_outcome_is_dead_unsent() {
    // claimed up to the limit, each claim cut off: it still gets a real attempt
    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "boss@example.com").await;
    let (port, received) = smtp_sink(None).await;
    let d = deliverer(&db.store, port);
    let mut now = Utc::now();
    for _ in 0..d.max_attempts {
        db.store.claim_deliveries(now, d.lease, 10).await.unwrap();
        now += chrono::Duration::from_std(d.lease).unwrap() + chrono::Duration::seconds(1);
    }
    assert_eq!(d.drain_as_of(now, 10, 10).await.unwrap().sent, 1);
    assert_eq!(received.lock().unwrap().len(), 1);

    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "boss@example.com").await;
    let (port, received) = smtp_sink(None).await;
    let d = deliverer(&db.store, port);
    // five senders each claim it and die before writing what happened
    let mut now = Utc::now();
    for attempt in 1..=d.max_attempts + 2 {
        let claimed = db.store.claim_deliveries(now, d.lease, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, attempt);
        now += chrono::Duration::from_std(d.lease).unwrap() + chrono::Duration::seconds(1);
    }
    let report = d.drain_as_of(now, 10, 10).await.unwrap();
    assert_eq!((report.sent, report.dead), (0, 1), "{report:?}");
    assert!(received.lock().unwrap().is_empty());
    let row = &db.store.list_outbox(&[], 10).await.unwrap()[0];
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 6));
    let error = row.last_error.as_deref().unwrap_or("");
    assert!(error.contains("without an outcome recorded"), "{row:?}");
    // nothing more is claimed; an operator's retry sends it
    let later = now + chrono::Duration::hours(1);
    assert_eq!(
        d.drain_as_of(later, 10, 10).await.unwrap(),
        Default::default()
    );
    db.store.retry_dead_deliveries(None, later).await.unwrap();
    assert_eq!(d.drain_as_of(later, 10, 10).await.unwrap().sent, 1);
    assert_eq!(received.lock().unwrap().len(), 1);
}

/// With the default attempt limit of 30, a row no outcome was ever written for (a message its
/// sender crashes on, every time) was claimed 32 times, each crash-looping a worker, each
/// perhaps sent again. Such a row is dead, unsent, after 8 claims and the 2 spare ones, as at
/// the old limit; a row that failed with its outcome written keeps the whole limit.
#[tokio::test]
async fn a_row_never_recorded_is_dead_after_ten_claims_whatever_the_attempt_limit() {
    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "boss@example.com").await;
    let (port, received) = smtp_sink(None).await;
    let mut d = deliverer(&db.store, port);
    d.max_attempts = 30;
    let mut now = Utc::now();
    for _ in 0..10 {
        db.store.claim_deliveries(now, d.lease, 10).await.unwrap();
        now += chrono::Duration::from_std(d.lease).unwrap() + chrono::Duration::seconds(1);
    }
    let report = d.drain_as_of(now, 10, 10).await.unwrap();
    assert_eq!((report.sent, report.dead), (0, 1), "{report:?}");
    assert!(received.lock().unwrap().is_empty());
    let row = &db.store.list_outbox(&[], 10).await.unwrap()[0];
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 11));

    // one that failed (its outcome written) and was then claimed as often still gets its try
    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "boss@example.com").await;
    let (refusing, _) = smtp_sink(Some("451 4.3.0 try again later\r\n")).await;
    let mut first = deliverer(&db.store, refusing);
    first.max_attempts = 30;
    assert_eq!(first.drain(10, 10).await.unwrap().retried, 1);
    let (port, received) = smtp_sink(None).await;
    let mut d = deliverer(&db.store, port);
    d.max_attempts = 30;
    let mut now = Utc::now() + chrono::Duration::hours(2);
    for _ in 0..10 {
        db.store.claim_deliveries(now, d.lease, 10).await.unwrap();
        now += chrono::Duration::from_std(d.lease).unwrap() + chrono::Duration::seconds(1);
    }
    assert_eq!(d.drain_as_of(now, 10, 10).await.unwrap().sent, 1);
    assert_eq!(received.lock().unwrap().len(), 1);
}

/// One email row as an escalation writes it: to the new assignee, cc the others.
async fn escalation_email(store: &Store, to: &str, cc: &[&str]) {
    let effects = BatchEffects {
        outbox: vec![NewOutbox {
            channel: "email",
            recipient: to.into(),
            workflow_id: None,
            payload: serde_json::json!({
                "to": [to], "cc": cc, "subject": "Escalated", "body": "It is overdue."
            }),
            idempotency_key: "escalate:9:1:1:email".into(),
        }],
        ..Default::default()
    };
    let mut tx = store.begin_batch().await.unwrap();
    tx.apply(&effects, Utc::now()).await.unwrap();
    tx.commit().await.unwrap();
}

/// A relay refusing one copy recipient (`RCPT TO`: 550 no such user, an initiator who left)
/// ends the transaction before DATA, and the whole message was dead: the new assignee never
/// got the escalation. The others get it, each in a transaction of their own.
#[tokio::test]
async fn a_recipient_the_relay_refuses_is_left_out_and_the_others_get_the_message() {
    let db = TestDb::postgres().await;
    escalation_email(
        &db.store,
        "boss@example.com",
        &["mgr@example.com", "gone@example.com"],
    )
    .await;
    let picky = Picky {
        refuse_recipients_containing: Some("gone@"),
        ..Picky::default()
    };
    let (port, received, envelopes) = picky_smtp_sink(picky).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (1, 0, 0));
    assert_eq!(statuses(&db.store).await, ["sent"]);
    assert_eq!(
        *envelopes.lock().unwrap(),
        [
            vec!["boss@example.com".to_owned()],
            vec!["mgr@example.com".to_owned()]
        ],
        "the primary recipient first, the refused one left out"
    );
    {
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 2);
        assert!(received.iter().all(|m| m.contains("To: boss@example.com")));
    }

    // the new assignee's own address refused: the copies still go, the row is dead and says why
    let db = TestDb::postgres().await;
    escalation_email(&db.store, "gone@example.com", &["mgr@example.com"]).await;
    let (port, _, envelopes) = picky_smtp_sink(picky).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.dead), (0, 1));
    assert_eq!(
        *envelopes.lock().unwrap(),
        [vec!["mgr@example.com".to_owned()]]
    );
    let row = &db.store.list_outbox(&[], 10).await.unwrap()[0];
    let error = row.last_error.as_deref().unwrap_or("");
    assert!(
        error.contains("every primary recipient") && error.contains("gone@example.com"),
        "{row:?}"
    );
    // and who has it already: a retry by hand would send it to them again
    assert!(
        error.contains("delivered to the copies only: mgr@example.com"),
        "{row:?}"
    );
}

/// A relay refusing one copy recipient for now (`RCPT TO`: 450, a full mailbox, an address
/// being verified) ended the transaction for everyone, on every attempt, until the row was
/// dead: the new assignee never got the escalation. The others get it, as for a 550; the one
/// deferred gets it later, alone (a row of its own). A primary recipient deferred (its
/// mailbox full for hours) no longer holds the message back from the copies either: they were
/// never tried, and once the row died nobody had it.
#[tokio::test]
async fn a_recipient_the_relay_defers_does_not_hold_the_message_back_from_the_others() {
    let db = TestDb::postgres().await;
    escalation_email(
        &db.store,
        "boss@example.com",
        &["mgr@example.com", "full@example.com"],
    )
    .await;
    let picky = Picky {
        defer_recipients_containing: Some("full@"),
        ..Picky::default()
    };
    let (port, _, envelopes) = picky_smtp_sink(picky).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (1, 0, 0));
    assert_eq!(
        *envelopes.lock().unwrap(),
        [
            vec!["boss@example.com".to_owned()],
            vec!["mgr@example.com".to_owned()]
        ]
    );

    let db = TestDb::postgres().await;
    escalation_email(&db.store, "full@example.com", &["mgr@example.com"]).await;
    let (port, _, envelopes) = picky_smtp_sink(picky).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!(
        (report.sent, report.retried, report.dead, report.deferred),
        (1, 0, 0, 1)
    );
    assert_eq!(
        *envelopes.lock().unwrap(),
        [vec!["mgr@example.com".to_owned()]]
    );
    let keys: Vec<String> = db
        .store
        .list_outbox(&[], 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| format!("{} {}", o.idempotency_key, o.status))
        .collect();
    assert_eq!(
        keys,
        [
            "escalate:9:1:1:email sent",
            "escalate:9:1:1:email:rcpt:full@example.com pending"
        ]
    );

    // nobody takes it: all of it later, nobody having it yet
    let db = TestDb::postgres().await;
    escalation_email(&db.store, "full@example.com", &["also.full@example.org"]).await;
    let (port, _, envelopes) = picky_smtp_sink(picky).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (0, 1, 0));
    assert!(envelopes.lock().unwrap().is_empty(), "nobody has it yet");
}

/// The new assignee's address refused for good, one copy taking the message and the other
/// deferred for now: the row was dead and the deferred copy never got the escalation (no
/// follow-up was written for a dead row). The row is still dead, saying why, and the deferred
/// copy gets it later, alone.
async fn a_copy_deferred_while_the_primary_is_refused_still_gets_the_message(db: TestDb) {
    escalation_email(
        &db.store,
        "gone@example.com",
        &["mgr@example.com", "full@example.com"],
    )
    .await;
    let picky = Picky {
        refuse_recipients_containing: Some("gone@"),
        defer_recipients_containing: Some("full@"),
        ..Picky::default()
    };
    let (port, _, envelopes) = picky_smtp_sink(picky).await;
    let now = Utc::now();
    let r = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried, r.dead, r.deferred), (0, 0, 1, 1));
    assert_eq!(
        *envelopes.lock().unwrap(),
        [vec!["mgr@example.com".to_owned()]]
    );
    let rows = db.store.list_outbox(&[], 10).await.unwrap();
    let summary: Vec<String> = rows
        .iter()
        .map(|o| format!("{} {}", o.idempotency_key, o.status))
        .collect();
    assert_eq!(
        summary,
        [
            "escalate:9:1:1:email dead",
            "escalate:9:1:1:email:rcpt:full@example.com pending"
        ]
    );
    let error = rows[0].last_error.as_deref().unwrap_or_default();
    for said in [
        "every primary recipient",
        "gone@example.com",
        "delivered to the copies only: mgr@example.com",
        "full@example.com",
    ] {
        assert!(error.contains(said), "{said}: {error}");
    }
    assert_eq!(rows[0].sent_at, None, "{:?}", rows[0]);
    // room again: the deferred copy gets it, alone; nobody else again
    let (port2, _, envelopes2) = picky_smtp_sink(Picky::default()).await;
    let r = deliverer(&db.store, port2)
        .drain_as_of(now + chrono::Duration::hours(2), 10, 10)
        .await
        .unwrap();
    assert_eq!((r.sent, r.dead), (1, 0));
    assert_eq!(
        *envelopes2.lock().unwrap(),
        [vec!["full@example.com".to_owned()]]
    );
}

/// The copy a relay deferred gets the message later, once, alone, as the same message (its
/// headers, its text, its Message-ID); the others are not sent it again. It used to be
/// dropped: logged, and the row recorded `sent`.
async fn a_copy_the_relay_defers_gets_the_message_later_once(db: TestDb) {
    escalation_email(
        &db.store,
        "boss@example.com",
        &["mgr@example.com", "full@example.com"],
    )
    .await;
    let picky = Picky {
        defer_recipients_containing: Some("full@"),
        ..Picky::default()
    };
    let (port, received, envelopes) = picky_smtp_sink(picky).await;
    let now = Utc::now();
    let r = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried, r.dead, r.deferred), (1, 0, 0, 1));
    let rows = db.store.list_outbox(&[], 10).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let parent = &rows[0];
    assert_eq!(parent.status, "sent");
    assert!(
        parent
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("full@example.com")),
        "{parent:?}"
    );
    let later = &rows[1];
    assert_eq!(
        (
            later.idempotency_key.as_str(),
            later.status.as_str(),
            later.attempts,
            later.recipient.as_str()
        ),
        (
            "escalate:9:1:1:email:rcpt:full@example.com",
            "pending",
            0,
            "full@example.com"
        )
    );
    assert!(
        later.next_attempt_at >= now + chrono::Duration::seconds(10),
        "backs off first: {later:?}"
    );
    // not due yet
    let r = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried), (0, 0));
    // still full: retried as a row of its own, nobody else sent it again, no follow-up of it
    let r = deliverer(&db.store, port)
        .drain_as_of(now + chrono::Duration::minutes(2), 10, 10)
        .await
        .unwrap();
    assert_eq!((r.sent, r.retried, r.dead, r.deferred), (0, 1, 0, 0));
    assert_eq!(db.store.list_outbox(&[], 10).await.unwrap().len(), 2);
    assert_eq!(envelopes.lock().unwrap().len(), 2);
    // room again: sent once, to that copy alone, as the same message
    let (port2, received2, envelopes2) = picky_smtp_sink(Picky::default()).await;
    let r = deliverer(&db.store, port2)
        .drain_as_of(now + chrono::Duration::hours(2), 10, 10)
        .await
        .unwrap();
    assert_eq!(r.sent, 1);
    assert_eq!(
        *envelopes2.lock().unwrap(),
        [vec!["full@example.com".to_owned()]]
    );
    let late = received2.lock().unwrap()[0].clone();
    let first = received.lock().unwrap()[0].clone();
    let header = |m: &str, name: &str| {
        m.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    for name in ["Message-ID:", "To:", "Cc:", "Subject:"] {
        assert_eq!(header(&late, name), header(&first, name), "{name}\n{late}");
    }
    assert!(
        header(&late, "Message-ID:").contains("escalate.9.1.1.email@example.com"),
        "{late}"
    );
    // and never again
    let r = deliverer(&db.store, port2)
        .drain_as_of(now + chrono::Duration::days(1), 10, 10)
        .await
        .unwrap();
    assert_eq!(r.sent, 0);
    assert_eq!(statuses(&db.store).await, ["sent", "sent"]);
}

#[tokio::test]
async fn a_copy_the_relay_defers_gets_the_message_later_once_on_postgres() {
    a_copy_the_relay_defers_gets_the_message_later_once(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_copy_the_relay_defers_gets_the_message_later_once_on_sqlite() {
    a_copy_the_relay_defers_gets_the_message_later_once(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn a_copy_deferred_while_the_primary_is_refused_still_gets_the_message_on_postgres() {
    a_copy_deferred_while_the_primary_is_refused_still_gets_the_message(TestDb::postgres().await)
        .await;
}

#[tokio::test]
async fn a_copy_deferred_while_the_primary_is_refused_still_gets_the_message_on_sqlite() {
    a_copy_deferred_while_the_primary_is_refused_still_gets_the_message(TestDb::sqlite().await)
        .await;
}

/// An address of a non-ASCII domain goes out in its ASCII form (a relay without SMTPUTF8,
/// such as Amazon SES, refused the whole message on every attempt); one whose part before the
/// @ has no ASCII form is left out, and the others get the message.
#[tokio::test]
async fn non_ascii_addresses_are_sent_in_ascii_or_left_out() {
    let db = TestDb::postgres().await;
    escalation_email(
        &db.store,
        "ana@bücher.de",
        &["josé@example.com", "mgr@example.com"],
    )
    .await;
    let (port, _, envelopes) = picky_smtp_sink(Picky::default()).await;
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (1, 0, 0));
    assert_eq!(
        *envelopes.lock().unwrap(),
        [vec![
            "ana@xn--bcher-kva.de".to_owned(),
            "mgr@example.com".to_owned()
        ]]
    );
}

/// A relay refusing escalator's credentials (535) made every message dead on its first
/// attempt; it is the configuration that is wrong, so messages wait for it to be fixed, as
/// they do without any sender.
#[tokio::test]
async fn refused_credentials_are_retried_not_dead() {
    let db = TestDb::postgres().await;
    escalation_email(&db.store, "boss@example.com", &[]).await;
    let picky = Picky {
        refuse_credentials: true,
        ..Picky::default()
    };
    let (port, received, _) = picky_smtp_sink(picky).await;
    let d = Deliverer {
        mailer: Some(
            Mailer::smtp(
                &format!("smtp://escalator:wrong@127.0.0.1:{port}"),
                "escalator <e@example.com>",
            )
            .unwrap(),
        ),
        ..deliverer(&db.store, port)
    };
    let report = d.drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (0, 1, 0));
    let row = &db.store.list_outbox(&[], 10).await.unwrap()[0];
    assert_eq!(row.status, "failed");
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("credentials"),
        "{row:?}"
    );
    assert!(received.lock().unwrap().is_empty());
}

/// A delivery job's drain stops claiming once its time is up and says there is more, instead
/// of being cut off by the job's deadline in the middle of sending (a message the relay took
/// would go unrecorded and be sent again after the lease): the claim under way finishes.
#[tokio::test]
async fn a_drain_out_of_time_finishes_its_claim_and_leaves_the_rest_for_the_next_job() {
    let db = TestDb::postgres().await;
    let (port, received) = smtp_sink(None).await;
    outbox(&db.store, 40, "boss@example.com").await;
    let d = deliverer(&db.store, port);
    let report = d.drain_within(16, 10, Duration::ZERO).await.unwrap();
    assert_eq!((report.sent, report.more), (16, true));
    assert_eq!(received.lock().unwrap().len(), 16);
    let report = d
        .drain_within(16, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((report.sent, report.more), (24, false));
    assert_eq!(
        db.store.outbox_backlog(Utc::now()).await.unwrap(),
        escalator_store::OutboxBacklog::default()
    );
}

#[tokio::test]
async fn an_unreachable_relay_is_a_transient_failure() {
    let db = TestDb::postgres().await;
    outbox(&db.store, 1, "boss@example.com").await;
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let report = deliverer(&db.store, port).drain(10, 10).await.unwrap();
    assert_eq!(report.retried, 1);
    assert_eq!(statuses(&db.store).await, ["failed"]);
}

#[tokio::test]
async fn dev_mode_writes_one_eml_per_message() {
    let db = TestDb::sqlite().await;
    outbox(&db.store, 2, "boss@example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let d = Deliverer {
        store: db.store.clone(),
        mailer: Some(Mailer::files(dir.path().join("mail"), "dev <e@localhost>").unwrap()),
        http: None,
        templates: Default::default(),
        max_attempts: 3,
        lease: Duration::from_secs(60),
    };
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 2);
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("mail"))
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // named by the delivery's key, whole (no partial file left)
    assert_eq!(
        names(),
        ["escalate_0_1_1_email.eml", "escalate_1_1_1_email.eml"]
    );
    let text = std::fs::read_to_string(dir.path().join("mail/escalate_0_1_1_email.eml")).unwrap();
    assert!(text.contains("To: boss@example.com"), "{text}");
    // a message sent again (its sender killed after writing it, before recording so)
    // replaces its file: random names left two copies
    let escalator_store::Store::Sqlite(p) = &db.store else {
        unreachable!()
    };
    sqlx::query(
        "UPDATE outbox SET status = 'pending', next_attempt_at = '2000-01-01T00:00:00.000000Z'",
    )
    .execute(p.pool())
    .await
    .unwrap();
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 2);
    assert_eq!(names().len(), 2, "{:?}", names());
}

#[tokio::test]
async fn a_relay_that_accepts_and_never_answers_is_timed_out_and_retried() {
    let db = TestDb::postgres().await;
    outbox(&db.store, 2, "boss@example.com").await;
    // accepts connections and says nothing, ever
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let d = Deliverer {
        store: db.store.clone(),
        mailer: Some(
            Mailer::smtp_with_deadline(
                &format!("smtp://127.0.0.1:{port}"),
                "e <e@example.com>",
                Duration::from_secs(1),
            )
            .unwrap(),
        ),
        http: None,
        templates: Default::default(),
        max_attempts: 3,
        lease: Duration::from_secs(60),
    };
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(20), d.drain(10, 10))
        .await
        .expect("the sender hung on a silent relay")
        .unwrap();
    assert_eq!(report.retried, 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    let rows = db.store.list_outbox(&[], 10).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == "failed"
                && r.last_error.as_deref().unwrap_or("").contains("no answer")),
        "{rows:?}"
    );
    held.abort();
}

/// An email written by a check carries its template set and values, not rendered text: the
/// deliverer renders subject, text and HTML when it sends it, with its own templates (here an
/// override of the subject).
#[tokio::test]
async fn an_email_is_written_from_its_template_when_it_is_sent() {
    let db = TestDb::postgres().await;
    let (port, received) = smtp_sink(None).await;
    let effects = BatchEffects {
        outbox: vec![NewOutbox {
            channel: "email",
            recipient: "head@example.com".into(),
            workflow_id: None,
            payload: serde_json::json!({
                "template": "escalation_to", "kind": "escalation", "title": "Buy <chairs>",
                "stage": "Manager Approval", "due": "2026-11-25 12:00 UTC",
                "greeting": "Head", "previous": "Emp", "new": "Head", "assignee": "Emp",
                "to": ["head@example.com"], "cc": ["emp@example.com"],
            }),
            idempotency_key: "escalate:w:1:1:email".into(),
        }],
        ..Default::default()
    };
    let mut tx = db.store.begin_batch().await.unwrap();
    tx.apply(&effects, Utc::now()).await.unwrap();
    tx.commit().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("escalation_to.subject.txt"),
        "Yours now: {{ title }}",
    )
    .unwrap();
    let mut d = deliverer(&db.store, port);
    d.templates = escalator_notify::Templates::from_dir(dir.path()).unwrap();
    let report = d.drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.dead), (1, 0));
    let message = received.lock().unwrap()[0].clone();
    assert!(
        message.contains("Subject: Yours now: Buy <chairs>"),
        "{message}"
    );
    assert!(message.contains("Cc: emp@example.com"), "{message}");
    assert!(message.contains("Head,"), "the text greets: {message}");
    assert!(
        message.contains("\"Buy <chairs>\" (Manager Approval)"),
        "the text names the workflow and its stage: {message}"
    );
}

/// An outcome is recorded only by the claim that holds the row: a sender whose lease ran out
/// mid-send (its row claimed again since) or whose row was finished meanwhile writes nothing.
/// Unfenced, a late retry or dead outcome overwrote `sent`, and the row was sent again.
async fn late_outcomes_are_fenced_off(db: TestDb) {
    use escalator_store::DeliveryOutcome;
    outbox(&db.store, 1, "boss@example.com").await;
    let now = Utc::now();
    let lease = Duration::from_secs(1);
    let first = db.store.claim_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    let later = now + chrono::Duration::seconds(2);
    let second = db.store.claim_deliveries(later, lease, 10).await.unwrap();
    assert_eq!(second.len(), 1, "the lease ran out: claimable again");
    let (a, b) = (&first[0], &second[0]);
    assert_eq!((a.attempts, b.attempts), (1, 2));
    let retry = DeliveryOutcome::Retry {
        error: "timed out".into(),
        retry_at: later,
    };
    assert!(
        !db.store
            .record_delivery(a.id, a.attempts, &retry, later)
            .await
            .unwrap()
    );
    assert!(
        db.store
            .record_delivery(b.id, b.attempts, &DeliveryOutcome::Sent, later)
            .await
            .unwrap()
    );
    let dead = DeliveryOutcome::Dead {
        error: "late".into(),
    };
    assert!(
        !db.store
            .record_delivery(b.id, b.attempts, &dead, later)
            .await
            .unwrap()
    );
    assert_eq!(statuses(&db.store).await, ["sent"]);
}

#[tokio::test]
async fn late_outcomes_are_fenced_off_on_postgres() {
    late_outcomes_are_fenced_off(TestDb::postgres().await).await;
}

#[tokio::test]
async fn late_outcomes_are_fenced_off_on_sqlite() {
    late_outcomes_are_fenced_off(TestDb::sqlite().await).await;
}

/// Workflows named `names`, each with a reminder email waiting in the outbox, as a batch
/// writes one.
async fn reminded_workflows(s: &Store, names: &[&str]) -> Vec<uuid::Uuid> {
    let now = Utc::now();
    let mut ids = Vec::new();
    for name in names {
        let new = escalator_testkit::new_workflow(name, now);
        ids.push(s.create_workflow(&new, now).await.unwrap().workflow.id);
    }
    let effects = BatchEffects {
        outbox: ids
            .iter()
            .map(|id| NewOutbox {
                channel: "email",
                recipient: "alice@example.com".into(),
                workflow_id: Some(*id),
                payload: serde_json::json!({
                    "kind": "reminder", "level": 0, "to": ["alice@example.com"], "cc": [],
                    "subject": format!("Reminder {id}"), "body": "It will be escalated."
                }),
                idempotency_key: format!("remind:{id}:1:0:email"),
            })
            .collect(),
        ..Default::default()
    };
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&effects, now).await.unwrap();
    tx.commit().await.unwrap();
    ids
}

/// Completes workflow `id` through the store, as the api does.
async fn complete(s: &Store, id: uuid::Uuid) {
    use escalator_store::{AuditReason, Transition, TransitionContext};
    let ctx = TransitionContext {
        actor: "alice".into(),
        reason: AuditReason::Api,
        expected_version: None,
        comment: None,
        now: Utc::now(),
        idempotency_key: None,
    };
    s.transition(id, &Transition::Complete, &ctx).await.unwrap();
}

/// A reminder still waiting when its workflow is completed (a relay was down) is not sent at
/// all; the open workflow's reminder goes out as usual (I4 at delivery).
#[tokio::test]
async fn a_reminder_of_a_workflow_completed_meanwhile_is_never_sent() {
    let db = TestDb::postgres().await;
    let s = &db.store;
    let ids = reminded_workflows(s, &["DONE", "OPEN"]).await;
    complete(s, ids[0]).await;

    let (port, received) = smtp_sink(None).await;
    let report = deliverer(s, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.obsolete, report.dead), (1, 1, 0));
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].contains(&format!("Reminder {}", ids[1])),
        "{}",
        got[0]
    );
    let mut rows = s.list_outbox(&[], 10).await.unwrap();
    rows.sort_by_key(|r| r.workflow_id != Some(ids[0]));
    assert_eq!(
        (rows[0].status.as_str(), rows[0].last_error.as_deref()),
        (
            "obsolete",
            Some("not sent: the workflow is completed since")
        )
    );
    assert_eq!(rows[1].status, "sent");
}

/// An email none of whose recipients is active any more when it is sent is not sent; one with
/// someone still active among them goes out (the SQL of both backends).
async fn an_email_to_people_deactivated_since_is_not_sent(db: TestDb) {
    let s = &db.store;
    let user = |id: &str, active: bool| escalator_store::User {
        id: id.into(),
        display_name: id.into(),
        email: Some(format!("{id}@example.com")),
        phone: None,
        slack: None,
        manager_id: None,
        active,
        channels: None,
    };
    s.upsert_users(&[user("carol", true), user("erin", true), user("bob", true)])
        .await
        .unwrap();
    let now = Utc::now();
    let mut ids = Vec::new();
    for name in ["GONE", "COPY-STAYS"] {
        let new = escalator_testkit::new_workflow(name, now);
        ids.push(s.create_workflow(&new, now).await.unwrap().workflow.id);
    }
    let effects = BatchEffects {
        outbox: [(ids[0], ["carol", "erin"]), (ids[1], ["carol", "bob"])]
            .iter()
            .map(|(id, people)| NewOutbox {
                channel: "email",
                recipient: "carol@example.com".into(),
                workflow_id: Some(*id),
                payload: serde_json::json!({
                    "kind": "escalation", "level": 1, "to": ["carol@example.com"],
                    "cc": [format!("{}@example.com", people[1])],
                    "subject": format!("Escalated {id}"), "body": "Yours now.",
                    "user_ids": people,
                }),
                idempotency_key: format!("escalate:{id}:1:1:email"),
            })
            .collect(),
        ..Default::default()
    };
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&effects, now).await.unwrap();
    tx.commit().await.unwrap();
    // carol and erin leave; bob stays
    s.upsert_users(&[user("carol", false), user("erin", false)])
        .await
        .unwrap();

    let (port, received) = smtp_sink(None).await;
    let report = deliverer(s, port).drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.obsolete, report.dead), (1, 1, 0));
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].contains(&format!("Escalated {}", ids[1])),
        "{}",
        got[0]
    );
    let mut rows = s.list_outbox(&[], 10).await.unwrap();
    rows.sort_by_key(|r| r.workflow_id != Some(ids[0]));
    assert_eq!(
        (rows[0].status.as_str(), rows[0].last_error.as_deref()),
        (
            "obsolete",
            Some("not sent: its recipients were deactivated since")
        )
    );
    assert_eq!(rows[1].status, "sent");
}

#[tokio::test]
async fn an_email_to_people_deactivated_since_is_not_sent_on_postgres() {
    an_email_to_people_deactivated_since_is_not_sent(TestDb::postgres().await).await;
}

#[tokio::test]
async fn an_email_to_people_deactivated_since_is_not_sent_on_sqlite() {
    an_email_to_people_deactivated_since_is_not_sent(TestDb::sqlite().await).await;
}

/// A round claims 16 rows and looks once whether their workflows moved on; its second wave of
/// sends starts when the first frees a slot, seconds later against a slow relay. Workflows
/// completed meanwhile still got their reminders. A send starting a while after its claim
/// looks again.
#[tokio::test]
async fn a_send_starting_late_in_its_round_looks_again_whether_its_workflow_closed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let db = TestDb::postgres().await;
    let s = &db.store;
    let names: Vec<String> = (0..16).map(|i| format!("LATE-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids = reminded_workflows(s, &names).await;
    // a relay that greets each connection after 5 s, in front of the sink
    let (sink, received) = smtp_sink(None).await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = relay.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", sink))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    let d = deliverer(s, port);
    let drain = tokio::spawn(async move { d.drain(16, 1).await });
    // the first wave (8 at a time) is under way: then every workflow is completed
    let started = std::time::Instant::now();
    while connections.load(Ordering::SeqCst) < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first wave never reached the relay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in &ids {
        complete(s, *id).await;
    }
    let report = drain.await.unwrap().unwrap();
    assert_eq!((report.sent, report.obsolete), (8, 8), "{report:?}");
    assert_eq!(received.lock().unwrap().len(), 8);
    assert_eq!(connections.load(Ordering::SeqCst), 8);
    let rows = s.list_outbox(&[], 100).await.unwrap();
    let obsolete = rows.iter().filter(|o| o.status == "obsolete").count();
    assert_eq!(obsolete, 8, "{rows:?}");
}

/// A message the relay took whose outcome could not be written at once (the database
/// restarting, a pool timeout) was left to its lease and then sent a second time. The write is
/// tried again after the round, until shortly before the lease ends: one message, `sent`.
#[tokio::test]
async fn an_outcome_the_database_refuses_at_first_is_written_later_not_sent_twice() {
    let db = TestDb::postgres().await;
    let escalator_store::Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    for statement in [
        "CREATE SEQUENCE refused_writes",
        "CREATE FUNCTION refuse_two_writes() RETURNS trigger AS $$
         BEGIN
           IF NEW.status = 'sent' AND nextval('refused_writes') <= 2 THEN
             RAISE EXCEPTION 'the database is restarting';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_two_writes BEFORE UPDATE ON outbox
         FOR EACH ROW EXECUTE FUNCTION refuse_two_writes()",
    ] {
        sqlx::query(statement).execute(pg.pool()).await.unwrap();
    }
    let (port, received) = smtp_sink(None).await;
    outbox(&db.store, 1, "boss@example.com").await;
    let d = deliverer(&db.store, port);
    let report = d.drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.retried, report.dead), (1, 0, 0));
    assert_eq!(statuses(&db.store).await, ["sent"]);
    assert_eq!(received.lock().unwrap().len(), 1);
    // after the lease nothing is due: it is not sent again
    let later = d
        .drain_as_of(Utc::now() + chrono::Duration::minutes(5), 10, 10)
        .await
        .unwrap();
    assert_eq!(later.sent, 0);
    assert_eq!(received.lock().unwrap().len(), 1);
}
