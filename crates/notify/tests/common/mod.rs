//! What the SMTP delivery tests share.

use std::time::Duration;

use chrono::Utc;
use escalator_notify::{Deliverer, Mailer};
use escalator_store::{BatchEffects, NewOutbox, Store};

/// A deliverer sending through the SMTP sink on `port`: 3 attempts, a 60 s lease.
pub fn deliverer(store: &Store, port: u16) -> Deliverer {
    Deliverer {
        store: store.clone(),
        mailer: Some(
            Mailer::smtp(
                &format!("smtp://127.0.0.1:{port}"),
                "escalator <e@example.com>",
            )
            .expect("an SMTP mailer"),
        ),
        http: None,
        templates: Default::default(),
        max_attempts: 3,
        lease: Duration::from_secs(60),
    }
}

/// Writes `n` email outbox rows to `to` (copied to cc@example.com) the way a batch does.
#[allow(dead_code)] // not every test binary writes these rows
pub async fn outbox(store: &Store, n: usize, to: &str) {
    let effects = BatchEffects {
        outbox: (0..n)
            .map(|i| NewOutbox {
                channel: "email",
                recipient: to.into(),
                workflow_id: None,
                payload: serde_json::json!({
                    "to": [to], "cc": ["cc@example.com"], "subject": format!("Escalated #{i}"),
                    "body": "It is overdue."
                }),
                idempotency_key: format!("escalate:{i}:1:1:email"),
            })
            .collect(),
        ..Default::default()
    };
    let mut tx = store.begin_batch().await.expect("a batch transaction");
    tx.apply(&effects, Utc::now())
        .await
        .expect("the rows written");
    tx.commit().await.expect("committed");
}
