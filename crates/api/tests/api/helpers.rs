//! The test harness: a fresh PostgreSQL database and a Redis namespace of its own per test,
//! and the router driven with `oneshot` (no socket).

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chrono::Duration;
use escalator_api::{AppState, Tokens, router};
use escalator_jobs::{QueueNames, Queues};
use escalator_store::*;
pub use escalator_testkit::redis_url;
use escalator_testkit::{RedisNamespace, TestDb};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// The process-wide recorder: installed once, shared by the tests of this binary.
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| escalator_runtime::metrics::install().expect("install the recorder"))
        .clone()
}

/// An api over its own database and queue namespace.
pub struct TestApi {
    pub db: TestDb,
    pub queues: Queues,
    pub router: Router,
    /// Its Redis keys, deleted when it is dropped.
    _redis: RedisNamespace,
}

/// A response, body read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status and the JSON error shape; returns (code, field).
    pub fn error(&self, status: StatusCode) -> (String, Option<String>) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no message: {v}");
        (
            e["code"].as_str().expect("code").to_owned(),
            e["field"].as_str().map(str::to_owned),
        )
    }
}

pub async fn spawn_api() -> TestApi {
    spawn_api_with(Tokens::none()).await
}

pub async fn spawn_api_with(tokens: Tokens) -> TestApi {
    spawn_api_on(&redis_url(), tokens).await
}

/// An api whose queues are on the Redis at `url`.
pub async fn spawn_api_on(url: &str, tokens: Tokens) -> TestApi {
    spawn_api_state(url, tokens, |s| s).await
}

/// An api without tokens listening on loopback, as `escalator dev` serves it.
pub async fn spawn_local_api() -> TestApi {
    spawn_api_state(&redis_url(), Tokens::none(), |s| {
        s.answering_only_to_localhost(vec!["escalator.example".into()])
    })
    .await
}

/// An api without tokens whose state `adjust` changes first.
pub async fn spawn_api_adjusted(adjust: impl FnOnce(AppState) -> AppState) -> TestApi {
    spawn_api_state(&redis_url(), Tokens::none(), adjust).await
}

/// An api with these tokens whose state `adjust` changes first.
pub async fn spawn_api_tokens_adjusted(
    tokens: Tokens,
    adjust: impl FnOnce(AppState) -> AppState,
) -> TestApi {
    spawn_api_state(&redis_url(), tokens, adjust).await
}

async fn spawn_api_state(
    url: &str,
    tokens: Tokens,
    adjust: impl FnOnce(AppState) -> AppState,
) -> TestApi {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("api");
    let queues = Queues::connect(url, QueueNames::new(&ns.name))
        .await
        .unwrap_or_else(|e| panic!("Redis is unreachable at {url}: {e:?}"));
    let state = adjust(AppState::new(
        db.store.clone(),
        queues.clone(),
        tokens,
        Some(recorder()),
    ));
    TestApi {
        router: router(state),
        db,
        queues,
        _redis: ns,
    }
}

impl TestApi {
    /// Sends a request with a raw body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        let typed = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !typed {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, None, &[]).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Resp {
        self.send(Method::POST, uri, Some(body.to_string().into_bytes()), &[])
            .await
    }

    /// Creates a workflow through the api; returns its JSON.
    pub async fn create(&self, external_id: &str) -> Value {
        let res = self
            .post("/api/v1/workflows", workflow_body(external_id))
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
        res.json()
    }
}

pub fn workflow_body(external_id: &str) -> Value {
    json!({
        "external_id": external_id,
        "title": "Laptop purchase",
        "kind": "purchase_request",
        "stage": "Manager Approval",
        "assignee": "alice",
        "initiator": "bob",
        "metadata": { "amount": 1200 },
    })
}

/// Writes a reminder for `w` through the store's batch API, as the engine does: one in-app
/// notification for the assignee and one outbox row.
pub async fn remind(store: &Store, id: uuid::Uuid) {
    let w = store.get_workflow(id).await.unwrap();
    let now = w.warn_at + Duration::seconds(1);
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
            details: json!({}),
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
    };
    let mut tx = store.begin_batch().await.unwrap();
    tx.apply(&effects, now).await.unwrap();
    tx.commit().await.unwrap();
}
