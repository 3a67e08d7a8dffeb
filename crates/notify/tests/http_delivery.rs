//! Delivery over the HTTP channels against local mock servers (wiremock) and a real
//! PostgreSQL outbox: classification of provider answers, retries, signatures, rate limits,
//! and exactly one send when two senders drain the same rows at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use escalator_notify::http::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use escalator_notify::{
    Deliverer, HttpChannels, HttpConfig, Mailer, SendGridConfig, TwilioConfig, WebhookConfig,
};
use escalator_store::{BatchEffects, NewOutbox, OutboxEntry, Store};
use escalator_testkit::TestDb;
use escalator_testkit::smtp::smtp_sink;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Writes outbox rows the way a batch does.
async fn outbox(store: &Store, rows: Vec<NewOutbox>) {
    let effects = BatchEffects {
        outbox: rows,
        ..Default::default()
    };
    let mut tx = store.begin_batch().await.unwrap();
    tx.apply(&effects, Utc::now()).await.unwrap();
    tx.commit().await.unwrap();
}

fn email(i: usize) -> NewOutbox {
    NewOutbox {
        channel: "email",
        recipient: "boss@example.com".into(),
        workflow_id: None,
        payload: serde_json::json!({
            "to": ["boss@example.com"], "cc": ["cc@example.com"],
            "subject": format!("Escalated #{i}"), "body": "It is overdue.",
            "html": "<p>It is overdue.</p>", "kind": "escalation",
        }),
        idempotency_key: format!("escalate:{i}:1:1:email"),
    }
}

fn row(channel: &'static str, i: usize, payload: serde_json::Value) -> NewOutbox {
    NewOutbox {
        channel,
        recipient: payload["to"].as_str().unwrap_or("someone").into(),
        workflow_id: None,
        payload,
        idempotency_key: format!("escalate:{i}:1:1:{channel}"),
    }
}

fn config(uri: &str) -> HttpConfig {
    HttpConfig {
        timeout: Duration::from_secs(5),
        rate_per_second: 1_000,
        sendgrid: Some(SendGridConfig {
            url: uri.into(),
            key: "SG.key".into(),
            from: "escalator <escalator@example.com>".into(),
        }),
        twilio: Some(TwilioConfig {
            url: uri.into(),
            sid: "AC123".into(),
            token: "secret-token".into(),
            from: "+15550001111".into(),
        }),
        slack_webhook_url: Some(format!("{uri}/slack/shared")),
        slack_user_webhooks: format!("{uri}/"),
        webhook: Some(WebhookConfig {
            url: format!("{uri}/hooks/escalator"),
            secret: "whsec-test".into(),
            source: "escalator-test".into(),
        }),
    }
}

fn deliverer(store: &Store, config: HttpConfig) -> Deliverer {
    Deliverer {
        store: store.clone(),
        mailer: None,
        http: Some(HttpChannels::new(config).unwrap()),
        templates: Default::default(),
        max_attempts: 8,
        lease: Duration::from_secs(60),
    }
}

async fn rows(store: &Store) -> Vec<OutboxEntry> {
    let mut rows = store.list_outbox(&[], 1_000).await.unwrap();
    rows.sort_by_key(|r| r.id);
    rows
}

/// Far enough ahead that any backoff has run out.
fn later(hours: i64) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(hours)
}

/// A check's email carries its template set and values; the deliverer writes the subject,
/// the text and the HTML (escaped) when it sends it.
#[tokio::test]
async fn an_email_api_gets_the_message_rendered_at_delivery_with_its_html() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let payload = serde_json::json!({
        "template": "reminder", "kind": "reminder", "title": "Buy <chairs>",
        "stage": "Manager Approval", "due": "2026-11-25 12:00 UTC", "greeting": "Boss",
        "previous": "Boss", "new": "Boss", "assignee": "Boss",
        "to": ["boss@example.com"], "cc": [],
    });
    outbox(
        &db.store,
        vec![NewOutbox {
            payload,
            ..email(0)
        }],
    )
    .await;
    let d = deliverer(&db.store, config(&server.uri()));
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 1);
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[0].body_json().unwrap();
    let subject = body["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("Reminder: \"Buy <chairs>\" is due 2026-11-25 12:00 UTC"),
        "{subject}"
    );
    assert_eq!(body["content"][0]["type"], "text/plain");
    let text = body["content"][0]["value"].as_str().unwrap();
    assert!(text.starts_with("Boss,"), "{text}");
    assert_eq!(body["content"][1]["type"], "text/html");
    let html = body["content"][1]["value"].as_str().unwrap();
    assert!(html.contains("Buy &lt;chairs&gt;"), "{html}");
    // what was sent is not written back: the row keeps its values, not the rendered text
    let row = &rows(&db.store).await[0];
    assert_eq!(row.status, "sent");
    assert!(row.payload.get("subject").is_none());
}

