//! The HTTP channels: email over a SendGrid-style API, SMS over a Twilio-style API, Slack
//! incoming webhooks and generic webhooks carrying a signed CloudEvents-shaped event. Each
//! provider has its own rate limit; every request has a deadline; the outbox row's
//! idempotency key travels as the `Idempotency-Key` header (and as the event's `id`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use escalator_store::OutboxEntry;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, KeyInit, Mac};
use lettre::message::Mailbox;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::NotifyError;

/// The header carrying the webhook signature: `sha256=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Escalator-Signature";
/// The header carrying the Unix timestamp that the signature covers.
pub const TIMESTAMP_HEADER: &str = "X-Escalator-Timestamp";
/// The header carrying the outbox row's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// A SendGrid-style email API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendGridConfig {
    /// Base URL; the message is POSTed to `{url}/v3/mail/send`.
    pub url: String,
    /// API key, sent as a bearer token.
    pub key: String,
    /// The From address (`ESCALATOR_EMAIL_FROM`).
    pub from: String,
}

/// A Twilio-style SMS API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioConfig {
    /// Base URL; messages are POSTed to `{url}/2010-04-01/Accounts/{sid}/Messages.json`.
    pub url: String,
    /// Account SID (basic-auth user).
    pub sid: String,
    /// Auth token (basic-auth password).
    pub token: String,
    /// The sending number.
    pub from: String,
}

/// Generic webhooks: every delivery on the `webhook` channel is POSTed here as a CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Where events go.
    pub url: String,
    /// The HMAC-SHA256 key receivers verify the signature with.
    pub secret: String,
    /// The CloudEvents `source` attribute.
    pub source: String,
}

/// Settings of the HTTP channels; a channel whose provider is None is not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Longest wait for one request, end to end.
    pub timeout: Duration,
    /// Requests per second allowed to each provider.
    pub rate_per_second: u32,
    /// Email over HTTP.
    pub sendgrid: Option<SendGridConfig>,
    /// SMS.
    pub twilio: Option<TwilioConfig>,
    /// The Slack incoming webhook for users whose `slack` is a member id rather than a
    /// webhook URL of their own.
    pub slack_webhook_url: Option<String>,
    /// Where a user's own Slack webhook must lie ([`SLACK_USER_WEBHOOKS`] by default; same
    /// scheme, host and port, path at or below):
    /// user records are not trusted to send workers' requests anywhere else.
    pub slack_user_webhooks: String,
    /// Generic signed webhooks.
    pub webhook: Option<WebhookConfig>,
}

/// The default of [`HttpConfig::slack_user_webhooks`]: Slack's incoming webhooks.
pub const SLACK_USER_WEBHOOKS: &str = "https://hooks.slack.com/";

impl HttpConfig {
    /// True when any HTTP provider is configured.
    pub fn any(&self) -> bool {
        self.sendgrid.is_some()
            || self.twilio.is_some()
            || self.slack_webhook_url.is_some()
            || self.webhook.is_some()
    }
}

/// The HTTP senders, sharing one connection pool.
#[derive(Debug, Clone)]
pub struct HttpChannels {
    client: reqwest::Client,
    config: HttpConfig,
    /// [`HttpConfig::slack_user_webhooks`], parsed.
    user_webhooks: reqwest::Url,
    from: Option<Mailbox>,
    limits: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    sendgrid: DefaultDirectRateLimiter,
    twilio: DefaultDirectRateLimiter,
    slack: DefaultDirectRateLimiter,
    webhook: DefaultDirectRateLimiter,
}

