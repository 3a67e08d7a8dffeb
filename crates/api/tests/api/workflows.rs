//! Workflows: create, get, list, transitions, audit — and bad input.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn create_is_201_then_200_for_the_same_body_and_409_for_a_different_one() {
    let api = spawn_api().await;
    let first = api.post("/api/v1/workflows", workflow_body("PR-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let w = first.json();
    assert_eq!(w["status"], "pending");
    assert_eq!(w["version"], 1);
    assert_eq!(w["sla_status"], "ok");
    assert_eq!(first.headers["etag"], "\"1\"");

    let again = api.post("/api/v1/workflows", workflow_body("PR-1")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["id"], w["id"]);

    let mut different = workflow_body("PR-1");
    different["title"] = json!("Desk purchase");
    let res = api.post("/api/v1/workflows", different).await;
    let (code, field) = res.error(StatusCode::CONFLICT);
    assert_eq!(code, "external_id_conflict");
    assert_eq!(field.as_deref(), Some("title"));
}

#[tokio::test]
async fn bad_bodies_are_4xx_json_errors_naming_the_problem() {
    let api = spawn_api().await;
    let mut body = workflow_body("PR-2");
    body["colour"] = json!("red");
    let (_, field) = api
        .post("/api/v1/workflows", body)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("colour"));

    let mut body = workflow_body("PR-2");
    body.as_object_mut().unwrap().remove("assignee");
    let (_, field) = api
        .post("/api/v1/workflows", body)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("assignee"));

    let mut body = workflow_body("PR-2");
    body["title"] = json!(42);
    let (_, field) = api
        .post("/api/v1/workflows", body)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("title"));

    let res = api
        .send(
            Method::POST,
            "/api/v1/workflows",
            Some(b"{\"external_id\": ".to_vec()),
            &[],
        )
        .await;
    assert_eq!(res.error(StatusCode::BAD_REQUEST).0, "malformed_json");

    let res = api.send(Method::POST, "/api/v1/workflows", None, &[]).await;
    assert_eq!(res.error(StatusCode::BAD_REQUEST).0, "malformed_json");

    let res = api
        .send(
            Method::POST,
            "/api/v1/workflows",
            Some(b"external_id=x".to_vec()),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    res.error(StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let mut body = workflow_body("PR-2");
    body["metadata"] = json!({ "blob": "x".repeat(70 * 1024) });
    let (code, _) = api
        .post("/api/v1/workflows", body)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code, "payload_too_large");

    // the store's own validation answers 422 with its field
    let mut body = workflow_body("PR-2");
    body["title"] = json!("");
    let res = api.post("/api/v1/workflows", body).await;
    assert_eq!(
        res.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        res.text()
    );
    assert_eq!(res.json()["error"]["field"], "title");

    // references in the body are 422s naming them; a wrong address is the only 404
    let mut body = workflow_body("PR-2");
    body["policy_id"] = json!("no-such-policy");
    let (_, field) = api
        .post("/api/v1/workflows", body)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("policy_id"));
    // a stage starting in 2062 (for 2026) would never be reminded or escalated until then
    let mut body = workflow_body("PR-2");
    body["stage_started_at"] = json!("2062-01-05T09:00:00Z");
    let (_, field) = api
        .post("/api/v1/workflows", body)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("stage_started_at"));

    // serde reads a struct from an array of its field values too: a positional array made a
    // workflow, and `[]` was told to be "struct CreateWorkflow with 10 elements"
    let positional = json!([
        "PR-3", "T", "approval", "S", "u2", "dave", null, null, null, null
    ]);
    for body in [positional, json!([]), json!("PR-3")] {
        let res = api.post("/api/v1/workflows", body.clone()).await;
        let (code, _) = res.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code, "invalid");
        assert!(
            res.text().contains("must be a JSON object"),
            "{}",
            res.text()
        );
    }
    let listed = api.get("/api/v1/workflows").await.json();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["external_id"] != "PR-3"),
        "{listed}"
    );
    // a time without its UTC offset says what a time looks like, not "premature end of input"
    let mut body = workflow_body("PR-3");
    body["stage_started_at"] = json!("2026-12-07T07:00:00");
    let res = api.post("/api/v1/workflows", body).await;
    assert!(
        res.text().contains("such as 2026-11-25T12:00:00Z"),
        "{}",
        res.text()
    );
    assert_eq!(
        res.error(StatusCode::UNPROCESSABLE_ENTITY).1.as_deref(),
        Some("stage_started_at")
    );
}