#[tokio::test]
async fn a_provider_failing_three_times_then_accepting_delivers_exactly_once() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(503).set_body_string("try later"))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202))
        .with_priority(2)
        .mount(&server)
        .await;
    outbox(&db.store, vec![email(0)]).await;
    let d = deliverer(&db.store, config(&server.uri()));

    let mut totals = (0, 0, 0);
    for round in 0..6 {
        let r = d.drain_as_of(later(2 * round), 10, 10).await.unwrap();
        totals = (totals.0 + r.sent, totals.1 + r.retried, totals.2 + r.dead);
    }
    assert_eq!(totals, (1, 3, 0), "(sent, retried, dead)");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 4, "three 503s and one 202, nothing after");
    let row = &rows(&db.store).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 4));
    for r in &requests {
        assert_eq!(r.headers["Idempotency-Key"], "escalate:0:1:1:email");
        assert_eq!(r.headers["Authorization"], "Bearer SG.key");
    }
    let body: serde_json::Value = requests[3].body_json().unwrap();
    assert_eq!(
        body["personalizations"][0]["to"][0]["email"],
        "boss@example.com"
    );
    assert_eq!(
        body["personalizations"][0]["cc"][0]["email"],
        "cc@example.com"
    );
    assert_eq!(body["from"]["email"], "escalator@example.com");
    assert_eq!(body["subject"], "Escalated #0");
    assert_eq!(body["content"][1]["type"], "text/html");
}

/// A provider refusing escalator's own key (401, 403) made every message dead on its first
/// attempt; the configuration is at fault, so messages are retried with backoff, as without
/// any sender. A user's own webhook answering 403 is still that user's dead end. Unusable
/// copy addresses are left out before the request, as over SMTP, instead of a 400 for all.
#[tokio::test]
async fn refused_credentials_are_retried_and_unusable_copies_left_out() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(401).set_body_string("invalid api key"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/slack/own"))
        .respond_with(ResponseTemplate::new(403).set_body_string("invalid_token"))
        .mount(&server)
        .await;
    let mut mail = email(1);
    mail.payload["cc"] = serde_json::json!(["a@b..c@x", "cc@example.com"]);
    let own = format!("{}/slack/own", server.uri());
    outbox(
        &db.store,
        vec![
            mail,
            row("slack", 2, serde_json::json!({ "to": own, "text": "hi" })),
        ],
    )
    .await;
    let r = deliverer(&db.store, config(&server.uri()))
        .drain(10, 10)
        .await
        .unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (0, 1, 1));
    let rows = rows(&db.store).await;
    let by_channel = |c: &str| rows.iter().find(|r| r.channel == c).unwrap();
    let email_row = by_channel("email");
    assert_eq!(email_row.status, "failed", "{email_row:?}");
    assert!(
        email_row
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("credentials"),
        "{email_row:?}"
    );
    assert_eq!(by_channel("slack").status, "dead");
    let sent = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/v3/mail/send")
        .unwrap();
    let body: serde_json::Value = sent.body_json().unwrap();
    assert_eq!(
        body["personalizations"][0]["cc"],
        serde_json::json!([{ "email": "cc@example.com" }])
    );
}

