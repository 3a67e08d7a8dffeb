//! The error type of the queue layer.

/// Everything enqueueing or inspecting a queue can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A queue URL that is neither `redis://` nor `sqlite://`.
    #[error("unsupported queue url {0:?}: expected redis://… or sqlite://…")]
    UnsupportedUrl(String),
    /// Redis refused or is unreachable.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// Redis could not be reached or refused the connection.
    #[error("redis: {0}")]
    Connect(String),
    /// The SQLite queue database failed.
    #[error("sqlite queue")]
    Sqlite(#[from] sqlx::Error),
    /// apalis refused a push or a setup step.
    #[error("apalis: {0}")]
    Apalis(String),
    /// A payload could not be encoded.
    #[error("encoding a job")]
    Json(#[from] serde_json::Error),
    /// Settings that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// A dead job that cannot run again: apalis-sqlite cannot read its row.
    #[error(
        "job {id:?} cannot be retried: its id is not a ULID, so a worker fetching it would stop; delete its row from the queue file instead"
    )]
    Unretryable {
        /// The job's id as stored.
        id: String,
    },
    /// The queue did not answer in time (a frozen or partitioned Redis): whether the push
    /// landed is unknown, so it is pushed again under the same key.
    #[error("the queue did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// The queue stayed too full to push more without wedging apalis-redis's fetch.
    #[error("queue {queue} still has {due} jobs due after waiting; workers are not keeping up")]
    Backlogged {
        /// The queue.
        queue: String,
        /// Jobs due in it.
        due: u64,
    },
}

/// `call` (queue work), given up after `bound` as [`QueueError::TimedOut`]: a Redis that
/// accepts and never answers costs each call its response timeout and reconnections.
pub async fn within<T>(
    bound: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(bound, call)
        .await
        .unwrap_or(Err(QueueError::TimedOut(bound)))
}

impl QueueError {
    pub(crate) fn apalis(e: impl std::fmt::Display) -> Self {
        QueueError::Apalis(e.to_string())
    }

    /// Whether the queue did not answer in time (a call's response timeout, or the bound
    /// around a push): whether what was asked of it was done is unknown.
    pub fn is_timeout(&self) -> bool {
        match self {
            QueueError::TimedOut(_) => true,
            QueueError::Redis(r) => r.is_timeout(),
            _ => false,
        }
    }

    /// Whether the queue could not be reached (refused, dropped, timed out), rather than
    /// refusing the job itself.
    pub fn is_unreachable(&self) -> bool {
        match self {
            QueueError::Connect(_) | QueueError::TimedOut(_) => true,
            QueueError::Redis(r) => {
                r.is_io_error()
                    || r.is_timeout()
                    || r.is_connection_refusal()
                    || r.is_connection_dropped()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_says_what_redis_said() {
        let e = QueueError::from(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        )));
        let text = escalator_runtime::error::with_causes(&e);
        assert!(text.starts_with("redis: "), "{text}");
        assert!(text.contains("read only replica"), "{text}");
        assert_eq!(
            escalator_runtime::error::with_causes(&QueueError::Config("x".into())),
            "configuration: x"
        );
    }
}