/// Identifiers are index keys: one past 200 characters is refused naming the field (an
/// escalation target of 3,000 characters used to be stored, then failed every check that
/// escalated its workflow). Instants outside years 1970-9999 are refused instead of reaching
/// PostgreSQL as a 500, and sub-microsecond digits do not make a retried create a conflict.
#[tokio::test]
async fn long_ids_and_far_instants_are_refused_naming_the_field() {
    let api = spawn_api().await;
    let long = "u".repeat(201);
    for field in ["external_id", "assignee", "initiator", "escalation_target"] {
        let mut body = workflow_body("PR-long");
        body[field] = json!(long);
        let (_, named) = api
            .post("/api/v1/workflows", body)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(named.as_deref(), Some(field));
    }
    let mut body = workflow_body("PR-long");
    body["escalation_target"] = json!("u".repeat(200));
    assert_eq!(
        api.post("/api/v1/workflows", body).await.status,
        StatusCode::CREATED
    );
    let w = api.create("PR-reassign").await;
    let res = api
        .post(
            &format!("/api/v1/workflows/{}/reassign", w["id"].as_str().unwrap()),
            json!({ "to": long }),
        )
        .await;
    assert_eq!(
        res.error(StatusCode::UNPROCESSABLE_ENTITY).1.as_deref(),
        Some("to")
    );
    let res = api
        .send(
            Method::PUT,
            &format!("/api/v1/users/{long}"),
            Some(br#"{"display_name":"X"}"#.to_vec()),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(res.error(StatusCode::BAD_REQUEST).1.as_deref(), Some("id"));

    for at in [
        "-5000-01-01T00:00:00Z",
        "+10000-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
    ] {
        let mut body = workflow_body("PR-far");
        body["stage_started_at"] = json!(at);
        let (_, named) = api
            .post("/api/v1/workflows", body)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(named.as_deref(), Some("stage_started_at"), "{at}");
        let res = api
            .post("/api/v1/checks", json!({ "as_of": at, "dry_run": true }))
            .await;
        assert_eq!(
            res.error(StatusCode::UNPROCESSABLE_ENTITY).1.as_deref(),
            Some("as_of")
        );
    }
    let res = api
        .get("/api/v1/workflows?due_before=%2B10000-01-01T00:00:00Z")
        .await;
    assert_eq!(
        res.error(StatusCode::BAD_REQUEST).1.as_deref(),
        Some("due_before")
    );

    let mut body = workflow_body("PR-nanos");
    body["stage_started_at"] = json!("2026-01-01T00:00:00.1234567Z");
    let first = api.post("/api/v1/workflows", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let again = api.post("/api/v1/workflows", body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(first.json(), again.json());
}

#[tokio::test]
async fn a_workflow_is_named_by_its_id_or_its_external_id_404_when_neither_matches() {
    let api = spawn_api().await;
    let w = api.create("PR-3").await;
    let res = api
        .get(&format!("/api/v1/workflows/{}", w["id"].as_str().unwrap()))
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["external_id"], "PR-3");

    let unknown = uuid::Uuid::new_v4();
    let (code, _) = api
        .get(&format!("/api/v1/workflows/{unknown}"))
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(code, "not_found");
    let (code, _) = api
        .get("/api/v1/workflows/not-a-workflow")
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(code, "not_found");
    let too_long = "x".repeat(201);
    let (_, field) = api
        .get(&format!("/api/v1/workflows/{too_long}"))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("id"));

    // the caller's own id names the workflow too: reading it, its trail, and acting on it
    let by_external = api.get("/api/v1/workflows/PR-3").await;
    assert_eq!(by_external.status, StatusCode::OK, "{}", by_external.text());
    assert_eq!(by_external.json()["id"], w["id"]);
    let held = api
        .post(
            "/api/v1/workflows/PR-3/hold",
            json!({"expected_version": 1}),
        )
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.text());
    assert_eq!(held.json()["status"], "on_hold");
    let trail = api.get("/api/v1/workflows/PR-3/audit").await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.text());
    let actions: Vec<_> = trail.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["create", "hold"]);
    // percent-encoded when it holds a slash; and a caller's uuid that is no workflow's id
    // is looked up as an external id
    let slashed = api.create("PO/77").await;
    let res = api.get("/api/v1/workflows/PO%2F77").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["id"], slashed["id"]);
    let theirs = uuid::Uuid::new_v4().to_string();
    let uuid_named = api.create(&theirs).await;
    let res = api.get(&format!("/api/v1/workflows/{theirs}")).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["id"], uuid_named["id"]);
    let (_, field) = api
        .get("/api/v1/workflows/%FF%FE")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("path"));
    api.get(&format!("/api/v1/workflows/{unknown}/audit"))
        .await
        .error(StatusCode::NOT_FOUND);
    api.get("/api/v1/nowhere")
        .await
        .error(StatusCode::NOT_FOUND);
    api.get("/api/v1/checks")
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn transitions_check_versions_and_status_and_are_audited() {
    let api = spawn_api().await;
    let w = api.create("PR-4").await;
    let id = w["id"].as_str().unwrap();

    // a stale If-Match is refused with 412 and changes nothing
    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/hold"),
            None,
            &[("if-match", "\"7\"")],
        )
        .await;
    let (code, field) = res.error(StatusCode::PRECONDITION_FAILED);
    assert_eq!(code, "version_conflict");
    // the header was stale, not a body field the client never sent
    assert_eq!(field.as_deref(), Some("If-Match"));

    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/hold"),
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["status"], "on_hold");
    assert_eq!(res.headers["etag"], "\"2\"");

    // a list of versions, as HTTP allows (it was a 400): any of them will do, none is a 412
    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/resume"),
            None,
            &[("if-match", "\"1\", \"5\"")],
        )
        .await;
    let (code, field) = res.error(StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        (code.as_str(), field.as_deref()),
        ("version_conflict", Some("If-Match"))
    );
    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/resume"),
            Some(
                json!({ "expected_version": 2, "comment": "back from leave" })
                    .to_string()
                    .into_bytes(),
            ),
            &[("if-match", "\"1\", \"2\"")],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["status"], "pending");
    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/hold"),
            None,
            &[("if-match", "W/\"2\", \"3\"")],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/resume"),
            json!({ "expected_version": 4 }),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/reassign"),
            json!({ "to": "carol" }),
        )
        .await;
    assert_eq!(res.json()["assignee"], "carol");
    let (_, field) = api
        .post(&format!("/api/v1/workflows/{id}/reassign"), json!({}))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("to"));
    let (_, field) = api
        .post(
            &format!("/api/v1/workflows/{id}/complete"),
            json!({ "to": "x" }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("to"));

    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/advance"),
            json!({ "stage": "Finance Approval", "assignee": "dave" }),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["stage"], "Finance Approval");

    let res = api
        .send(
            Method::POST,
            &format!("/api/v1/workflows/{id}/complete"),
            None,
            &[],
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["sla_status"], serde_json::Value::Null);
    let (code, _) = api
        .post(&format!("/api/v1/workflows/{id}/complete"), json!({}))
        .await
        .error(StatusCode::CONFLICT);
    assert_eq!(code, "invalid_transition");
    let (_, field) = api
        .post(
            &format!("/api/v1/workflows/{id}/explode"),
            json!({ "to": "x" }),
        )
        .await
        .error(StatusCode::NOT_FOUND);
    assert_eq!(field.as_deref(), Some("action"));

    let audit = api
        .get(&format!("/api/v1/workflows/{id}/audit"))
        .await
        .json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create", "hold", "resume", "hold", "resume", "reassign", "advance", "complete"
        ]
    );
    assert_eq!(audit["items"][1]["reason"], "api");
    assert_eq!(audit["items"][1]["actor"], "api");
    assert_eq!(audit["items"][2]["details"]["comment"], "back from leave");
    assert!(audit.get("next_cursor").is_none(), "{audit}");

    // the trail a page at a time (it was answered whole, however long): pages of 6
    let first = api
        .get(&format!("/api/v1/workflows/{id}/audit?limit=6"))
        .await
        .json();
    assert_eq!(first["items"].as_array().unwrap().len(), 6);
    assert_eq!(first["items"][5]["action"], "reassign");
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = api
        .get(&format!(
            "/api/v1/workflows/{id}/audit?limit=6&cursor={cursor}"
        ))
        .await
        .json();
    let rest: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ["advance", "complete"]);
    for bad in ["limit=0", "limit=1001", "cursor=nope!"] {
        let (code, field) = api
            .get(&format!("/api/v1/workflows/{id}/audit?{bad}"))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(code, "bad_query", "{bad}");
        assert!(field.is_some(), "{bad}");
    }

    // the global log in pages of 4, following next_cursor: every row once. A row shows once
    // every older transaction of the PostgreSQL cluster has ended (the tests beside this one
    // keep some open for a moment), so a page may come short and is asked again.
    let started = std::time::Instant::now();
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    while seen.len() < 8 && started.elapsed() < std::time::Duration::from_secs(30) {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/audit?limit=4&cursor={c}"),
            None => "/api/v1/audit?limit=4".to_owned(),
        };
        let page = api.get(&uri).await.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 4, "{page}");
        seen.extend(items.iter().map(|i| i["id"].as_i64().unwrap()));
        if let Some(c) = page["next_cursor"].as_str() {
            cursor = Some(c.to_owned());
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "once each, in order: {seen:?}"
    );
    // the end, for now: the cursor after the last row finds nothing yet, and keeps its place
    let cursor = cursor.unwrap();
    let end = api
        .get(&format!("/api/v1/audit?cursor={cursor}"))
        .await
        .json();
    assert!(end["items"].as_array().unwrap().is_empty());
    assert!(end.get("next_cursor").is_none());
    let (_, field) = api
        .get("/api/v1/audit?cursor=nope!")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("cursor"));
}