/// The shared Slack webhook answering 404 or 410 (revoked, its channel archived) is a setting
/// to fix, retried as refused credentials are: dead at once, every Slack message was lost to
/// one revoked webhook. A user's own webhook that is gone is still that user's dead end.
#[tokio::test]
async fn a_configured_endpoint_that_is_gone_is_retried_a_users_own_is_dead() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/slack/shared"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no_service"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/hooks/escalator"))
        .respond_with(ResponseTemplate::new(410).set_body_string("gone"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/slack/own"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no_service"))
        .mount(&server)
        .await;
    let own = format!("{}/slack/own", server.uri());
    outbox(
        &db.store,
        vec![
            row("slack", 1, serde_json::json!({ "to": "U42", "text": "hi" })),
            row("slack", 2, serde_json::json!({ "to": own, "text": "hi" })),
            row(
                "webhook",
                3,
                serde_json::json!({
                    "to": "boss", "kind": "escalation", "subject": "Escalated",
                    "workflow_id": "0b6f1f0e-0000-4000-8000-000000000000",
                }),
            ),
        ],
    )
    .await;
    let r = deliverer(&db.store, config(&server.uri()))
        .drain(10, 10)
        .await
        .unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (0, 2, 1), "{r:?}");
    let rows = rows(&db.store).await;
    let states: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(states, ["failed", "dead", "failed"], "{rows:?}");
    for r in [&rows[0], &rows[2]] {
        let error = r.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("is not there: check its settings"),
            "{error}"
        );
    }
}

/// SendGrid refuses, with a 400 (for good), a message naming one address twice across `to`
/// and `cc`, letters in any case: two users sharing a mailbox cost everyone the escalation.
/// Each address is named once; a non-ASCII domain goes in its ASCII form; with no usable
/// primary address the first copy takes its place.
#[tokio::test]
async fn each_address_is_named_once_and_in_ascii() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    let mut shared = email(1);
    shared.payload["to"] = serde_json::json!(["Head@example.com"]);
    shared.payload["cc"] =
        serde_json::json!(["head@example.com", "emp@bücher.de", "EMP@bücher.de"]);
    let mut typo = email(2);
    typo.payload["to"] = serde_json::json!(["ana..lopez@corp.com"]);
    typo.payload["cc"] = serde_json::json!(["mgr@example.com"]);
    outbox(&db.store, vec![shared, typo]).await;
    let r = deliverer(&db.store, config(&server.uri()))
        .drain(10, 10)
        .await
        .unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (2, 0, 0));
    let mut sent: Vec<serde_json::Value> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body_json::<serde_json::Value>().unwrap()["personalizations"][0].clone())
        .collect();
    sent.sort_by_key(|p| p["to"].to_string());
    assert_eq!(
        sent,
        [
            serde_json::json!({
                "to": [{ "email": "Head@example.com" }],
                "cc": [{ "email": "emp@xn--bcher-kva.de" }],
            }),
            serde_json::json!({ "to": [{ "email": "mgr@example.com" }] }),
        ]
    );
}

#[tokio::test]
async fn a_rejected_request_is_dead_at_once() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/AC123/Messages.json"))
        .respond_with(ResponseTemplate::new(400).set_body_string("invalid To number"))
        .mount(&server)
        .await;
    let sms = row(
        "sms",
        1,
        serde_json::json!({ "to": "+1555000222", "body": "Escalated to you" }),
    );
    outbox(&db.store, vec![sms]).await;
    let d = deliverer(&db.store, config(&server.uri()));
    let r = d.drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (0, 0, 1));
    let row = &rows(&db.store).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    let error = row.last_error.as_deref().unwrap();
    assert!(
        error.contains("400") && error.contains("invalid To number"),
        "{error}"
    );
    // dead stays dead: later drains do not touch it
    assert_eq!(d.drain_as_of(later(5), 10, 10).await.unwrap().dead, 0);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let form: Vec<(String, String)> = form_urlencoded::parse(&requests[0].body)
        .into_owned()
        .collect();
    assert!(
        form.contains(&("To".into(), "+1555000222".into())),
        "{form:?}"
    );
    assert!(
        form.contains(&("From".into(), "+15550001111".into())),
        "{form:?}"
    );
    assert!(
        form.contains(&("Body".into(), "Escalated to you".into())),
        "{form:?}"
    );
    let auth = requests[0].headers["Authorization"].to_str().unwrap();
    assert!(auth.starts_with("Basic "), "{auth}");
}

#[tokio::test]
async fn a_provider_that_does_not_answer_in_time_is_retried() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let slack = row(
        "slack",
        2,
        serde_json::json!({ "to": "U42", "text": "Escalated to you" }),
    );
    outbox(&db.store, vec![slack]).await;
    let mut cfg = config(&server.uri());
    cfg.timeout = Duration::from_millis(500);
    let d = deliverer(&db.store, cfg);
    let started = Instant::now();
    let r = d.drain(10, 10).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "not timed out");
    assert_eq!((r.sent, r.retried, r.dead), (0, 1, 0));
    let row = &rows(&db.store).await[0];
    assert_eq!(row.status, "failed");
    assert!(row.next_attempt_at > Utc::now(), "backoff: {row:?}");
    let error = row.last_error.as_deref().unwrap();
    assert!(error.contains("no answer in time"), "{error}");

    // the provider recovers: the retry is delivered
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/slack/shared"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;
    assert_eq!(d.drain_as_of(later(2), 10, 10).await.unwrap().sent, 1);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = requests[0].body_json().unwrap();
    assert_eq!(body["text"], "<@U42> Escalated to you");
}

