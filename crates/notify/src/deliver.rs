//! Draining the outbox: claim due rows under a lease, send each through its channel, record
//! the outcome. A transient failure is retried with exponential backoff and jitter up to the
//! attempt limit; a permanent one is dead at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use escalator_runtime::metrics as m;
use escalator_store::{DeliveryOutcome, FollowUp, OutboxEntry, ParentOutcome, Store, StoreError};
use futures_util::StreamExt as _;

use crate::email::Deferred;
use crate::{HttpChannels, Mailer, NotifyError, Templates};

/// The wait before attempt `attempts + 1`: 30 s doubling per attempt up to 1 h, scaled by a
/// jitter factor in [0.5, 1.5) so that a provider outage does not end in a thundering herd.
pub fn retry_delay(attempts: i32, jitter: f64) -> Duration {
    let base = 30.0 * 2f64.powi(attempts.clamp(1, 16) - 1);
    Duration::from_secs_f64(base.min(3_600.0) * jitter.clamp(0.5, 1.5))
}

pub use escalator_store::HOLD_LIMIT;

/// Attempts before a delivery that keeps failing transiently is dead, unless
/// `ESCALATOR_DELIVERY_MAX_ATTEMPTS` says otherwise: at the backoff of [`retry_delay`], about a
/// day of a relay or provider down (at the least, every wait at its shortest jitter, 11 h).
/// At 8, an outage past about an hour (a relay down over lunch, credentials refused over a
/// weekend) killed every message queued in it, and they waited for `outbox retry --all-dead`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 30;

/// Messages in flight at once within one drain.
pub const PARALLEL_SENDS: usize = 8;

/// A send that starts this long after its round's claim (behind a slow first wave) looks again
/// whether its workflow moved on: the claim's look was seconds old by then, and a workflow
/// completed meanwhile still got its reminder.
const LOOK_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long that second look may take before the send goes ahead on the claim's look.
const LOOK_AGAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// What became of one claimed row in a round.
enum Started {
    /// Tried: its outcome (with the rows of recipients a relay deferred), and how writing it
    /// went.
    Tried(Recorded, Result<bool, StoreError>),
    /// Not started: the process is stopping.
    Not(OutboxEntry),
    /// Not sent: its workflow moved on since the claim (marked obsolete).
    Obsolete(OutboxEntry),
}

/// Most rows one claim takes: two waves of parallel sends. Every row of a claim must be sent
/// and recorded before its lease runs out, or another sender may claim and send it again; a
/// round of 50 at 8 at a time against a relay taking its whole 30 s deadline per message needed
/// 210 s against a 120 s lease. The lease is sized for two waves ([`lease_for`]).
pub const MAX_PER_CLAIM: u32 = 2 * PARALLEL_SENDS as u32;

/// The shortest lease on claimed rows.
pub const MIN_LEASE: Duration = Duration::from_secs(120);

