//! One attempt of a job: a deadline and a panic guard inside the handler, and the rule that
//! turns the last allowed attempt's failure into an `AbortError` (dead job) — apalis-redis
//! would otherwise re-schedule it until attempt 25, whatever the retry policy says.

use std::future::Future;
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

/// Runs `fut` with a deadline, catching panics; both become transient failures. Doing this
/// inside the handler (tower's timeout and panic layers sit outside apalis's lifecycle) makes
/// a timed-out or panicking attempt a normal failure that is retried and, on the last attempt,
/// dead-lettered — on both backends.
pub async fn guarded<T, F>(limit: Duration, fut: F) -> Result<T, Failure>
where
    F: Future<Output = Result<T, Failure>>,
{
    match tokio::time::timeout(limit, std::panic::AssertUnwindSafe(fut).catch_unwind()).await {
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
