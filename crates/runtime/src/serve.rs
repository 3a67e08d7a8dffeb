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
    let (silent, ok) = health.check();
    if crate::shutdown::stopping() {
        (
            StatusCode::OK,
            format!("stopping: finishing in-flight jobs; last progress {silent}s ago\n"),
        )
    } else if ok {
        (StatusCode::OK, format!("ok: last progress {silent}s ago\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: no progress for {silent}s\n"),
        )
    }
}

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
    let result = axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await;
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
