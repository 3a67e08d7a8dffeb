//! The small HTTP server of worker and beat processes: `/metrics` for Prometheus and
//! `/healthz` for liveness probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Liveness: the process's main loop touches it; it is healthy while touched recently.
#[derive(Debug, Clone)]
pub struct Health {
    last: Arc<AtomicI64>,
    max_silence: Duration,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Health {
    /// Healthy until `max_silence` passes without a [`Health::touch`].
    pub fn new(max_silence: Duration) -> Self {
        Health {
            last: Arc::new(AtomicI64::new(unix_now())),
            max_silence,
        }
    }

    /// Records progress.
    pub fn touch(&self) {
        self.last.store(unix_now(), Ordering::Relaxed);
    }

    /// Seconds since the last progress, and whether that is within bounds.
    pub fn check(&self) -> (i64, bool) {
        let silent = unix_now() - self.last.load(Ordering::Relaxed);
        let limit = i64::try_from(self.max_silence.as_secs()).unwrap_or(i64::MAX);
        (silent, silent <= limit)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
}

/// The router: `/metrics` renders `metrics`, `/healthz` reports `health`.
pub fn router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .with_state(AppState { metrics, health })
}

async fn render(
    State(s): State<AppState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    report(&s.health)
}

/// What `/healthz` answers. A process stopping is alive: it finishes its jobs for up to its
/// grace period (75 s for the shipped workers) and polls nothing meanwhile, so its progress
/// stops; it read "stalled" after a minute, and a liveness probe would kill it mid-drain.
pub fn report(health: &Health) -> (StatusCode, String) {
    let (liveness, silent) = health.liveness();
    (
        liveness.status(),
        format!("{}\n", liveness.describe(silent)),
    )
}

/// What a [`Health`] says of its process, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    /// Progress within bounds.
    Ok,
    /// Stopping: alive, finishing its jobs.
    Stopping,
    /// No progress for too long.
    Stalled,
}

impl Liveness {
    /// The word `/healthz` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Ok => "ok",
            Liveness::Stopping => "stopping",
            Liveness::Stalled => "stalled",
        }
    }

    /// What it means, `silent` seconds after the last progress.
    pub fn describe(self, silent: i64) -> String {
        match self {
            Liveness::Stopping => {
                format!("stopping: finishing in-flight jobs; last progress {silent}s ago")
            }
            Liveness::Ok => format!("ok: last progress {silent}s ago"),
            Liveness::Stalled => format!("stalled: no progress for {silent}s"),
        }
    }

    /// Its HTTP status: only a stalled process fails the probe.
    pub fn status(self) -> StatusCode {
        match self {
            Liveness::Stalled => StatusCode::SERVICE_UNAVAILABLE,
            Liveness::Ok | Liveness::Stopping => StatusCode::OK,
        }
    }
}

impl Health {
    /// The process's liveness and the seconds since its last progress.
    pub fn liveness(&self) -> (Liveness, i64) {
        let (silent, ok) = self.check();
        let liveness = if crate::shutdown::stopping() {
            Liveness::Stopping
        } else if ok {
            Liveness::Ok
        } else {
            Liveness::Stalled
        };
        (liveness, silent)
    }
}

/// How long the metrics server drains its connections once the process stops.
pub const METRICS_DRAIN: Duration = Duration::from_secs(5);

/// Serves the router on `listener` (bound at start-up, so that a taken port stops the process
/// before it does any work) until `shutdown` resolves; also runs the recorder's upkeep.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    }
    let upkeep = metrics.clone();
    let upkeep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    // a scrape takes milliseconds: a connection still open after METRICS_DRAIN once the
    // process stops (a head still arriving) is closed, not waited for
    let limits = crate::http::Limits {
        drain_timeout: METRICS_DRAIN,
        ..Default::default()
    };
    let result = crate::http::serve_with(listener, router(metrics, health), shutdown, limits).await;
    upkeep_task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_process_is_unhealthy_unless_it_is_stopping() {
        let health = Health::new(Duration::from_secs(30));
        assert_eq!(report(&health).0, StatusCode::OK);
        health.last.store(unix_now() - 100, Ordering::Relaxed);
        let (status, text) = report(&health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        crate::shutdown::request_stop();
        let (status, text) = report(&health);
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.starts_with("stopping"), "{text}");
    }
}