/// A provider that cannot be reached fails with the host it was sent to, never the whole URL:
/// a Slack webhook's path and a webhook's token parameter are credentials, and the error is
/// stored, logged and shown in the console to read tokens.
#[tokio::test]
async fn a_provider_that_cannot_be_reached_is_named_without_the_secret_in_its_url() {
    let db = TestDb::postgres().await;
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut cfg = config(&uri);
    cfg.slack_webhook_url = Some(format!("{uri}/services/T0/B0/SLACKSECRET"));
    cfg.webhook.as_mut().unwrap().url = format!("{uri}/hook?access_token=HOOKSECRET");
    cfg.slack_user_webhooks = format!("{uri}/");
    let mut sent = slack_rows(&["U42", &format!("{uri}/services/T1/B1/OWNSECRET")]);
    sent.push(row(
        "webhook",
        40,
        serde_json::json!({
            "to": "boss", "kind": "escalation", "subject": "Escalated",
            "workflow_id": "0b6f1f0e-0000-4000-8000-000000000000",
        }),
    ));
    outbox(&db.store, sent).await;
    let r = deliverer(&db.store, cfg).drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (0, 3, 0));
    for row in rows(&db.store).await {
        let error = row.last_error.as_deref().unwrap();
        assert!(error.contains(&format!("{uri}/…")), "{error}");
        assert!(!error.contains("SECRET"), "{error}");
    }
}

/// A provider's error page that echoes the request's path (a framework's "Cannot POST
/// /services/…") is kept without it: the path of a webhook is its credential.
#[tokio::test]
async fn an_error_page_echoing_the_webhooks_path_is_kept_without_it() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_string("Cannot POST /services/T0/B0/SLACKSECRET?token=QUERYSECRET"),
        )
        .mount(&server)
        .await;
    let uri = server.uri();
    let mut cfg = config(&uri);
    cfg.slack_webhook_url = Some(format!(
        "{uri}/services/T0/B0/SLACKSECRET?token=QUERYSECRET"
    ));
    outbox(&db.store, slack_rows(&["U42"])).await;
    let r = deliverer(&db.store, cfg).drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (0, 1, 0));
    let error = rows(&db.store).await[0].last_error.clone().unwrap();
    assert!(error.contains("HTTP 404"), "{error}");
    assert!(!error.contains("SECRET"), "{error}");
}

#[tokio::test]
async fn too_many_requests_is_retried_no_sooner_than_retry_after() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "600"))
        .mount(&server)
        .await;
    outbox(&db.store, vec![email(3)]).await;
    let r = deliverer(&db.store, config(&server.uri()))
        .drain(10, 10)
        .await
        .unwrap();
    assert_eq!(r.retried, 1);
    let row = &rows(&db.store).await[0];
    assert_eq!(row.status, "failed");
    assert!(
        row.next_attempt_at >= Utc::now() + chrono::Duration::seconds(590),
        "Retry-After ignored: {row:?}"
    );
}

#[tokio::test]
async fn webhook_events_are_cloudevents_signed_with_hmac_sha256() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/escalator"))
        .and(header("content-type", "application/cloudevents+json"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let event = row(
        "webhook",
        4,
        serde_json::json!({
            "to": "boss", "kind": "escalation", "subject": "Escalated: \"Buy <chairs>\"",
            "workflow_id": "0b6f1f0e-0000-4000-8000-000000000000",
        }),
    );
    outbox(&db.store, vec![event]).await;
    let d = deliverer(&db.store, config(&server.uri()));
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 1);
    let requests = server.received_requests().await.unwrap();
    let request = &requests[0];
    let timestamp = request.headers[TIMESTAMP_HEADER].to_str().unwrap();
    let signature = request.headers[SIGNATURE_HEADER].to_str().unwrap();
    // what a receiver does: recompute HMAC-SHA256(secret, "{timestamp}.{body}")
    let expected = format!(
        "sha256={}",
        sign("whsec-test", timestamp, &request.body).unwrap()
    );
    assert_eq!(signature, expected);
    assert_ne!(
        signature,
        format!(
            "sha256={}",
            sign("wrong", timestamp, &request.body).unwrap()
        )
    );
    let age = Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "timestamp {timestamp}");
    let body: serde_json::Value = request.body_json().unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], "escalate:4:1:1:webhook");
    assert_eq!(body["source"], "escalator-test");
    assert_eq!(body["type"], "dev.escalator.escalation");
    assert_eq!(body["data"]["subject"], "Escalated: \"Buy <chairs>\"");
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["time"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert_eq!(request.headers["Idempotency-Key"], "escalate:4:1:1:webhook");
}