/// The lease a drain needs so that no claimed row outlives it: both waves of a claim at their
/// longest, plus a margin for recording outcomes. An SMTP message takes at most its deadline
/// (`smtp`) for the whole message and one more per recipient sent alone after a refusal
/// ([`crate::email::MAX_SENT_ALONE`]); an HTTP request its `http` timeout. With a fixed 120 s
/// lease, `ESCALATOR_SMTP_TIMEOUT=90` and a slow relay let a second sender claim and send the
/// second wave again.
pub fn lease_for(smtp: Option<Duration>, http: Option<Duration>) -> Duration {
    let per_message = [
        smtp.map(|d| d.saturating_mul(1 + crate::email::MAX_SENT_ALONE)),
        http,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default();
    let waves = MAX_PER_CLAIM.div_ceil(PARALLEL_SENDS as u32);
    per_message
        .saturating_mul(waves)
        .saturating_add(Duration::from_secs(30))
        .max(MIN_LEASE)
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
    /// Recipients a relay deferred after others had the message: each got a row of its own,
    /// sent later.
    pub deferred: u32,
    /// Not sent: the workflow was closed (or, for a reminder, escalated) before they went out.
    pub obsolete: u32,
    /// Stopped at `max_rounds` with rows possibly left: the caller should go on (a delivery
    /// job enqueues a follow-up rather than wait for the sweep).
    pub more: bool,
}

/// Sends the outbox.
#[derive(Debug, Clone)]
pub struct Deliverer {
    /// The source of truth.
    pub store: Store,
    /// Email sender over SMTP (or into files), if configured; it takes precedence over an
    /// HTTP email API.
    pub mailer: Option<Mailer>,
    /// The HTTP providers (email API, SMS, Slack, webhooks), if any is configured.
    pub http: Option<HttpChannels>,
    /// Renders digests (their text is written at delivery, from the items they list).
    pub templates: Templates,
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
        self.drain_as_of(Utc::now(), per_round, max_rounds).await
    }

    /// [`Deliverer::drain`] that claims no new round once `budget` has passed (the round under
    /// way finishes: at most one more lease), reporting `more` when it stopped early. A delivery
    /// job runs it inside its attempt deadline, so the job is never cut off mid-send (a provider
    /// may already have taken a message whose outcome then goes unrecorded, and it is sent again
    /// after the lease).
    pub async fn drain_within(
        &self,
        per_round: u32,
        max_rounds: u32,
        budget: Duration,
    ) -> Result<DeliveryReport, StoreError> {
        let until = std::time::Instant::now() + budget;
        self.drain_until(Utc::now(), per_round, max_rounds, Some(until))
            .await
    }

    /// [`Deliverer::drain`] of the rows due at `as_of` (tests move time forward with it to
    /// make a retry due without waiting for its backoff).
    pub async fn drain_as_of(
        &self,
        as_of: DateTime<Utc>,
        per_round: u32,
        max_rounds: u32,
    ) -> Result<DeliveryReport, StoreError> {
        self.drain_until(as_of, per_round, max_rounds, None).await
    }

    async fn drain_until(
        &self,
        as_of: DateTime<Utc>,
        per_round: u32,
        max_rounds: u32,
        until: Option<std::time::Instant>,
    ) -> Result<DeliveryReport, StoreError> {
        // the same number of rows in rounds no bigger than one lease can cover
        let total = per_round.saturating_mul(max_rounds);
        let per_round = per_round.clamp(1, MAX_PER_CLAIM);
        let max_rounds = total.div_ceil(per_round);
        let mut report = DeliveryReport::default();
        // digests of runs that will not decide them themselves (failed, or stuck)
        // the deliveries due are sent whatever becomes of this (the beat's sweep tries again)
        match self.store.release_stale_held(as_of, HOLD_LIMIT).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(released, "released held deliveries of unfinished runs")
            }
            Err(e) => tracing::warn!(error = %e, "cannot release held deliveries now"),
        }
        for round in 0..max_rounds {
            // no new claim once the process is stopping: the round under way finishes and is
            // recorded within the grace period; one claimed then would be cut off mid-send and
            // its messages sent again after the lease
            let out_of_time = round > 0 && until.is_some_and(|t| std::time::Instant::now() >= t);
            if out_of_time || escalator_runtime::shutdown::stopping() {
                report.more = true;
                break;
            }
            // each round's lease runs from its own claim: a drain of many rounds outlasts a
            // lease taken from its start, and rows claimed late would be due again mid-send
            let now = Utc::now().max(as_of);
            let mut claimed = self
                .store
                .claim_deliveries(now, self.lease, per_round)
                .await?;
            let claimed_at = std::time::Instant::now();
            if claimed.is_empty() {
                break;
            }
            let count = claimed.len();
            // what a relay outage or a dead sender held back until its workflow moved on is
            // not sent at all (I4)
            let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
            let obsolete = self.store.obsolete_deliveries(&ids).await?;
            if !obsolete.is_empty() {
                tracing::info!(
                    count = obsolete.len(),
                    "deliveries not sent: their workflows were closed or escalated since"
                );
                report.obsolete += u32::try_from(obsolete.len()).unwrap_or(u32::MAX);
                claimed.retain(|e| {
                    let stale = obsolete.contains(&e.id);
                    if stale {
                        metrics::counter!(m::NOTIFICATIONS, "channel" => e.channel.clone(), "outcome" => "obsolete")
                            .increment(1);
                    }
                    !stale
                });
            }
            let looked_at = std::time::Instant::now();
            // sends of one round run side by side (each row is its own claim); outcomes are
            // recorded as they come. Once the process is stopping no send starts (a send is
            // started when its future is first polled): the second wave would outlast the
            // grace period, be cut off mid-send and go out again after the lease. Those rows
            // are handed back instead.
            let mut sends = futures_util::stream::iter(claimed.into_iter().map(|entry| {
                // owned parts: the future must not borrow across the stream (Send bounds)
                let this = self.clone();
                async move {
                    if escalator_runtime::shutdown::stopping() {
                        return Started::Not(entry);
                    }
                    // only what can go obsolete: a message to a person about a workflow
                    let can_go = entry.workflow_id.is_some()
                        && escalator_store::delivery::looked_at_again(&entry.channel);
                    if can_go && looked_at.elapsed() >= LOOK_AGAIN_AFTER {
                        let ids = [entry.id];
                        let look = this.store.obsolete_deliveries(&ids);
                        match tokio::time::timeout(LOOK_AGAIN_PATIENCE, look).await {
                            Ok(Ok(gone)) if !gone.is_empty() => return Started::Obsolete(entry),
                            Ok(Ok(_)) => {}
                            // the claim's look stands: sent as it would have been, not later
                            // still (the lease runs)
                            Ok(Err(e)) => tracing::warn!(id = entry.id, error = %e, "cannot look again whether the delivery is obsolete; sending"),
                            Err(_) => tracing::warn!(id = entry.id, "looking again whether the delivery is obsolete took too long; sending"),
                        }
                    }
                    let (outcome, deferrals) = this.attempt(&entry).await;
                    let follow_ups = deferrals.map(|d| {
                        let due = Utc::now()
                            + chrono::Duration::from_std(retry_delay(
                                1,
                                0.5 + rand::random::<f64>(),
                            ))
                            .unwrap_or(chrono::Duration::seconds(30));
                        let (note, rows) = follow_up_rows(&entry, d);
                        (note, rows, due)
                    });
                    let done = Recorded {
                        entry,
                        outcome,
                        follow_ups,
                    };
                    // written here, while the other sends go on: written by the loop below,
                    // a slow write (a busy pool, a restarting database) left every other send
                    // of the round unpolled, and an answer that had come in time was then
                    // read past its timeout, retried, and sent twice
                    let recorded = this.record(&done).await;
                    Started::Tried(done, recorded)
                }
            }))
            .buffer_unordered(PARALLEL_SENDS);
            // outcomes whose write failed (the database restarting, a pool timeout): written
            // again once the round's sends are done, until shortly before the lease ends
            let mut unrecorded = Vec::new();
            let mut not_started = Vec::new();
            while let Some(sent) = sends.next().await {
                let (done, recorded) = match sent {
                    Started::Tried(done, recorded) => (done, recorded),
                    Started::Not(entry) => {
                        not_started.push((entry.id, entry.attempts));
                        continue;
                    }
                    Started::Obsolete(entry) => {
                        tracing::info!(
                            id = entry.id,
                            "delivery not sent: its workflow was closed or escalated since the claim"
                        );
                        report.obsolete += 1;
                        metrics::counter!(m::NOTIFICATIONS, "channel" => entry.channel.clone(), "outcome" => "obsolete")
                            .increment(1);
                        continue;
                    }
                };
                let entry = &done.entry;
                let label = match &done.outcome {
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
                if let Some((_, rows, _)) = &done.follow_ups {
                    let n = rows.len();
                    report.deferred += u32::try_from(n).unwrap_or(u32::MAX);
                    metrics::counter!(m::NOTIFICATIONS, "channel" => entry.channel.clone(), "outcome" => "deferred")
                        .increment(n as u64);
                }
                // a failed write does not stop the round: the sends still in flight finish
                // and are recorded if they can be, instead of being cut off mid-conversation
                // (a provider may have taken them already) and sent again after the lease
                match recorded {
                    Ok(recorded) => not_recorded(&done, recorded),
                    Err(e) => {
                        tracing::warn!(id = done.entry.id, error = %e, "cannot record a delivery's outcome yet; trying again after the round");
                        unrecorded.push(done);
                    }
                }
            }
            self.record_again(unrecorded, claimed_at).await?;
            if !not_started.is_empty() {
                let back = self
                    .store
                    .unclaim_deliveries(&not_started, Utc::now())
                    .await?;
                tracing::info!(
                    handed_back = back,
                    "stopping: deliveries claimed but not started are due again for another sender"
                );
                report.more = true;
                break;
            }
            if count < per_round as usize {
                break;
            }
            report.more = round + 1 == max_rounds;
        }
        Ok(report)
    }

    /// Writes an attempt's outcome (and its follow-up rows); false when the claim had lost
    /// its row (another claimed it since, or it finished meanwhile).
    async fn record(&self, done: &Recorded) -> Result<bool, StoreError> {
        let Recorded {
            entry,
            outcome,
            follow_ups,
        } = done;
        match follow_ups {
            None => {
                self.store
                    .record_delivery(entry.id, entry.attempts, outcome, Utc::now())
                    .await
            }
            Some((note, rows, due)) => {
                // dead when only copies took it: its error first, then who gets it later
                let (parent, note) = match outcome {
                    DeliveryOutcome::Dead { error } => {
                        (ParentOutcome::Dead, format!("{error}; {note}"))
                    }
                    _ => (ParentOutcome::Sent, format!("sent; {note}")),
                };
                self.store
                    .record_with_follow_ups(
                        entry.id,
                        entry.attempts,
                        parent,
                        &note,
                        rows,
                        *due,
                        Utc::now(),
                    )
                    .await
            }
        }
    }

    /// Writes again the outcomes whose write failed, with a growing pause, until a tenth of
    /// the lease is left (the rows then come back to a sender: what was sent is sent again).
    /// A provider has taken these messages already; a database restart used to have every one
    /// of them sent a second time. The first write that still fails is the error.
    async fn record_again(
        &self,
        mut unrecorded: Vec<Recorded>,
        claimed_at: std::time::Instant,
    ) -> Result<(), StoreError> {
        let give_up = claimed_at + self.lease - self.lease / 10;
        let mut pause = Duration::from_millis(200);
        while !unrecorded.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            let mut still = Vec::new();
            for done in unrecorded {
                match self.record(&done).await {
                    Ok(recorded) => not_recorded(&done, recorded),
                    Err(e) if std::time::Instant::now() + pause >= give_up => {
                        tracing::error!(
                            id = done.entry.id, error = %e,
                            "cannot record a delivery's outcome; it is sent again after its lease"
                        );
                        return Err(e);
                    }
                    Err(_) => still.push(done),
                }
            }
            unrecorded = still;
        }
        Ok(())
    }

    /// The outcome of one attempt, with the recipients a relay deferred when it is `Sent`, or
    /// `Dead` because only copies took it.
    async fn attempt(&self, entry: &OutboxEntry) -> (DeliveryOutcome, Option<Deferrals>) {
        // claims past the limit: the outcomes of the last ones were never written (their
        // sender was killed mid-round, or crashed on this very message, or could not reach the
        // database). Such a row was claimed again after its lease for ever. A claim cut off
        // before its send still gets its attempt (UNRECORDED_GRACE more); beyond them the row
        // is dead, unsent, since the relay may have taken it.
        // A row no outcome was ever written for (`pending`: a message its sender crashes on,
        // each time) is held to NEVER_RECORDED_LIMIT claims whatever the attempt limit: at
        // 30 attempts, such a message crash-looped its workers, and went out again after
        // each crash the relay had taken it before, thirty-two times.
        let limit = if entry.status == "pending" {
            self.max_attempts.min(NEVER_RECORDED_LIMIT)
        } else {
            self.max_attempts
        };
        if entry.attempts > limit.saturating_add(UNRECORDED_GRACE) {
            return (
                DeliveryOutcome::Dead {
                    error: format!(
                        "claimed {} times, the last {} without an outcome recorded (the sender \
                         was stopped mid-round or crashed on it, or could not record it; it may \
                         or may not have gone out): not sent again (`escalator outbox retry` \
                         sends it)",
                        entry.attempts,
                        entry.attempts - limit
                    ),
                },
                None,
            );
        }
        let result = self.send(entry).await;
        let outcome = match result {
            Ok(Some(mut d)) => {
                // dead when only copies took it; its deferred copies still get their rows
                let outcome = match d.primaries_refused.take() {
                    Some(error) => DeliveryOutcome::Dead { error },
                    None => DeliveryOutcome::Sent,
                };
                return (outcome, Some(d));
            }
            Ok(None) => return (DeliveryOutcome::Sent, None),
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
            Err(NotifyError::Throttled { error, after }) if entry.attempts < self.max_attempts => {
                // the provider's Retry-After, but never sooner than our own backoff's floor
                let wait = after.max(retry_delay(entry.attempts, 0.5));
                DeliveryOutcome::Retry {
                    error,
                    retry_at: Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(30)),
                }
            }
            Err(e) => DeliveryOutcome::Dead {
                error: e.to_string(),
            },
        };
        (outcome, None)
    }

    /// A row whose text is written at delivery, rendered for its channel: a digest, or an
    /// email that carries its template set and values (`template`) instead of rendered parts.
    /// Rows with a `subject` are sent as they are.
    pub fn expand(&self, entry: &OutboxEntry) -> Result<Option<OutboxEntry>, NotifyError> {
        let p = &entry.payload;
        if p.get("subject").is_some() {
            return Ok(None);
        }
        if let Some(template) = p["template"].as_str() {
            return Ok(Some(self.render_message(entry, template)));
        }
        if p["kind"] != "digest" {
            return Ok(None);
        }
        let mut ctx = p.clone();
        if ctx["greeting"].as_str().is_none_or(str::is_empty) {
            ctx["greeting"] = serde_json::json!("Hello");
        }
        // an override that fails to render falls back to the built-in digest, as every other
        // message does: it used to make every digest dead, `outbox retry` included, until the
        // file was fixed, and the escalations it held were never emailed
        let count = ctx["count"].as_u64().unwrap_or(0);
        let fallback = format!("{count} workflows were escalated to you");
        let part = |name: &str| {
            self.templates
                .render_or_builtin("digest", name, &ctx, &fallback)
        };
        let mut out = entry.clone();
        let q = &mut out.payload;
        q["subject"] = part("subject.txt").into();
        match entry.channel.as_str() {
            "sms" => q["body"] = part("sms.txt").into(),
            "slack" => q["text"] = part("slack.txt").into(),
            _ => {
                q["body"] = part("body.txt").into();
                q["html"] = part("body.html").into();
            }
        }
        Ok(Some(out))
    }

    /// Subject, text and HTML of a message from its payload's values, falling back to the
    /// built-in template as the worker does ([`Templates::render_or_builtin`]).
    fn render_message(&self, entry: &OutboxEntry, template: &str) -> OutboxEntry {
        let ctx = &entry.payload;
        let title = ctx["title"].as_str().unwrap_or_default();
        let part = |name: &str| self.templates.render_or_builtin(template, name, ctx, title);
        let mut out = entry.clone();
        out.payload["subject"] = part("subject.txt").into();
        out.payload["body"] = part("body.txt").into();
        // only the HTTP email API sends an HTML part; SMTP messages are plain text
        if self.mailer.is_none() {
            out.payload["html"] = part("body.html").into();
        }
        out
    }

    /// Sends one row through its channel's sender; `Ok` names the recipients a relay deferred,
    /// if any.
    async fn send(&self, entry: &OutboxEntry) -> Result<Option<Deferrals>, NotifyError> {
        let expanded = self.expand(entry)?;
        let entry = expanded.as_ref().unwrap_or(entry);
        let http = |what: &str, var: &str| {
            NotifyError::Config(format!("{what} is not configured ({var})"))
        };
        let sent = match (entry.channel.as_str(), &self.mailer, &self.http) {
            ("email", Some(mailer), _) => {
                let taken = mailer.send(entry).await?;
                if taken.deferred.is_empty() {
                    return match taken.primaries_refused {
                        Some(why) => Err(NotifyError::Permanent(why)),
                        None => Ok(None),
                    };
                }
                return Ok(Some(Deferrals {
                    sent: entry.payload.clone(),
                    recipients: taken.deferred,
                    primaries_refused: taken.primaries_refused,
                }));
            }
            ("email", None, Some(h)) if h.has_email() => h.send_email(entry).await,
            ("email", None, _) => Err(http(
                "email",
                "ESCALATOR_SMTP_URL or ESCALATOR_SENDGRID_URL",
            )),
            ("sms", _, Some(h)) => h.send_sms(entry).await,
            ("slack", _, Some(h)) => h.send_slack(entry).await,
            ("webhook" | "event", _, Some(h)) => h.send_webhook(entry).await,
            ("sms", _, None) => Err(http("SMS", "ESCALATOR_TWILIO_URL")),
            ("slack", _, None) => Err(http("Slack", "ESCALATOR_SLACK_WEBHOOK_URL")),
            ("webhook" | "event", _, None) => Err(http("webhooks", "ESCALATOR_WEBHOOK_URL")),
            (other, _, _) => Err(NotifyError::Permanent(format!(
                "no sender for channel {other:?}"
            ))),
        };
        sent.map(|()| None)
    }
}

