//! `/metrics` and `/api/v1/metrics/prometheus`: this process's registry plus the fleet-wide
//! gauges read from the database and the queues. The reads are cached for [`FLEET_TTL`] so
//! several replicas scraped every 30 s cost a handful of index counts per interval.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use escalator_runtime::metrics::{
    COMPLIANCE, DEAD_JOBS, FLEET_READ, LAST_CHECK, OPEN, OUTBOX_OVERDUE, OUTBOX_PENDING,
    QUEUE_DEPTH,
};

use crate::AppState;
use crate::error::{ErrorBody, error_response};

/// How long fleet-wide gauges are reused before being read again.
pub const FLEET_TTL: Duration = Duration::from_secs(5);

/// How many recent check runs are searched for the last finished one.
const RECENT_RUNS: u32 = 20;

/// When the fleet-wide gauges were last read. The lock also makes concurrent scrapes wait
/// for one refresh instead of each querying the database.
#[derive(Debug, Default)]
pub struct FleetCache {
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// How long one fleet read may take. The reads run side by side, so a scrape answers within
/// about this long even when the database or Redis hangs (a held lock, a failover): each
/// read used to wait out the pool's 10 s, one after another, past Prometheus' scrape timeout,
/// and every api metric vanished exactly during the incident.
pub const FLEET_READ_TIMEOUT: Duration = crate::health::PROBE_TIMEOUT;

/// `read`'s answer, or None (logged, naming `what`) if it failed or took longer than
/// [`FLEET_READ_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    what: &'static str,
    read: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(FLEET_READ_TIMEOUT, read).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: cannot read {what}");
            None
        }
        Err(_) => {
            tracing::warn!(
                timeout = ?FLEET_READ_TIMEOUT,
                "metrics: reading {what} took too long; its gauges keep their last values"
            );
            None
        }
    }
}

/// Reads the fleet-wide numbers into gauges unless they are fresher than [`FLEET_TTL`]. A
/// failed or slow read ([`FLEET_READ_TIMEOUT`]) leaves its gauges at their previous values
/// and is logged; the scrape still answers with everything else.
async fn refresh_fleet(s: &AppState) {
    let mut last = s.fleet.last.lock().await;
    if last.is_some_and(|t| t.elapsed() < FLEET_TTL) {
        return;
    }
    let now = Utc::now();
    let (sla, queues, outbox, runs) = tokio::join!(
        bounded("the open workflows", s.store.sla_counts(now)),
        bounded("the queue depths", s.queues.stats()),
        bounded("the outbox", s.store.outbox_backlog(now)),
        bounded(
            "the recent check runs",
            s.store.recent_check_runs(RECENT_RUNS)
        ),
    );
    // when each source was last read: the gauges of a source that cannot be read keep their
    // values, and without this nothing told a dashboard, KEDA or an alert they had gone stale
    let read_at = now.timestamp() as f64;
    for (source, read) in [
        ("workflows", sla.is_some()),
        ("queues", queues.is_some()),
        ("outbox", outbox.is_some()),
        ("check_runs", runs.is_some()),
    ] {
        if read {
            metrics::gauge!(FLEET_READ, "source" => source).set(read_at);
        }
    }
    if let Some(c) = sla {
        metrics::gauge!(OPEN, "sla_status" => "ok").set(c.ok as f64);
        metrics::gauge!(OPEN, "sla_status" => "warning").set(c.warning as f64);
        metrics::gauge!(OPEN, "sla_status" => "breached").set(c.breached as f64);
        metrics::gauge!(COMPLIANCE).set(c.compliance_ratio());
    }
    if let Some(stats) = queues {
        let mut dead = 0;
        for q in stats {
            metrics::gauge!(QUEUE_DEPTH, "queue" => q.queue.clone()).set(q.pending as f64);
            dead += q.dead;
        }
        metrics::gauge!(DEAD_JOBS).set(dead as f64);
    }
    if let Some(backlog) = outbox {
        metrics::gauge!(OUTBOX_PENDING).set(backlog.waiting as f64);
        metrics::gauge!(OUTBOX_OVERDUE).set(backlog.overdue_seconds(now));
    }
    // as the workers set it: sweeps that succeeded. A failed run has a finish time too (a beat
    // that cannot push to Redis fails every slot's run at once), and counting it kept
    // CheckRunsStale silent through exactly the outage it is there for.
    let swept = runs
        .iter()
        .flatten()
        .filter(|r| r.status == "succeeded" && r.scope == "all");
    if let Some(t) = swept.filter_map(|r| r.finished_at).max() {
        metrics::gauge!(LAST_CHECK).set(t.timestamp_micros() as f64 / 1e6);
    }
    *last = Some(Instant::now());
}

#[utoipa::path(get, path = "/api/v1/metrics/prometheus", operation_id = "prometheus_metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition (also at /metrics)", content_type = "text/plain", body = String),
        (status = 503, description = "no metrics recorder in this process", body = ErrorBody),
    ))]
/// `GET /metrics` and `GET /api/v1/metrics/prometheus`: the Prometheus text exposition.
pub async fn render(State(s): State<AppState>) -> Response {
    let Some(handle) = s.metrics.clone() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_disabled",
            "this process has no metrics recorder",
            None,
        );
    };
    refresh_fleet(&s).await;
    // Upkeep drains histogram buffers; scrapes are frequent enough to drive it.
    handle.run_upkeep();
    let mut res = (StatusCode::OK, handle.render()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