impl HttpChannels {
    /// Builds the client; fails on an unusable setting, naming it.
    pub fn new(config: HttpConfig) -> Result<HttpChannels, NotifyError> {
        let client = reqwest::Client::builder()
            // a redirect would take a request where its URL's check never looked (a user's
            // own webhook answering 302 to an internal address); providers need none
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("escalator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Config(format!("cannot build the HTTP client: {e}")))?;
        let from = match &config.sendgrid {
            Some(s) => Some(s.from.parse::<Mailbox>().map_err(|e| {
                NotifyError::Config(format!("ESCALATOR_EMAIL_FROM={:?}: {e}", s.from))
            })?),
            None => None,
        };
        let rate = NonZeroU32::new(config.rate_per_second).ok_or_else(|| {
            NotifyError::Config("ESCALATOR_PROVIDER_RATE_LIMIT must be at least 1".into())
        })?;
        let quota = Quota::per_second(rate);
        let limits = Arc::new(Limits {
            sendgrid: RateLimiter::direct(quota),
            twilio: RateLimiter::direct(quota),
            slack: RateLimiter::direct(quota),
            webhook: RateLimiter::direct(quota),
        });
        let user_webhooks = reqwest::Url::parse(&config.slack_user_webhooks)
            .ok()
            .filter(|u| u.has_host() && matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| {
                NotifyError::Config(format!(
                    "ESCALATOR_SLACK_USER_WEBHOOKS={:?}: expected a URL such as {SLACK_USER_WEBHOOKS}",
                    config.slack_user_webhooks
                ))
            })?;
        Ok(HttpChannels {
            client,
            config,
            from,
            limits,
            user_webhooks,
        })
    }

    /// True when email goes over the HTTP API.
    pub fn has_email(&self) -> bool {
        self.config.sendgrid.is_some()
    }

    /// Sends an outbox row of channel `email` over the SendGrid-style API.
    pub async fn send_email(&self, entry: &OutboxEntry) -> Result<(), NotifyError> {
        let (Some(cfg), Some(from)) = (&self.config.sendgrid, &self.from) else {
            return Err(NotifyError::Config(
                "email over HTTP is not configured (ESCALATOR_SENDGRID_URL)".into(),
            ));
        };
        let p = &entry.payload;
        // as over SMTP: an unusable address is left out rather than failing the message for
        // everyone (the provider refuses the whole request with a 400)
        let (to, cc) = crate::email::usable_recipients(entry).ok_or_else(|| {
            NotifyError::Permanent(format!(
                "no valid recipient among {:?}",
                crate::email::addresses_in(p, "to")
            ))
        })?;
        // a follow-up for recipients an SMTP relay deferred (the sender was switched since)
        // goes to them alone: the others have it
        let envelope: Vec<String> = crate::email::addresses_in(p, "envelope");
        let (to, cc) = if p.get("envelope").is_some() {
            (envelope, Vec::new())
        } else {
            (to, cc)
        };
        let mut personalization =
            json!({ "to": to.iter().map(|a| json!({ "email": a })).collect::<Vec<_>>() });
        if !cc.is_empty() {
            personalization["cc"] = cc.iter().map(|a| json!({ "email": a })).collect();
        }
        let mut content = vec![json!({ "type": "text/plain", "value": text(&p["body"]) })];
        if let Some(html) = p["html"].as_str() {
            content.push(json!({ "type": "text/html", "value": html }));
        }
        let mut sender = json!({ "email": from.email.to_string() });
        if let Some(name) = &from.name {
            sender["name"] = json!(name);
        }
        let body = json!({
            "personalizations": [personalization],
            "from": sender,
            "subject": header_safe(&text(&p["subject"])),
            "content": content,
        });
        self.limits.sendgrid.until_ready().await;
        let request = self
            .client
            .post(join(&cfg.url, "/v3/mail/send"))
            .bearer_auth(&cfg.key)
            .header(IDEMPOTENCY_HEADER, &entry.idempotency_key)
            .json(&body);
        classify("SendGrid", request.send().await, Endpoint::Configured).await
    }

    /// Sends an outbox row of channel `sms` over the Twilio-style API.
    pub async fn send_sms(&self, entry: &OutboxEntry) -> Result<(), NotifyError> {
        let Some(cfg) = &self.config.twilio else {
            return Err(NotifyError::Config(
                "SMS is not configured (ESCALATOR_TWILIO_URL)".into(),
            ));
        };
        let to = entry.payload["to"].as_str().unwrap_or(&entry.recipient);
        if to.trim().is_empty() {
            return Err(NotifyError::Permanent(
                "no phone number in the payload".into(),
            ));
        }
        let body = text(&entry.payload["body"]);
        self.limits.twilio.until_ready().await;
        let url = join(
            &cfg.url,
            &format!("/2010-04-01/Accounts/{}/Messages.json", cfg.sid),
        );
        let request = self
            .client
            .post(url)
            .basic_auth(&cfg.sid, Some(&cfg.token))
            .header(IDEMPOTENCY_HEADER, &entry.idempotency_key)
            .form(&[
                ("To", to),
                ("From", cfg.from.as_str()),
                ("Body", body.as_str()),
            ]);
        classify("Twilio", request.send().await, Endpoint::Configured).await
    }

    /// Sends an outbox row of channel `slack`: to the user's own incoming webhook when their
    /// `slack` is a URL, else to the configured webhook, mentioning them.
    pub async fn send_slack(&self, entry: &OutboxEntry) -> Result<(), NotifyError> {
        let to = entry.payload["to"].as_str().unwrap_or(&entry.recipient);
        let mut message = text(&entry.payload["text"]);
        let (url, endpoint) = if to.contains("://") {
            // a user's own webhook: only where Slack's are, never an internal address
            let prefix = &self.config.slack_user_webhooks;
            if !under(&self.user_webhooks, to) {
                return Err(NotifyError::Permanent(format!(
                    "a user's own Slack webhook must lie under {prefix} \
                     (ESCALATOR_SLACK_USER_WEBHOOKS: same scheme, host and port); got {}",
                    escalator_runtime::config::host_only(to)
                )));
            }
            (to.to_owned(), Endpoint::Users)
        } else {
            let Some(url) = &self.config.slack_webhook_url else {
                return Err(NotifyError::Config(
                    "Slack is not configured (ESCALATOR_SLACK_WEBHOOK_URL)".into(),
                ));
            };
            if !to.is_empty() {
                // mentioned as <@id>: characters that end or extend a Slack mention (`>`,
                // `|`, `<!channel>`, spaces) would let a user record ping a channel or plant
                // a link
                if let Err(e) = escalator_store::logic::check_slack("slack", to) {
                    return Err(NotifyError::Permanent(e.to_string()));
                }
                message = format!("<@{to}> {message}");
            }
            (url.clone(), Endpoint::Configured)
        };
        self.limits.slack.until_ready().await;
        let request = self
            .client
            .post(url)
            .header(IDEMPOTENCY_HEADER, &entry.idempotency_key)
            .json(&json!({ "text": message }));
        classify("Slack", request.send().await, endpoint).await
    }

    /// Sends an outbox row of channel `webhook` (or `event`) as a signed CloudEvent.
    pub async fn send_webhook(&self, entry: &OutboxEntry) -> Result<(), NotifyError> {
        let Some(cfg) = &self.config.webhook else {
            return Err(NotifyError::Config(
                "webhooks are not configured (ESCALATOR_WEBHOOK_URL)".into(),
            ));
        };
        let body = serde_json::to_vec(&cloud_event(entry, &cfg.source))
            .map_err(|e| NotifyError::Permanent(format!("cannot encode the event: {e}")))?;
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = sign(&cfg.secret, &timestamp, &body)?;
        self.limits.webhook.until_ready().await;
        let request = self
            .client
            .post(&cfg.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents+json",
            )
            .header(IDEMPOTENCY_HEADER, &entry.idempotency_key)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, format!("sha256={signature}"))
            .body(body);
        classify("webhook", request.send().await, Endpoint::Configured).await
    }
}

