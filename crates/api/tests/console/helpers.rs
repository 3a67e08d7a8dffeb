//! A console over its own database and queue namespace, driven with `oneshot` like a browser
//! would: a cookie jar of one cookie, forms posted url-encoded with the page's CSRF token.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{Duration, Utc};
use escalator_api::{AppState, Tokens, router};
use escalator_jobs::{QueueNames, Queues};
use escalator_store::*;
pub use escalator_testkit::redis_url;
use escalator_testkit::{RedisNamespace, TestDb};
use serde_json::json;
use tower::ServiceExt as _;

pub const ADMIN: &str = "admin-secret-0123456789";
pub const READER: &str = "reader-secret-0123456789";

/// The api (console included) over a fresh database and Redis namespace.
pub struct Console {
    pub db: TestDb,
    pub queues: Queues,
    pub router: Router,
    /// Its Redis keys, deleted when it is dropped.
    _redis: RedisNamespace,
}

/// A response, body read.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub html: String,
}

impl Page {
    /// The CSRF token of the page's forms.
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self
            .html
            .find(marker)
            .unwrap_or_else(|| panic!("no CSRF field in: {}", self.html))
            + marker.len();
        let len = self.html[start..].find('"').unwrap();
        self.html[start..start + len].to_owned()
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.status, StatusCode::OK, "{}", self.html);
        assert!(self.html.starts_with("<!DOCTYPE html>"), "{}", self.html);
        self
    }
}

/// Tokens: `admin` (admin scope) and `reader` (read scope).
pub fn tokens() -> Tokens {
    Tokens::parse(&format!("admin:{ADMIN}:admin,reader:{READER}:read")).unwrap()
}

pub async fn console(tokens: Tokens) -> Console {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("ui");
    let queues = Queues::connect(&redis_url(), QueueNames::new(&ns.name))
        .await
        .unwrap_or_else(|e| panic!("Redis is unreachable at {}: {e:?}", redis_url()));
    let state = AppState::new(db.store.clone(), queues.clone(), tokens, None);
    Console {
        router: router(state),
        db,
        queues,
        _redis: ns,
    }
}

/// The cookie a browser would send after signing in with `secret`.
pub fn cookie_of(secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "escalator_console={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

impl Console {
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        cookie: Option<&str>,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(serde_urlencoded::to_string(f).unwrap())
            }
            None => Body::empty(),
        };
        let res = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let header_of = |name| {
            res.headers()
                .get(name)
                .map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let (status, location, set_cookie) = (
            res.status(),
            header_of(header::LOCATION),
            header_of(header::SET_COOKIE),
        );
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        Page {
            status,
            location,
            set_cookie,
            html: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, uri: &str, cookie: Option<&str>) -> Page {
        self.send(Method::GET, uri, cookie, None).await
    }

    pub async fn post(&self, uri: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
        self.send(Method::POST, uri, cookie, Some(form)).await
    }

    /// Opens a workflow titled `title`, due `due_in` from now (a 24 h SLA started earlier).
    pub async fn workflow(&self, external_id: &str, title: &str, due_in: Duration) -> Workflow {
        let new = NewWorkflow {
            external_id: external_id.into(),
            title: title.into(),
            kind: "purchase_request".into(),
            stage: "Manager Approval".into(),
            assignee: "alice".into(),
            initiator: "bob".into(),
            escalation_target: Some("carol".into()),
            policy_id: None,
            stage_started_at: Some(Utc::now() + due_in - Duration::hours(24)),
            metadata: json!({}),
        };
        self.db
            .store
            .create_workflow(&new, Utc::now())
            .await
            .unwrap()
            .workflow
    }
}

/// Writes a reminder for `w` as the engine does: an audit row, an in-app notification for the
/// assignee and an email outbox row.
// `..BatchEffects::default()` keeps this compiling while the store grows fields.
#[allow(clippy::needless_update)]
pub async fn remind(store: &Store, w: &Workflow) {
    let now = Utc::now();
    let effects = BatchEffects {
        check_run_id: None,
        batch_index: Some(0),
        changes: vec![WorkflowChange {
            id: w.id,
            expected_version: w.version,
            status: w.status,
            assignee: w.assignee.clone(),
            level: w.escalation_level,
            warn_at: w.warn_at,
            due_at: w.due_at,
            paused_seconds: w.paused_seconds,
            reminded_at: Some(now),
            escalated_at: w.escalated_at,
            exhausted_at: w.exhausted_at,
            next_check_at: Some(w.due_at),
        }],
        audits: vec![NewAudit {
            workflow_id: w.id,
            action: "remind",
            reason: "sla",
            actor: "escalator".into(),
            from_assignee: None,
            to_assignee: Some(w.assignee.clone()),
            level: w.escalation_level,
            cycle: w.cycle,
            policy_version: w.policy_version,
            elapsed_seconds: Some((now - w.stage_started_at).num_seconds()),
            check_run_id: None,
            details: json!({ "why": "warn_at passed" }),
        }],
        notifications: vec![NewNotification {
            recipient: w.assignee.clone(),
            workflow_id: w.id,
            kind: "reminder",
            role: "to",
            subject: format!("Reminder: {}", w.title),
            body: "due soon".into(),
            dedup_key: format!("remind:{}:{}:{}", w.id, w.cycle, w.escalation_level),
        }],
        outbox: vec![NewOutbox {
            channel: "email",
            recipient: format!("{}@example.com", w.assignee),
            workflow_id: Some(w.id),
            payload: json!({ "subject": "Reminder" }),
            idempotency_key: format!("remind:{}:{}:email", w.id, w.cycle),
        }],
        counts: BatchCounts {
            checked: 1,
            ..BatchCounts::default()
        },
        // fields added later (e.g. held digest deliveries) stay empty
        ..BatchEffects::default()
    };
    let mut tx = store.begin_batch().await.unwrap();
    tx.apply(&effects, now).await.unwrap();
    tx.commit().await.unwrap();
}

/// Makes the workflow's outbox rows dead, as a sender giving up would.
pub async fn kill_deliveries(store: &Store, w: &Workflow) -> Vec<i64> {
    let rows = store.workflow_outbox(w.id).await.unwrap();
    for o in &rows {
        store
            .record_delivery(
                o.id,
                o.attempts,
                &DeliveryOutcome::Dead {
                    error: "550 <mailbox> unknown".into(),
                },
                Utc::now(),
            )
            .await
            .unwrap();
    }
    rows.iter().map(|o| o.id).collect()
}

/// Makes `id` a dead job of `queue` the way apalis-redis records one.
pub async fn bury(queue: &str, id: &str) {
    let c = apalis_redis::Config::default().queue(queue);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(c.job_data_hash())
        .arg(id)
        .arg(r#"{"check_run_id":1,"note":"<b>payload</b>"}"#)
        .cmd("SADD")
        .arg(c.dead_jobs_set())
        .arg(id)
        .cmd("HSET")
        .arg(format!("{}:{id}", c.job_meta_hash()))
        .arg("result")
        .arg("boom: <img src=x onerror=alert(1)>")
        .query_async(&mut conn)
        .await
        .unwrap();
}
