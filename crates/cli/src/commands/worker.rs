//! `escalator worker`: runs the check planner and the escalation batches from the queues.

use anyhow::Context as _;
use escalator_jobs::{Queues, Stopped};
use escalator_runtime::config::ProcessEnv;
use escalator_runtime::serve::Health;
use escalator_worker::{Engine, PolicyCache};

use crate::config::{QueueConfig, WorkerSettings};

/// Runs until SIGTERM/SIGINT, then drains in-flight jobs.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    let settings = WorkerSettings::from_env(&ProcessEnv)?;
    let delivery = crate::config::DeliverySettings::from_env(&ProcessEnv)?;
    let queue_config = QueueConfig::from_env(&ProcessEnv, database_url)?;
    let listener = super::bind_metrics(settings.metrics_addr).await?;
    let metrics =
        escalator_runtime::metrics::install().context("installing the metrics recorder")?;
    escalator_runtime::metrics::start_at_zero(escalator_runtime::metrics::Emitter::Worker);
    let store = super::connect_service(database_url).await?;
    let queues = super::connect_queues(&queue_config).await?;
    escalator_worker::message::configure(delivery.message_settings()?);
    let deliverer = delivery.deliverer(&store)?;
    let health =
        Health::new(settings.worker.poll_interval * 50 + std::time::Duration::from_secs(60));
    let engine = Engine {
        store: store.clone(),
        queues,
        config: settings.engine,
        policies: PolicyCache::default(),
    };
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
    let outcome = escalator_worker::run(
        engine,
        settings.worker.clone(),
        deliverer,
        health,
        signals.stopped(),
    )
    .await;
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Err(e)) => {
            tracing::error!(error = %e, addr = %settings.metrics_addr, "metrics server failed")
        }
        Err(e) => tracing::error!(error = %e, "metrics server panicked"),
        Ok(Ok(())) => {}
    }
    let outcome = outcome.context("worker stopped");
    match &outcome {
        Ok(Stopped::Drained) => {
            store.close().await;
            tracing::info!("worker stopped: all in-flight jobs finished");
        }
        // jobs past the grace still hold connections: closing the pool would wait for them,
        // past the grace the process was given (and be killed for it)
        Ok(Stopped::GraceExpired) => tracing::warn!(
            "worker stopping: jobs still running after ESCALATOR_SHUTDOWN_TIMEOUT are abandoned \
             (they will be re-run; their effects are idempotent)"
        ),
        Err(_) => {
            if tokio::time::timeout(std::time::Duration::from_secs(5), store.close())
                .await
                .is_err()
            {
                tracing::warn!("database connections still held by running jobs: not waited for");
            }
        }
    }
    outcome.map(|_| ())
}

/// Whether the queue backend is embedded (for messages).
pub fn describe(queues: &Queues) -> &'static str {
    match queues {
        Queues::Redis { .. } => "redis",
        Queues::Sqlite { .. } => "sqlite",
    }
}