/// What a sent email left for later: the recipients the relay deferred, and the payload as
/// sent (its text rendered), which each of them is to get; and why the row is dead anyway
/// when only copies took it.
struct Deferrals {
    sent: serde_json::Value,
    recipients: Vec<Deferred>,
    primaries_refused: Option<String>,
}

/// An attempt's outcome to write: the row as claimed, how it went, and for a row sent with
/// recipients deferred, its note, follow-up rows and when they are due.
struct Recorded {
    entry: OutboxEntry,
    outcome: DeliveryOutcome,
    follow_ups: Option<(String, Vec<FollowUp>, DateTime<Utc>)>,
}

/// Logs an outcome the claim could not write because it had lost its row.
fn not_recorded(done: &Recorded, recorded: bool) {
    if !recorded {
        tracing::warn!(
            id = done.entry.id,
            attempts = done.entry.attempts,
            "outcome not recorded: the row was claimed again or finished meanwhile \
             (this attempt outlasted its lease)"
        );
    }
}

/// Claims beyond the attempt limit a row may get when the outcomes of the last ones were never
/// written: a sender killed mid-round leaves claimed rows it never sent.
const UNRECORDED_GRACE: i32 = 2;

/// Claims (besides [`UNRECORDED_GRACE`]) a row may get while no outcome has ever been written
/// for it, when the attempt limit is higher: the limit was 8 when this bound was set, and an
/// outcome that is never written is a crash or a database away, not a relay to wait for.
const NEVER_RECORDED_LIMIT: i32 = 8;