#[tokio::test]
async fn an_escalation_event_goes_to_the_webhook_as_a_workflow_escalated_cloudevent() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/escalator"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    // the row the planner writes for an escalation when events are on
    let id = uuid::Uuid::from_u128(9);
    let event = NewOutbox {
        channel: "event",
        recipient: "webhook".into(),
        workflow_id: None,
        payload: serde_json::json!({
            "kind": "workflow.escalated", "workflow_id": id, "external_id": "PO-9",
            "from": "mgr", "to": "head", "level": 1, "cycle": 1,
        }),
        idempotency_key: format!("event:escalate:{id}:1:1"),
    };
    outbox(&db.store, vec![event.clone()]).await;
    // written twice (a re-run): still one row, one request
    outbox(&db.store, vec![event]).await;
    let d = deliverer(&db.store, config(&server.uri()));
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 1);
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 0);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = requests[0].body_json().unwrap();
    assert_eq!(body["type"], "dev.escalator.workflow.escalated");
    assert_eq!(body["id"], format!("event:escalate:{id}:1:1"));
    assert_eq!(
        (&body["data"]["from"], &body["data"]["to"]),
        (&"mgr".into(), &"head".into())
    );
    assert!(requests[0].headers.contains_key(SIGNATURE_HEADER));
    assert_eq!(rows(&db.store).await[0].status, "sent");
}

#[tokio::test]
async fn slack_goes_to_a_users_own_webhook_when_they_have_one() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/slack/own"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let own = format!("{}/slack/own", server.uri());
    outbox(
        &db.store,
        vec![row(
            "slack",
            5,
            serde_json::json!({ "to": own, "text": "Escalated to you" }),
        )],
    )
    .await;
    let d = deliverer(&db.store, config(&server.uri()));
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 1);
    let body: serde_json::Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(body, serde_json::json!({ "text": "Escalated to you" }));
}

/// One Slack row per recipient.
fn slack_rows(to: &[impl AsRef<str>]) -> Vec<NewOutbox> {
    to.iter()
        .enumerate()
        .map(|(i, to)| {
            row(
                "slack",
                30 + i,
                serde_json::json!({ "to": to.as_ref(), "text": "Escalated to you" }),
            )
        })
        .collect()
}

/// A user's `slack` was put into the shared channel's message as `<@{slack}>` unescaped, and
/// any `http://` URL was taken as their own webhook: a user record could ping the whole
/// channel with a planted link, or make workers POST to an internal address. Such rows are
/// dead, nothing is sent, and the error says why.
#[tokio::test]
async fn a_users_slack_field_can_neither_ping_a_channel_nor_send_elsewhere() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let hostile = [
        "U0HEAD> <!channel> <https://evil.example/login|Re-authenticate",
        "U1 U2",
        "http://127.0.0.1:9/internal-admin?x=1",
        "https://evil.example/slack/own",
    ];
    outbox(&db.store, slack_rows(&hostile)).await;
    let r = deliverer(&db.store, config(&server.uri()))
        .drain(10, 10)
        .await
        .unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (0, 0, 4));
    assert!(server.received_requests().await.unwrap().is_empty());
    for row in rows(&db.store).await {
        let error = row.last_error.as_deref().unwrap_or("");
        assert!(
            error.contains("Slack member id") || error.contains("ESCALATOR_SLACK_USER_WEBHOOKS"),
            "{row:?}"
        );
        // the refused URL is named by its host alone: its path may be a credential
        assert!(
            !error.contains("internal-admin") && !error.contains("/slack/own"),
            "{error}"
        );
    }

    // the allowed webhooks compared as URLs, not as text: with a setting without its final
    // slash, user info or a longer port or host still lead elsewhere; and no redirect is
    // followed out of an allowed webhook
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    let uri = server.uri();
    Mock::given(method("POST"))
        .and(path("/slack/moved"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("Location", "http://127.0.0.1:9/internal"),
        )
        .mount(&server)
        .await;
    let tricks = [
        format!("{uri}@10.0.0.5/slack/own"),
        format!("{uri}0/slack/own"),
        format!("{uri}/slack/moved"),
    ];
    outbox(&db.store, slack_rows(&tricks)).await;
    let mut cfg = config(&uri);
    cfg.slack_user_webhooks = uri.clone();
    let r = deliverer(&db.store, cfg).drain(10, 10).await.unwrap();
    assert_eq!(
        (r.sent, r.retried, r.dead),
        (0, 1, 2),
        "{:?}",
        rows(&db.store).await
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests.len(),
        1,
        "only the allowed one, and no redirect followed"
    );
    assert_eq!(requests[0].url.path(), "/slack/moved");
}

