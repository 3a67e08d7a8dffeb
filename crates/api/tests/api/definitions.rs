//! Policies, calendars and users: validated with the offending field named, never a 500.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn put(api: &TestApi, uri: &str, body: Value) -> Resp {
    api.send(Method::PUT, uri, Some(body.to_string().into_bytes()), &[])
        .await
}

#[tokio::test]
async fn a_users_channels_are_validated_stored_and_kept_when_omitted() {
    let api = spawn_api().await;
    let res = put(
        &api,
        "/api/v1/users/carol",
        json!({ "display_name": "Carol", "phone": "+15550100", "channels": ["sms", "email"] }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["channels"], json!(["sms", "email"]));
    // a PUT without the list keeps it
    let res = put(
        &api,
        "/api/v1/users/carol",
        json!({ "display_name": "Carol C." }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["channels"], json!(["sms", "email"]));
    assert_eq!(
        api.get("/api/v1/users/carol").await.json()["display_name"],
        "Carol C."
    );
    // in-app only
    let res = put(
        &api,
        "/api/v1/users/carol",
        json!({ "display_name": "Carol", "channels": [] }),
    )
    .await;
    assert_eq!(res.json()["channels"], json!([]));
    for bad in [
        json!(["pager"]),
        json!(["email", "email"]),
        json!("email"),
        json!([1]),
    ] {
        let (_, field) = put(
            &api,
            "/api/v1/users/carol",
            json!({ "display_name": "Carol", "channels": bad }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            field.as_deref().unwrap_or_default().starts_with("channels"),
            "{bad}: {field:?}"
        );
    }
    // null: back to the default (it kept the stored list, and the default was lost for good)
    let res = put(
        &api,
        "/api/v1/users/carol",
        json!({ "display_name": "Carol", "channels": null }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert!(res.json()["channels"].is_null(), "{}", res.text());
    // a phone number an SMS provider could never take is refused, naming the field
    for bad in [
        "",
        "call me",
        "+",
        "12345",
        "+1 555 0100 ext. 7",
        &"5".repeat(40),
    ] {
        let (_, field) = put(
            &api,
            "/api/v1/users/carol",
            json!({ "display_name": "Carol", "phone": bad }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(field.as_deref(), Some("phone"), "{bad:?}");
    }
    for good in ["+1 (555) 010-0100", "0049.30.1234567", "+15550100"] {
        let res = put(
            &api,
            "/api/v1/users/carol",
            json!({ "display_name": "Carol", "phone": good }),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{good}: {}", res.text());
    }
    // a user who never chose shows null
    put(
        &api,
        "/api/v1/users/dave",
        json!({ "display_name": "Dave" }),
    )
    .await;
    assert!(api.get("/api/v1/users/dave").await.json()["channels"].is_null());
}

#[tokio::test]
async fn users_are_upserted_and_circular_or_unknown_managers_refused() {
    let api = spawn_api().await;
    let res = put(
        &api,
        "/api/v1/users/boss",
        json!({ "display_name": "Boss" }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["active"], true);
    let res = put(
        &api,
        "/api/v1/users/alice",
        json!({ "display_name": "Alice", "email": "alice@example.com", "manager_id": "boss" }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let (_, field) = put(
        &api,
        "/api/v1/users/boss",
        json!({ "display_name": "Boss", "manager_id": "alice" }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("manager_id"));
    let (_, field) = put(
        &api,
        "/api/v1/users/bob",
        json!({ "display_name": "Bob", "manager_id": "ghost" }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("manager_id"));
    let (_, field) = put(
        &api,
        "/api/v1/users/bob",
        json!({ "display_name": "Bob", "boss": "x" }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("boss"));
    // an address no relay takes is refused, naming the field (it was stored, then left out of
    // every message); null removes it
    for bad in [
        "",
        "jdoe",
        "a b@example.com",
        "Ana <ana@example.com>",
        "a@@example.com",
        "a@",
        // accepted once, then refused by the mail library or the relay on every message
        "ana..lopez@corp.com",
        "ana.@corp.com",
        "ana@corp..com",
        "ana@-corp.com",
        "josé@example.com",
        // the mail library parses none of these: the previous assignee was sent the new
        // assignee's "escalated to you" in their place
        "jane(sales)@corp.com",
        "a:b@corp.com",
        "ana@corp_eu.com",
        "ana@corp.com]",
    ] {
        let (message, field) = put(
            &api,
            "/api/v1/users/zed",
            json!({ "display_name": "Zed", "email": bad }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(field.as_deref(), Some("email"), "{bad:?}: {message}");
    }
    let long_local = format!("{}@corp.com", "a".repeat(65));
    let (_, field) = put(
        &api,
        "/api/v1/users/zed",
        json!({ "display_name": "Zed", "email": long_local }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("email"));
    for good in [
        "bob.o'neil+ops@mail.example.com",
        "ana@bücher.de",
        "x_y{z}#1@example-mail.co",
    ] {
        let res = put(
            &api,
            "/api/v1/users/zed",
            json!({ "display_name": "Zed", "email": good }),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{good}: {}", res.text());
    }
    let res = put(
        &api,
        "/api/v1/users/zed",
        json!({ "display_name": "Zed", "email": null }),
    )
    .await;
    assert_eq!(res.json()["email"], Value::Null, "{}", res.text());

    // a slack value is mentioned as <@…> in a shared channel, or is the user's own webhook:
    // nothing that closes the mention, no plain http
    for bad in [
        "U0HEAD> <!channel> <https://evil.example/login|Re-authenticate",
        "U1 U2",
        "<@U1>",
        "",
        "http://127.0.0.1:8080/internal",
        "https://hooks.slack.com/services/T0/B0/x y",
    ] {
        let (message, field) = put(
            &api,
            "/api/v1/users/zed",
            json!({ "display_name": "Zed", "slack": bad }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(field.as_deref(), Some("slack"), "{bad:?}: {message}");
    }
    for good in [
        "U024BE7LH",
        "ana.lima",
        "https://hooks.slack.com/services/T000/B000/XXXX",
    ] {
        let res = put(
            &api,
            "/api/v1/users/zed",
            json!({ "display_name": "Zed", "slack": good }),
        )
        .await;
        assert_eq!(res.json()["slack"], good, "{}", res.text());
    }

    let page = api.get("/api/v1/users?limit=1").await.json();
    assert_eq!(page["items"][0]["id"], "alice");
    assert_eq!(page["next_after"], "alice");
    let rest = api.get("/api/v1/users?after=alice").await.json();
    assert_eq!(rest["items"][0]["id"], "boss");
    assert_eq!(rest["next_after"], Value::Null);
    assert_eq!(
        api.get("/api/v1/users/alice").await.json()["manager_id"],
        "boss"
    );
    api.get("/api/v1/users/nobody")
        .await
        .error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn calendars_are_validated_naming_the_field() {
    let api = spawn_api().await;
    let spec = json!({
        "timezone": "Europe/London",
        "windows": [{ "day": "Mon", "start": "09:00", "end": "17:00" }],
        "holidays": ["2026-12-25"],
    });
    let res = put(&api, "/api/v1/calendars/uk", spec.clone()).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let got = api.get("/api/v1/calendars/uk").await.json();
    assert_eq!(got["spec"]["timezone"], "Europe/London");

    let mut bad = spec.clone();
    bad["timezone"] = json!("Mars/Olympus");
    let (_, field) = put(&api, "/api/v1/calendars/uk", bad)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("timezone"));
    let mut bad = spec;
    bad["windows"][0]["end"] = json!("25:00");
    let (_, field) = put(&api, "/api/v1/calendars/uk", bad)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(field.unwrap().starts_with("windows[0]"));
    api.get("/api/v1/calendars/nowhere")
        .await
        .error(StatusCode::NOT_FOUND);
}

/// An SLA that its calendar cannot reach within 1,000 years of work was accepted, and every
/// workflow on that level waited for a deadline that never came; so was a calendar edit that
/// left a policy's SLA out of reach.
#[tokio::test]
async fn an_sla_the_calendar_cannot_reach_is_refused_with_the_policy_or_the_calendar() {
    let api = spawn_api().await;
    let hour_a_week = json!({
        "timezone": "Europe/London",
        "windows": [{ "day": "Mon", "start": "09:00", "end": "10:00" }],
    });
    let res = put(&api, "/api/v1/calendars/thin", hour_a_week).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let spec = |sla_seconds: i64| {
        json!({
            "sla_seconds": 86_400, "warning": { "kind": "before", "seconds": 3_600 },
            "levels": [{ "target": "manager", "sla_seconds": sla_seconds }],
            "calendar_id": "thin",
        })
    };
    // 20 years of work at an hour a week: ~5,500 years
    let res = api
        .post(
            "/api/v1/policies",
            json!({ "id": "glacial", "name": "Glacial", "spec": spec(20 * 365 * 86_400) }),
        )
        .await;
    let (code, field) = res.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid");
    assert_eq!(field.as_deref(), Some("spec.levels[0].sla_seconds"));
    let message = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("\"thin\"") && message.contains("1.0 hours of work a week"),
        "{message}"
    );
    // a year of work is ~168 years of weeks: found
    let res = api
        .post(
            "/api/v1/policies",
            json!({ "id": "slow", "name": "Slow", "spec": spec(365 * 86_400) }),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    // cutting the calendar to a minute a week would leave that year of work out of reach
    let minute_a_week = json!({
        "timezone": "Europe/London",
        "windows": [{ "day": "Mon", "start": "09:00", "end": "09:01" }],
    });
    let res = put(&api, "/api/v1/calendars/thin", minute_a_week).await;
    let (_, field) = res.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("windows"));
    let message = res.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("policy \"slow\" version 1") && message.contains("levels[0].sla_seconds"),
        "{message}"
    );
    let kept = api.get("/api/v1/calendars/thin").await.json();
    assert_eq!(kept["spec"]["windows"][0]["end"], "10:00", "{kept}");
}

#[tokio::test]
async fn policies_get_new_versions_and_bad_specs_name_the_field() {
    let api = spawn_api().await;
    let all = api.get("/api/v1/policies").await.json();
    let default = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "default")
        .unwrap()
        .clone();
    let spec = default["spec"].clone();

    let body = json!({ "id": "fast", "name": "Fast lane", "spec": spec });
    let res = api.post("/api/v1/policies", body.clone()).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(res.json()["version"], 1);
    // the same again (a retried post, a sync job) is that version, not a new identical one
    let res = api.post("/api/v1/policies", body.clone()).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["version"], 1);
    let mut renamed = body;
    renamed["name"] = json!("Fast lane, renamed");
    let res = api.post("/api/v1/policies", renamed).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(res.json()["version"], 2);
    let v1 = api.get("/api/v1/policies/fast?version=1").await;
    assert_eq!(v1.status, StatusCode::OK);
    assert_eq!(api.get("/api/v1/policies/fast").await.json()["version"], 2);
    api.get("/api/v1/policies/none")
        .await
        .error(StatusCode::NOT_FOUND);

    // the spec with one field changed is refused (422), naming the field
    let refused = |key: &'static str, value: Value| {
        let mut bad = spec.clone();
        bad[key] = value;
        let api = &api;
        async move {
            api.post(
                "/api/v1/policies",
                json!({ "id": "bad", "name": "Bad", "spec": bad }),
            )
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY)
            .1
        }
    };
    let field = refused("sla_seconds", json!(-5)).await;
    assert_eq!(field.as_deref(), Some("spec.sla_seconds"));
    let field = refused("channels", json!(["slack", "pager"])).await;
    assert_eq!(field.as_deref(), Some("spec.channels[1]"));
    // a user target too long for the assignee index (every workflow reaching it was set aside
    // for ever), or with surrounding spaces
    let long = format!("user:{}", "x".repeat(3_000));
    for target in [long.as_str(), "user: bob"] {
        let field = refused(
            "levels",
            json!([{ "target": target, "sla_seconds": 86_400 }]),
        )
        .await;
        assert_eq!(field.as_deref(), Some("spec.levels[0].target"), "{target}");
    }
    let mut chatty = spec.clone();
    chatty["channels"] = json!(["slack", "email"]);
    let res = api
        .post(
            "/api/v1/policies",
            json!({ "id": "chatty", "name": "Slack first", "spec": chatty }),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(res.json()["spec"]["channels"], json!(["slack", "email"]));
    // a level handing workflows to a user who does not exist, or has left, reaches no one
    put(
        &api,
        "/api/v1/users/gone",
        json!({ "display_name": "Gone", "active": false }),
    )
    .await;
    for target in ["user:nobody", "user:gone"] {
        let levels = json!([
            { "target": "manager", "sla_seconds": 86_400 },
            { "target": target, "sla_seconds": 86_400 },
        ]);
        let field = refused("levels", levels).await;
        assert_eq!(field.as_deref(), Some("spec.levels[1].target"), "{target}");
    }
    put(
        &api,
        "/api/v1/users/nobody",
        json!({ "display_name": "Nobody" }),
    )
    .await;
    let mut named = spec.clone();
    named["levels"] = json!([{ "target": "user:nobody", "sla_seconds": 86_400 }]);
    let named = json!({ "id": "named", "name": "To nobody", "spec": named });
    let res = api.post("/api/v1/policies", named.clone()).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    // once that user has left, a sync job re-posting the policy unchanged is still answered
    // the version in force (it was refused, 422); a changed one is checked again
    put(
        &api,
        "/api/v1/users/nobody",
        json!({ "display_name": "Nobody", "active": false }),
    )
    .await;
    let res = api.post("/api/v1/policies", named.clone()).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["version"], 1);
    let mut renamed = named;
    renamed["name"] = json!("To nobody, renamed");
    let (_, field) = api
        .post("/api/v1/policies", renamed)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("spec.levels[0].target"));
    let mut bad = spec.clone();
    bad["calendar_id"] = json!("nowhere");
    let (_, field) = api
        .post(
            "/api/v1/policies",
            json!({ "id": "bad", "name": "Bad", "spec": bad }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("spec.calendar_id"));
    let mut bad = spec;
    bad["escalate_to"] = json!("ceo");
    let (_, field) = api
        .post(
            "/api/v1/policies",
            json!({ "id": "bad", "name": "Bad", "spec": bad }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("spec.escalate_to"));
}

#[tokio::test]
async fn a_nul_in_a_body_or_a_path_is_refused_naming_where_not_a_500() {
    // found by `make fuzz-api`: PostgreSQL refuses NUL in text, and the api answered 500
    let api = spawn_api().await;
    let (_, field) = put(
        &api,
        "/api/v1/users/carol",
        json!({ "display_name": "Carol", "manager_id": "bo\u{0}b" }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("manager_id"));
    let (_, field) = put(
        &api,
        "/api/v1/users/car%00ol",
        json!({ "display_name": "Carol" }),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("path"));
    let (_, field) = api
        .post(
            "/api/v1/policies",
            json!({ "id": "p", "name": "x\u{0}", "spec": {} }),
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("name"));
    // nothing was stored
    assert_eq!(
        api.get("/api/v1/users/carol").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Runs a real single-workflow check of `id` at `as_of` through the engine, as a worker does.
async fn check(api: &TestApi, id: &str, as_of: chrono::DateTime<chrono::Utc>) {
    use escalator_jobs::{CheckWorkflows, Scope};
    use escalator_worker::engine::{Engine, EngineConfig, PolicyCache};
    let id: uuid::Uuid = id.parse().unwrap();
    let scope = Scope::Workflow(id);
    let run = escalator_testkit::queued_run(&api.db.store, "cli", &scope.to_string(), as_of).await;
    let engine = Engine {
        store: api.db.store.clone(),
        queues: api.queues.clone(),
        config: EngineConfig::default(),
        policies: PolicyCache::default(),
    };
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope,
    };
    engine.check_workflows(&job).await.unwrap();
}

/// Creates workflow `external_id` (alice's, on `policy` or the default) and checks it just
/// past its deadline, where it must be exhausted; returns its id, uuid and deadline.
async fn exhausted_at_its_deadline(
    api: &TestApi,
    external_id: &str,
    policy: Option<&str>,
) -> (String, uuid::Uuid, chrono::DateTime<chrono::Utc>) {
    let mut body = workflow_body(external_id);
    if let Some(p) = policy {
        body["policy_id"] = json!(p);
    }
    let w = api.post("/api/v1/workflows", body).await.json();
    let id = w["id"].as_str().unwrap().to_owned();
    let due_at: chrono::DateTime<chrono::Utc> = w["due_at"].as_str().unwrap().parse().unwrap();
    check(api, &id, due_at + chrono::Duration::minutes(1)).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    let w = api.db.store.get_workflow(uuid).await.unwrap();
    assert!(w.exhausted_at.is_some(), "{w:?}");
    assert_eq!(w.assignee, "alice", "{w:?}");
    (id, uuid, due_at)
}

/// The exhausted workflow `uuid`, unscheduled until a user write re-arms it (`rearm`): then
/// due, and the next check escalates it to boss.
async fn rearmed_it_escalates_to_boss(
    api: &TestApi,
    (id, uuid, due_at): (String, uuid::Uuid, chrono::DateTime<chrono::Utc>),
    rearm: (&str, Value),
) {
    let next = async || api.db.store.get_workflow(uuid).await.unwrap().next_check_at;
    assert_eq!(next().await, None);
    users(api, &[rearm]).await;
    assert!(next().await.is_some(), "not due again");
    check(api, &id, due_at + chrono::Duration::minutes(2)).await;
    let escalated = api.db.store.get_workflow(uuid).await.unwrap();
    assert_eq!(
        (escalated.assignee.as_str(), escalated.escalation_level),
        ("boss", 1),
        "{escalated:?}"
    );
    assert!(escalated.exhausted_at.is_none());
    assert!(escalated.next_check_at.is_some());
}

/// Stores each of `users` (id, body) through the api.
async fn users(api: &TestApi, users: &[(&str, Value)]) {
    for (id, body) in users {
        let res = put(api, &format!("/api/v1/users/{id}"), body.clone()).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    }
}

/// The default policy escalates to the assignee's manager. A workflow whose assignee had none
/// at its deadline is recorded exhausted (no target) and unscheduled; giving the assignee a
/// manager makes it due again, and the next check escalates it. It used to stay exhausted and
/// unchecked for ever.
#[tokio::test]
async fn a_workflow_exhausted_for_want_of_a_manager_escalates_once_one_is_set() {
    let api = spawn_api().await;
    let boss = ("boss", json!({ "display_name": "Boss" }));
    users(&api, &[boss, ("alice", json!({ "display_name": "Alice" }))]).await;
    let exhausted = exhausted_at_its_deadline(&api, "NO-MGR-1", None).await;
    let alice = (
        "alice",
        json!({ "display_name": "Alice", "manager_id": "boss" }),
    );
    rearmed_it_escalates_to_boss(&api, exhausted, alice).await;
}

/// A manager who has left (inactive) is no one to escalate to: the workflow used to become
/// theirs, with nobody told to act for a whole SLA. It is exhausted for want of a target, as
/// with no manager, and escalates once the manager is active again.
#[tokio::test]
async fn a_workflow_whose_manager_has_left_waits_for_an_active_one() {
    let api = spawn_api().await;
    let boss = ("boss", json!({ "display_name": "Boss", "active": false }));
    let alice = (
        "alice",
        json!({ "display_name": "Alice", "manager_id": "boss" }),
    );
    users(&api, &[boss, alice]).await;
    let exhausted = exhausted_at_its_deadline(&api, "LEFT-MGR-1", None).await;
    rearmed_it_escalates_to_boss(&api, exhausted, ("boss", json!({ "display_name": "Boss" })))
        .await;
}

/// A user named by a policy's level, or as a workflow's own escalation target, who has left
/// since (inactive) was still escalated to: the workflow became theirs and nobody active was
/// told. They are passed over: the next level (or the policy's level 1 for an override) takes
/// their place, and with nobody left above, the workflow is exhausted for want of a target.
#[tokio::test]
async fn a_target_who_has_left_is_passed_over() {
    let api = spawn_api().await;
    let person = |name: &str| json!({ "display_name": name });
    users(
        &api,
        &[
            ("director", person("Director")),
            ("vp", person("VP")),
            ("boss", person("Boss")),
            ("erin", person("Erin")),
            (
                "alice",
                json!({ "display_name": "Alice", "manager_id": "boss" }),
            ),
        ],
    )
    .await;
    let all = api.get("/api/v1/policies").await.json();
    let mut spec = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "default")
        .unwrap()["spec"]
        .clone();
    spec["levels"] = json!([
        { "target": "user:director", "sla_seconds": 86_400 },
        { "target": "user:vp", "sla_seconds": 86_400 },
    ]);
    let res = api
        .post(
            "/api/v1/policies",
            json!({ "id": "ladder", "name": "Ladder", "spec": spec }),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let create = async |external_id: &str, policy: &str, target: Option<&str>| {
        let mut body = workflow_body(external_id);
        body["policy_id"] = json!(policy);
        if let Some(target) = target {
            body["escalation_target"] = json!(target);
        }
        let w = api.post("/api/v1/workflows", body).await;
        assert_eq!(w.status, StatusCode::CREATED, "{}", w.text());
        let w = w.json();
        let due_at: chrono::DateTime<chrono::Utc> = w["due_at"].as_str().unwrap().parse().unwrap();
        (w["id"].as_str().unwrap().to_owned(), due_at)
    };
    let ladder = create("LEFT-DIRECTOR", "ladder", None).await;
    let erin = create("LEFT-OVERRIDE", "default", Some("erin")).await;
    let deserted = create("LEFT-EVERYONE", "ladder", None).await;
    let inactive = |name: &str| json!({ "display_name": name, "active": false });
    users(
        &api,
        &[
            ("director", inactive("Director")),
            ("erin", inactive("Erin")),
        ],
    )
    .await;
    let after = |due_at| due_at + chrono::Duration::minutes(1);
    let held_by = async |id: &str| {
        let w = api
            .db
            .store
            .get_workflow(id.parse().unwrap())
            .await
            .unwrap();
        (w.assignee, w.escalation_level, w.exhausted_at.is_some())
    };

    check(&api, &ladder.0, after(ladder.1)).await;
    assert_eq!(held_by(&ladder.0).await, ("vp".into(), 2, false));
    check(&api, &erin.0, after(erin.1)).await;
    assert_eq!(held_by(&erin.0).await, ("boss".into(), 1, false));
    users(&api, &[("vp", inactive("VP"))]).await;
    check(&api, &deserted.0, after(deserted.1)).await;
    assert_eq!(held_by(&deserted.0).await, ("alice".into(), 0, true));
    let audit = api
        .get(&format!("/api/v1/workflows/{}/audit", deserted.0))
        .await
        .json();
    let reasons: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "exhausted")
        .map(|a| &a["details"]["reason"])
        .collect();
    assert_eq!(reasons, [&json!("no_target")], "{audit}");
}

/// Boss, Alice without a manager, and Dave reporting to Boss.
async fn boss_alice_and_dave(api: &TestApi) {
    let dave = (
        "dave",
        json!({ "display_name": "Dave", "manager_id": "boss" }),
    );
    let boss = ("boss", json!({ "display_name": "Boss" }));
    users(
        api,
        &[boss, ("alice", json!({ "display_name": "Alice" })), dave],
    )
    .await;
}

/// The default policy with `after_last: repeat` hourly, as policy "nagging"; `levels` of its
/// escalation chain (0: the default's one `manager` level; else that many `manager` levels).
async fn nagging_policy(api: &TestApi, levels: usize) {
    let all = api.get("/api/v1/policies").await.json();
    let mut spec = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "default")
        .unwrap()["spec"]
        .clone();
    spec["after_last"] = json!({ "kind": "repeat", "every_seconds": 3_600 });
    if levels > 0 {
        let level = json!({ "target": "manager", "sla_seconds": 86_400 });
        spec["levels"] = json!(vec![level; levels]);
    }
    let res = api
        .post(
            "/api/v1/policies",
            json!({ "id": "nagging", "name": "Nagging", "spec": spec }),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
}

/// Under a repeating policy an exhausted workflow always has a next check (its next
/// renotification), and the moves that give it a target (its assignee given a manager,
/// a reassignment) waited for that one, up to a day, where a `stop` policy's moved on at
/// once. Below the chain's last level they now make it due at once too.
#[tokio::test]
async fn a_repeating_policy_moves_on_as_soon_as_a_target_appears() {
    let api = spawn_api().await;
    boss_alice_and_dave(&api).await;
    nagging_policy(&api, 2).await;
    let due_now = async |uuid: uuid::Uuid| {
        let next = api.db.store.get_workflow(uuid).await.unwrap().next_check_at;
        next.is_some_and(|t| t <= chrono::Utc::now())
    };
    let escalated_to_boss = async |id: &str, uuid: uuid::Uuid, due_at| {
        check(&api, id, due_at + chrono::Duration::minutes(2)).await;
        let w = api.db.store.get_workflow(uuid).await.unwrap();
        assert_eq!(
            (w.assignee.as_str(), w.escalation_level),
            ("boss", 1),
            "{w:?}"
        );
    };

    // alice is given a manager
    let (id, uuid, due_at) = exhausted_at_its_deadline(&api, "REPEAT-MGR", Some("nagging")).await;
    assert!(!due_now(uuid).await, "renotification an hour away");
    let alice = (
        "alice",
        json!({ "display_name": "Alice", "manager_id": "boss" }),
    );
    users(&api, &[alice]).await;
    assert!(due_now(uuid).await, "not due at once");
    escalated_to_boss(&id, uuid, due_at).await;

    // reassigned to someone with a manager
    users(&api, &[("alice", json!({ "display_name": "Alice" }))]).await;
    let (id, uuid, due_at) =
        exhausted_at_its_deadline(&api, "REPEAT-REASSIGN", Some("nagging")).await;
    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/reassign"),
            json!({ "to": "dave" }),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert!(due_now(uuid).await, "not due at once");
    escalated_to_boss(&id, uuid, due_at).await;

    // held and resumed (a manager may have been given meanwhile): looked at again at once
    let (id, uuid, _) = exhausted_at_its_deadline(&api, "REPEAT-RESUME", Some("nagging")).await;
    for action in ["hold", "resume"] {
        let res = api
            .post(&format!("/api/v1/workflows/{id}/{action}"), json!({}))
            .await;
        assert_eq!(res.status, StatusCode::OK, "{action}: {}", res.text());
    }
    assert!(due_now(uuid).await, "not due at once");
}

/// An exhausted workflow was left unscheduled for good by two transitions: reassigning one
/// exhausted for want of a target (the new assignee has a manager) and resuming one whose
/// policy repeats its notifications after the chain (they stopped after a hold). Both are
/// scheduled again: the reassigned one is looked at by the next check and escalates, the
/// resumed one renotifies an interval after its resume.
#[tokio::test]
async fn reassigning_or_resuming_an_exhausted_workflow_schedules_it_again() {
    let api = spawn_api().await;
    boss_alice_and_dave(&api).await;
    let exhausted = async |external_id: &str, policy: Option<&str>| {
        exhausted_at_its_deadline(&api, external_id, policy).await
    };

    // reassigned to someone with a manager: due again, and the next check escalates
    let (id, uuid, due_at) = exhausted("EX-REASSIGN", None).await;
    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/reassign"),
            json!({ "to": "dave" }),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert!(res.json()["next_check_at"].is_string(), "{}", res.text());
    check(&api, &id, due_at + chrono::Duration::minutes(2)).await;
    let w = api.db.store.get_workflow(uuid).await.unwrap();
    assert_eq!(
        (w.assignee.as_str(), w.escalation_level),
        ("boss", 1),
        "{w:?}"
    );

    // a repeating policy: held and resumed at the end of its chain, it renotifies an hour
    // after the resume
    nagging_policy(&api, 0).await;
    let mut body = workflow_body("EX-RESUME");
    body["policy_id"] = json!("nagging");
    body["assignee"] = json!("dave");
    let w = api.post("/api/v1/workflows", body).await.json();
    let id = w["id"].as_str().unwrap().to_owned();
    let uuid: uuid::Uuid = id.parse().unwrap();
    let due_at: chrono::DateTime<chrono::Utc> = w["due_at"].as_str().unwrap().parse().unwrap();
    check(&api, &id, due_at + chrono::Duration::minutes(1)).await;
    let escalated = api.db.store.get_workflow(uuid).await.unwrap();
    assert_eq!(escalated.escalation_level, 1, "{escalated:?}");
    check(&api, &id, escalated.due_at + chrono::Duration::minutes(1)).await;
    let w = api.db.store.get_workflow(uuid).await.unwrap();
    assert!(
        w.exhausted_at.is_some() && w.next_check_at.is_some(),
        "{w:?}"
    );
    for action in ["hold", "resume"] {
        let res = api
            .post(&format!("/api/v1/workflows/{id}/{action}"), json!({}))
            .await;
        assert_eq!(res.status, StatusCode::OK, "{action}: {}", res.text());
    }
    let resumed = chrono::Utc::now();
    let w = api.db.store.get_workflow(uuid).await.unwrap();
    let next = w.next_check_at.expect("scheduled again after resume");
    let hour = chrono::Duration::hours(1);
    assert!(
        next > resumed - chrono::Duration::seconds(5) + hour && next <= resumed + hour,
        "{next} for a resume at {resumed}"
    );
}

/// Ids are checked alike in every path and body: a read of an id that cannot exist is a 400
/// naming it (it was a 404), version 0 is no version, and an id with surrounding spaces is
/// refused (`PUT /users/%20bob` made a user of its own beside `bob`).
#[tokio::test]
async fn ids_that_cannot_exist_are_refused_naming_them_in_reads_and_writes() {
    let api = spawn_api().await;
    let long = "x".repeat(201);
    for path in [
        format!("/api/v1/users/{long}"),
        format!("/api/v1/policies/{long}"),
        format!("/api/v1/calendars/{long}"),
    ] {
        let (_, field) = api.get(&path).await.error(StatusCode::BAD_REQUEST);
        assert_eq!(field.as_deref(), Some("id"), "{path}");
    }
    for version in ["0", "-3"] {
        let (code, field) = api
            .get(&format!("/api/v1/policies/default?version={version}"))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(
            (code.as_str(), field.as_deref()),
            ("bad_query", Some("version"))
        );
    }
    let res = put(
        &api,
        "/api/v1/users/%20bob",
        json!({ "display_name": "Bob" }),
    )
    .await;
    let (_, field) = res.error(StatusCode::BAD_REQUEST);
    assert_eq!(field.as_deref(), Some("id"));
    let (_, field) = api
        .post("/api/v1/workflows", workflow_body("PO-7 "))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field.as_deref(), Some("external_id"));
    // a user stored with such an id before the rule can still be read, changed and deactivated
    api.db
        .store
        .upsert_users(&[escalator_store::User {
            id: " carol".into(),
            display_name: "Carol".into(),
            email: None,
            phone: None,
            slack: None,
            manager_id: None,
            active: true,
            channels: None,
        }])
        .await
        .unwrap();
    let res = api.get("/api/v1/users/%20carol").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let res = put(
        &api,
        "/api/v1/users/%20carol",
        json!({ "display_name": "Carol", "active": false }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.json()["active"], false);
}

/// A user who chose SMS with no phone (or Slack with no `slack`, email with no `email`) got
/// nothing on it, and the `PUT` answered as if all were well: it now says so, and stores the
/// user all the same.
#[tokio::test]
async fn a_channel_chosen_without_its_address_is_warned_of() {
    let api = spawn_api().await;
    let res = put(
        &api,
        "/api/v1/users/dana",
        json!({ "display_name": "Dana", "email": "dana@example.com",
                "channels": ["email", "sms", "slack", "webhook"] }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let warnings = res.json()["warnings"].clone();
    let text = warnings.to_string();
    assert_eq!(warnings.as_array().map(Vec::len), Some(2), "{text}");
    assert!(
        text.contains("no phone") && text.contains("no slack"),
        "{text}"
    );
    assert_eq!(
        res.json()["channels"],
        json!(["email", "sms", "slack", "webhook"])
    );
    // with the addresses given, nothing to say; nor when the channels are the default
    let res = put(
        &api,
        "/api/v1/users/dana",
        json!({ "display_name": "Dana", "email": "dana@example.com", "phone": "+1 555 0100",
                "slack": "U024BE7LH" }),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert!(res.json().get("warnings").is_none(), "{}", res.text());
    let res = put(
        &api,
        "/api/v1/users/erin",
        json!({ "display_name": "Erin" }),
    )
    .await;
    assert!(res.json().get("warnings").is_none(), "{}", res.text());
}
