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
    // by its external id too, as the command line takes it
    let res = api
        .post("/api/v1/checks", json!({ "external_id": "C-1" }))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text());
    assert_eq!(
        res.json()["scope"],
        format!("workflow:{}", w["id"].as_str().unwrap())
    );
    let (_, field) = api
        .post("/api/v1/checks", json!({ "external_id": "C-404" }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("external_id"));
    let (_, field) = api
        .post(
            "/api/v1/checks",
            json!({ "external_id": "C-1", "workflow_id": w["id"] }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("external_id"));
}

#[tokio::test]
async fn bad_check_requests_are_refused_naming_the_field() {
    let api = spawn_api().await;
    // a real check dated ahead would escalate before the deadlines; a preview may look ahead
    let ahead = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, field) = api
        .post("/api/v1/checks", json!({ "as_of": ahead }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("as_of"));
    let res = api
        .post("/api/v1/checks", json!({ "as_of": ahead, "dry_run": true }))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let (_, field) = api
        .post("/api/v1/checks", json!({ "dry_run": true, "limit": 0 }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("limit"));
    let (_, field) = api
        .post(
            "/api/v1/checks",
            json!({ "dry_run": true, "limit": 10_001 }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("limit"));
    let (_, field) = api
        .post("/api/v1/checks", json!({ "limit": 5 }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("limit"));
    let (_, field) = api
        .post("/api/v1/checks", json!({ "dry_run": "yes" }))
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

#[tokio::test]
async fn a_dry_run_reports_what_a_check_would_do_and_writes_nothing() {
    let api = spawn_api().await;
    let a = api.create("D-1").await;
    let b = api.create("D-2").await;
    // b was created last: at its warning instant both are in their warning window
    let warn_at = b["warn_at"].as_str().unwrap().to_owned();
    let due_at: chrono::DateTime<chrono::Utc> = a["due_at"].as_str().unwrap().parse().unwrap();
    // counted in the table: the global log shows only rows older than every transaction open
    // on the server, which other tests' transactions would hide
    let rows_before = api.db.store.table_counts().await.unwrap();

    // at the warning instant both are due for their reminder
    let res = api
        .post(
            "/api/v1/checks",
            json!({ "dry_run": true, "as_of": warn_at }),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let report = res.json();
    assert_eq!(report["scope"], "all");
    assert_eq!(report["due"], 2);
    assert_eq!(report["evaluated"], 2);
    assert_eq!(report["remind"], 2);
    assert_eq!(report["escalate"], 0);
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i["action"] == "remind" && i["assignee"] == "alice")
    );

    // one workflow, past its deadline, with a limit
    let late = (due_at + chrono::Duration::hours(1)).to_rfc3339();
    let res = api
        .post(
            "/api/v1/checks",
            json!({ "dry_run": true, "as_of": late, "workflow_id": b["id"], "limit": 1 }),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let report = res.json();
    assert_eq!(
        report["scope"],
        format!("workflow:{}", b["id"].as_str().unwrap())
    );
    assert_eq!(report["evaluated"], 1);
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["workflow_id"], b["id"]);
    // past its deadline, and alice has no manager (no user record): no one to escalate to
    assert_eq!(items[0]["action"], "exhausted", "{report}");
    assert_eq!(report["escalate"], 0, "{report}");

    // nothing was written or queued: same versions, same audit, no run, empty queues
    for w in [&a, &b] {
        let now = api
            .get(&format!("/api/v1/workflows/{}", w["id"].as_str().unwrap()))
            .await
            .json();
        assert_eq!(now["version"], w["version"]);
        assert!(now["reminded_at"].is_null());
    }
    let rows_after = api.db.store.table_counts().await.unwrap();
    assert_eq!(rows_after, rows_before);
    assert!(api.db.store.recent_check_runs(10).await.unwrap().is_empty());
    let stats = api.queues.stats().await.unwrap();
    assert!(stats.iter().all(|s| s.pending == 0));

    // a dry run reads without claiming: a batch holding `a` hides it from no preview, and the
    // preview leaves nothing locked for the batch's claim to pass over
    let late_at = due_at + chrono::Duration::hours(1);
    let a_id: uuid::Uuid = a["id"].as_str().unwrap().parse().unwrap();
    let mut batch = api.db.store.begin_batch().await.unwrap();
    assert!(batch.claim_one(a_id, late_at).await.unwrap().is_some());
    let res = api
        .post("/api/v1/checks", json!({ "dry_run": true, "as_of": late }))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["evaluated"], 2, "{}", res.text());
    let mut other = api.db.store.begin_batch().await.unwrap();
    let claimed = other.claim_due(late_at, 10).await.unwrap();
    let claimed: Vec<_> = claimed.iter().map(|d| d.workflow.id.to_string()).collect();
    assert_eq!(claimed, [b["id"].as_str().unwrap()]);
    other.rollback().await.unwrap();
    batch.rollback().await.unwrap();
}
