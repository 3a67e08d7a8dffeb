//! Health probes, metrics and the in-app inbox.

use axum::http::StatusCode;
use escalator_api::Tokens;

use crate::helpers::*;

#[tokio::test]
async fn healthz_and_readyz_answer_when_the_dependencies_do() {
    let api = spawn_api().await;
    let res = api.get("/healthz").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["status"], "ok");
    let res = api.get("/readyz").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["checks"]["database"], "ok");
    assert_eq!(res.json()["checks"]["queue"], "ok");
    assert!(res.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn readyz_is_503_naming_the_database_when_it_is_gone() {
    let api = spawn_api().await;
    api.db.store.close().await;
    let res = api.get("/readyz").await;
    let (code, field) = res.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "not_ready");
    assert_eq!(field.as_deref(), Some("database"));
    assert_eq!(res.json()["checks"]["queue"], "ok");
}

/// A burst of requests holding every pooled connection is load, not an outage: readiness
/// asked through the pool waited its 2 s and said 503 on every replica at once, emptying the
/// Service. The probe has a connection of its own.
#[tokio::test]
async fn readyz_answers_while_every_pooled_connection_is_busy() {
    let api = spawn_api().await;
    let escalator_store::Store::Postgres(pg) = &api.db.store else {
        unreachable!()
    };
    let mut held = Vec::new();
    for _ in 0..pg.pool().options().get_max_connections() {
        held.push(pg.pool().acquire().await.unwrap());
    }
    assert_eq!(pg.pool().num_idle(), 0);
    for _ in 0..2 {
        let res = api.get("/readyz").await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        assert_eq!(res.json()["checks"]["database"], "ok");
    }
    // and a probe connection the database has since closed is replaced, not reported
    let mut pooled = Vec::new();
    for c in &mut held {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **c)
            .await
            .unwrap();
        pooled.push(pid);
    }
    // (the filter in a CTE of its own: beside it in one WHERE, PostgreSQL may call the
    // cheaper pg_terminate_backend first, on every connection)
    let killed: Vec<bool> = sqlx::query_scalar(
        "WITH others AS MATERIALIZED (SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> ALL($1))
         SELECT pg_terminate_backend(pid) FROM others",
    )
    .bind(&pooled)
    .fetch_all(&mut *held[0])
    .await
    .unwrap();
    assert_eq!(
        killed,
        [true],
        "the probe's own connection, outside the pool"
    );
    let res = api.get("/readyz").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
}

/// Every api replica shares the one Redis: a failover must not take them all out of the
/// Service, so Kubernetes asks with `optional=queue` and gets 200 "degraded", while the
/// api's other work goes on and only enqueueing a check is refused.
#[tokio::test]
async fn readyz_names_a_lost_queue_and_answers_degraded_when_it_is_optional() {
    let mut redis = escalator_testkit::services::PrivateRedis::start();
    let api = spawn_api_on(&redis.url(), Tokens::none()).await;
    let res = api.get("/readyz?optional=queue").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["status"], "ready");

    redis.kill();
    let res = api.get("/readyz").await;
    let (code, field) = res.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (code.as_str(), field.as_deref()),
        ("not_ready", Some("queue"))
    );
    assert_eq!(res.json()["checks"]["database"], "ok");

    let res = api.get("/readyz?optional=queue").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let v = res.json();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["checks"]["queue"], "failed");
    assert_eq!(v["checks"]["database"], "ok");
    // the api serves what needs no queue, and refuses to enqueue
    api.create("R-1").await;
    assert_eq!(api.get("/api/v1/workflows").await.status, StatusCode::OK);
    let res = api.post("/api/v1/checks", serde_json::json!({})).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );

    // the database is never optional
    let res = api.get("/readyz?optional=database").await;
    let (code, field) = res.error(StatusCode::BAD_REQUEST);
    assert_eq!(
        (code.as_str(), field.as_deref()),
        ("bad_query", Some("optional"))
    );
    api.db.store.close().await;
    let res = api.get("/readyz?optional=queue").await;
    let (_, field) = res.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(field.as_deref(), Some("database"));
}