/// Whether `url` lies under `allowed`: the same scheme, host and port, no user info, and a
/// path at or below `allowed`'s. A text prefix was not enough: `https://hooks.slack.com` is
/// one of `https://hooks.slack.com.evil.example/` and of `https://hooks.slack.com@10.0.0.5/`.
fn under(allowed: &reqwest::Url, url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let base = allowed.path();
    let path_ok = base.ends_with('/') && url.path().starts_with(base)
        || url.path() == base
        || url.path().starts_with(&format!("{base}/"));
    url.scheme() == allowed.scheme()
        && url.host_str() == allowed.host_str()
        && url.port_or_known_default() == allowed.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none()
        && path_ok
}

/// The CloudEvents-shaped envelope of an outbox row: `id` is the idempotency key, so a
/// receiver can drop a redelivery.
pub fn cloud_event(entry: &OutboxEntry, source: &str) -> Value {
    let kind = entry.payload["kind"].as_str().unwrap_or("notification");
    json!({
        "specversion": "1.0",
        "id": entry.idempotency_key,
        "source": source,
        "type": format!("dev.escalator.{kind}"),
        "subject": entry.workflow_id,
        "time": entry.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": entry.payload,
    })
}

/// Hex HMAC-SHA256 over `{timestamp}.{body}` — the timestamp is signed too, so a captured
/// request cannot be replayed later with a fresh one.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> Result<String, NotifyError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| NotifyError::Config(format!("ESCALATOR_WEBHOOK_SECRET: {e}")))?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Longest Retry-After honoured; beyond it the normal backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// Up to `limit` bytes of a response's body (what could be read of it).
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(limit);
    body
}