#[tokio::test]
async fn each_provider_is_held_to_its_rate_limit() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let rows: Vec<_> = (0..5)
        .map(|i| {
            row(
                "slack",
                10 + i,
                serde_json::json!({ "to": "U1", "text": format!("#{i}") }),
            )
        })
        .collect();
    outbox(&db.store, rows).await;
    let mut cfg = config(&server.uri());
    cfg.rate_per_second = 2;
    let d = deliverer(&db.store, cfg);
    let started = Instant::now();
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 5);
    // a burst of 2, then one every 500 ms
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn two_senders_draining_the_same_rows_at_once_send_each_once_over_http() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202).set_delay(Duration::from_millis(10)))
        .mount(&server)
        .await;
    outbox(&db.store, (0..60).map(email).collect()).await;
    let a = deliverer(&db.store, config(&server.uri()));
    let b = deliverer(&db.store, config(&server.uri()));
    let (ra, rb) = tokio::join!(a.drain(5, 100), b.drain(5, 100));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.sent + rb.sent, 60);
    assert!(ra.sent > 0 && rb.sent > 0, "both took part: {ra:?} {rb:?}");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 60);
    let keys: HashSet<_> = requests
        .iter()
        .map(|r| r.headers["Idempotency-Key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 60, "a message was sent twice");
    assert!(rows(&db.store).await.iter().all(|r| r.status == "sent"));
}

#[tokio::test]
async fn two_senders_draining_the_same_rows_at_once_send_each_once_over_smtp() {
    let db = TestDb::postgres().await;
    let (port, received) = smtp_sink(None).await;
    outbox(&db.store, (0..40).map(email).collect()).await;
    let smtp = |store: &Store| Deliverer {
        store: store.clone(),
        mailer: Some(
            Mailer::smtp(&format!("smtp://127.0.0.1:{port}"), "e <e@example.com>").unwrap(),
        ),
        http: None,
        templates: Default::default(),
        max_attempts: 3,
        lease: Duration::from_secs(60),
    };
    let (a, b) = (smtp(&db.store), smtp(&db.store));
    let (ra, rb) = tokio::join!(a.drain(3, 100), b.drain(3, 100));
    assert_eq!(ra.unwrap().sent + rb.unwrap().sent, 40);
    let messages = received.lock().unwrap().clone();
    assert_eq!(messages.len(), 40);
    let ids: HashSet<_> = messages
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("Message-ID:")))
        .collect();
    assert_eq!(ids.len(), 40, "a message was sent twice");
}

