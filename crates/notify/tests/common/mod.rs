//! What the SMTP delivery tests share.

use std::time::Duration;

use escalator_notify::{Deliverer, Mailer};
use escalator_store::Store;

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
