//! The process configuration, read once from the environment. Library crates receive typed
//! values; only this module knows variable names.

use std::time::Duration;

use escalator_api::Tokens;
use escalator_beat::{BeatConfig, Schedule};
use escalator_runtime::config::{
    ConfigError, Source, addr, bounded, flag, seconds, seconds_or_never, string,
};
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
    /// From the environment, for the database at `database_url`: with neither
    /// `ESCALATOR_QUEUE_URL` nor `REDIS_URL` set, a database in an existing SQLite file keeps its queues
    /// beside it in `FILE.queue`, as `escalator dev` does; anything else defaults to a local
    /// Redis. (A command given only the dev database's URL pushed to a Redis no dev reads, and
    /// its run stayed queued for hours.)
    pub fn from_env(src: &dyn Source, database_url: &str) -> Result<Self, ConfigError> {
        let redis = match (src.get("REDIS_URL"), sqlite_queue_beside(database_url)) {
            (None, Some(beside)) => beside,
            _ => string(src, "REDIS_URL", "redis://127.0.0.1:6379"),
        };
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

/// `sqlite://FILE.queue` for a database at `sqlite://FILE` (options dropped) that exists; None
/// for other databases, in-memory SQLite and a file that is not there (a mistyped path left a
/// stray queue file beside it).
fn sqlite_queue_beside(database_url: &str) -> Option<String> {
    let file = database_url.strip_prefix("sqlite:")?;
    let file = file.split('?').next().unwrap_or(file);
    let file = file.strip_prefix("//").unwrap_or(file);
    if file.is_empty() || file.contains(":memory:") || database_url.contains("mode=memory") {
        return None;
    }
    std::path::Path::new(file)
        .is_file()
        .then(|| format!("sqlite://{}", queue_file_beside(file)))
}

/// Variables that carry credentials; the deployment's placeholder Secret
/// (deploy/k8s/base/secret.yaml) fills several with `REPLACE-ME-…` values.
const SECRET_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "ESCALATOR_QUEUE_URL",
    "ESCALATOR_SMTP_URL",
    "ESCALATOR_API_TOKENS",
    "ESCALATOR_SENDGRID_KEY",
    "ESCALATOR_TWILIO_TOKEN",
    "ESCALATOR_WEBHOOK_SECRET",
    "ESCALATOR_SLACK_WEBHOOK_URL",
    "ESCALATOR_SLACK_USER_WEBHOOKS",
    // not a credential, but a placeholder all the same: the production overlay's sender,
    // which passed every check and had every message refused by the relay
    "ESCALATOR_EMAIL_FROM",
];

/// The first credential variable (or the sender) that still holds a placeholder (`REPLACE-ME`,
/// any case), the
/// database URL as the command got it (flag or variable) included. Placeholders worked: the
/// base's admin token is long enough to be accepted, and its Redis password is the one its
/// Redis was given, so an install rendered without the production overlay served an admin
/// token published in the repository.
pub fn placeholder_variable(src: &dyn Source, database_url: &str) -> Option<&'static str> {
    let placeholder = |v: &str| v.to_ascii_uppercase().contains("REPLACE-ME");
    if placeholder(database_url) {
        return Some("DATABASE_URL");
    }
    SECRET_VARIABLES
        .iter()
        .copied()
        .find(|name| src.get(name).is_some_and(|v| placeholder(&v)))
}

