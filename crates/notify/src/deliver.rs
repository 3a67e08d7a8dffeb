//! Draining the outbox: claim due rows under a lease, send each through its channel, record
//! the outcome. A transient failure is retried with exponential backoff and jitter up to the
//! attempt limit; a permanent one is dead at once.

use std::time::Duration;

use chrono::Utc;
use escalator_runtime::metrics as m;
use escalator_store::{DeliveryOutcome, OutboxEntry, Store, StoreError};

use crate::{Mailer, NotifyError};

/// The wait before attempt `attempts + 1`: 30 s doubling per attempt up to 1 h, scaled by a
/// jitter factor in [0.5, 1.5) so that a provider outage does not end in a thundering herd.
pub fn retry_delay(attempts: i32, jitter: f64) -> Duration {
    let base = 30.0 * 2f64.powi(attempts.clamp(1, 16) - 1);
    Duration::from_secs_f64(base.min(3_600.0) * jitter.clamp(0.5, 1.5))
}

/// What one drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Accepted by the provider.
    pub sent: u32,
    /// Failed, will be retried.
    pub retried: u32,
    /// Given up.
    pub dead: u32,
}

/// Sends the outbox.
#[derive(Debug, Clone)]
pub struct Deliverer {
    /// The source of truth.
    pub store: Store,
    /// Email sender, if email is configured.
    pub mailer: Option<Mailer>,
    /// Attempts before a delivery is dead.
    pub max_attempts: i32,
    /// How long a claimed row stays hidden from other senders.
    pub lease: Duration,
}

impl Deliverer {
    /// Claims and sends due deliveries until none is left (or `max_rounds` of `per_round`).
    pub async fn drain(
        &self,
        per_round: u32,
        max_rounds: u32,
    ) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        for _ in 0..max_rounds {
            let claimed = self
                .store
                .claim_deliveries(Utc::now(), self.lease, per_round)
                .await?;
            if claimed.is_empty() {
                break;
            }
            for entry in &claimed {
                let outcome = self.attempt(entry).await;
                let label = match &outcome {
                    DeliveryOutcome::Sent => {
                        report.sent += 1;
                        "sent"
                    }
                    DeliveryOutcome::Retry { error, .. } => {
                        report.retried += 1;
                        tracing::warn!(
                            id = entry.id,
                            attempts = entry.attempts,
                            error,
                            "delivery failed; will retry"
                        );
                        "retry"
                    }
                    DeliveryOutcome::Dead { error } => {
                        report.dead += 1;
                        tracing::error!(
                            id = entry.id,
                            attempts = entry.attempts,
                            error,
                            "delivery dead"
                        );
                        "dead"
                    }
                };
                metrics::counter!(m::NOTIFICATIONS, "channel" => entry.channel.clone(), "outcome" => label)
                    .increment(1);
                self.store
                    .record_delivery(entry.id, &outcome, Utc::now())
                    .await?;
            }
            if claimed.len() < per_round as usize {
                break;
            }
        }
        Ok(report)
    }

    async fn attempt(&self, entry: &OutboxEntry) -> DeliveryOutcome {
        let result = match entry.channel.as_str() {
            "email" => match &self.mailer {
                Some(mailer) => mailer.send(entry).await,
                None => Err(NotifyError::Transient(
                    "email is not configured (ESCALATOR_SMTP_URL)".into(),
                )),
            },
            other => Err(NotifyError::Permanent(format!(
                "no sender for channel {other:?} yet"
            ))),
        };
        match result {
            Ok(()) => DeliveryOutcome::Sent,
            Err(NotifyError::Transient(error)) | Err(NotifyError::Config(error))
                if entry.attempts < self.max_attempts =>
            {
                let jitter = 0.5 + rand::random::<f64>();
                DeliveryOutcome::Retry {
                    error,
                    retry_at: Utc::now()
                        + chrono::Duration::from_std(retry_delay(entry.attempts, jitter))
                            .unwrap_or(chrono::Duration::seconds(30)),
                }
            }
            Err(e) => DeliveryOutcome::Dead {
                error: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn retries_back_off_exponentially_with_jitter_and_a_cap() {
        assert_eq!(retry_delay(1, 1.0), Duration::from_secs(30));
        assert_eq!(retry_delay(2, 1.0), Duration::from_secs(60));
        assert_eq!(retry_delay(4, 1.0), Duration::from_secs(240));
        assert_eq!(retry_delay(20, 1.0), Duration::from_secs(3_600));
        assert_eq!(retry_delay(1, 0.5), Duration::from_secs(15));
        assert_eq!(retry_delay(1, 9.0), Duration::from_secs(45));
    }
}
