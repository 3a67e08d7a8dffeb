//! Bearer tokens: read and admin scopes on /api/v1; health and metrics stay open.

use axum::http::{Method, StatusCode};
use escalator_api::Tokens;

use crate::helpers::*;

const ADMIN: &str = "Bearer admin-secret-0123456789";
const READ: &str = "Bearer read-secret-0123456789";

async fn spawn_secured() -> TestApi {
    let tokens =
        Tokens::parse("deployer:admin-secret-0123456789:admin,grafana:read-secret-0123456789:read")
            .unwrap();
    spawn_api_with(tokens).await
}

fn body() -> Option<Vec<u8>> {
    Some(workflow_body("A-1").to_string().into_bytes())
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let api = spawn_secured().await;
    let res = api.get("/api/v1/workflows").await;
    let (code, field) = res.error(StatusCode::UNAUTHORIZED);
    assert_eq!(code, "unauthorized");
    assert_eq!(field.as_deref(), Some("Authorization"));
    assert_eq!(res.headers["www-authenticate"], "Bearer");
    for bad in [
        "Bearer wrong-secret-0123456789",
        "Basic abc",
        "admin-secret-0123456789",
    ] {
        api.send(
            Method::GET,
            "/api/v1/workflows",
            None,
            &[("authorization", bad)],
        )
        .await
        .error(StatusCode::UNAUTHORIZED);
    }
    api.send(Method::POST, "/api/v1/workflows", body(), &[])
        .await
        .error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_read_token_reads_but_cannot_write() {
    let api = spawn_secured().await;
    let res = api
        .send(
            Method::GET,
            "/api/v1/workflows",
            None,
            &[("authorization", READ)],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let res = api
        .send(
            Method::POST,
            "/api/v1/workflows",
            body(),
            &[("authorization", READ)],
        )
        .await;
    assert_eq!(res.error(StatusCode::FORBIDDEN).0, "forbidden");
    api.send(
        Method::POST,
        "/api/v1/checks",
        None,
        &[("authorization", READ)],
    )
    .await
    .error(StatusCode::FORBIDDEN);
}

/// A user's own Slack webhook is the credential that posts to their channel: a read token
/// (a dashboard, an exporter) sees its host alone; an admin, who writes users back whole, sees
/// it all. A member id is no secret and shows as it is.
#[tokio::test]
async fn a_read_token_sees_a_users_own_webhook_as_its_host_alone() {
    let api = spawn_secured().await;
    let secret = "https://hooks.slack.com/services/T0001/B0001/ErinPersonalSecret";
    for (id, slack) in [("erin", secret), ("finn", "U024BE7LH")] {
        let body = serde_json::json!({ "display_name": id, "slack": slack });
        let res = api
            .send(
                Method::PUT,
                &format!("/api/v1/users/{id}"),
                Some(body.to_string().into_bytes()),
                &[
                    ("authorization", ADMIN),
                    ("content-type", "application/json"),
                ],
            )
            .await;
        assert!(res.status.is_success(), "{}", res.text());
    }
    let read = |uri: &'static str, token: &'static str| {
        let api = &api;
        async move {
            let res = api
                .send(Method::GET, uri, None, &[("authorization", token)])
                .await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.text());
            res.json()
        }
    };
    let erin = read("/api/v1/users/erin", READ).await;
    assert_eq!(erin["slack"], "https://hooks.slack.com/…");
    let listed = read("/api/v1/users", READ).await;
    assert!(
        !listed.to_string().contains("ErinPersonalSecret"),
        "{listed}"
    );
    assert!(listed.to_string().contains("U024BE7LH"), "{listed}");
    assert_eq!(read("/api/v1/users/erin", ADMIN).await["slack"], secret);
}

#[tokio::test]
async fn an_admin_token_writes_and_is_recorded_as_the_actor() {
    let api = spawn_secured().await;
    let res = api
        .send(
            Method::POST,
            "/api/v1/workflows",
            body(),
            &[("authorization", ADMIN)],
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let id = res.json()["id"].as_str().unwrap().to_owned();
    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/hold"),
            None,
            &[("authorization", ADMIN)],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let audit = api
        .send(
            Method::GET,
            &format!("/api/v1/workflows/{id}/audit"),
            None,
            &[("authorization", READ)],
        )
        .await
        .json();
    assert_eq!(audit["items"][1]["actor"], "deployer");
}

#[tokio::test]
async fn health_and_metrics_need_no_token() {
    let api = spawn_secured().await;
    for uri in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/metrics/prometheus",
    ] {
        let res = api.get(uri).await;
        assert_eq!(res.status, StatusCode::OK, "{uri}: {}", res.text());
    }
}

/// An api without tokens (`escalator dev`, a loopback api) took writes from any web page the
/// user visited: a POST without a JSON content type needs no CORS preflight, so a page of
/// another site could create workflows, policies and checks; one reaching it through DNS
/// rebinding (its own name resolving to 127.0.0.1) could read users and workflows as well.
#[tokio::test]
async fn without_tokens_pages_of_other_sites_can_neither_write_nor_rebind() {
    let api = spawn_local_api().await;
    let here = [("host", "127.0.0.1:5000")];
    // scripts send no Origin: they work as before
    let res = api.send(Method::POST, "/api/v1/checks", None, &here).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text());
    // the api's own pages (the console, /docs) post with their own origin
    let res = api
        .send(
            Method::POST,
            "/api/v1/workflows",
            body(),
            &[
                ("host", "localhost:5000"),
                ("origin", "http://localhost:5000"),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());

    // another site's page, with a body a browser sends without a preflight
    for headers in [
        vec![
            ("origin", "https://evil.example"),
            ("content-type", "text/plain"),
        ],
        vec![("origin", "null"), ("content-type", "text/plain")],
        vec![
            ("sec-fetch-site", "cross-site"),
            ("content-type", "text/plain"),
        ],
    ] {
        let headers: Vec<_> = here.iter().copied().chain(headers).collect();
        let res = api
            .send(
                Method::POST,
                "/api/v1/workflows",
                Some(workflow_body("EVIL-1").to_string().into_bytes()),
                &headers,
            )
            .await;
        let (code, _) = res.error(StatusCode::FORBIDDEN);
        assert_eq!(code, "forbidden");
        assert!(res.text().contains("without tokens"), "{}", res.text());
    }
    let listed = api.get("/api/v1/workflows").await.json();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["A-1"], "a refused write wrote nothing");

    // a name of another site resolving to 127.0.0.1 (DNS rebinding): not even a read
    for host in ["evil.example:5000", "evil.example"] {
        let res = api
            .send(Method::GET, "/api/v1/users", None, &[("host", host)])
            .await;
        res.error(StatusCode::FORBIDDEN);
        assert!(
            res.text().contains("ESCALATOR_API_TOKENS"),
            "{}",
            res.text()
        );
    }
    // probes answer whatever Host they name (an INSECURE api beyond loopback with hosts
    // named: the kubelet's probes name the pod's address)
    let res = api
        .send(Method::GET, "/healthz", None, &[("host", "10.1.2.3:5000")])
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    // and to a name given (a proxy in front keeping the public Host)
    for host in [
        "localhost:5000",
        "127.0.0.1",
        "[::1]:5000",
        "Escalator.Example:443",
    ] {
        let res = api
            .send(Method::GET, "/api/v1/users", None, &[("host", host)])
            .await;
        assert_eq!(res.status, StatusCode::OK, "{host}: {}", res.text());
    }

    // with tokens, the token decides
    let api = spawn_secured().await;
    let res = api
        .send(
            Method::POST,
            "/api/v1/workflows",
            body(),
            &[
                ("authorization", ADMIN),
                ("origin", "https://ci.example"),
                ("host", "escalator.example"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
}

/// A token a web page can know (docker-compose's published default) is no defence against a
/// page of another site that reaches the api by DNS rebinding: with hosts named, the data and
/// console routes answer only to them and the local names; probes and metrics to any Host
/// (the kubelet names the pod's address). Without hosts named, any Host, as before.
#[tokio::test]
async fn with_tokens_the_named_hosts_alone_reach_the_data() {
    let published = || Tokens::parse("dev:dev-only-token-change-me:admin").unwrap();
    let api = spawn_api_tokens_adjusted(published(), |s| {
        s.answering_only_to_localhost(vec!["escalator.example".into()])
    })
    .await;
    let token = ("authorization", "Bearer dev-only-token-change-me");
    for path in ["/api/v1/workflows", "/api/v1/users", "/ui/workflows"] {
        let res = api
            .send(
                Method::GET,
                path,
                None,
                &[("host", "evil.example:5000"), token],
            )
            .await;
        let (code, _) = res.error(StatusCode::FORBIDDEN);
        assert_eq!(code, "forbidden", "{path}");
        assert!(
            res.text().contains("ESCALATOR_API_ALLOWED_HOSTS"),
            "{path}: {}",
            res.text()
        );
    }
    for host in ["localhost:5000", "127.0.0.1", "escalator.example:443"] {
        let res = api
            .send(
                Method::GET,
                "/api/v1/workflows",
                None,
                &[("host", host), token],
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "{host}: {}", res.text());
    }
    for path in ["/healthz", "/metrics", "/api/v1/metrics/prometheus"] {
        let res = api
            .send(Method::GET, path, None, &[("host", "10.1.2.3:5000")])
            .await;
        assert_eq!(res.status, StatusCode::OK, "{path}: {}", res.text());
    }
    let open = spawn_api_with(published()).await;
    let res = open
        .send(
            Method::GET,
            "/api/v1/workflows",
            None,
            &[("host", "anything.example"), token],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
}
