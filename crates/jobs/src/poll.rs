//! A poll strategy that never stalls. apalis-core 1.0's interval strategy replaces a fired
//! timer without polling the new one, so a worker can sleep until its next heartbeat (14 s
//! gaps were measured). This one drains every ready tick, which always leaves a waker
//! registered with the timer.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};

/// Called on every poll of a queue: proof that a worker's poll loop is alive. The worker
/// process touches its liveness (`/healthz`) with it, so an idle worker stays healthy and a
/// stalled poll loop does not.
#[derive(Clone, Default)]
pub struct PollObserver(Option<Arc<dyn Fn() + Send + Sync>>);

impl PollObserver {
    /// An observer calling `f` on every poll.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        PollObserver(Some(Arc::new(f)))
    }

    fn notify(&self) {
        if let Some(f) = &self.0 {
            f();
        }
    }
}

impl fmt::Debug for PollObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "PollObserver(set)"
        } else {
            "PollObserver(none)"
        })
    }
}

impl PartialEq for PollObserver {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Polls the backend every `period`.
#[derive(Debug)]
pub struct ReliableInterval {
    period: Duration,
    interval: Option<tokio::time::Interval>,
    observer: PollObserver,
}

impl ReliableInterval {
    /// A strategy polling every `period` (at least 1 ms). The timer is created on first poll,
    /// so this can be built outside a runtime.
    pub fn new(period: Duration) -> Self {
        ReliableInterval {
            period: period.max(Duration::from_millis(1)),
            interval: None,
            observer: PollObserver::default(),
        }
    }

    /// The same strategy, telling `observer` of every poll.
    pub fn observed(mut self, observer: PollObserver) -> Self {
        self.observer = observer;
        self
    }
}

impl Clone for ReliableInterval {
    fn clone(&self) -> Self {
        ReliableInterval::new(self.period).observed(self.observer.clone())
    }
}

impl PollStrategy for ReliableInterval {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _snapshot: &PollSnapshot) -> Poll<Option<()>> {
        let period = self.period;
        let interval = self.interval.get_or_insert_with(|| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            i
        });
        let mut fired = false;
        while interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            self.observer.notify();
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
