//! Every console page against a real database, the actions (POST, then redirect) and bad
//! input answered with an error page.

use axum::http::StatusCode;
use chrono::Duration;
use escalator_api::Tokens;
use escalator_policy::Status;

use crate::helpers::*;

#[tokio::test]
async fn the_overview_shows_sla_states_what_breaches_soon_and_the_last_day() {
    let c = console(Tokens::none()).await;
    let soon = c
        .workflow("w-soon", "Breaches soon", Duration::minutes(20))
        .await;
    c.workflow("w-later", "Due tomorrow", Duration::hours(20))
        .await;
    c.workflow("w-late", "Already late", -Duration::hours(1))
        .await;
    remind(&c.db.store, &soon).await;
    let page = c.get("/ui", None).await;
    page.assert_ok();
    let html = &page.html;
    assert!(html.contains("<b class=\"ok\">1</b>"), "{html}");
    assert!(html.contains("<b class=\"warning\">1</b>"));
    assert!(html.contains("<b class=\"breached\">1</b>"));
    assert!(html.contains("66.7 %"), "compliance");
    assert!(html.contains("Breaches soon"));
    assert!(!html.contains("Due tomorrow"), "not within the hour");
    assert!(
        html.contains("in 19m") || html.contains("in 20m"),
        "countdown: {html}"
    );
    assert!(
        html.contains("<b>1</b><span>reminders, last 24 h</span>"),
        "{html}"
    );
    assert!(html.contains("no beat has run"));
    assert!(
        html.contains("escalator:") || html.contains("ui-"),
        "queue depths"
    );
    // the counts that scan every open workflow are read at most every 5 s (a read token
    // looping on the page made each request scan them); the rest is read every time
    c.workflow("w-late-2", "Late too", -Duration::hours(2))
        .await;
    let again = c.get("/ui", None).await;
    assert!(
        again.html.contains("<b class=\"breached\">1</b>"),
        "{}",
        again.html
    );
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let later = c.get("/ui", None).await;
    assert!(
        later.html.contains("<b class=\"breached\">2</b>"),
        "{}",
        later.html
    );
}

