//! `escalator api`: serves the HTTP api until SIGTERM/SIGINT, then lets in-flight requests
//! finish.

use anyhow::Context as _;
use escalator_api::AppState;
use escalator_runtime::config::ProcessEnv;

use crate::config::{ApiSettings, QueueConfig};

/// Runs until SIGTERM/SIGINT.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    // Configuration first: a refused setting must fail before any connection is made.
    let settings = ApiSettings::from_env(&ProcessEnv)?;
    let queue_config = QueueConfig::from_env(&ProcessEnv, database_url)?;
    let metrics =
        escalator_runtime::metrics::install().context("installing the metrics recorder")?;
    let store = super::connect_service(database_url).await?;
    let queues = match super::connect_queues(&queue_config).await {
        Ok(queues) => queues,
        // everything but enqueueing a check works without the queue (`/readyz?optional=queue`
        // answers "degraded"): a replica (re)started during a Redis outage serves, and
        // connects once Redis answers
        // (only Redis is ever unreachable: an SQLite queue file fails otherwise)
        Err(e) if super::unreachable(&e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "the queue is unreachable: serving without it; enqueueing a check answers 503, \
                 and /readyz reports the queue failed, until Redis answers"
            );
            escalator_jobs::Queues::connect_lazily(
                &queue_config.url,
                escalator_jobs::QueueNames::new(&queue_config.namespace),
            )?
        }
        Err(e) => return Err(e),
    };
    let authenticated = !settings.tokens.is_empty();
    let state = AppState::new(store.clone(), queues, settings.tokens, Some(metrics))
        .with_request_timeout(settings.timeout)
        .guarding_hosts(
            settings.addr.ip().is_loopback(),
            settings.allowed_hosts.clone(),
        );
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on ESCALATOR_API_ADDR={}", settings.addr))?;
    let signals = escalator_runtime::shutdown::listen();
    if settings.insecure && !authenticated && !settings.addr.ip().is_loopback() {
        tracing::warn!(
            addr = %settings.addr,
            "serving WITHOUT authentication beyond loopback (ESCALATOR_API_INSECURE=1)"
        );
    }
    tracing::info!(addr = %settings.addr, authenticated, "api listening on http://{}", settings.addr);
    // every request in flight ends within its timeout; a connection still open after that
    // (a head still arriving) is closed rather than held past the pod's grace
    let limits = escalator_runtime::http::Limits {
        drain_timeout: settings.timeout + std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let served = escalator_runtime::http::serve_with(
        listener,
        escalator_api::router(state),
        signals.stopped(),
        limits,
    )
    .await
    .context("serving the api");
    store.close().await;
    served?;
    tracing::info!("api stopped");
    Ok(())
}
