//! The Prometheus recorder and every metric escalator exports, with its help text and, for
//! histograms, explicit buckets (without them the exporter renders summaries, and the alert
//! rules need `_bucket` series).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// The handle `install` returns (what renders the exposition text).
pub use metrics_exporter_prometheus::PrometheusHandle as Handle;

/// Workflows evaluated by checks.
pub const CHECKED: &str = "workflow_tasks_checked_total";
/// Escalations committed.
pub const ESCALATED: &str = "workflow_tasks_escalated_total";
/// Reminders committed.
pub const REMINDED: &str = "workflow_tasks_reminded_total";
/// Workflows found past their deadline.
pub const OVER_SLA: &str = "workflow_tasks_over_sla_total";
/// Failed escalation jobs (or workflows that could not be evaluated).
pub const FAILURES: &str = "workflow_escalation_failures_total";
/// Duration of a check run, enqueue to last batch committed.
pub const DURATION: &str = "workflow_escalation_duration_seconds";
/// How late escalations happen: escalated_at − due_at.
pub const LATENCY: &str = "workflow_escalation_latency_seconds";
/// Open workflows by SLA state.
pub const OPEN: &str = "workflow_open";
/// Share of open workflows not breached.
pub const COMPLIANCE: &str = "workflow_sla_compliance_ratio";
/// Jobs waiting per queue.
pub const QUEUE_DEPTH: &str = "escalator_queue_depth";
/// Jobs that exhausted their attempts.
pub const DEAD_JOBS: &str = "escalator_dead_jobs";
/// Outbox rows not yet delivered.
pub const OUTBOX_PENDING: &str = "escalator_outbox_pending";
/// How long the longest-waiting delivery has been due and not sent.
pub const OUTBOX_OVERDUE: &str = "escalator_outbox_overdue_seconds";
/// Delivery attempts by channel and outcome.
pub const NOTIFICATIONS: &str = "escalator_notifications_total";
/// Cron slots that produced no check run in time.
pub const MISSED_TICKS: &str = "escalator_missed_ticks_total";
/// Second enqueues of a slot refused.
pub const DUPLICATE_TICKS: &str = "escalator_duplicate_ticks_suppressed_total";
/// HTTP requests the api answered, by method, route template and status.
pub const HTTP_REQUESTS: &str = "escalator_http_requests_total";
/// How long the api took to answer, by method and route template.
pub const HTTP_DURATION: &str = "escalator_http_request_duration_seconds";
/// When the api last read each source of its fleet-wide gauges.
pub const FLEET_READ: &str = "escalator_fleet_read_timestamp_seconds";
/// When the last check run finished.
pub const LAST_CHECK: &str = "escalator_last_check_timestamp_seconds";
/// 1 while this beat holds the lease.
pub const BEAT_LEADER: &str = "escalator_beat_leader";
/// When this beat last enqueued a check.
pub const BEAT_LAST_ENQUEUE: &str = "escalator_beat_last_enqueue_timestamp_seconds";
/// Beat steps that failed, by what failed (`database`, `queue`).
pub const BEAT_STEP_FAILURES: &str = "escalator_beat_step_failures_total";
/// Jobs processed by queue and outcome.
pub const JOBS: &str = "escalator_jobs_total";
/// Time a job spent in its handler.
pub const JOB_DURATION: &str = "escalator_job_duration_seconds";

/// Buckets of check-run durations, seconds: the SlowEscalationJob alert fires above 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];
/// Buckets of escalation latency, seconds: from deadline wake-ups (a tenth of a second; with
/// 1 s as the first bound the panel drew every healthy escalation at 0.5 s) to sweeps (15 min).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
    86400.0,
];
/// Buckets of api answers, seconds: up to the request timeout (`ESCALATOR_API_TIMEOUT`, 30 s).
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of single-job durations, seconds: up to and past the default attempt limit
/// (`ESCALATOR_JOB_TIMEOUT`, 120 s), so a job nearing it is seen, not drawn at the top bucket.
pub const JOB_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The queues whose jobs a worker counts in [`JOBS`] (the bench's no-op queue aside).
pub const JOB_QUEUES: [&str; 3] = ["checks", "batches", "deliveries"];
/// The outcomes of [`JOBS`].
pub const JOB_OUTCOMES: [&str; 4] = ["ok", "retry", "dead", "malformed"];
/// The channels of [`NOTIFICATIONS`].
pub const NOTIFICATION_CHANNELS: [&str; 5] = ["email", "sms", "slack", "webhook", "event"];
/// The outcomes of [`NOTIFICATIONS`].
pub const NOTIFICATION_OUTCOMES: [&str; 5] = ["sent", "retry", "dead", "obsolete", "deferred"];

/// The processes whose series [`start_at_zero`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitter {
    /// `escalator worker`: checks, batches, deliveries.
    Worker,
    /// `escalator beat`.
    Beat,
}