/// A database that hangs (here a lock a migration could hold on `workflows`, `outbox` and
/// `check_runs`) used to hold each fleet read for the pool's 10 s, one after another,
/// past Prometheus' 10 s scrape timeout: every api metric vanished during the incident. The
/// reads are bounded and run side by side; the gauges keep their last values.
#[tokio::test]
async fn a_scrape_answers_while_the_database_hangs() {
    let api = spawn_api().await;
    api.create("M-1").await;
    let first = api.get("/metrics").await.text();
    assert!(
        first.contains("workflow_open{sla_status=\"ok\"} 1"),
        "{first}"
    );
    let escalator_store::Store::Postgres(pg) = &api.db.store else {
        unreachable!()
    };
    let mut lock = pg.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE workflows, outbox, check_runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // past the cache of the first scrape's reads
    tokio::time::sleep(escalator_api::metrics::FLEET_TTL).await;
    let started = std::time::Instant::now();
    let res = api.get("/metrics").await;
    let took = started.elapsed();
    lock.rollback().await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    // a bound, not a benchmark: three reads hang, each gives up at 2 s, side by side (one
    // after another they would take 6 s); a scrape times out at 10 s
    let bound = escalator_api::metrics::FLEET_READ_TIMEOUT * 5 / 2;
    assert!(took < bound, "{took:?}");
    let text = res.text();
    assert!(
        text.contains("workflow_open{sla_status=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("escalator_queue_depth{queue="), "{text}");
    // and say how old they are: the database's sources were last read at the first scrape,
    // Redis's at this one
    let read_at = |text: &str, source: &str| -> f64 {
        let prefix = format!("escalator_fleet_read_timestamp_seconds{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .parse()
            .unwrap()
    };
    for source in ["workflows", "outbox", "check_runs"] {
        assert_eq!(read_at(&text, source), read_at(&first, source), "{source}");
    }
    assert!(read_at(&text, "queues") > read_at(&first, "queues"));
}

/// The api reports its requests by route template (not the raw path: one series per
/// workflow id would be unbounded), method and status, with their durations in buckets.
#[tokio::test]
async fn requests_are_counted_by_route_template_method_and_status() {
    let api = spawn_api().await;
    let w = api.create("HTTP-1").await;
    let id = w["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/api/v1/workflows/{id}")).await.status,
        StatusCode::OK
    );
    api.get("/nowhere").await.error(StatusCode::NOT_FOUND);
    let res = api
        .send(axum::http::Method::DELETE, "/api/v1/workflows", None, &[])
        .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    let text = api.get("/metrics").await.text();
    for series in [
        "escalator_http_requests_total{method=\"GET\",route=\"/api/v1/workflows/{id}\",status=\"200\"} 1",
        "escalator_http_requests_total{method=\"POST\",route=\"/api/v1/workflows\",status=\"201\"} 1",
        "escalator_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "escalator_http_requests_total{method=\"DELETE\",route=\"/api/v1/workflows\",status=\"405\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series:?} missing from:\n{text}"
        );
    }
    for start in [
        "escalator_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/workflows/{id}\",le=\"0.005\"}",
        "# HELP escalator_http_requests_total ",
    ] {
        assert!(text.contains(start), "{start:?} missing from:\n{text}");
    }
    assert!(!text.contains(id), "a raw path became a label:\n{text}");
}

/// In `escalator dev` the api shares its process with a worker and a beat: its `/healthz`
/// said "ok" while they had stalled. It reports their progress.
#[tokio::test]
async fn healthz_reports_the_engine_running_beside_the_api() {
    let limit = std::time::Duration::from_secs(1);
    let (worker, beat) = (
        escalator_runtime::serve::Health::new(limit),
        escalator_runtime::serve::Health::new(limit),
    );
    let api = spawn_api_adjusted(|s| {
        s.with_engine_health("worker", worker.clone())
            .with_engine_health("beat", beat.clone())
    })
    .await;
    // (the clocks started before the test database was made)
    worker.touch();
    beat.touch();
    let res = api.get("/healthz").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["status"], "ok");
    // the worker makes no progress for over its second while the beat does: stalled, and the
    // answer says which part (sharing one clock, the beat kept a wedged worker "ok")
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    beat.touch();
    let res = api.get("/healthz").await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    let body = res.json();
    assert_eq!(body["status"], "stalled", "{body}");
    assert!(
        body["parts"]["worker"]
            .as_str()
            .unwrap()
            .starts_with("stalled"),
        "{body}"
    );
    assert!(
        body["parts"]["beat"].as_str().unwrap().starts_with("ok"),
        "{body}"
    );
    worker.touch();
    assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_include_the_fleet_wide_gauges() {
    let api = spawn_api().await;
    api.create("M-1").await;
    api.create("M-2").await;
    // a run with no batch finishes when planned: its finish time is the last check
    let now = chrono::Utc::now() - chrono::Duration::hours(1);
    escalator_testkit::started_run(&api.db.store, "api", 0, now).await;
    // a later run that failed (its job could not be pushed), and a later check of one
    // workflow, are no sweep: the last check stays the run above
    let store = &api.db.store;
    let failed = escalator_testkit::queued_run(store, "beat", "all", now).await;
    let later = now + chrono::Duration::minutes(30);
    store
        .fail_check_run(failed.id, "Redis down", later)
        .await
        .unwrap();
    let one = format!("workflow:{}", uuid::Uuid::nil());
    let one = escalator_testkit::queued_run(store, "cli", &one, later).await;
    store.start_check_run(one.id, 0, later).await.unwrap();
    let res = api.get("/api/v1/metrics/prometheus").await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text();
    for needle in [
        "workflow_open{sla_status=\"ok\"} 2",
        "workflow_open{sla_status=\"breached\"} 0",
        "workflow_sla_compliance_ratio 1",
        "escalator_queue_depth{queue=",
        "escalator_dead_jobs 0",
        "escalator_outbox_pending 0",
        "escalator_outbox_overdue_seconds 0",
        "# HELP workflow_open ",
        "# HELP escalator_outbox_overdue_seconds ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let last: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("escalator_last_check_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no last check in:\n{text}"))
        .parse()
        .unwrap();
    assert!(
        (last - now.timestamp() as f64).abs() < 1.0,
        "{last} against {now}"
    );
    assert_eq!(api.get("/metrics").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_inbox_lists_a_recipients_notifications_and_marks_them_read() {
    let api = spawn_api().await;
    let w = api.create("N-1").await;
    let id: uuid::Uuid = w["id"].as_str().unwrap().parse().unwrap();
    remind(&api.db.store, id).await;

    let inbox = api
        .get("/api/v1/notifications?recipient=alice&unread=true")
        .await
        .json();
    let items = inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["kind"], "reminder");
    let nid = items[0]["id"].as_i64().unwrap();

    let res = api
        .post(
            &format!("/api/v1/notifications/{nid}/read"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["newly_read"], true);
    let again = api
        .post(
            &format!("/api/v1/notifications/{nid}/read"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(again.json()["newly_read"], false);
    // it takes no body: fields in one are refused, as everywhere (they were ignored)
    api.post(
        &format!("/api/v1/notifications/{nid}/read"),
        serde_json::json!({ "unread": true }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    let unread = api
        .get("/api/v1/notifications?recipient=alice&unread=true")
        .await
        .json();
    assert!(unread["items"].as_array().unwrap().is_empty());
    let all = api
        .get("/api/v1/notifications?recipient=alice")
        .await
        .json();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);

    api.post("/api/v1/notifications/999999/read", serde_json::json!({}))
        .await
        .error(StatusCode::NOT_FOUND);
    let (_, field) = api
        .get("/api/v1/notifications")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("recipient"));
    // the outbox row of the reminder shows up in the metrics
    let text = api.get("/metrics").await.text();
    assert!(text.contains("escalator_outbox_pending 1"), "{text}");
}

/// A recipient with more notifications than a page holds reads them all, page by page,
/// each once, newest first.
#[tokio::test]
async fn the_inbox_pages_through_everything_with_next_before() {
    let api = spawn_api().await;
    for i in 0..5 {
        let w = api.create(&format!("P-{i}")).await;
        remind(&api.db.store, w["id"].as_str().unwrap().parse().unwrap()).await;
    }
    let mut seen = Vec::new();
    let mut uri = "/api/v1/notifications?recipient=alice&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let res = api.get(&uri).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        let page = res.json();
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(b) => uri = format!("/api/v1/notifications?recipient=alice&limit=2&before={b}"),
            None => break,
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    // every query parameter at fault is a `bad_query`, whether the parser, a range or a length
    // refused it (a range was `bad_request`, a type `bad_query`)
    let long = "a".repeat(escalator_store::logic::MAX_ID_CHARS + 1);
    for (query, at) in [
        ("recipient=alice&before=0", "before"),
        ("recipient=alice&before=abc", "before"),
        ("recipient=alice&limit=0", "limit"),
        ("recipient=alice&limit=abc", "limit"),
        ("recipient=%20", "recipient"),
        (&format!("recipient={long}"), "recipient"),
    ] {
        let (code, field) = api
            .get(&format!("/api/v1/notifications?{query}"))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(
            (code.as_str(), field.as_deref()),
            ("bad_query", Some(at)),
            "{query}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = spawn_api().await;
    let res = api.get("/api/v1/openapi.json").await;
    assert_eq!(res.status, StatusCode::OK);
    let doc = res.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/api/v1/workflows", "post"),
        ("/api/v1/workflows", "get"),
        ("/api/v1/workflows/{id}", "get"),
        ("/api/v1/workflows/{id}/{action}", "post"),
        ("/api/v1/workflows/{id}/audit", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/notifications", "get"),
        ("/api/v1/notifications/{id}/read", "post"),
        ("/api/v1/checks", "post"),
        ("/api/v1/checks/{id}", "get"),
        ("/api/v1/jobs", "get"),
        ("/api/v1/jobs/{queue}/{id}/retry", "post"),
        ("/api/v1/policies", "get"),
        ("/api/v1/policies", "post"),
        ("/api/v1/policies/{id}", "get"),
        ("/api/v1/calendars/{id}", "put"),
        ("/api/v1/users", "get"),
        ("/api/v1/users/{id}", "put"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/v1/metrics/prometheus", "get"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the document"
        );
    }
    // every operation has an id of its own (OpenAPI: "MUST be unique"): five were `list`, from
    // the handlers' names, and client generators refused the document or made clashing methods
    let mut ids = std::collections::BTreeMap::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            if let Some(other) = ids.insert(id.to_owned(), format!("{method} {path}")) {
                panic!("operationId {id:?} of {method} {path} is also {other}'s");
            }
        }
    }
    assert_eq!(ids.len(), 23, "{ids:?}");
    // the open operations need no token (they were shown behind the document's bearer
    // requirement); the others keep it
    for path in ["/healthz", "/readyz", "/api/v1/metrics/prometheus"] {
        assert_eq!(
            paths[path]["get"]["security"],
            serde_json::json!([]),
            "{path}"
        );
    }
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    assert!(paths["/api/v1/workflows"]["get"].get("security").is_none());
    // what the api refuses, the document says: a missing recipient, an id below 1
    let param = |path: &str, method: &str, name: &str| {
        paths[path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
    };
    let recipient = param("/api/v1/notifications", "get", "recipient");
    assert_eq!(recipient["required"], true, "{recipient}");
    assert_eq!(recipient["schema"]["minLength"], 1, "{recipient}");
    for (path, method) in [
        ("/api/v1/notifications/{id}/read", "post"),
        ("/api/v1/checks/{id}", "get"),
    ] {
        let id = param(path, method, "id");
        assert_eq!(id["schema"]["minimum"], 1, "{method} {path}: {id}");
    }
    // and what it answers: the workflow's ETag; 503 when the database is away; 415 for a body
    // that is not JSON, also where the body is optional
    for (path, method, status) in [
        ("/api/v1/workflows/{id}", "get", "200"),
        ("/api/v1/workflows", "post", "201"),
        ("/api/v1/workflows/{id}/{action}", "post", "200"),
    ] {
        let answer = &paths[path][method]["responses"][status];
        assert!(
            answer["headers"]["ETag"].is_object(),
            "{method} {path}: {answer}"
        );
    }
    for (path, method, status) in [
        ("/api/v1/users/{id}", "put", "503"),
        ("/api/v1/workflows", "get", "503"),
        ("/api/v1/notifications/{id}/read", "post", "415"),
        ("/api/v1/workflows/{id}/{action}", "post", "415"),
    ] {
        assert!(
            paths[path][method]["responses"][status].is_object(),
            "{method} {path}: no {status}"
        );
    }
    assert!(
        paths["/healthz"]["get"]["responses"]["503"]["description"]
            .as_str()
            .is_some_and(|d| !d.contains("retry later"))
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "WorkflowView",
        "Workflow",
        "CheckRun",
        "ErrorBody",
        "CreateWorkflow",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn the_interactive_docs_are_served_from_the_binary_without_a_token() {
    let api =
        spawn_api_with(escalator_api::Tokens::parse("ops:0123456789abcdef:admin").unwrap()).await;
    let res = api.get("/docs").await;
    assert!(res.status.is_redirection(), "{}", res.status);
    assert_eq!(res.headers["location"], "/docs/");
    let page = api.get("/docs/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("swagger-ui"), "{}", page.text());
    // the page's script and stylesheet are served here, not fetched from a CDN
    assert!(!page.text().contains("https://"), "{}", page.text());
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        let res = api.get(asset).await;
        assert_eq!(res.status, StatusCode::OK, "{asset}");
        assert!(res.body.len() > 10_000, "{asset}: {} bytes", res.body.len());
    }
    // the explorer reads the api's own document
    let init = api.get("/docs/swagger-initializer.js").await;
    assert_eq!(init.status, StatusCode::OK);
    assert!(
        init.text().contains("/api/v1/openapi.json"),
        "{}",
        init.text()
    );
    // a token typed into it is not kept in the browser once the tab is closed, and no other
    // site may frame the page that holds it
    assert!(
        !init.text().contains("\"persistAuthorization\": true"),
        "{}",
        init.text()
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(
        page.headers["content-security-policy"],
        "frame-ancestors 'none'"
    );
    assert_eq!(api.get("/docs/nope.js").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_request_slower_than_the_configured_timeout_is_answered_408() {
    use axum::routing::get;
    use tower::ServiceExt as _;
    let api = spawn_api().await;
    // the api's own middleware around a deliberately slow route: the stack's timeout is the
    // state's, not the compiled-in default
    let state = escalator_api::AppState::new(
        api.db.store.clone(),
        api.queues.clone(),
        escalator_api::Tokens::none(),
        None,
    )
    .with_request_timeout(std::time::Duration::from_millis(200));
    let slow = axum::Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            "late"
        }),
    );
    let app = escalator_api::router_with(state, slow);
    let res = app
        .oneshot(
            axum::http::Request::get("/slow")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "timeout");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("0.2 s"),
        "{body}"
    );
}
