//! Where the test Redis is, and a key namespace of its own per test.

use std::fmt;

/// The Redis the tests use: `TEST_REDIS_URL`, else the local server.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A namespace (`{kind}-{uuid}`) for one test's queues: tests sharing one Redis never see each
/// other's jobs, and the namespace's keys are deleted when the value is dropped.
#[derive(Debug)]
pub struct RedisNamespace {
    /// The namespace (`ESCALATOR_QUEUE_NAMESPACE`, or the argument of `QueueNames::new`).
    pub name: String,
}

impl RedisNamespace {
    /// A new, unique namespace whose name starts with `kind`.
    pub fn new(kind: &str) -> Self {
        RedisNamespace {
            name: format!("{kind}-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl fmt::Display for RedisNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl RedisNamespace {
    /// Deletes the namespace's keys (every job in its queues): a flushed Redis, as far as
    /// this test's queues can tell. Returns how many keys it deleted; panics, naming why, when
    /// Redis cannot be asked (a test that flushes relies on it having happened).
    pub fn flush(&self) -> usize {
        match self.try_flush() {
            Ok(deleted) => deleted,
            Err(e) => panic!("flushing the Redis namespace {}: {e}", self.name),
        }
    }

    fn try_flush(&self) -> redis::RedisResult<usize> {
        let client = redis::Client::open(redis_url())?;
        let mut c = client.get_connection_with_timeout(std::time::Duration::from_secs(10))?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query(&mut c)?;
        if keys.is_empty() {
            return Ok(0);
        }
        redis::cmd("DEL").arg(&keys).query(&mut c)
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        // best effort: a test that already failed must not panic again while unwinding
        let _ = self.try_flush();
    }
}
