//! One attempt of a job: a deadline and a panic guard inside the handler, and the rule that
//! turns the last allowed attempt's failure into an `AbortError` (dead job) — apalis-redis
//! would otherwise re-schedule it until attempt 25, whatever the retry policy says.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apalis::prelude::{AbortError, Attempt, BoxDynError};
use futures_util::FutureExt as _;

/// How an attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Worth retrying (the database was unreachable, a deadlock, a timeout).
    Transient(BoxDynError),
    /// Retrying cannot help (bad input, a missing row).
    Permanent(BoxDynError),
}

/// The error to hand apalis: permanent failures and the last attempt's failure abort (→ dead);
/// others are retried.
pub fn verdict(attempt: &Attempt, max_attempts: usize, failure: Failure) -> BoxDynError {
    match failure {
        Failure::Permanent(e) => Box::new(AbortError::new(e)),
        Failure::Transient(e) if attempt.current() >= max_attempts => Box::new(AbortError::new(e)),
        Failure::Transient(e) => e,
    }
}

/// Whether this is the last attempt apalis will make.
pub fn is_last(attempt: &Attempt, max_attempts: usize) -> bool {
    attempt.current() >= max_attempts
}

tokio::task_local! {
    /// Set while the attempt [`guarded`] runs is committing (see [`committing`]).
    static COMMITTING: Arc<AtomicBool>;
}

/// Runs `commit` (a transaction's COMMIT and what must follow it, such as counting what it
/// wrote) so that [`guarded`]'s deadline does not cut it off: a deadline passing meanwhile
/// waits for it (up to the limit once more). Dropping a COMMIT already sent would not undo it:
/// PostgreSQL commits anyway, and the attempt would be reported failed (on its last attempt,
/// dead) with its effects in place and uncounted in the metrics (I6). Outside [`guarded`] it
/// simply runs `commit`.
pub async fn committing<T>(commit: impl Future<Output = T>) -> T {
    let flag = COMMITTING.try_with(Arc::clone).ok();
    if let Some(f) = &flag {
        f.store(true, Ordering::SeqCst);
    }
    let out = commit.await;
    if let Some(f) = &flag {
        f.store(false, Ordering::SeqCst);
    }
    out
}

/// Runs `fut` with a deadline, catching panics; both become transient failures. Doing this
/// inside the handler (tower's timeout and panic layers sit outside apalis's lifecycle) makes
/// a timed-out or panicking attempt a normal failure that is retried and, on the last attempt,
/// dead-lettered — on both backends. A deadline passing while `fut` is inside [`committing`]
/// waits for the commit, up to `limit` more.
pub async fn guarded<T, F>(limit: Duration, fut: F) -> Result<T, Failure>
where
    F: Future<Output = Result<T, Failure>>,
{
    let flag = Arc::new(AtomicBool::new(false));
    let run = COMMITTING.scope(
        Arc::clone(&flag),
        std::panic::AssertUnwindSafe(fut).catch_unwind(),
    );
    tokio::pin!(run);
    let mut outcome = tokio::time::timeout(limit, &mut run).await;
    if outcome.is_err() && flag.load(Ordering::SeqCst) {
        tracing::warn!(
            limit = ?limit,
            "attempt out of time while committing: waiting for the commit"
        );
        outcome = tokio::time::timeout(limit, &mut run).await;
    }
    match outcome {
        Err(_) => Err(Failure::Transient(
            format!("attempt timed out after {limit:?}").into(),
        )),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Failure::Transient(
                format!("handler panicked: {msg}").into(),
            ))
        }
        Ok(Ok(r)) => r,
    }
}

/// The error for a payload that is not a job: dead at once.
pub fn malformed(raw: &str, error: &str) -> BoxDynError {
    Box::new(AbortError::new(format!(
        "malformed payload ({error}): {raw}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeouts_and_panics_become_transient_failures() {
        let slow = guarded(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Failure>(())
        });
        assert!(
            matches!(slow.await, Err(Failure::Transient(e)) if e.to_string().contains("timed out"))
        );
        let boom = guarded(Duration::from_secs(1), async {
            if true {
                panic!("kaboom");
            }
            Ok::<_, Failure>(())
        });
        assert!(
            matches!(boom.await, Err(Failure::Transient(e)) if e.to_string().contains("kaboom"))
        );
    }

    #[tokio::test]
    async fn a_deadline_passing_during_a_commit_waits_for_it_and_not_otherwise() {
        let limit = Duration::from_millis(50);
        let committed = guarded(limit, async {
            committing(tokio::time::sleep(Duration::from_millis(80))).await;
            Ok::<_, Failure>("committed")
        });
        assert!(matches!(committed.await, Ok("committed")));
        // before the commit, or a commit slower than twice the limit: cut off
        let working = guarded(limit, async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            committing(async {}).await;
            Ok::<_, Failure>(())
        });
        assert!(matches!(working.await, Err(Failure::Transient(_))));
        let hung = guarded(limit, async {
            committing(tokio::time::sleep(Duration::from_secs(5))).await;
            Ok::<_, Failure>(())
        });
        assert!(matches!(hung.await, Err(Failure::Transient(_))));
        // outside an attempt it just runs
        assert_eq!(committing(async { 7 }).await, 7);
    }

    #[test]
    fn the_last_attempt_aborts_and_earlier_ones_retry() {
        let early = verdict(
            &Attempt::new_with_value(1),
            3,
            Failure::Transient("db down".into()),
        );
        assert!(early.downcast_ref::<AbortError>().is_none());
        let last = verdict(
            &Attempt::new_with_value(3),
            3,
            Failure::Transient("db down".into()),
        );
        assert!(last.downcast_ref::<AbortError>().is_some());
        let bad = verdict(
            &Attempt::new_with_value(1),
            3,
            Failure::Permanent("no such run".into()),
        );
        assert!(bad.downcast_ref::<AbortError>().is_some());
    }
}