#[tokio::test]
async fn lists_filter_by_status_and_page_with_a_cursor() {
    let api = spawn_api().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(api.create(&format!("L-{n}")).await["id"].clone());
    }
    let held = ids[1].as_str().unwrap();
    let res = api
        .post(&format!("/api/v1/workflows/{held}/hold"), json!({}))
        .await;
    assert_eq!(res.status, StatusCode::OK);

    let on_hold = api.get("/api/v1/workflows?status=on_hold").await.json();
    assert_eq!(on_hold["items"].as_array().unwrap().len(), 1);
    assert_eq!(on_hold["items"][0]["id"], ids[1]);
    assert_eq!(on_hold["next_cursor"], serde_json::Value::Null);

    let mut seen = Vec::new();
    let mut uri = "/api/v1/workflows?status=pending&limit=2".to_owned();
    loop {
        let page = api.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/workflows?status=pending&limit=2&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<_> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(seen, expected);

    let ok = api
        .get("/api/v1/workflows?sla_status=ok&assignee=alice")
        .await
        .json();
    assert_eq!(ok["items"].as_array().unwrap().len(), 4);
    let due = api
        .get("/api/v1/workflows?due_before=2000-01-01T00:00:00Z")
        .await
        .json();
    assert!(due["items"].as_array().unwrap().is_empty());

    let long = "a".repeat(escalator_store::logic::MAX_ID_CHARS + 1);
    for (query, field) in [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "colour"),
        ("due_before=yesterday", "due_before"),
        ("due_before=1000-01-01T00:00:00Z", "due_before"),
        ("assignee=", "assignee"),
        (&format!("assignee={long}"), "assignee"),
        ("assignee=a%00b", "assignee"),
    ] {
        let res = api.get(&format!("/api/v1/workflows?{query}")).await;
        let (code, f) = res.error(StatusCode::BAD_REQUEST);
        assert_eq!(
            (code.as_str(), f.as_deref()),
            ("bad_query", Some(field)),
            "{query}"
        );
    }
    // an offset's `+` unencoded reads as a space: the message says so
    let res = api
        .get("/api/v1/workflows?due_before=2026-12-09T00:00:00+01:00")
        .await;
    res.error(StatusCode::BAD_REQUEST);
    let message = res.json()["error"]["message"].to_string();
    assert!(message.contains("write it %2B"), "{message}");
}