#[tokio::test]
async fn digests_are_written_out_at_delivery_with_user_text_escaped_in_html() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let items = serde_json::json!([
        { "title": "Buy <script>x</script>", "subject": "s1" },
        { "title": "Hire & train", "subject": "s2" },
    ]);
    let digest = |channel: &'static str, to: serde_json::Value| NewOutbox {
        channel,
        recipient: "head".into(),
        workflow_id: None,
        payload: serde_json::json!({
            "kind": "digest", "to": to, "cc": [], "count": 2, "items": items,
            "greeting": "Head",
        }),
        idempotency_key: format!("digest:1:head:{channel}:1"),
    };
    outbox(
        &db.store,
        vec![
            digest("email", serde_json::json!(["head@example.com"])),
            digest("slack", serde_json::json!("U-head")),
        ],
    )
    .await;
    let d = deliverer(&db.store, config(&server.uri()));
    assert_eq!(d.drain(10, 10).await.unwrap().sent, 2);
    let requests = server.received_requests().await.unwrap();
    let email: serde_json::Value = requests
        .iter()
        .find(|r| r.url.path() == "/v3/mail/send")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(email["subject"], "2 workflows were escalated to you");
    let text = email["content"][0]["value"].as_str().unwrap();
    assert!(text.contains("- Buy <script>x</script>"), "{text}");
    let html = email["content"][1]["value"].as_str().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("Hire &amp; train"), "{html}");
    let slack: serde_json::Value = requests
        .iter()
        .find(|r| r.url.path() == "/slack/shared")
        .unwrap()
        .body_json()
        .unwrap();
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.starts_with("<@U-head> 2 workflows were escalated to you"),
        "{text}"
    );
    // Slack's control characters in user text are escaped (Slack shows them as written)
    assert!(text.contains("• Hire &amp; train"), "{text}");
    assert!(text.contains("• Buy &lt;script&gt;"), "{text}");
}

/// A digest override that parses but fails to render (a filter core minijinja lacks, a
/// typo) made every digest dead on its first attempt, `outbox retry` included, and the
/// escalations it held were never emailed; every other message falls back to the built-in
/// template, and so does the digest now.
#[tokio::test]
async fn a_digest_override_that_fails_to_render_falls_back_to_the_built_in_one() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    outbox(
        &db.store,
        vec![NewOutbox {
            channel: "email",
            recipient: "head".into(),
            workflow_id: None,
            payload: serde_json::json!({
                "kind": "digest", "to": ["head@example.com"], "cc": [], "count": 2,
                "items": [{ "title": "one" }, { "title": "two" }], "greeting": "Head",
            }),
            idempotency_key: "digest:1:head:email:1".into(),
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("digest.subject.txt"),
        "{{ count | nosuch }}",
    )
    .unwrap();
    let mut d = deliverer(&db.store, config(&server.uri()));
    d.templates = escalator_notify::Templates::from_dir(dir.path()).unwrap();
    let report = d.drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.dead), (1, 0));
    let requests = server.received_requests().await.unwrap();
    let email: serde_json::Value = requests[0].body_json().unwrap();
    assert_eq!(email["subject"], "2 workflows were escalated to you");
}

/// A user's own Slack webhook that answers an error with an endless body: only its first
/// kilobytes are read (the whole body was read into memory until the request's deadline, and
/// the reason then lost), and the send fails at once naming what the endpoint said.
#[tokio::test]
async fn an_endless_error_body_is_read_only_in_part() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::postgres().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // the whole request first (its JSON body ends with '}')
                let mut request = Vec::new();
                let mut buf = [0u8; 4_096];
                while !request.ends_with(b"}") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
                            Content-Length: 1000000000\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = "upstream exploded; ".repeat(1_000);
                for _ in 0..10 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // then nothing more, and never the end
                tokio::time::sleep(std::time::Duration::from_secs(3_600)).await;
            });
        }
    });
    let own = format!("http://127.0.0.1:{port}/hook");
    outbox(
        &db.store,
        vec![row(
            "slack",
            6,
            serde_json::json!({ "to": own, "text": "hi" }),
        )],
    )
    .await;
    let mut cfg = config("http://127.0.0.1:9");
    cfg.slack_user_webhooks = format!("http://127.0.0.1:{port}/");
    let d = deliverer(&db.store, cfg);
    let report = d.drain(10, 10).await.unwrap();
    assert_eq!(report.retried, 1, "{report:?}");
    let error = rows(&db.store).await[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("HTTP 500") && error.contains("upstream exploded"),
        "{error}"
    );
    assert!(error.len() < 400, "{}", error.len());
}

/// A provider answering at once at `/fast` and after `delay` at `/slow`, and one Slack row to
/// its own webhook at `/fast` followed by `slow` rows to `/slow`.
async fn fast_and_slow(store: &Store, delay: Duration, slow: usize) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fast"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(delay))
        .mount(&server)
        .await;
    let to = |p: &str| format!("{}/{p}", server.uri());
    let mut new = vec![row(
        "slack",
        0,
        serde_json::json!({ "to": to("fast"), "text": "a" }),
    )];
    new.extend((1..=slow).map(|i| {
        row(
            "slack",
            i,
            serde_json::json!({ "to": to("slow"), "text": format!("b{i}") }),
        )
    }));
    outbox(store, new).await;
    server
}

