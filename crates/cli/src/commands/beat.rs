//! `escalator beat`: the scheduler role. Safe to run twice: one leads, the other stands by.

use anyhow::Context as _;
use escalator_beat::Beat;
use escalator_runtime::config::ProcessEnv;
use escalator_runtime::serve::Health;

use crate::config::{BeatSettings, QueueConfig};

/// Runs until SIGTERM/SIGINT, then releases the lease.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    let settings = BeatSettings::from_env(&ProcessEnv)?;
    let queue_config = QueueConfig::from_env(&ProcessEnv, database_url)?;
    let listener = super::bind_metrics(settings.metrics_addr).await?;
    let metrics =
        escalator_runtime::metrics::install().context("installing the metrics recorder")?;
    escalator_runtime::metrics::start_at_zero(escalator_runtime::metrics::Emitter::Beat);
    let store = super::connect_service(database_url).await?;
    let queues = super::connect_queues(&queue_config).await?;
    // unhealthy when no step has completed for two slot gaps plus a lease period (a leader
    // steps at least every third of its lease, a standby too: a hung or failing loop)
    let now = chrono::Utc::now();
    let period = settings
        .beat
        .schedule
        .next_after(now)
        .and_then(|a| settings.beat.schedule.next_after(a).map(|b| b - a))
        .and_then(|d| d.to_std().ok())
        .unwrap_or(std::time::Duration::from_secs(900));
    let health =
        Health::new(period * 2 + settings.beat.lease_ttl + std::time::Duration::from_secs(5));
    let signals = escalator_runtime::shutdown::listen();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let mut rx = stop_rx.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            escalator_runtime::serve::serve(listener, metrics, health, stopped).await
        })
    };
    let beat = Beat::new(store.clone(), queues, settings.beat.clone(), health);
    let result = beat.run(signals.stopped()).await;
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = server.await {
        tracing::error!(error = %e, addr = %settings.metrics_addr, "metrics server failed");
    }
    store.close().await;
    result.context("beat stopped")
}