#[tokio::test]
async fn the_list_searches_filters_and_pages() {
    let c = console(Tokens::none()).await;
    for i in 0..55 {
        c.workflow(
            &format!("PO-{i:03}"),
            &format!("Purchase {i}"),
            Duration::hours(10),
        )
        .await;
    }
    c.workflow("INV-1", "Invoice approval", -Duration::hours(2))
        .await;
    let all = c.get("/ui/workflows", None).await;
    all.assert_ok();
    assert_eq!(all.html.matches("href=\"/ui/workflows/").count(), 50);
    assert!(all.html.contains("Invoice approval"), "newest first");
    let older = all
        .html
        .split("rel=\"next\"")
        .next()
        .and_then(|h| h.rsplit("href=\"").next())
        .and_then(|h| h.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let page2 = c.get(&older, None).await;
    page2.assert_ok();
    assert_eq!(page2.html.matches("href=\"/ui/workflows/").count(), 6);
    assert!(!page2.html.contains("rel=\"next\""));

    let found = c.get("/ui/workflows?q=invoice", None).await;
    assert_eq!(found.html.matches("href=\"/ui/workflows/").count(), 1);
    let breached = c.get("/ui/workflows?sla=breached", None).await;
    assert!(breached.html.contains("INV-1"));
    assert_eq!(breached.html.matches("href=\"/ui/workflows/").count(), 1);
    let none = c.get("/ui/workflows?status=completed&q=po-", None).await;
    assert!(none.html.contains("no workflow matches"));
}

#[tokio::test]
async fn a_workflow_page_shows_its_clock_timeline_and_deliveries_and_acts() {
    let c = console(Tokens::none()).await;
    let w = c.workflow("PO-7", "Laptop", Duration::minutes(50)).await;
    remind(&c.db.store, &w).await;
    let path = format!("/ui/workflows/{}", w.id);
    let page = c.get(&path, None).await;
    page.assert_ok();
    for text in [
        "Audit timeline",
        "create",
        "remind",
        "escalator",
        "warn_at passed",
        "alice@example.com",
        "pending",
        "default v1",
        "Reminder: Laptop",
    ] {
        assert!(page.html.contains(text), "{text} missing: {}", page.html);
    }
    let csrf = page.csrf();
    let w = c.db.store.get_workflow(w.id).await.unwrap();
    let version = w.version.to_string();
    let res = c
        .post(
            &format!("{path}/hold"),
            None,
            &[("csrf", &csrf), ("version", &version)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let location = res.location.clone().unwrap();
    assert!(
        location.starts_with(&format!("{path}?note=hold+done&sig=")),
        "{location}"
    );
    let after = c.get(&location, None).await;
    assert!(after.html.contains("hold done"));
    // a note in a link made by someone else is not shown as the console's word (it was)
    for forged in [
        format!("{path}?note=Send+your+token+to+evil%40example.com"),
        format!("{path}?note=Send+your+token&sig=AAAAAAAAAAAAAAAAAAAAAA"),
        location.replace("note=hold+done", "note=Send+your+token"),
    ] {
        let page = c.get(&forged, None).await;
        page.assert_ok();
        assert!(!page.html.contains("Send your token"), "{forged}");
    }
    assert!(after.html.contains("on hold since"));
    // the page shown before the hold is stale now
    let stale = c
        .post(
            &format!("{path}/complete"),
            None,
            &[("csrf", &csrf), ("version", &version)],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.html
    );
    let v = (w.version + 1).to_string();
    let res = c
        .post(
            &format!("{path}/resume"),
            None,
            &[("csrf", &csrf), ("version", &v)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let res = c
        .post(
            &format!("{path}/reassign"),
            None,
            &[("csrf", &csrf), ("to", "dave")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let res = c
        .post(
            &format!("{path}/complete"),
            None,
            &[("csrf", &csrf), ("comment", "approved")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let done = c.db.store.get_workflow(w.id).await.unwrap();
    assert_eq!(
        (done.status, done.assignee.as_str()),
        (Status::Completed, "dave")
    );
    let actions: Vec<_> =
        c.db.store
            .workflow_audit(w.id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
    assert_eq!(
        actions,
        ["create", "remind", "hold", "resume", "reassign", "complete"]
    );
    // a closed workflow offers no actions, and refuses them
    assert!(!c.get(&path, None).await.html.contains("Reassign"));
    let res = c
        .post(&format!("{path}/hold"), None, &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    let res = c
        .post(&format!("{path}/reassign"), None, &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = c
        .post(&format!("{path}/explode"), None, &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

/// A workflow's page rendered its whole trail (100,000 table rows after a month of a repeating
/// policy nobody answered) and named "the assignee's manager" as the escalation target of a
/// workflow whose policy names someone.
#[tokio::test]
async fn a_workflow_page_shows_its_newest_rows_and_who_it_escalates_to() {
    let c = console(Tokens::none()).await;
    let s = &c.db.store;
    let mut spec = escalator_policy::Policy::default_policy().spec().clone();
    spec.levels[0].target = escalator_policy::Target::User("cfo".into());
    s.create_policy_version(
        "default",
        "Named",
        &escalator_policy::Policy::new(spec).unwrap(),
    )
    .await
    .unwrap();
    let mut new = escalator_testkit::new_workflow("NAMED-1", chrono::Utc::now());
    new.escalation_target = None;
    let w = s
        .create_workflow(&new, chrono::Utc::now())
        .await
        .unwrap()
        .workflow;
    let page = c.get(&format!("/ui/workflows/{}", w.id), None).await;
    page.assert_ok();
    assert!(page.html.contains("cfo (the policy"), "{}", page.html);
    assert!(!page.html.contains("The newest"), "{}", page.html);
    // the caller's own id finds the same page, as in the api's paths
    let by_external = c.get("/ui/workflows/NAMED-1", None).await;
    by_external.assert_ok();
    assert!(
        by_external.html.contains(&w.id.to_string()),
        "{}",
        by_external.html
    );

    for i in 0..101 {
        for t in [
            escalator_store::Transition::Hold,
            escalator_store::Transition::Resume,
        ] {
            let ctx = escalator_store::TransitionContext {
                actor: format!("op{i}"),
                reason: escalator_store::AuditReason::Manual,
                expected_version: None,
                comment: None,
                now: chrono::Utc::now(),
                idempotency_key: None,
            };
            s.transition(w.id, &t, &ctx).await.unwrap();
        }
    }
    assert_eq!(s.workflow_audit(w.id).await.unwrap().len(), 203);
    let page = c.get(&format!("/ui/workflows/{}", w.id), None).await;
    page.assert_ok();
    assert!(
        page.html.contains("The newest 200 entries"),
        "{}",
        page.html
    );
    assert!(page.html.contains("op100"), "the newest rows are shown");
    assert!(
        !page.html.contains("<b>create</b>"),
        "the oldest are left out"
    );
    assert_eq!(page.html.matches("<td><b>").count(), 200);
}

#[tokio::test]
async fn the_inbox_lists_a_persons_notifications_and_marks_them_read() {
    let c = console(Tokens::none()).await;
    let w = c.workflow("PO-1", "Laptop", Duration::minutes(50)).await;
    remind(&c.db.store, &w).await;
    let empty = c.get("/ui/inbox", None).await;
    empty.assert_ok();
    let page = c.get("/ui/inbox?recipient=alice&unread=1", None).await;
    page.assert_ok();
    assert!(page.html.contains("Reminder: Laptop"));
    let id = c.db.store.inbox("alice", true, None, 10).await.unwrap()[0].id;
    let res = c
        .post(
            &format!("/ui/inbox/{id}/read"),
            None,
            &[("csrf", &page.csrf()), ("recipient", "alice")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    assert!(
        res.location
            .unwrap()
            .starts_with("/ui/inbox?recipient=alice")
    );
    assert!(
        c.db.store
            .inbox("alice", true, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let unread = c.get("/ui/inbox?recipient=alice&unread=1", None).await;
    assert!(unread.html.contains("no notification"));
    let res = c
        .post("/ui/inbox/999999/read", None, &[("csrf", &page.csrf())])
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dead_jobs_and_dead_deliveries_are_shown_and_retried_once() {
    let c = console(Tokens::none()).await;
    let w = c.workflow("PO-1", "Laptop", Duration::minutes(50)).await;
    remind(&c.db.store, &w).await;
    let dead = kill_deliveries(&c.db.store, &w).await;
    let queue = c.queues.names().batches.clone();
    bury(&queue, "job-1").await;
    let page = c.get("/ui/queues", None).await;
    page.assert_ok();
    assert!(page.html.contains("job-1"));
    assert!(page.html.contains("check_run_id"), "payload shown");
    assert!(page.html.contains("550 &lt;mailbox&gt; unknown"));
    let csrf = page.csrf();
    let retry = format!("/ui/queues/{}/job-1/retry", queue.replace(':', "%3A"));
    assert!(page.html.contains(&retry), "{}", page.html);
    let res = c.post(&retry, None, &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let stats = c.queues.stats().await.unwrap();
    let s = stats.iter().find(|s| s.queue == queue).unwrap();
    assert_eq!((s.pending, s.dead), (1, 0));
    assert_eq!(
        c.post(&retry, None, &[("csrf", &csrf)]).await.status,
        StatusCode::NOT_FOUND
    );
    let res = c
        .post("/ui/queues/elsewhere/job-1/retry", None, &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    let res = c
        .post(
            &format!("/ui/outbox/{}/retry", dead[0]),
            None,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let row = c.db.store.workflow_outbox(w.id).await.unwrap();
    assert_eq!((row[0].status.as_str(), row[0].attempts), ("pending", 0));
    let res = c
        .post(
            &format!("/ui/outbox/{}/retry", dead[0]),
            None,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(
        c.get("/ui/queues", None)
            .await
            .html
            .contains("no dead delivery")
    );
}

#[tokio::test]
async fn checks_are_previewed_without_writing_and_run_for_real() {
    let c = console(Tokens::none()).await;
    let w = c.workflow("PO-1", "Laptop", -Duration::minutes(5)).await;
    let before = c.db.store.table_counts().await.unwrap();
    let preview = c
        .get("/ui/checks?preview=1&workflow_id=&as_of=", None)
        .await;
    preview.assert_ok();
    assert!(
        preview.html.contains("nothing was written"),
        "{}",
        preview.html
    );
    assert!(preview.html.contains("escalate"));
    assert!(preview.html.contains("carol"), "the target");
    assert_eq!(c.db.store.table_counts().await.unwrap(), before);
    let one = c
        .get(&format!("/ui/checks?preview=1&workflow_id={}", w.id), None)
        .await;
    one.assert_ok();
    assert!(one.html.contains(&format!("workflow:{}", w.id)));
    // by the external id the console shows, too
    let theirs = c.get("/ui/checks?preview=1&workflow_id=PO-1", None).await;
    theirs.assert_ok();
    assert!(theirs.html.contains(&format!("workflow:{}", w.id)));

    let csrf = preview.csrf();
    let res = c
        .post("/ui/checks", None, &[("csrf", &csrf), ("workflow_id", "")])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.html);
    let run = res.location.unwrap();
    assert!(run.starts_with("/ui/checks/"), "{run}");
    let page = c.get(&run, None).await;
    page.assert_ok();
    assert!(page.html.contains("queued"));
    assert!(
        page.html.contains("http-equiv=\"refresh\""),
        "watches until done"
    );
    assert!(c.get("/ui/checks", None).await.html.contains("queued"));
}

/// The console's "Run check" took any `as_of`: a check dated 2099 escalated every open
/// workflow at once with deadlines 73 years out, one dated 0001 was recorded. It is held to
/// the api's rules (no more than a minute ahead, years 1970–9999); a preview may look ahead.
#[tokio::test]
async fn a_check_run_from_the_console_may_not_be_dated_ahead_or_out_of_range() {
    let c = console(Tokens::none()).await;
    let w = c.workflow("PO-1", "Laptop", Duration::hours(3)).await;
    let csrf = c.get("/ui/checks", None).await.csrf();
    let ahead = (chrono::Utc::now() + Duration::days(3)).to_rfc3339();
    for as_of in [
        ahead.as_str(),
        "2099-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1900-01-01T00:00:00Z",
    ] {
        let res = c
            .post("/ui/checks", None, &[("csrf", &csrf), ("as_of", as_of)])
            .await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{as_of}: {}",
            res.html
        );
        assert!(res.html.contains("as_of"), "{as_of}: {}", res.html);
    }
    assert!(c.db.store.recent_check_runs(10).await.unwrap().is_empty());
    assert_eq!(
        c.db.store.get_workflow(w.id).await.unwrap().version,
        w.version
    );
    // looking ahead without writing stays possible
    c.get(
        &format!("/ui/checks?preview=1&as_of={}", "2099-01-01T00:00:00Z"),
        None,
    )
    .await
    .assert_ok();
    let res = c
        .get("/ui/checks?preview=1&as_of=0001-01-01T00:00:00Z", None)
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.html);
}

#[tokio::test]
async fn bad_input_gets_an_error_page_never_a_panic() {
    let c = console(Tokens::none()).await;
    let csrf = c.get("/ui/checks", None).await.csrf();
    for (path, status) in [
        ("/ui/workflows/not-a-workflow", StatusCode::NOT_FOUND),
        (
            &format!("/ui/workflows/{}", "x".repeat(201)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/ui/workflows/5f1c7e9a-9d7e-4b8e-8f43-6f1d2a3b4c5d",
            StatusCode::NOT_FOUND,
        ),
        ("/ui/workflows?status=bogus", StatusCode::BAD_REQUEST),
        ("/ui/workflows?sla=late", StatusCode::BAD_REQUEST),
        ("/ui/workflows?before=garbage", StatusCode::BAD_REQUEST),
        ("/ui/checks/abc", StatusCode::BAD_REQUEST),
        ("/ui/checks/0", StatusCode::BAD_REQUEST),
        ("/ui/checks/424242", StatusCode::NOT_FOUND),
        (
            "/ui/checks?preview=1&as_of=tomorrow",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/ui/checks?preview=1&workflow_id=nope",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/ui/checks?preview=1&workflow_id=5f1c7e9a-9d7e-4b8e-8f43-6f1d2a3b4c5d",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/ui/nowhere", StatusCode::NOT_FOUND),
    ] {
        let page = c.get(path, None).await;
        assert_eq!(page.status, status, "{path}: {}", page.html);
        assert!(
            page.html.contains("<!DOCTYPE html>"),
            "{path}: an HTML page"
        );
        assert!(page.html.contains("class=\"error\""), "{path}");
    }
    let res = c
        .post("/ui/outbox/-1/retry", None, &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let res = c
        .post(
            "/ui/workflows/nope/hold",
            None,
            &[("csrf", &csrf), ("version", "x")],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
}