/// The queue file kept beside an SQLite database file, as `escalator dev` keeps it and the
/// other commands find it.
pub fn queue_file_beside(database_file: &str) -> String {
    format!("{database_file}.queue")
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
        let batch_size = bounded(src, "ESCALATOR_BATCH_SIZE", 500, 1..=5_000)?;
        let concurrency = bounded(src, "ESCALATOR_WORKER_CONCURRENCY", 2, 1..=256)?;
        let max_attempts = bounded(src, "ESCALATOR_MAX_ATTEMPTS", 5, 1..=25)?;
        let name = string(src, "HOSTNAME", "worker");
        let attempt_timeout = seconds(src, "ESCALATOR_JOB_TIMEOUT", Duration::from_secs(120))?;
        Ok(WorkerSettings {
            engine: EngineConfig {
                batch_size,
                // half the attempt: the planner's error names a backlog before its deadline
                push_patience: attempt_timeout / 2,
            },
            worker: WorkerConfig {
                concurrency: concurrency as usize,
                max_attempts: max_attempts as usize,
                attempt_timeout,
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

/// Where email goes: an SMTP relay, a folder of `.eml` files, or nowhere yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailConfig {
    /// `ESCALATOR_SMTP_URL`.
    Smtp {
        /// smtp://host:port, smtps://…, with optional credentials.
        url: String,
        /// From address.
        from: String,
        /// `ESCALATOR_SMTP_TIMEOUT`: the deadline of one message, from connecting to the relay's
        /// last reply; past it the attempt is a transient failure, retried with backoff.
        timeout: Duration,
    },
    /// `ESCALATOR_EMAIL_DIR`: one .eml per message.
    Files {
        /// The folder.
        dir: std::path::PathBuf,
        /// From address.
        from: String,
    },
    /// Not configured: deliveries wait in the outbox.
    None,
}

/// Settings of notification delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// The email sender.
    pub email: EmailConfig,
    /// Attempts before a delivery is dead.
    pub max_attempts: i32,
    /// The HTTP providers: email API, SMS, Slack, webhooks.
    pub http: escalator_notify::HttpConfig,
    /// `ESCALATOR_TEMPLATES_DIR`: files overriding built-in message templates.
    pub templates_dir: Option<std::path::PathBuf>,
    /// `ESCALATOR_DIGEST_THRESHOLD`: more escalations than this to one person on one channel
    /// in one check run become one digest (0: never).
    pub digest_threshold: u32,
    /// `ESCALATOR_EVENTS`: every escalation emits a CloudEvent to `ESCALATOR_WEBHOOK_URL`
    /// (default: on when that is set).
    pub events: bool,
}

/// A URL setting: http(s) only.
fn url(src: &dyn Source, name: &'static str) -> Result<Option<String>, ConfigError> {
    match src.get(name) {
        None => Ok(None),
        Some(v) if v.starts_with("http://") || v.starts_with("https://") => Ok(Some(v)),
        Some(v) => Err(ConfigError {
            name,
            value: v,
            reason: "expected an http:// or https:// URL".into(),
        }),
    }
}

/// A setting that must be present because `because` is set. Secrets are not echoed.
fn required(src: &dyn Source, name: &'static str, because: &str) -> Result<String, ConfigError> {
    match src.get(name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError {
            name,
            value: String::new(),
            reason: format!("required when {because} is set"),
        }),
    }
}

impl DeliverySettings {
    /// The HTTP providers from `ESCALATOR_SENDGRID_*`, `ESCALATOR_TWILIO_*`,
    /// `ESCALATOR_SLACK_WEBHOOK_URL`, `ESCALATOR_WEBHOOK_*`, `ESCALATOR_PROVIDER_TIMEOUT` and
    /// `ESCALATOR_PROVIDER_RATE_LIMIT`.
    fn http_from_env(
        src: &dyn Source,
        from: &str,
    ) -> Result<escalator_notify::HttpConfig, ConfigError> {
        let sendgrid = match url(src, "ESCALATOR_SENDGRID_URL")? {
            Some(url) => Some(escalator_notify::SendGridConfig {
                url,
                key: required(src, "ESCALATOR_SENDGRID_KEY", "ESCALATOR_SENDGRID_URL")?,
                from: from.to_owned(),
            }),
            None => None,
        };
        let twilio = match url(src, "ESCALATOR_TWILIO_URL")? {
            Some(url) => Some(escalator_notify::TwilioConfig {
                url,
                sid: required(src, "ESCALATOR_TWILIO_SID", "ESCALATOR_TWILIO_URL")?,
                token: required(src, "ESCALATOR_TWILIO_TOKEN", "ESCALATOR_TWILIO_URL")?,
                from: required(src, "ESCALATOR_TWILIO_FROM", "ESCALATOR_TWILIO_URL")?,
            }),
            None => None,
        };
        let webhook = match url(src, "ESCALATOR_WEBHOOK_URL")? {
            Some(url) => Some(escalator_notify::WebhookConfig {
                url,
                secret: required(src, "ESCALATOR_WEBHOOK_SECRET", "ESCALATOR_WEBHOOK_URL")?,
                source: string(src, "ESCALATOR_WEBHOOK_SOURCE", "escalator"),
            }),
            None => None,
        };
        Ok(escalator_notify::HttpConfig {
            timeout: seconds(src, "ESCALATOR_PROVIDER_TIMEOUT", Duration::from_secs(10))?,
            rate_per_second: bounded(src, "ESCALATOR_PROVIDER_RATE_LIMIT", 20, 1..=10_000)?,
            sendgrid,
            twilio,
            slack_webhook_url: url(src, "ESCALATOR_SLACK_WEBHOOK_URL")?,
            slack_user_webhooks: url(src, "ESCALATOR_SLACK_USER_WEBHOOKS")?
                .unwrap_or_else(|| escalator_notify::SLACK_USER_WEBHOOKS.to_owned()),
            webhook,
        })
    }

    /// From the environment.
    pub fn from_env(src: &dyn Source) -> Result<Self, ConfigError> {
        let from = string(
            src,
            "ESCALATOR_EMAIL_FROM",
            "escalator <escalator@localhost>",
        );
        let email = match (
            src.get("ESCALATOR_SMTP_URL"),
            src.get("ESCALATOR_EMAIL_DIR"),
        ) {
            (Some(url), _) => {
                if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                    return Err(ConfigError {
                        name: "ESCALATOR_SMTP_URL",
                        value: url,
                        reason: "expected smtp://host:port or smtps://host:port".into(),
                    });
                }
                if plain_with_password(&url) {
                    return Err(ConfigError {
                        name: "ESCALATOR_SMTP_URL",
                        value: url,
                        reason: "smtp:// with a user and password sends them unencrypted (and \
                                 most relays refuse it): use smtp://user:pass@host:587?tls=required \
                                 (STARTTLS) or smtps://user:pass@host:465"
                            .into(),
                    });
                }
                EmailConfig::Smtp {
                    url,
                    from: from.clone(),
                    timeout: seconds(src, "ESCALATOR_SMTP_TIMEOUT", Duration::from_secs(30))?,
                }
            }
            (None, Some(dir)) => EmailConfig::Files {
                dir: dir.into(),
                from: from.clone(),
            },
            (None, None) => EmailConfig::None,
        };
        let max_attempts = bounded(
            src,
            "ESCALATOR_DELIVERY_MAX_ATTEMPTS",
            escalator_notify::deliver::DEFAULT_MAX_ATTEMPTS,
            1..=50,
        )?;
        let http = Self::http_from_env(src, &from)?;
        if let (EmailConfig::Smtp { .. }, Some(_)) = (&email, &http.sendgrid) {
            return Err(ConfigError {
                name: "ESCALATOR_SENDGRID_URL",
                value: src.get("ESCALATOR_SENDGRID_URL").unwrap_or_default(),
                reason: "email goes either over SMTP (ESCALATOR_SMTP_URL) or over an HTTP API \
                         (ESCALATOR_SENDGRID_URL): set one"
                    .into(),
            });
        }
        let events = flag(src, "ESCALATOR_EVENTS", http.webhook.is_some())?;
        if events && http.webhook.is_none() {
            return Err(ConfigError {
                name: "ESCALATOR_EVENTS",
                value: src.get("ESCALATOR_EVENTS").unwrap_or_else(|| "true".into()),
                reason: "escalation events go to ESCALATOR_WEBHOOK_URL, which is not set".into(),
            });
        }
        Ok(DeliverySettings {
            events,
            email,
            max_attempts: i32::try_from(max_attempts).unwrap_or(8),
            http,
            templates_dir: src.get("ESCALATOR_TEMPLATES_DIR").map(Into::into),
            digest_threshold: bounded(src, "ESCALATOR_DIGEST_THRESHOLD", 5, 0..=1_000_000)?,
        })
    }

    /// The templates (built in, or overridden from `ESCALATOR_TEMPLATES_DIR`) and the digest
    /// threshold; the error names the variable and the bad file.
    pub fn message_settings(&self) -> anyhow::Result<escalator_worker::message::MessageSettings> {
        let templates = match &self.templates_dir {
            Some(dir) => escalator_notify::Templates::from_dir(dir)?,
            None => escalator_notify::Templates::builtin(),
        };
        Ok(escalator_worker::message::MessageSettings {
            templates,
            digest_threshold: self.digest_threshold,
            events: self.events,
        })
    }

    /// The deliverer, or None when no sender is configured.
    pub fn deliverer(
        &self,
        store: &escalator_store::Store,
    ) -> anyhow::Result<Option<escalator_notify::Deliverer>> {
        let templates = self.message_settings()?.templates;
        let smtp_deadline = match &self.email {
            EmailConfig::Smtp { timeout, .. } => Some(*timeout),
            _ => None,
        };
        let mailer = match &self.email {
            EmailConfig::Smtp { url, from, timeout } => Some(
                escalator_notify::Mailer::smtp_with_deadline(url, from, *timeout)?,
            ),
            EmailConfig::Files { dir, from } => {
                Some(escalator_notify::Mailer::files(dir.clone(), from)?)
            }
            EmailConfig::None => None,
        };
        let http = if self.http.any() {
            Some(escalator_notify::HttpChannels::new(self.http.clone())?)
        } else {
            None
        };
        if mailer.is_none() && http.is_none() {
            return Ok(None);
        }
        let http_timeout = http.as_ref().map(|_| self.http.timeout);
        Ok(Some(escalator_notify::Deliverer {
            store: store.clone(),
            mailer,
            http,
            templates: templates.clone(),
            max_attempts: self.max_attempts,
            lease: escalator_notify::lease_for(smtp_deadline, http_timeout),
        }))
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
            let value = if name == "ESCALATOR_TIMEZONE" {
                tz.clone()
            } else {
                expr.clone()
            };
            // the schedule's own message names the variable and value, as ConfigError does,
            // and the cron parser's spans lines
            let text = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let reason = text
                .strip_prefix(&format!("{name}={value:?}: "))
                .unwrap_or(&text)
                .to_owned();
            ConfigError {
                name,
                value,
                reason,
            }
        })?;
        let holder = format!(
            "{}-{}-{}",
            string(src, "HOSTNAME", "beat"),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let lease_ttl = seconds(src, "ESCALATOR_LEASE_TTL", Duration::from_secs(15))?;
        // the leader steps (and re-reads the earliest deadline) at least every third of its
        // lease, to renew it: a longer recheck would silently change nothing (unset, the
        // default gives way to a short lease)
        let deadline_recheck = seconds(
            src,
            "ESCALATOR_DEADLINE_RECHECK",
            Duration::from_secs(5).min(lease_ttl / 3),
        )?;
        if deadline_recheck > lease_ttl / 3 {
            return Err(ConfigError {
                name: "ESCALATOR_DEADLINE_RECHECK",
                value: deadline_recheck.as_secs_f64().to_string(),
                reason: format!(
                    "the beat re-reads the earliest deadline at least every third of \
                     ESCALATOR_LEASE_TTL ({} s) as it renews its lease: set at most that, or \
                     raise ESCALATOR_LEASE_TTL",
                    (lease_ttl / 3).as_secs_f64()
                ),
            });
        }
        Ok(BeatSettings {
            beat: BeatConfig {
                schedule,
                catchup: seconds(src, "ESCALATOR_CATCHUP", Duration::from_secs(3_600))?,
                lease_ttl,
                deadline_recheck,
                holder,
                done_retention: escalator_beat::DONE_JOB_RETENTION,
                outbox_retention: seconds_or_never(
                    src,
                    "ESCALATOR_OUTBOX_RETENTION",
                    escalator_beat::OUTBOX_RETENTION,
                )?,
            },
            metrics_addr: addr(src, "ESCALATOR_METRICS_ADDR", "0.0.0.0:9101")?,
        })
    }
}

