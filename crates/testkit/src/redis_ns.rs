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
    /// this test's queues can tell.
    pub fn flush(&self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut c);
        }
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        self.flush();
    }
}