/// The outcome of one send cannot be recorded (here a trigger refuses it): the sends of the
/// round still in flight finish and are recorded, and the drain then reports the error. They
/// used to be dropped mid-request, their rows left claimed, to be sent again after the lease.
#[tokio::test]
async fn a_failed_record_cuts_off_no_send_in_flight() {
    let db = TestDb::sqlite().await;
    let server = fast_and_slow(&db.store, Duration::from_millis(500), 3).await;
    let Store::Sqlite(s) = &db.store else {
        unreachable!()
    };
    sqlx::query(
        "CREATE TRIGGER refuse_fast BEFORE UPDATE OF status ON outbox
         WHEN NEW.recipient LIKE '%/fast' AND NEW.status <> OLD.status
         BEGIN SELECT RAISE(ABORT, 'injected: the outcome cannot be written'); END",
    )
    .execute(s.pool())
    .await
    .unwrap();
    let d = deliverer(&db.store, config(&server.uri()));
    let err = d.drain(10, 10).await;
    assert!(err.is_err(), "{err:?}");
    let statuses: Vec<String> = rows(&db.store)
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, ["pending", "sent", "sent", "sent"]);
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
}

/// Every row of a claim is sent before its lease runs out, however many rows a drain is asked
/// for: claims take at most two waves of parallel sends. One claim of all 40 rows here needed
/// five waves of 0.3 s against a 1 s lease, and a second sender starting after the lease sent
/// the late rows again. (Times here are three times those: a wave of 0.9 s, a 3 s lease, so
/// that two waves leave more than a second to spare on a loaded machine, and five do not fit.)
#[tokio::test]
async fn a_second_sender_never_resends_what_a_slow_first_one_holds() {
    let db = TestDb::postgres().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(900)))
        .mount(&server)
        .await;
    let slow = format!("{}/slow", server.uri());
    let rows = (0..40)
        .map(|i| {
            row(
                "slack",
                i,
                serde_json::json!({ "to": slow, "text": format!("m{i}") }),
            )
        })
        .collect();
    outbox(&db.store, rows).await;
    let mut first = deliverer(&db.store, config(&server.uri()));
    first.lease = Duration::from_secs(3);
    let second = first.clone();
    let (a, b) = tokio::join!(first.drain(40, 1), async {
        tokio::time::sleep(Duration::from_millis(3_300)).await;
        second.drain(40, 1).await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    let received = server.received_requests().await.unwrap();
    let mut texts: Vec<String> = received
        .iter()
        .map(|r| r.body_json::<serde_json::Value>().unwrap()["text"].to_string())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 40, "every message sent");
    assert_eq!(received.len(), 40, "none sent twice: {a:?} {b:?}");
    assert_eq!(a.sent + b.sent, 40);
}

/// An outcome slow to write holds up no other send of its round. The round wrote outcomes as
/// the sends finished, one at a time, and polled no other send meanwhile: answers that came
/// within their timeout were read after it, taken for "no answer in time", retried, and the
/// messages sent twice. Here the first outcome takes 3 s to write, and the other four answers
/// come after 1 s against a 2 s timeout.
#[tokio::test]
async fn an_outcome_slow_to_write_holds_up_no_other_send() {
    let db = TestDb::postgres().await;
    let server = fast_and_slow(&db.store, Duration::from_secs(1), 4).await;
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    for sql in [
        "CREATE FUNCTION slow_outcome() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$",
        "CREATE TRIGGER slow_outcome BEFORE UPDATE OF status ON outbox FOR EACH ROW
         WHEN (NEW.recipient LIKE '%/fast' AND NEW.status <> OLD.status)
         EXECUTE FUNCTION slow_outcome()",
    ] {
        sqlx::query(sql).execute(pg.pool()).await.unwrap();
    }
    let mut cfg = config(&server.uri());
    cfg.timeout = Duration::from_secs(2);
    let r = deliverer(&db.store, cfg).drain(10, 10).await.unwrap();
    assert_eq!((r.sent, r.retried, r.dead), (5, 0, 0), "{r:?}");
    let rows = rows(&db.store).await;
    assert!(
        rows.iter().all(|r| r.status == "sent" && r.attempts == 1),
        "{rows:?}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 5);
}
