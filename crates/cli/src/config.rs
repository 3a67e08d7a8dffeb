//! The process configuration, read once from the environment. Library crates receive typed
//! values; only this module knows variable names.

use std::time::Duration;

use escalator_beat::{BeatConfig, Schedule};
use escalator_runtime::config::{ConfigError, Source, addr, bounded, seconds, string};
use escalator_worker::{EngineConfig, WorkerConfig};

/// Where the queues are: `REDIS_URL`, or `ESCALATOR_QUEUE_URL` (e.g. `sqlite://queue.db`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// `redis://…` or `sqlite://…`.
    pub url: String,
    /// Prefix of the queue names.
    pub namespace: String,
}

impl QueueConfig {
    /// From the environment.
    pub fn from_env(src: &dyn Source) -> Result<Self, ConfigError> {
        let redis = string(src, "REDIS_URL", "redis://127.0.0.1:6379");
        let url = string(src, "ESCALATOR_QUEUE_URL", &redis);
        let namespace = string(src, "ESCALATOR_QUEUE_NAMESPACE", "escalator");
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            return Err(ConfigError {
                name: "ESCALATOR_QUEUE_NAMESPACE",
                value: namespace,
                reason: "must be a non-empty word".into(),
            });
        }
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("sqlite:"))
        {
            return Err(ConfigError {
                name: if src.get("ESCALATOR_QUEUE_URL").is_some() {
                    "ESCALATOR_QUEUE_URL"
                } else {
                    "REDIS_URL"
                },
                value: url,
                reason: "expected redis://host:port[/db] or sqlite://path".into(),
            });
        }
        Ok(QueueConfig { url, namespace })
    }
}

/// Settings of the worker role.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// Engine settings.
    pub engine: EngineConfig,
    /// Worker process settings.
    pub worker: WorkerConfig,
    /// Where `/metrics` and `/healthz` listen.
    pub metrics_addr: std::net::SocketAddr,
}

impl WorkerSettings {
    /// From the environment.
    pub fn from_env(src: &dyn Source) -> Result<Self, ConfigError> {
        let batch_size = bounded(src, "ESCALATOR_BATCH_SIZE", 1_000, 1..=5_000)?;
        let concurrency = bounded(src, "ESCALATOR_WORKER_CONCURRENCY", 2, 1..=256)?;
        let max_attempts = bounded(src, "ESCALATOR_MAX_ATTEMPTS", 5, 1..=25)?;
        let name = string(src, "HOSTNAME", "worker");
        Ok(WorkerSettings {
            engine: EngineConfig { batch_size },
            worker: WorkerConfig {
                concurrency: concurrency as usize,
                max_attempts: max_attempts as usize,
                attempt_timeout: seconds(src, "ESCALATOR_JOB_TIMEOUT", Duration::from_secs(120))?,
                shutdown_timeout: seconds(
                    src,
                    "ESCALATOR_SHUTDOWN_TIMEOUT",
                    Duration::from_secs(30),
                )?,
                poll_interval: seconds(src, "ESCALATOR_POLL_INTERVAL", Duration::from_millis(25))?,
                heartbeat: seconds(src, "ESCALATOR_HEARTBEAT_INTERVAL", Duration::from_secs(10))?,
                name,
            },
            metrics_addr: addr(src, "ESCALATOR_METRICS_ADDR", "0.0.0.0:9100")?,
        })
    }
}

/// Settings of the beat role.
#[derive(Debug, Clone)]
pub struct BeatSettings {
    /// Scheduler settings.
    pub beat: BeatConfig,
    /// Where `/metrics` and `/healthz` listen.
    pub metrics_addr: std::net::SocketAddr,
}

impl BeatSettings {
    /// From the environment.
    pub fn from_env(src: &dyn Source) -> Result<Self, ConfigError> {
        let expr = string(src, "ESCALATOR_SCHEDULE", "0 */15 * * * *");
        let tz = string(src, "ESCALATOR_TIMEZONE", "UTC");
        let schedule = Schedule::parse(&expr, &tz).map_err(|e| {
            let name = if matches!(e, escalator_beat::ScheduleError::Timezone(_)) {
                "ESCALATOR_TIMEZONE"
            } else {
                "ESCALATOR_SCHEDULE"
            };
            ConfigError {
                name,
                value: if name == "ESCALATOR_TIMEZONE" {
                    tz.clone()
                } else {
                    expr.clone()
                },
                reason: e.to_string(),
            }
        })?;
        let holder = format!(
            "{}-{}-{}",
            string(src, "HOSTNAME", "beat"),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        Ok(BeatSettings {
            beat: BeatConfig {
                schedule,
                catchup: seconds(src, "ESCALATOR_CATCHUP", Duration::from_secs(3_600))?,
                lease_ttl: seconds(src, "ESCALATOR_LEASE_TTL", Duration::from_secs(15))?,
                deadline_recheck: seconds(
                    src,
                    "ESCALATOR_DEADLINE_RECHECK",
                    Duration::from_secs(5),
                )?,
                holder,
            },
            metrics_addr: addr(src, "ESCALATOR_METRICS_ADDR", "0.0.0.0:9101")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_describe_a_local_redis_deployment() {
        let q = QueueConfig::from_env(&env(&[])).unwrap();
        assert_eq!(q.url, "redis://127.0.0.1:6379");
        assert_eq!(q.namespace, "escalator");
        let w = WorkerSettings::from_env(&env(&[])).unwrap();
        assert_eq!(w.engine.batch_size, 1_000);
        assert_eq!(w.worker.concurrency, 2);
        assert_eq!(w.metrics_addr.port(), 9100);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = QueueConfig::from_env(&env(&[("REDIS_URL", "http://nope")])).unwrap_err();
        assert_eq!(e.name, "REDIS_URL");
        let e =
            WorkerSettings::from_env(&env(&[("ESCALATOR_WORKER_CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_WORKER_CONCURRENCY");
        let e =
            WorkerSettings::from_env(&env(&[("ESCALATOR_SHUTDOWN_TIMEOUT", "soon")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_SHUTDOWN_TIMEOUT");
    }
}