/// The `sent` note of a row some of whose recipients a relay deferred, and a row of its own
/// for each: the message as sent (its text rendered, so everyone reads the same), to that
/// address alone (`envelope`), under the parent's Message-ID (`message_key`).
fn follow_up_rows(parent: &OutboxEntry, deferrals: Deferrals) -> (String, Vec<FollowUp>) {
    let message_key = parent.payload["message_key"]
        .as_str()
        .unwrap_or(&parent.idempotency_key)
        .to_owned();
    let mut notes = Vec::with_capacity(deferrals.recipients.len());
    let rows = deferrals
        .recipients
        .into_iter()
        .map(|d| {
            notes.push(format!("{} ({})", d.address, d.error));
            let mut payload = deferrals.sent.clone();
            payload["envelope"] = serde_json::json!([d.address]);
            payload["message_key"] = serde_json::json!(message_key);
            FollowUp {
                idempotency_key: format!(
                    "{}:rcpt:{}",
                    parent.idempotency_key,
                    d.address.to_ascii_lowercase()
                ),
                recipient: d.address,
                payload,
            }
        })
        .collect();
    let note = format!(
        "deferred for now, each sent later alone: {}",
        notes.join("; ")
    );
    (note, rows)
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_MAX_ATTEMPTS, MIN_LEASE, lease_for, retry_delay};
    use std::time::Duration;

    /// The time a row failing at every attempt has before it is dead: the waits between its
    /// attempts, each at the jitter given.
    fn window(attempts: i32, jitter: f64) -> Duration {
        (1..attempts).map(|a| retry_delay(a, jitter)).sum()
    }

    #[test]
    fn by_default_a_delivery_outlasts_an_outage_of_half_a_day() {
        let shortest = window(i32::try_from(DEFAULT_MAX_ATTEMPTS).unwrap(), 0.5);
        assert!(shortest >= Duration::from_secs(11 * 3600), "{shortest:?}");
        let typical = window(i32::try_from(DEFAULT_MAX_ATTEMPTS).unwrap(), 1.0);
        assert!(typical >= Duration::from_secs(22 * 3600), "{typical:?}");
        assert!(typical <= Duration::from_secs(26 * 3600), "{typical:?}");
    }

    /// The lease covers both waves of a claim at their longest, whatever the timeouts: with a
    /// fixed 120 s, `ESCALATOR_SMTP_TIMEOUT=90` left the second wave's rows claimable by a
    /// second sender while the first was still sending them.
    #[test]
    fn the_lease_outlasts_both_waves_of_a_claim() {
        let s = Duration::from_secs;
        // 30 s per transaction, up to 1 + 4 per message, 2 waves, 30 s margin
        assert_eq!(lease_for(Some(s(30)), Some(s(10))), s(330));
        assert_eq!(lease_for(Some(s(90)), None), s(930));
        assert_eq!(lease_for(None, Some(s(10))), MIN_LEASE);
        assert_eq!(lease_for(None, Some(s(100))), s(230));
        assert_eq!(lease_for(None, None), MIN_LEASE);
        for secs in [1, 7, 30, 61, 300] {
            let smtp = s(secs);
            let longest_wave = smtp * (1 + crate::email::MAX_SENT_ALONE);
            assert!(lease_for(Some(smtp), None) > longest_wave * 2, "{secs}");
        }
    }

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
