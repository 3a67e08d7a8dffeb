//! Dead jobs: listed for an operator, and put back in their queue.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Makes `id` a dead job of `queue` the way apalis-redis records one: its payload in the data
/// hash, its id in the dead set, its last error in its meta hash.
async fn bury(queue: &str, id: &str) {
    let c = apalis_redis::Config::default().queue(queue);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(c.job_data_hash())
        .arg(id)
        .arg(r#"{"check_run_id":1}"#)
        .cmd("SADD")
        .arg(c.dead_jobs_set())
        .arg(id)
        .cmd("HSET")
        .arg(format!("{}:{id}", c.job_meta_hash()))
        .arg("result")
        .arg("boom")
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn dead_jobs_are_listed_and_retried_once() {
    let api = spawn_api().await;
    let queue = api.queues.names().batches.clone();
    let empty = api.get("/api/v1/jobs?status=dead").await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.text());
    assert!(empty.json()["items"].as_array().unwrap().is_empty());

    bury(&queue, "job-1").await;
    let listed = api.get("/api/v1/jobs").await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["id"], "job-1");
    assert_eq!(listed["items"][0]["queue"], queue.as_str());
    assert_eq!(listed["items"][0]["error"], "boom");

    let uri = format!("/api/v1/jobs/{queue}/job-1/retry");
    let res = api.post(&uri, json!({})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let stats = api.queues.stats().await.unwrap();
    let batches = stats.iter().find(|s| s.queue == queue).unwrap();
    assert_eq!((batches.pending, batches.dead), (1, 0));
    // the second retry finds nothing dead
    let (_, field) = api.post(&uri, json!({})).await.error(StatusCode::NOT_FOUND);
    assert_eq!(field.as_deref(), Some("id"));

    // by its short name too, as `escalator jobs retry batches …` and the runbook say
    bury(&queue, "job-2").await;
    let res = api
        .post("/api/v1/jobs/batches/job-2/retry", json!({}))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["queue"], queue.as_str());

    for unknown in ["elsewhere", "atches", ":batches"] {
        let (_, field) = api
            .post(&format!("/api/v1/jobs/{unknown}/job-1/retry"), json!({}))
            .await
            .error(StatusCode::NOT_FOUND);
        assert_eq!(field.as_deref(), Some("queue"), "{unknown}");
    }
    let (_, field) = api
        .get("/api/v1/jobs?status=done")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("status"));
}