/// Settings of the api role.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Where the api listens.
    pub addr: std::net::SocketAddr,
    /// Accepted bearer tokens; empty means no authentication.
    pub tokens: Tokens,
    /// Serve without tokens on a non-loopback address anyway.
    pub insecure: bool,
    /// Requests running longer are answered 408 (`ESCALATOR_API_TIMEOUT`, seconds).
    pub timeout: Duration,
    /// Host names a loopback api without tokens answers to besides the local ones
    /// (`ESCALATOR_API_ALLOWED_HOSTS`): a proxy or tunnel in front that keeps the public Host.
    pub allowed_hosts: Vec<String>,
}

/// `ESCALATOR_API_ALLOWED_HOSTS`: comma-separated host names (no port), for `api` and `dev`.
pub fn allowed_hosts(src: &dyn Source) -> Result<Vec<String>, ConfigError> {
    let Some(value) = src.get("ESCALATOR_API_ALLOWED_HOSTS") else {
        return Ok(Vec::new());
    };
    let mut hosts = Vec::new();
    for host in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let ok = host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        if !ok {
            return Err(ConfigError {
                name: "ESCALATOR_API_ALLOWED_HOSTS",
                value: value.clone(),
                reason: format!(
                    "{host:?} is not a host name (letters, digits, '.', '-'; no port, no scheme)"
                ),
            });
        }
        hosts.push(host.trim_end_matches('.').to_ascii_lowercase());
    }
    Ok(hosts)
}