/// A client that lost the answer to a transition sends it again under the same
/// `Idempotency-Key`: the same answer, nothing applied twice (a second advance started yet
/// another cycle).
#[tokio::test]
async fn a_transition_retried_under_its_idempotency_key_is_applied_once() {
    let api = spawn_api().await;
    api.create("PR-IK").await;
    let advance = |key: &'static str| {
        let api = &api;
        async move {
            api.send(
                Method::POST,
                "/api/v1/workflows/PR-IK/advance",
                Some(json!({"stage": "Finance"}).to_string().into_bytes()),
                &[("idempotency-key", key)],
            )
            .await
        }
    };
    let first = advance("retry-me-1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.json()["cycle"], 2);
    let again = advance("retry-me-1").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.json(), first.json());
    // also when it names the versions it may apply to, which the first attempt moved past
    let listed = |key: &'static str| {
        let api = &api;
        async move {
            api.send(
                Method::POST,
                "/api/v1/workflows/PR-IK/hold",
                None,
                &[("idempotency-key", key), ("if-match", "\"2\", \"7\"")],
            )
            .await
        }
    };
    let held = listed("hold-once").await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.text());
    let held_again = listed("hold-once").await;
    assert_eq!(held_again.status, StatusCode::OK, "{}", held_again.text());
    assert_eq!(held_again.json(), held.json());
    // a new key with versions the workflow has moved past is still refused
    let (code, field) = listed("hold-twice")
        .await
        .error(StatusCode::PRECONDITION_FAILED);
    assert_eq!(code, "version_conflict");
    assert_eq!(field.as_deref(), Some("If-Match"));
    // the key on another request is refused naming it; a malformed one too
    let hold = api
        .send(
            Method::POST,
            "/api/v1/workflows/PR-IK/hold",
            None,
            &[("idempotency-key", "retry-me-1")],
        )
        .await;
    let (code, field) = hold.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid");
    assert_eq!(field.as_deref(), Some("Idempotency-Key"));
    let long = "k".repeat(201);
    for bad in ["two words", long.as_str()] {
        let res = api
            .send(
                Method::POST,
                "/api/v1/workflows/PR-IK/hold",
                None,
                &[("idempotency-key", bad)],
            )
            .await;
        let (_, field) = res.error(StatusCode::BAD_REQUEST);
        assert_eq!(field.as_deref(), Some("Idempotency-Key"), "{bad}");
    }
    let trail = api.get("/api/v1/workflows/PR-IK/audit").await.json();
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "advance", "hold"]);
}

