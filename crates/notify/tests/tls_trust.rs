//! A relay or an API behind a private certificate authority: trusted through the system's CA
//! store and `SSL_CERT_FILE`, as `rediss://` is. SMTP and the HTTP providers trusted only the
//! public roots compiled into the binary, so a corporate relay with an internal CA failed
//! every delivery, and no setting could fix it.
//!
//! One test in its own binary: it sets `SSL_CERT_FILE` for the process before any thread
//! starts, and nothing else runs beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use escalator_notify::{Deliverer, HttpChannels, HttpConfig, Mailer};
use escalator_store::{BatchEffects, NewOutbox, Store};
use escalator_testkit::TestDb;
use escalator_testkit::services::{TEST_TLS_CERT, TEST_TLS_KEY};
use escalator_testkit::smtp::smtp_sink;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Terminates TLS with the test certificate (`localhost`) on a free port and passes the
/// plain bytes on to `backend`: a relay or an API behind a private CA.
async fn tls_in_front_of(backend: u16) -> u16 {
    let certs = CertificateDer::pem_slice_iter(TEST_TLS_CERT.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(TEST_TLS_KEY.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // a client that does not trust the certificate ends the handshake: nothing
                // reaches the backend
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let mut plain = TcpStream::connect(("127.0.0.1", backend)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

async fn outbox(store: &Store, rows: Vec<NewOutbox>) {
    let effects = BatchEffects {
        outbox: rows,
        ..Default::default()
    };
    let mut tx = store.begin_batch().await.unwrap();
    tx.apply(&effects, Utc::now()).await.unwrap();
    tx.commit().await.unwrap();
}

fn email() -> NewOutbox {
    NewOutbox {
        channel: "email",
        recipient: "boss@example.com".into(),
        workflow_id: None,
        payload: serde_json::json!({
            "to": ["boss@example.com"], "cc": [],
            "subject": "Escalated", "body": "It is overdue.", "kind": "escalation",
        }),
        idempotency_key: "escalate:1:1:1:email".into(),
    }
}

fn slack() -> NewOutbox {
    NewOutbox {
        channel: "slack",
        recipient: "U42".into(),
        workflow_id: None,
        payload: serde_json::json!({ "to": "U42", "text": "Escalated to you" }),
        idempotency_key: "escalate:1:1:1:slack".into(),
    }
}

#[test]
fn a_relay_and_an_api_behind_a_private_ca_named_in_ssl_cert_file_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("private-ca.pem");
    std::fs::write(&ca, TEST_TLS_CERT).unwrap();
    // SAFETY: no other thread exists yet (the runtime is built below), and this binary holds
    // this one test, so nothing reads the environment meanwhile.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &ca);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let db = TestDb::postgres().await;
            outbox(&db.store, vec![email(), slack()]).await;
            let (smtp_port, received) = smtp_sink(None).await;
            let smtps = tls_in_front_of(smtp_port).await;
            let api = MockServer::start().await;
            Mock::given(method("POST"))
                .and(path("/slack/shared"))
                .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
                .expect(1)
                .mount(&api)
                .await;
            let https = tls_in_front_of(api.address().port()).await;
            let config = HttpConfig {
                timeout: Duration::from_secs(5),
                rate_per_second: 1_000,
                sendgrid: None,
                twilio: None,
                slack_webhook_url: Some(format!("https://localhost:{https}/slack/shared")),
                slack_user_webhooks: format!("https://localhost:{https}/"),
                webhook: None,
            };
            let d = Deliverer {
                store: db.store.clone(),
                mailer: Some(
                    Mailer::smtp(
                        &format!("smtps://localhost:{smtps}"),
                        "escalator <e@example.com>",
                    )
                    .unwrap(),
                ),
                http: Some(HttpChannels::new(config).unwrap()),
                templates: Default::default(),
                max_attempts: 8,
                lease: Duration::from_secs(60),
            };
            let report = d.drain(10, 10).await.unwrap();
            let errors: Vec<Option<String>> = db
                .store
                .list_outbox(&[], 10)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.last_error)
                .collect();
            assert_eq!(
                (report.sent, report.retried, report.dead),
                (2, 0, 0),
                "{errors:?}"
            );
            assert_eq!(received.lock().unwrap().len(), 1, "the relay got the email");
            assert_eq!(api.received_requests().await.unwrap().len(), 1);
        });
}