/// `ESCALATOR_API_TOKENS`, for `api` and `dev`: none when unset.
pub fn api_tokens(src: &dyn Source) -> Result<Tokens, ConfigError> {
    match src.get("ESCALATOR_API_TOKENS") {
        None => Ok(Tokens::none()),
        Some(value) => Tokens::parse(&value).map_err(|reason| ConfigError {
            name: "ESCALATOR_API_TOKENS",
            // the value holds secrets: never echo it
            value: "***".into(),
            reason,
        }),
    }
}

/// `ESCALATOR_API_TIMEOUT`, for `api` and `dev`.
pub fn api_timeout(src: &dyn Source) -> Result<Duration, ConfigError> {
    seconds(src, "ESCALATOR_API_TIMEOUT", escalator_api::REQUEST_TIMEOUT)
}

impl ApiSettings {
    /// From the environment. Refuses an api without tokens on a non-loopback address unless
    /// `ESCALATOR_API_INSECURE=1`: an open api on the network lets anyone close workflows.
    pub fn from_env(src: &dyn Source) -> Result<Self, ConfigError> {
        let addr = addr(src, "ESCALATOR_API_ADDR", "0.0.0.0:5000")?;
        let tokens = api_tokens(src)?;
        let insecure = flag(src, "ESCALATOR_API_INSECURE", false)?;
        if tokens.is_empty() && !insecure && !addr.ip().is_loopback() {
            return Err(ConfigError {
                name: "ESCALATOR_API_ADDR",
                value: addr.to_string(),
                reason: "no ESCALATOR_API_TOKENS configured: refusing to serve an \
                         unauthenticated api beyond loopback; set ESCALATOR_API_TOKENS, bind \
                         127.0.0.1, or set ESCALATOR_API_INSECURE=1"
                    .into(),
            });
        }
        let timeout = api_timeout(src)?;
        Ok(ApiSettings {
            addr,
            tokens,
            insecure,
            timeout,
            allowed_hosts: allowed_hosts(src)?,
        })
    }
}