/// A workflow's own people need no user record, but one whose policy escalates to the
/// assignee's manager, with an assignee who is no user or has no manager, stops at its
/// deadline. The create says so (it answered 201 as if all were well) and still creates.
#[tokio::test]
async fn a_create_warns_of_an_escalation_that_would_reach_no_one() {
    let api = spawn_api().await;
    let default = api.get("/api/v1/policies/default").await.json();
    assert_eq!(
        default["spec"]["levels"][0]["target"], "manager",
        "{default}"
    );
    let put = |id: &'static str, body: serde_json::Value| {
        let api = &api;
        async move {
            let res = api
                .send(
                    Method::PUT,
                    &format!("/api/v1/users/{id}"),
                    Some(body.to_string().into_bytes()),
                    &[],
                )
                .await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        }
    };
    let warnings = |res: &Resp| res.json()["warnings"].clone();
    // alice is no user
    let res = api.post("/api/v1/workflows", workflow_body("W-1")).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let w = warnings(&res);
    assert_eq!(w.as_array().map(Vec::len), Some(1), "{w}");
    assert!(
        w[0].as_str().unwrap().contains("\"alice\" is no user"),
        "{w}"
    );
    // a user with no manager
    put("alice", json!({"display_name": "Alice"})).await;
    let res = api.post("/api/v1/workflows", workflow_body("W-2")).await;
    assert!(
        warnings(&res)[0]
            .as_str()
            .unwrap()
            .contains("has no manager_id"),
        "{}",
        res.text()
    );
    // with a manager, nothing to say
    put("boss", json!({"display_name": "Boss"})).await;
    put(
        "alice",
        json!({"display_name": "Alice", "manager_id": "boss"}),
    )
    .await;
    let res = api.post("/api/v1/workflows", workflow_body("W-3")).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert!(res.json().get("warnings").is_none(), "{}", res.text());
    // an override target who has left is passed over
    put("gone", json!({"display_name": "Gone", "active": false})).await;
    let mut body = workflow_body("W-4");
    body["escalation_target"] = json!("gone");
    let res = api.post("/api/v1/workflows", body).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert!(
        warnings(&res)[0]
            .as_str()
            .unwrap()
            .contains("\"gone\" is inactive"),
        "{}",
        res.text()
    );
    assert_eq!(warnings(&res).as_array().map(Vec::len), Some(1));
    // a manager who has left is no one to escalate to either; nor, behind an override who
    // has left, is the policy's own target
    put("boss", json!({"display_name": "Boss", "active": false})).await;
    let res = api.post("/api/v1/workflows", workflow_body("W-5")).await;
    let w = warnings(&res);
    assert!(
        w[0].as_str().unwrap().contains("\"boss\", who is inactive"),
        "{w}"
    );
    let mut body = workflow_body("W-6");
    body["escalation_target"] = json!("gone");
    let w = warnings(&api.post("/api/v1/workflows", body).await);
    assert_eq!(w.as_array().map(Vec::len), Some(2), "{w}");
    // a read shows none (they are about the create)
    let res = api.get("/api/v1/workflows/W-1").await;
    assert!(res.json().get("warnings").is_none(), "{}", res.text());
}
