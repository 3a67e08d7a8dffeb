//! Checks: enqueue an ad-hoc run, follow it.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn posting_a_check_records_a_run_and_queues_its_planner_job() {
    let api = spawn_api().await;
    let res = api.send(Method::POST, "/api/v1/checks", None, &[]).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text());
    let body = res.json();
    let run_id = body["check_run_id"].as_i64().unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["scope"], "all");

    let run = api.db.store.get_check_run(run_id).await.unwrap();
    assert_eq!(run.requested_by, "api");
    let stats = api.queues.stats().await.unwrap();
    let checks = stats
        .iter()
        .find(|s| s.queue == api.queues.names().checks)
        .unwrap();
    assert_eq!(checks.pending, 1);

    let got = api.get(&format!("/api/v1/checks/{run_id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    let got = got.json();
    assert_eq!(got["id"], run_id);
    assert_eq!(got["status"], "queued");
    assert_eq!(got["checked"], 0);
}

#[tokio::test]
async fn a_check_of_one_workflow_is_scoped_to_it() {
    let api = spawn_api().await;
    let w = api.create("C-1").await;
    let res = api
        .post(
            "/api/v1/checks",
            json!({ "workflow_id": w["id"], "as_of": "2026-11-25T12:00:00Z" }),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text());
    let body = res.json();
    assert_eq!(
        body["scope"],
        format!("workflow:{}", w["id"].as_str().unwrap())
    );
    assert_eq!(body["as_of"], "2026-11-25T12:00:00Z");
}

#[tokio::test]
async fn bad_check_requests_are_refused_naming_the_field() {
    let api = spawn_api().await;
    let (_, field) = api
        .post("/api/v1/checks", json!({ "dry_run": true }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("dry_run"));
    let (_, field) = api
        .post(
            "/api/v1/checks",
            json!({ "workflow_id": uuid::Uuid::new_v4() }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("workflow_id"));
    let (_, field) = api
        .post("/api/v1/checks", json!({ "workflow_id": "nope" }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("workflow_id"));
    let (_, field) = api
        .post("/api/v1/checks", json!({ "scope": "all" }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("scope"));
    // nothing was queued by the refused requests
    let stats = api.queues.stats().await.unwrap();
    assert!(stats.iter().all(|s| s.pending == 0));

    api.get("/api/v1/checks/999999")
        .await
        .error(StatusCode::NOT_FOUND);
    let (_, field) = api
        .get("/api/v1/checks/abc")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("id"));
}
