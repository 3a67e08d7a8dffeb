//! Pushing raw bytes onto an apalis-redis queue, as a buggy producer or a script would: the
//! way the tests put garbage where a job should be.

use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `payload` as a due task of `queue` (e.g. `escalator:checks`) on the Redis at `url`;
/// returns the task id.
pub async fn push_raw(url: &str, queue: &str, payload: &str) -> String {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is unreachable at {url}: {e}"));
    let id = format!("garbage-{}", uuid::Uuid::new_v4().simple());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let meta = [
        "attempts",
        "0",
        "max_attempts",
        "25",
        "status",
        "Pending",
        "idempotency_key",
        "",
    ];
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{queue}:data"))
        .arg(&id)
        .arg(payload)
        .ignore()
        .cmd("HSET")
        .arg(format!("{queue}:meta:{id}"))
        .arg(&meta)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{queue}:scheduled"))
        .arg(now)
        .arg(&id)
        .ignore()
        .query_async(&mut c)
        .await
        .expect("push a raw task");
    id
}
