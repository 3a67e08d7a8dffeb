//! The console's reads (`escalator_store::console`), run unchanged against PostgreSQL (a
//! fresh database per test) and SQLite (a fresh file per test), like the conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use escalator_policy::{SlaStatus, Status};
use escalator_store::*;
use escalator_testkit::TestDb;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = escalator_testkit::TestDb::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = escalator_testkit::TestDb::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}

on_both!(
    search_matches_text_status_and_sla_newest_first,
    titles_match_whatever_the_case_of_their_letters,
    an_sla_filter_orders_by_deadline_and_pages_on_it,
    breaching_soon_lists_open_workflows_due_within_the_window,
    audit_activity_and_outbox_rows_are_read_back,
    beat_leases_are_listed,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

/// A workflow with a 24 h SLA started `hours_ago` before t0, created at t0 + `i` seconds.
async fn create(s: &Store, i: i64, title: &str, hours_ago: i64) -> Workflow {
    let new = NewWorkflow {
        external_id: format!("EXT-{i}"),
        title: title.into(),
        kind: "purchase_request".into(),
        stage: "Manager Approval".into(),
        assignee: if i % 2 == 0 { "alice" } else { "Bob" }.into(),
        initiator: "zed".into(),
        escalation_target: Some("carol".into()),
        policy_id: None,
        stage_started_at: Some(t0() - Duration::hours(hours_ago)),
        metadata: serde_json::json!({}),
    };
    s.create_workflow(&new, t0() + Duration::seconds(i))
        .await
        .unwrap()
        .workflow
}

fn ctx(now: DateTime<Utc>) -> TransitionContext {
    TransitionContext {
        actor: "dave".into(),
        reason: AuditReason::Manual,
        expected_version: None,
        comment: None,
        now,
        idempotency_key: None,
    }
}

async fn search_matches_text_status_and_sla_newest_first(db: &TestDb) {
    let s = &db.store;
    let a = create(s, 0, "Laptop for Ana", 1).await; // ok
    let b = create(s, 1, "Invoice 100% paid_in_full", 23).await; // warning
    let c = create(s, 2, "LAPTOP bag", 30).await; // breached
    let d = create(s, 3, "Chair", 1).await;
    s.transition(d.id, &Transition::Hold, &ctx(t0() + Duration::minutes(1)))
        .await
        .unwrap();
    let ids = |ws: Vec<Workflow>| ws.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let q = |text: Option<&str>| WorkflowSearch {
        text: text.map(str::to_owned),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(s.search_workflows(&q(None)).await.unwrap()),
        [d.id, c.id, b.id, a.id]
    );
    assert_eq!(
        ids(s.search_workflows(&q(Some(" laptop "))).await.unwrap()),
        [c.id, a.id]
    );
    // external ids and assignees exactly, titles by substring; % and _ are plain characters
    assert_eq!(
        ids(s.search_workflows(&q(Some("EXT-1"))).await.unwrap()),
        [b.id]
    );
    assert!(
        s.search_workflows(&q(Some("EXT-")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.search_workflows(&q(Some("Bob"))).await.unwrap()),
        [d.id, b.id]
    );
    assert!(s.search_workflows(&q(Some("bo"))).await.unwrap().is_empty());
    assert_eq!(
        ids(s.search_workflows(&q(Some("100%"))).await.unwrap()),
        [b.id]
    );
    assert!(
        s.search_workflows(&q(Some("0%p")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.search_workflows(&q(Some("d_i"))).await.unwrap()),
        [b.id]
    );
    assert!(
        s.search_workflows(&q(Some("dxi")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.search_workflows(&q(Some("  "))).await.unwrap()).len(),
        4
    );

    let by = |status, sla: Option<SlaStatus>| WorkflowSearch {
        status,
        sla_status: sla.map(|x| (x, t0())),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(s
            .search_workflows(&by(Some(Status::OnHold), None))
            .await
            .unwrap()),
        [d.id]
    );
    assert_eq!(
        ids(s
            .search_workflows(&by(None, Some(SlaStatus::Ok)))
            .await
            .unwrap()),
        [a.id]
    );
    assert_eq!(
        ids(s
            .search_workflows(&by(None, Some(SlaStatus::Warning)))
            .await
            .unwrap()),
        [b.id]
    );
    assert_eq!(
        ids(s
            .search_workflows(&by(None, Some(SlaStatus::Breached)))
            .await
            .unwrap()),
        [c.id]
    );

    // text and filters together: every candidate list is filtered and paged
    let combined = |text: &str, status, after| WorkflowSearch {
        text: Some(text.to_owned()),
        status,
        after,
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(s
            .search_workflows(&combined("Bob", Some(Status::OnHold), None))
            .await
            .unwrap()),
        [d.id]
    );
    assert_eq!(
        ids(s
            .search_workflows(&combined("laptop", None, Some((c.created_at, c.id))))
            .await
            .unwrap()),
        [a.id]
    );
    assert!(
        s.search_workflows(&combined(
            "EXT-1",
            Some(Status::Pending),
            Some((a.created_at, a.id))
        ))
        .await
        .unwrap()
        .is_empty()
    );
    let one = WorkflowSearch {
        text: Some("Bob".into()),
        limit: 1,
        ..Default::default()
    };
    assert_eq!(ids(s.search_workflows(&one).await.unwrap()), [d.id]);

    let first = s
        .search_workflows(&WorkflowSearch {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let last = first.last().unwrap();
    let rest = s
        .search_workflows(&WorkflowSearch {
            after: Some((last.created_at, last.id)),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(first), [d.id, c.id]);
    assert_eq!(ids(rest), [b.id, a.id]);
}

/// Title search ignores case in every alphabet. SQLite's `lower()` folds only ASCII, so on the
/// embedded backend "über" did not find "Überweisung" (and "ÉLISE" not "Élise"); regex
/// metacharacters in the text are plain characters.
async fn titles_match_whatever_the_case_of_their_letters(db: &TestDb) {
    let s = &db.store;
    let a = create(s, 0, "Überweisung an Müller", 1).await;
    let b = create(s, 1, "Laptop für Élise (Ω-team) [urgent]", 1).await;
    let c = create(s, 2, "ΣΊΣΥΦΟΣ budget", 1).await;
    let found = |text: &str| {
        let search = WorkflowSearch {
            text: Some(text.to_owned()),
            limit: 10,
            ..Default::default()
        };
        async move {
            s.search_workflows(&search)
                .await
                .unwrap()
                .into_iter()
                .map(|w| w.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("über").await, [a.id]);
    assert_eq!(found("MÜLLER").await, [a.id]);
    assert_eq!(found("élise").await, [b.id]);
    assert_eq!(found("ω-TEAM").await, [b.id]);
    assert_eq!(found("(Ω-team) [URGENT]").await, [b.id]);
    assert_eq!(found("σίσυφ").await, [c.id]);
    assert!(found("l.ptop").await.is_empty());
    assert!(found("e*").await.is_empty());

    // the longest text is searched (on SQLite it is a regex of 500 case-folded letters), a
    // longer one is refused naming the parameter, never an internal error
    let longest = "Ωé".repeat(MAX_SEARCH_CHARS / 2);
    assert!(found(&longest).await.is_empty());
    let search = WorkflowSearch {
        text: Some(format!("{longest}x")),
        limit: 10,
        ..Default::default()
    };
    match s.search_workflows(&search).await {
        Err(StoreError::Invalid { field: "q", .. }) => {}
        other => panic!("expected q refused, got {other:?}"),
    }
}

async fn an_sla_filter_orders_by_deadline_and_pages_on_it(db: &TestDb) {
    let s = &db.store;
    // created in one order, due in another; one on time
    create(s, 0, "late 26h", 50).await;
    create(s, 1, "late 40h", 64).await;
    create(s, 2, "late 1h", 25).await;
    create(s, 3, "on time", 1).await;
    let page = |after, limit| WorkflowSearch {
        sla_status: Some((SlaStatus::Breached, t0())),
        after,
        limit,
        ..Default::default()
    };
    let titles = |ws: &[Workflow]| ws.iter().map(|w| w.title.clone()).collect::<Vec<_>>();
    let first = s.search_workflows(&page(None, 2)).await.unwrap();
    assert_eq!(
        titles(&first),
        ["late 40h", "late 26h"],
        "most overdue first"
    );
    let last = first.last().unwrap();
    let rest = s
        .search_workflows(&page(Some((last.due_at, last.id)), 10))
        .await
        .unwrap();
    assert_eq!(titles(&rest), ["late 1h"]);
    let by_text = WorkflowSearch {
        text: Some("LATE".into()),
        ..page(None, 10)
    };
    assert_eq!(
        titles(&s.search_workflows(&by_text).await.unwrap()),
        ["late 40h", "late 26h", "late 1h"]
    );
}

async fn breaching_soon_lists_open_workflows_due_within_the_window(db: &TestDb) {
    let s = &db.store;
    let late = create(s, 0, "late", 25).await; // breached already
    let soon = create(s, 1, "soon", 23).await; // due t0 + 1h
    let sooner = create(s, 2, "sooner", 24).await; // due t0
    let later = create(s, 3, "later", 20).await; // due t0 + 4h
    let held = create(s, 4, "held", 23).await;
    s.transition(held.id, &Transition::Hold, &ctx(t0()))
        .await
        .unwrap();
    let half = create(s, 5, "half", 23).await;
    let _ = (late, later);
    let found = s
        .breaching_soon(t0() - Duration::minutes(1), t0() + Duration::hours(1), 10)
        .await
        .unwrap();
    // soonest first; "soon" and "half" are due at the same instant, ordered by id
    let mut tied = [soon.id, half.id];
    tied.sort();
    let ids: Vec<_> = found.iter().map(|w| w.id).collect();
    assert_eq!(ids, [sooner.id, tied[0], tied[1]]);
    let capped = s
        .breaching_soon(t0() - Duration::minutes(1), t0() + Duration::hours(1), 1)
        .await
        .unwrap();
    assert_eq!(capped.len(), 1);
}

// `..BatchEffects::default()` keeps this compiling while the store grows fields.
#[allow(clippy::needless_update)]
async fn audit_activity_and_outbox_rows_are_read_back(db: &TestDb) {
    let s = &db.store;
    let w = create(s, 0, "Laptop", 23).await;
    create(s, 1, "Chair", 23).await;
    let now = t0() + Duration::minutes(5);
    let effects = BatchEffects {
        check_run_id: None,
        batch_index: Some(0),
        changes: vec![WorkflowChange {
            id: w.id,
            expected_version: w.version,
            status: w.status,
            assignee: w.assignee.clone(),
            level: w.escalation_level,
            warn_at: w.warn_at,
            due_at: w.due_at,
            paused_seconds: w.paused_seconds,
            reminded_at: Some(now),
            escalated_at: None,
            exhausted_at: None,
            next_check_at: Some(w.due_at),
        }],
        audits: vec![NewAudit {
            workflow_id: w.id,
            action: "remind",
            reason: "sla",
            actor: "escalator".into(),
            from_assignee: None,
            to_assignee: Some(w.assignee.clone()),
            level: 0,
            cycle: w.cycle,
            policy_version: w.policy_version,
            elapsed_seconds: Some(60),
            check_run_id: None,
            details: serde_json::json!({}),
        }],
        notifications: vec![],
        outbox: vec![
            NewOutbox {
                channel: "email",
                recipient: "alice@example.com".into(),
                workflow_id: Some(w.id),
                payload: serde_json::json!({ "subject": "Reminder" }),
                idempotency_key: format!("remind:{}:email:to", w.id),
            },
            NewOutbox {
                channel: "email",
                recipient: "carol@example.com".into(),
                workflow_id: Some(w.id),
                payload: serde_json::json!({ "subject": "Reminder" }),
                idempotency_key: format!("remind:{}:email:cc", w.id),
            },
        ],
        counts: BatchCounts::default(),
        ..BatchEffects::default()
    };
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&effects, now).await.unwrap();
    tx.commit().await.unwrap();

    let hour_ago = t0() - Duration::hours(1);
    let all = s
        .audit_actions_since(hour_ago, &["create", "remind", "escalate"])
        .await
        .unwrap();
    assert_eq!(all, [("create".to_owned(), 2), ("remind".to_owned(), 1)]);
    let sla = s
        .audit_actions_since(hour_ago, &["remind", "escalate"])
        .await
        .unwrap();
    assert_eq!(sla, [("remind".to_owned(), 1)]);
    let recent = s
        .audit_actions_since(t0() + Duration::minutes(1), &["create", "remind"])
        .await
        .unwrap();
    assert_eq!(recent, [("remind".to_owned(), 1)]);
    assert!(
        s.audit_actions_since(hour_ago, &[])
            .await
            .unwrap()
            .is_empty()
    );

    let rows = s.workflow_outbox(w.id).await.unwrap();
    let to: Vec<_> = rows
        .iter()
        .map(|o| (o.recipient.as_str(), o.status.as_str()))
        .collect();
    assert_eq!(
        to,
        [
            ("alice@example.com", "pending"),
            ("carol@example.com", "pending")
        ]
    );
    assert!(rows.iter().all(|o| o.workflow_id == Some(w.id)));
    let other = create(s, 2, "Desk", 1).await;
    assert!(s.workflow_outbox(other.id).await.unwrap().is_empty());
}

async fn beat_leases_are_listed(db: &TestDb) {
    let s = &db.store;
    assert!(s.beat_leases().await.unwrap().is_empty());
    let lease = s
        .acquire_lease("beat", "host-a", std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let listed = s.beat_leases().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].holder.as_str(),
            listed[0].epoch
        ),
        ("beat", "host-a", lease.epoch)
    );
    assert!(listed[0].expires_at > Utc::now());
}
