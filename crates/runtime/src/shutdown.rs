//! Shutdown signals: SIGTERM (Kubernetes) or SIGINT (Ctrl-C) start a graceful stop.

use std::sync::atomic::{AtomicBool, Ordering};

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether the process has been asked to stop. Long loops inside a job (the outbox drain)
/// ask before starting more work: in-flight jobs get only the grace period to finish, and
/// work cut off after it (a message the relay took, unrecorded) would be done again later.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Marks the process as stopping (done by [`Listener::stopped`] when a signal arrives).
pub fn request_stop() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// SIGTERM and SIGINT caught from the moment [`listen`] returns, so that a signal sent
/// once a command has said it is running (a banner, "listening on") starts the graceful stop
/// instead of killing the process mid-start.
#[derive(Debug)]
pub struct Listener {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

/// Starts catching SIGTERM and SIGINT now. Call it inside the runtime, once start-up that
/// should die on a signal (waiting for a database) is over.
pub fn listen() -> Listener {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let catch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        Listener {
            term: catch(SignalKind::terminate(), "SIGTERM"),
            interrupt: catch(SignalKind::interrupt(), "SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        Listener {}
    }
}

impl Listener {
    /// Resolves on the first signal, having marked the process [`stopping`]. A second signal
    /// ends the process at once (exit 130): Ctrl-C twice did nothing while the graceful stop
    /// waited, for up to its grace period.
    pub async fn stopped(mut self) {
        self.wait().await;
        request_stop();
        tokio::spawn(async move {
            self.wait().await;
            tracing::warn!("second signal: exiting now, without waiting for the graceful stop");
            std::process::exit(130);
        });
    }

    #[cfg(unix)]
    async fn wait(&mut self) {
        let Listener { term, interrupt } = self;
        let term = async {
            match term.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let interrupt = async {
            match interrupt.as_mut() {
                Some(s) => s.recv().await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                    Some(())
                }
            }
        };
        tokio::select! {
            _ = term => tracing::info!("SIGTERM received: shutting down"),
            _ = interrupt => tracing::info!("SIGINT received: shutting down"),
        }
    }

    #[cfg(not(unix))]
    async fn wait(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