/// Whether `url` is plain `smtp://` carrying credentials without `tls=required`: lettre then
/// never starts TLS (also `tls=opportunistic` goes on in the clear when the relay offers no
/// STARTTLS), so the password crosses the network as sent.
fn plain_with_password(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("smtp://") else {
        return false;
    };
    let (authority, query) = match rest.split_once('?') {
        Some((before, query)) => (before, query),
        None => (rest, ""),
    };
    let authority = authority.split('/').next().unwrap_or_default();
    authority.contains('@') && !query.split('&').any(|kv| kv == "tls=required")
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

    /// The placeholder Secret's values (deploy/k8s/base/secret.yaml) are refused by name.
    #[test]
    fn placeholder_credentials_are_named() {
        let real = "postgres://escalator:s3cret@db:5432/escalator";
        let base = [
            (
                "ESCALATOR_API_TOKENS",
                "ops:REPLACE-ME-admin-token-0000:admin",
            ),
            ("REDIS_URL", "redis://:REPLACE-ME-redis-password@redis:6379"),
        ];
        assert_eq!(placeholder_variable(&env(&base), real), Some("REDIS_URL"));
        assert_eq!(
            placeholder_variable(&env(&base[..1]), real),
            Some("ESCALATOR_API_TOKENS")
        );
        let db = "postgres://escalator:replace-me-db-password@db:5432/escalator";
        assert_eq!(placeholder_variable(&env(&[]), db), Some("DATABASE_URL"));
        let fine = [
            (
                "ESCALATOR_API_TOKENS",
                "ops:a-real-secret-of-32-chars-0000:admin",
            ),
            ("REDIS_URL", "redis://:pw@redis:6379"),
            ("ESCALATOR_EMAIL_FROM", "escalator <escalator@example.com>"),
        ];
        assert_eq!(placeholder_variable(&env(&fine), real), None);
        let sender = [("ESCALATOR_EMAIL_FROM", "escalator <REPLACE-ME@example.com>")];
        assert_eq!(
            placeholder_variable(&env(&sender), real),
            Some("ESCALATOR_EMAIL_FROM")
        );
    }

    /// The dev database's URL alone reaches the dev queues: the queue defaulted to a local
    /// Redis, which no dev reads.
    #[test]
    fn an_sqlite_database_keeps_its_queues_beside_it_unless_told_otherwise() {
        let url = |env_pairs: &[(&str, &str)], db: &str| {
            QueueConfig::from_env(&env(env_pairs), db).unwrap().url
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dev.db");
        std::fs::write(&file, b"").unwrap();
        let file = file.display().to_string();
        assert_eq!(
            url(&[], &format!("sqlite://{file}")),
            format!("sqlite://{file}.queue")
        );
        assert_eq!(
            url(&[], &format!("sqlite://{file}?mode=rwc")),
            format!("sqlite://{file}.queue")
        );
        assert_eq!(url(&[], "sqlite::memory:"), "redis://127.0.0.1:6379");
        // a database that is not there gets no queue file beside it
        let missing = format!("sqlite://{}/typo.db", dir.path().display());
        assert_eq!(url(&[], &missing), "redis://127.0.0.1:6379");
        let db = format!("sqlite://{file}");
        let redis = [("REDIS_URL", "redis://cache:6379")];
        assert_eq!(url(&redis, &db), "redis://cache:6379");
        let queue = [("ESCALATOR_QUEUE_URL", "sqlite://q.db")];
        assert_eq!(url(&queue, &db), "sqlite://q.db");
    }

    #[test]
    fn defaults_describe_a_local_redis_deployment() {
        let q = QueueConfig::from_env(&env(&[]), "postgres://db/escalator").unwrap();
        assert_eq!(q.url, "redis://127.0.0.1:6379");
        assert_eq!(q.namespace, "escalator");
        let w = WorkerSettings::from_env(&env(&[])).unwrap();
        assert_eq!(w.engine.batch_size, 500);
        assert_eq!(w.worker.concurrency, 2);
        assert_eq!(w.metrics_addr.port(), 9100);
    }

    #[test]
    fn http_providers_need_their_keys_and_name_the_missing_one() {
        let none = DeliverySettings::from_env(&env(&[])).unwrap();
        assert!(!none.http.any());
        let e =
            DeliverySettings::from_env(&env(&[("ESCALATOR_SENDGRID_URL", "http://127.0.0.1:1")]))
                .unwrap_err();
        assert_eq!(e.name, "ESCALATOR_SENDGRID_KEY");
        let e = DeliverySettings::from_env(&env(&[
            ("ESCALATOR_TWILIO_URL", "http://127.0.0.1:1"),
            ("ESCALATOR_TWILIO_SID", "AC1"),
            ("ESCALATOR_TWILIO_TOKEN", "t"),
        ]))
        .unwrap_err();
        assert_eq!(e.name, "ESCALATOR_TWILIO_FROM");
        let e =
            DeliverySettings::from_env(&env(&[("ESCALATOR_WEBHOOK_URL", "ftp://x")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_WEBHOOK_URL");
        let e = DeliverySettings::from_env(&env(&[
            ("ESCALATOR_SMTP_URL", "smtp://127.0.0.1:25"),
            ("ESCALATOR_SENDGRID_URL", "http://127.0.0.1:1"),
            ("ESCALATOR_SENDGRID_KEY", "k"),
        ]))
        .unwrap_err();
        assert_eq!(e.name, "ESCALATOR_SENDGRID_URL");
        let ok = DeliverySettings::from_env(&env(&[
            (
                "ESCALATOR_SLACK_WEBHOOK_URL",
                "https://hooks.example.com/T/B/x",
            ),
            ("ESCALATOR_WEBHOOK_URL", "https://example.com/hook"),
            ("ESCALATOR_WEBHOOK_SECRET", "s3cret"),
            ("ESCALATOR_PROVIDER_RATE_LIMIT", "5"),
        ]))
        .unwrap();
        assert!(ok.http.any());
        assert_eq!(ok.http.rate_per_second, 5);
        assert!(ok.events, "a webhook turns escalation events on");
        assert!(ok.message_settings().unwrap().events);
        assert_eq!(ok.http.webhook.unwrap().source, "escalator");
    }

    #[test]
    fn escalation_events_follow_the_webhook_and_need_one() {
        let hook = [
            ("ESCALATOR_WEBHOOK_URL", "https://example.com/hook"),
            ("ESCALATOR_WEBHOOK_SECRET", "s3cret"),
        ];
        assert!(!DeliverySettings::from_env(&env(&[])).unwrap().events);
        let mut off = hook.to_vec();
        off.push(("ESCALATOR_EVENTS", "false"));
        assert!(!DeliverySettings::from_env(&env(&off)).unwrap().events);
        let e = DeliverySettings::from_env(&env(&[("ESCALATOR_EVENTS", "true")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_EVENTS");
        assert!(e.to_string().contains("ESCALATOR_WEBHOOK_URL"), "{e}");
        // the value as written, not as read
        let e = DeliverySettings::from_env(&env(&[("ESCALATOR_EVENTS", "1")])).unwrap_err();
        assert!(e.to_string().contains("ESCALATOR_EVENTS=\"1\""), "{e}");
        let e = DeliverySettings::from_env(&env(&[("ESCALATOR_EVENTS", "often")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_EVENTS");
        // as .env.example writes it
        let mut one = hook.to_vec();
        one.push(("ESCALATOR_EVENTS", "1"));
        assert!(DeliverySettings::from_env(&env(&one)).unwrap().events);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = QueueConfig::from_env(&env(&[("REDIS_URL", "http://nope")]), "sqlite://a.db")
            .unwrap_err();
        assert_eq!(e.name, "REDIS_URL");
        // the names a loopback api without tokens also answers to: host names only
        let hosts = allowed_hosts(&env(&[(
            "ESCALATOR_API_ALLOWED_HOSTS",
            " Escalator.Example., dev.internal ",
        )]))
        .unwrap();
        assert_eq!(hosts, ["escalator.example", "dev.internal"]);
        for bad in ["https://escalator.example", "escalator.example:5000", "a b"] {
            let e = allowed_hosts(&env(&[("ESCALATOR_API_ALLOWED_HOSTS", bad)])).unwrap_err();
            assert_eq!(e.name, "ESCALATOR_API_ALLOWED_HOSTS", "{bad}");
        }
        let e =
            WorkerSettings::from_env(&env(&[("ESCALATOR_WORKER_CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_WORKER_CONCURRENCY");
        let e =
            WorkerSettings::from_env(&env(&[("ESCALATOR_SHUTDOWN_TIMEOUT", "soon")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_SHUTDOWN_TIMEOUT");
        let e = BeatSettings::from_env(&env(&[("ESCALATOR_DEADLINE_RECHECK", "60")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_DEADLINE_RECHECK");
        assert!(e.reason.contains("ESCALATOR_LEASE_TTL (5 s)"), "{e}");
        let longer = [
            ("ESCALATOR_DEADLINE_RECHECK", "60"),
            ("ESCALATOR_LEASE_TTL", "180"),
        ];
        assert!(BeatSettings::from_env(&env(&longer)).is_ok());
        let short = BeatSettings::from_env(&env(&[("ESCALATOR_LEASE_TTL", "3")])).unwrap();
        assert_eq!(short.beat.deadline_recheck, Duration::from_secs(1));
        // named once, on one line (the schedule's message named it again)
        for (name, value) in [
            ("ESCALATOR_SCHEDULE", "bogus"),
            ("ESCALATOR_TIMEZONE", "Mars/Olympus"),
        ] {
            let e = BeatSettings::from_env(&env(&[(name, value)])).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.name, name);
            assert_eq!(text.matches(name).count(), 1, "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn a_password_is_never_sent_to_a_relay_in_the_clear() {
        let smtp = |url: &str| DeliverySettings::from_env(&env(&[("ESCALATOR_SMTP_URL", url)]));
        for refused in [
            "smtp://mailer:hunter2@relay.example.net:587",
            "smtp://mailer:hunter2@relay.example.net:587?tls=opportunistic",
            "smtp://mailer:hunter2@relay.example.net:587/?tls=none",
        ] {
            let e = smtp(refused).unwrap_err();
            assert_eq!(e.name, "ESCALATOR_SMTP_URL");
            let text = e.to_string();
            assert!(
                text.contains("tls=required") && !text.contains("hunter2"),
                "{text}"
            );
        }
        for taken in [
            "smtp://mailer:hunter2@relay.example.net:587?tls=required",
            "smtp://mailer:hunter2@relay.example.net:587/?tls=required&helo=escalator",
            "smtps://mailer:hunter2@relay.example.net:465",
            "smtp://mailpit:1025",
            "smtp://relay.example.net:25?tls=opportunistic",
        ] {
            assert!(smtp(taken).is_ok(), "{taken}");
        }
    }

    #[test]
    fn an_smtp_relay_gets_a_deadline_per_message() {
        let relay = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("ESCALATOR_SMTP_URL", "smtp://127.0.0.1:25")];
            pairs.extend_from_slice(extra);
            DeliverySettings::from_env(&env(&pairs))
        };
        let timeout_of = |d: DeliverySettings| match d.email {
            EmailConfig::Smtp { timeout, .. } => timeout,
            other => panic!("not SMTP: {other:?}"),
        };
        assert_eq!(timeout_of(relay(&[]).unwrap()), Duration::from_secs(30));
        assert_eq!(
            timeout_of(relay(&[("ESCALATOR_SMTP_TIMEOUT", "1.5")]).unwrap()),
            Duration::from_millis(1500)
        );
        let e = relay(&[("ESCALATOR_SMTP_TIMEOUT", "a while")]).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_SMTP_TIMEOUT");
    }

    #[test]
    fn an_api_without_tokens_stays_on_loopback_unless_told_otherwise() {
        let e = ApiSettings::from_env(&env(&[])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_API_ADDR");
        assert!(e.reason.contains("ESCALATOR_API_TOKENS"), "{e}");
        assert!(e.reason.contains("ESCALATOR_API_INSECURE=1"), "{e}");
        let local = ApiSettings::from_env(&env(&[("ESCALATOR_API_ADDR", "127.0.0.1:5000")]));
        assert!(local.unwrap().tokens.is_empty());
        let open = ApiSettings::from_env(&env(&[("ESCALATOR_API_INSECURE", "1")])).unwrap();
        assert_eq!(open.addr.port(), 5000);
        assert_eq!(open.timeout, Duration::from_secs(30));
        let secured = ApiSettings::from_env(&env(&[(
            "ESCALATOR_API_TOKENS",
            "ci:0123456789abcdef:admin",
        )]))
        .unwrap();
        assert!(!secured.tokens.is_empty());
    }

    #[test]
    fn bad_api_settings_name_the_variable_and_hide_the_tokens() {
        let e = ApiSettings::from_env(&env(&[(
            "ESCALATOR_API_TOKENS",
            "ci:0123456789abcdef:root",
        )]))
        .unwrap_err();
        assert_eq!(e.name, "ESCALATOR_API_TOKENS");
        assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        let e = ApiSettings::from_env(&env(&[("ESCALATOR_API_INSECURE", "perhaps")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_API_INSECURE");
        let e = ApiSettings::from_env(&env(&[("ESCALATOR_API_ADDR", "port 5000")])).unwrap_err();
        assert_eq!(e.name, "ESCALATOR_API_ADDR");
        let quick = ApiSettings::from_env(&env(&[
            ("ESCALATOR_API_ADDR", "127.0.0.1:5000"),
            ("ESCALATOR_API_TIMEOUT", "2.5"),
        ]))
        .unwrap();
        assert_eq!(quick.timeout, Duration::from_millis(2_500));
        let e = ApiSettings::from_env(&env(&[
            ("ESCALATOR_API_ADDR", "127.0.0.1:5000"),
            ("ESCALATOR_API_TIMEOUT", "soon"),
        ]))
        .unwrap_err();
        assert_eq!(e.name, "ESCALATOR_API_TIMEOUT");
    }
}