/// `text` without the path and the query of `url` (unless they are trivially short), each
/// replaced by `…`.
fn without_url_parts(text: &str, url: &reqwest::Url) -> String {
    let mut out = text.to_owned();
    for part in [url.query().unwrap_or_default(), url.path()] {
        if part.len() > 1 {
            out = out.replace(part, "…");
        }
    }
    out
}

/// Whose credentials a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// A provider configured for escalator (its key, its URL).
    Configured,
    /// An address from a user's record (their own Slack webhook).
    Users,
}

/// Transient: no answer in time, no connection, 408, 429, 5xx (with Retry-After when the
/// provider gave one in seconds), and 401/403 from a configured provider (escalator's own key
/// refused: the configuration is wrong, not the message, and every message should go once it
/// is fixed). Permanent: any other 4xx. 1xx/3xx count as transient.
async fn classify(
    provider: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
    endpoint: Endpoint,
) -> Result<(), NotifyError> {
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(NotifyError::Transient(format!(
                "{provider}: no answer in time"
            )));
        }
        // reqwest names the whole URL in its errors, and a webhook's path or query is its
        // credential (Slack's, a token parameter): only its scheme, host and port are said
        Err(e) if e.is_builder() => {
            let at = e
                .url()
                .map(|u| escalator_runtime::config::host_only(u.as_str()).into_owned())
                .unwrap_or_default();
            return Err(NotifyError::Permanent(format!(
                "{provider}: cannot build the request to {at}: {}",
                e.without_url()
            )));
        }
        Err(e) => {
            let at = e
                .url()
                .map(|u| escalator_runtime::config::host_only(u.as_str()).into_owned())
                .unwrap_or_default();
            return Err(NotifyError::Transient(format!(
                "{provider} at {at}: {}",
                escalator_runtime::error::with_causes(&e.without_url())
            )));
        }
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_RETRY_AFTER);
    // the body says why; a provider's error text is short. Only its first kilobytes are read:
    // a webhook URL is user input, and a broken or hostile endpoint may answer with an endless
    // body, which must not fill the worker's memory
    // a webhook's path and query are its credential, and frameworks echo them in their error
    // pages ("Cannot POST /services/T0/B0/…"): they are cut out before the text is kept
    let url = response.url().clone();
    let body = String::from_utf8_lossy(&read_at_most(response, 4_096).await).into_owned();
    let detail: String = without_url_parts(&body, &url).chars().take(300).collect();
    let mut error = format!("{provider}: HTTP {status}: {detail}");
    if status.is_redirection() {
        // not followed: the request would go where no check looked
        error.push_str(" (redirects are not followed: configure the final URL)");
    }
    let credentials = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if credentials && endpoint == Endpoint::Configured {
        return Err(NotifyError::Transient(format!(
            "{error} (escalator's credentials for {provider} were refused: check its settings)"
        )));
    }
    // an endpoint of escalator's own settings that is not there (a Slack webhook revoked,
    // its channel archived; a wrong URL): every message to it fails alike, and a fixed
    // setting sends them; dead at once, every Slack message was lost to one revoked webhook
    let missing = matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE);
    if missing && endpoint == Endpoint::Configured {
        return Err(NotifyError::Transient(format!(
            "{error} (escalator's endpoint for {provider} is not there: check its settings)"
        )));
    }
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
        || !status.is_client_error()
    {
        match retry_after {
            Some(after) => Err(NotifyError::Throttled { error, after }),
            None => Err(NotifyError::Transient(error)),
        }
    } else {
        Err(NotifyError::Permanent(error))
    }
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Header values never carry line breaks.
pub fn header_safe(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let a = sign("k", "1700000000", b"{}").unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, sign("k", "1700000001", b"{}").unwrap());
        assert_ne!(a, sign("k", "1700000000", b"{ }").unwrap());
        assert_ne!(a, sign("other", "1700000000", b"{}").unwrap());
        // RFC 4231 test case 2, to pin the algorithm: HMAC-SHA256("Jefe", "what do ya want for nothing?")
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn subjects_lose_their_line_breaks() {
        assert_eq!(header_safe("a\r\nBcc: x\ny"), "a  Bcc: x y");
    }
}
