//! Shutdown signals: SIGTERM (Kubernetes) or SIGINT (Ctrl-C) start a graceful stop.

use std::sync::atomic::{AtomicBool, Ordering};

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether the process has been asked to stop. Long loops inside a job (the outbox drain)
/// ask before starting more work: in-flight jobs get only the grace period to finish, and
/// work cut off after it (a message the relay took, unrecorded) would be done again later.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Marks the process as stopping (done by [`signal`] when a signal arrives).
pub fn request_stop() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Resolves when the process is asked to stop, having marked it [`stopping`].
pub async fn signal() {
    wait_for_signal().await;
    request_stop();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