/// Creates the counters `emitter` reports at 0 (and a beat's leader gauge at 0). A counter the
/// exporter first shows at 1 has no earlier sample, so `rate()` and `increase()` never see
/// that first increment: one dead delivery, or the first failed batch of a worker KEDA just
/// started, went unalerted.
pub fn start_at_zero(emitter: Emitter) {
    match emitter {
        Emitter::Worker => {
            for name in [CHECKED, ESCALATED, REMINDED, OVER_SLA, FAILURES] {
                metrics::counter!(name).increment(0);
            }
            for queue in ["checks", "batches"] {
                metrics::counter!(FAILURES, "queue" => queue).increment(0);
            }
            for queue in JOB_QUEUES {
                for outcome in JOB_OUTCOMES {
                    metrics::counter!(JOBS, "queue" => queue, "outcome" => outcome).increment(0);
                }
            }
            for channel in NOTIFICATION_CHANNELS {
                for outcome in NOTIFICATION_OUTCOMES {
                    metrics::counter!(NOTIFICATIONS, "channel" => channel, "outcome" => outcome)
                        .increment(0);
                }
            }
        }
        Emitter::Beat => {
            metrics::counter!(MISSED_TICKS).increment(0);
            metrics::counter!(DUPLICATE_TICKS).increment(0);
            for cause in ["database", "queue"] {
                metrics::counter!(BEAT_STEP_FAILURES, "cause" => cause).increment(0);
            }
            metrics::gauge!(BEAT_LEADER).set(0.0);
        }
    }
}

/// Installs the global recorder with buckets and help texts, returning the handle that
/// renders the exposition. Call once per process, at start-up.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DURATION.into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), JOB_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Registers the help text and unit of every metric.
pub fn describe() {
    describe_gauge!(
        BEAT_LEADER,
        "1 while this beat process holds the leader lease, else 0."
    );
    describe_gauge!(
        BEAT_LAST_ENQUEUE,
        "Unix time at which this beat last enqueued a check."
    );
    describe_counter!(
        BEAT_STEP_FAILURES,
        "Beat steps that failed (retried a second later), by what failed: database or queue."
    );
    describe_counter!(CHECKED, "Workflows evaluated by check runs.");
    describe_counter!(
        ESCALATED,
        "Escalations committed (reassigned to the next level)."
    );
    describe_counter!(REMINDED, "Warning reminders committed.");
    describe_counter!(
        OVER_SLA,
        "SLA breaches met by checks: workflows escalated or exhausted past their level's \
         deadline, once per level (renotifications after the chain are not counted)."
    );
    describe_counter!(
        FAILURES,
        "Check and batch jobs that died (out of attempts, refused for good, malformed), and workflows that could not be evaluated."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Duration of a check run, from enqueue until its last batch committed."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "How long after its deadline a workflow was escalated."
    );
    describe_gauge!(
        OPEN,
        "Open workflows by SLA status (ok, warning, breached)."
    );
    describe_gauge!(
        COMPLIANCE,
        "Share of open workflows within their SLA: never escalated in their current stage and not past their deadline (1 when none is open)."
    );
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting in each queue.");
    describe_gauge!(
        DEAD_JOBS,
        "Jobs that exhausted their attempts and wait for an operator."
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Notifications in the outbox not yet delivered."
    );
    describe_gauge!(
        OUTBOX_OVERDUE,
        "Seconds the longest-waiting notification has been due and not sent (0: none is due); it grows when no worker drains the outbox, when they send slower than messages come, or when a held escalation message is never released."
    );
    describe_counter!(
        NOTIFICATIONS,
        "Notification delivery attempts by channel and outcome (sent, retry, dead; obsolete: not sent, its workflow was closed or escalated first, or its recipients were deactivated; deferred: recipients the relay deferred, sent again on their own)."
    );
    describe_counter!(
        MISSED_TICKS,
        "Scheduled check slots that were missed (and caught up, or skipped)."
    );
    describe_counter!(
        DUPLICATE_TICKS,
        "Second attempts to run a slot that were refused."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests the api answered, by method, route template (unmatched: no route) and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "How long the api took to answer a request, by method and route template."
    );
    describe_gauge!(
        FLEET_READ,
        "Unix time at which this api last read each source of the fleet-wide gauges (workflows, queues, outbox, check_runs); their values are as old as this."
    );
    describe_gauge!(
        LAST_CHECK,
        "Unix time at which the last check run finished."
    );
    describe_counter!(
        JOBS,
        "Jobs processed, by queue and outcome (ok, retry, dead, malformed)."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Time spent handling one job attempt."
    );
}
