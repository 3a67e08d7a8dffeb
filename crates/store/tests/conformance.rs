//! The storage conformance suite: every case runs unchanged against PostgreSQL (a fresh
//! database per test) and SQLite (a fresh file per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use escalator_policy::{Policy, SlaStatus, Status};
use escalator_store::seed::{SeedGenerator, SeedPlan};
use escalator_store::*;
use escalator_testkit::TestDb;
use uuid::Uuid;

/// Generates `<name>_on_postgres` and `<name>_on_sqlite` tests from one async fn(&Store).
macro_rules! conformance {
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

conformance!(
    a_transition_sent_again_under_its_key_is_applied_once,
    check_runs_that_did_nothing_are_pruned_and_the_others_kept,
    a_transition_that_waited_on_a_batch_is_dated_after_it,
    migrations_install_the_default_policy,
    create_is_idempotent_on_external_id,
    create_rejects_bad_input_naming_the_field,
    new_workflows_get_the_policy_deadlines,
    transitions_write_audit_rows_and_reschedule,
    a_workflows_trail_is_read_a_page_at_a_time,
    transitions_refuse_stale_versions_and_closed_workflows,
    advance_starts_a_new_cycle,
    audit_logs_refuse_update_and_delete,
    policies_are_versioned_and_immutable,
    a_policy_stored_before_a_write_rule_is_read_as_it_was_accepted,
    users_and_calendars_round_trip,
    user_writes_never_make_the_manager_chain_circular,
    a_manager_given_moves_exhausted_workflows_on_at_once,
    a_resume_whose_new_deadline_lies_ahead_is_checked_at_it,
    a_target_back_moves_exhausted_workflows_on_at_once,
    a_manager_given_beside_a_round_still_moves_its_exhaustion_on,
    a_round_reads_its_rules_while_the_writers_it_holds_up_fill_the_pool,
    claim_returns_only_due_open_workflows_oldest_first,
    a_deadline_that_is_never_is_never_due,
    a_policy_and_its_calendar_are_checked_for_reach_inside_their_writes,
    peeking_sees_what_a_claim_holds_and_takes_nothing_from_the_next_claim,
    effects_apply_set_wise_and_only_once,
    fresh_inserts_refuse_an_existing_key_and_idempotent_ones_skip_it,
    a_delivery_without_a_workflow_is_kept_once_per_key,
    stale_claims_write_nothing,
    concurrent_batches_never_share_a_workflow,
    check_runs_have_one_per_slot_and_count_batches,
    runs_that_stopped_moving_are_failed_and_reopen_when_they_move,
    listing_filters_and_paginates,
    bulk_load_yields_the_workload_distribution,
    inbox_lists_and_marks_read,
    verify_passes_a_healthy_database_and_names_tampering,
    verify_names_what_the_last_complete_check_left_undone,
    workflows_and_check_runs_are_never_deleted,
    due_ranges_cut_the_due_workflows_into_disjoint_slices,
    due_ranges_cut_workflows_that_share_one_instant,
    outbox_backlog_counts_undelivered_rows,
    sent_deliveries_are_pruned_after_their_retention_and_others_kept,
    deliveries_of_workflows_that_moved_on_are_never_sent,
    still_overdue_notices_waiting_together_go_out_once_per_recipient,
    claimed_deliveries_handed_back_are_due_again,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

fn new_workflow(external_id: &str) -> NewWorkflow {
    NewWorkflow {
        external_id: external_id.into(),
        title: "Laptop purchase".into(),
        kind: "purchase_request".into(),
        stage: "Manager Approval".into(),
        assignee: "alice".into(),
        initiator: "bob".into(),
        escalation_target: Some("carol".into()),
        policy_id: None,
        stage_started_at: Some(t0()),
        metadata: serde_json::json!({ "amount": 1200 }),
    }
}

fn ctx(now: DateTime<Utc>) -> TransitionContext {
    TransitionContext {
        actor: "dave".into(),
        reason: AuditReason::Api,
        expected_version: None,
        comment: None,
        now,
        idempotency_key: None,
    }
}

async fn create(store: &Store, external_id: &str) -> Workflow {
    store
        .create_workflow(&new_workflow(external_id), t0())
        .await
        .unwrap()
        .workflow
}

/// The effects of reminding `w` at `now`, as the engine will build them.
fn remind(w: &Workflow, now: DateTime<Utc>, run: Option<i64>) -> BatchEffects {
    BatchEffects {
        check_run_id: run,
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
            escalated_at: w.escalated_at,
            exhausted_at: w.exhausted_at,
            next_check_at: Some(w.due_at),
        }],
        audits: vec![NewAudit {
            workflow_id: w.id,
            action: "remind",
            reason: "sla",
            actor: "escalator".into(),
            from_assignee: None,
            to_assignee: Some(w.assignee.clone()),
            level: w.escalation_level,
            cycle: w.cycle,
            policy_version: w.policy_version,
            elapsed_seconds: Some((now - w.stage_started_at).num_seconds()),
            check_run_id: run,
            details: serde_json::json!({}),
        }],
        notifications: vec![NewNotification {
            recipient: w.assignee.clone(),
            workflow_id: w.id,
            kind: "reminder",
            role: "to",
            subject: format!("Reminder: {}", w.title),
            body: "due soon".into(),
            dedup_key: format!(
                "remind:{}:{}:{}:{}",
                w.id, w.cycle, w.escalation_level, w.assignee
            ),
        }],
        outbox: vec![NewOutbox {
            channel: "email",
            recipient: format!("{}@example.com", w.assignee),
            workflow_id: Some(w.id),
            payload: serde_json::json!({ "subject": "Reminder" }),
            idempotency_key: format!("remind:{}:{}:{}:email", w.id, w.cycle, w.escalation_level),
        }],
        counts: BatchCounts {
            checked: 1,
            ..BatchCounts::default()
        },
    }
}

async fn migrations_install_the_default_policy(db: &TestDb) {
    let p = db.store.latest_policy("default").await.unwrap();
    assert_eq!(p.version, 1);
    assert_eq!(p.policy, Policy::default_policy());
    // running the migrations again is a no-op
    db.store.migrate().await.unwrap();
    assert_eq!(db.store.list_policies().await.unwrap().len(), 1);
}

/// A transition's instant is taken before it waits for the workflow's row, which a batch may
/// hold (escalating it): applied after the batch, it was dated before it, and the trail read
/// "completed, then escalated".
async fn a_transition_that_waited_on_a_batch_is_dated_after_it(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "TW-1").await;
    let batch_at = t0() + Duration::hours(22);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&w, batch_at, None), batch_at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // stamped a second before the batch committed, applied after it
    let done = s
        .transition(
            w.id,
            &Transition::Complete,
            &ctx(batch_at - Duration::seconds(1)),
        )
        .await
        .unwrap();
    assert_eq!(done.updated_at, batch_at);
    let trail = s.workflow_audit(w.id).await.unwrap();
    let actions: Vec<(&str, DateTime<Utc>)> = trail
        .iter()
        .map(|a| (a.action.as_str(), a.created_at))
        .collect();
    assert_eq!(
        actions,
        [
            ("create", t0()),
            ("remind", batch_at),
            ("complete", batch_at)
        ]
    );
}

/// Deadline checks made ~200,000 runs a day with a large fleet, most finding nothing left to
/// do, all kept for ever. Those that did nothing go after a week; a run with effects (the audit
/// trail names it), a slot's (I3), a failed or unfinished one stays.
async fn check_runs_that_did_nothing_are_pruned_and_the_others_kept(db: &TestDb) {
    use escalator_testkit::started_run;
    let s = &db.store;
    let old = t0();
    let empty = started_run(s, "deadline", 0, old).await;
    let recent = started_run(s, "deadline", 0, old + Duration::days(8)).await;
    let slot = s
        .create_check_run(&NewCheckRun {
            slot: Some(old),
            requested_by: "beat",
            scope: "all".into(),
            as_of: old,
            dry_run: false,
            coalesced: 1,
            now: old,
        })
        .await
        .unwrap()
        .unwrap();
    s.start_check_run(slot.id, 0, old).await.unwrap();
    let failed = started_run(s, "deadline", 1, old).await;
    s.fail_check_run(failed, "its batch died", old)
        .await
        .unwrap();
    let running = started_run(s, "deadline", 1, old).await;
    // one that reminded, and one named by an audit row although its counters are zero (an
    // exhaustion before runs counted them)
    let w = create(s, "PR-1").await;
    let reminded = started_run(s, "deadline", 1, old).await;
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&w, old, Some(reminded)), old)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let audited = started_run(s, "deadline", 1, old).await;
    let other = create(s, "PR-2").await;
    let mut named = remind(&other, old, Some(audited));
    named.changes.clear();
    named.notifications.clear();
    named.outbox.clear();
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&named, old).await.unwrap();
    tx.commit().await.unwrap();
    for id in [reminded, audited] {
        assert_eq!(s.get_check_run(id).await.unwrap().status, "succeeded");
    }

    let week_later = old + Duration::days(7) + Duration::minutes(1);
    assert_eq!(s.prune_empty_check_runs(week_later, 100).await.unwrap(), 1);
    assert!(matches!(
        s.get_check_run(empty).await,
        Err(StoreError::NotFound { .. })
    ));
    for id in [recent, slot.id, failed, running, reminded, audited] {
        s.get_check_run(id).await.unwrap();
    }
    assert_eq!(s.prune_empty_check_runs(week_later, 100).await.unwrap(), 0);
}

async fn create_is_idempotent_on_external_id(db: &TestDb) {
    let s = &db.store;
    let first = s
        .create_workflow(&new_workflow("PO-1"), t0())
        .await
        .unwrap();
    assert!(first.created);
    let again = s
        .create_workflow(&new_workflow("PO-1"), t0() + Duration::minutes(5))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.workflow, first.workflow);
    assert_eq!(
        s.get_workflow(first.workflow.id).await.unwrap(),
        first.workflow
    );

    let mut other = new_workflow("PO-1");
    other.title = "Something else".into();
    match s.create_workflow(&other, t0()).await {
        Err(StoreError::ExternalIdConflict { field, .. }) => assert_eq!(field, "title"),
        r => panic!("expected a conflict, got {r:?}"),
    }
    let audit = s.workflow_audit(first.workflow.id).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "create");
    assert_eq!(audit[0].policy_version, 1);
    assert_eq!(s.table_counts().await.unwrap().workflows, 1);

    // after a reassignment the same create is still the same create (its assignee is compared
    // with the one it was created with), and another assignee is still a conflict
    s.transition(
        first.workflow.id,
        &Transition::Reassign { to: "erin".into() },
        &ctx(t0() + Duration::minutes(1)),
    )
    .await
    .unwrap();
    let again = s
        .create_workflow(&new_workflow("PO-1"), t0())
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.workflow.assignee, "erin");
    let mut other = new_workflow("PO-1");
    other.assignee = "erin".into();
    match s.create_workflow(&other, t0()).await {
        Err(StoreError::ExternalIdConflict { field, .. }) => assert_eq!(field, "assignee"),
        r => panic!("expected a conflict on the assignee, got {r:?}"),
    }

    // after an advance too (a new cycle): the stage, assignee and start it was created with are
    // read from its create row, and a different one is a conflict (any was answered 200)
    s.transition(
        first.workflow.id,
        &Transition::Advance {
            stage: "Finance".into(),
            assignee: Some("frank".into()),
        },
        &ctx(t0() + Duration::minutes(2)),
    )
    .await
    .unwrap();
    let again = s
        .create_workflow(&new_workflow("PO-1"), t0())
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.workflow.stage, "Finance");
    for field in ["stage", "assignee", "stage_started_at"] {
        let mut other = new_workflow("PO-1");
        match field {
            "stage" => other.stage = "Finance".into(),
            "assignee" => other.assignee = "frank".into(),
            _ => other.stage_started_at = Some(t0() - Duration::hours(1)),
        }
        match s.create_workflow(&other, t0()).await {
            Err(StoreError::ExternalIdConflict { field: f, .. }) => assert_eq!(f, field),
            r => panic!("expected a conflict on {field} after an advance, got {r:?}"),
        }
    }
}

async fn create_rejects_bad_input_naming_the_field(db: &TestDb) {
    let mut w = new_workflow("PO-2");
    w.assignee = " ".into();
    match db.store.create_workflow(&w, t0()).await {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "assignee"),
        r => panic!("expected invalid assignee, got {r:?}"),
    }
    let mut w = new_workflow("PO-2");
    w.policy_id = Some("nope".into());
    assert!(matches!(
        db.store.create_workflow(&w, t0()).await,
        Err(StoreError::NotFound {
            entity: "policy",
            ..
        })
    ));
    // a stage starting in the future would keep its SLA clock stopped until then
    let mut w = new_workflow("PO-2");
    w.stage_started_at = Some(t0() + Duration::hours(2));
    match db.store.create_workflow(&w, t0()).await {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "stage_started_at"),
        r => panic!("expected invalid stage_started_at, got {r:?}"),
    }
    assert_eq!(db.store.table_counts().await.unwrap().workflows, 0);
    // a few minutes of clock skew are not a mistake
    w.stage_started_at = Some(t0() + Duration::minutes(4));
    let skewed = db.store.create_workflow(&w, t0()).await.unwrap().workflow;
    assert_eq!(skewed.stage_started_at, t0() + Duration::minutes(4));
}

async fn new_workflows_get_the_policy_deadlines(db: &TestDb) {
    let w = create(&db.store, "PO-3").await;
    assert_eq!(w.status, Status::Pending);
    assert_eq!(w.warn_at, t0() + Duration::hours(22));
    assert_eq!(w.due_at, t0() + Duration::hours(24));
    assert_eq!(w.next_check_at, Some(w.warn_at));
    assert_eq!((w.escalation_level, w.cycle, w.version), (0, 1, 1));
    assert_eq!(w.metadata, serde_json::json!({ "amount": 1200 }));
}

async fn transitions_write_audit_rows_and_reschedule(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "PO-4").await;
    let held = s
        .transition(w.id, &Transition::Hold, &ctx(t0() + Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!(held.status, Status::OnHold);
    assert_eq!(held.next_check_at, None);
    let resumed = s
        .transition(w.id, &Transition::Resume, &ctx(t0() + Duration::hours(3)))
        .await
        .unwrap();
    // two hours on hold do not count
    assert_eq!(resumed.status, Status::Pending);
    assert_eq!(resumed.paused_seconds, 7_200);
    assert_eq!(resumed.due_at, t0() + Duration::hours(26));
    assert_eq!(resumed.next_check_at, Some(t0() + Duration::hours(24)));
    let reassigned = s
        .transition(
            w.id,
            &Transition::Reassign { to: "erin".into() },
            &ctx(t0() + Duration::hours(4)),
        )
        .await
        .unwrap();
    assert_eq!(reassigned.assignee, "erin");
    assert_eq!(reassigned.due_at, resumed.due_at);
    let done = s
        .transition(w.id, &Transition::Complete, &ctx(t0() + Duration::hours(5)))
        .await
        .unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.next_check_at, None);
    assert_eq!(done.version, 5);
    assert_eq!(s.get_workflow(w.id).await.unwrap(), done);

    let audit = s.workflow_audit(w.id).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        ["create", "hold", "resume", "reassign", "complete"]
    );
    assert_eq!(audit[3].from_assignee.as_deref(), Some("alice"));
    assert_eq!(audit[3].to_assignee.as_deref(), Some("erin"));
    assert_eq!(audit[2].details["paused_seconds"], 7_200);
    assert!(
        audit[1..]
            .iter()
            .all(|a| a.actor == "dave" && a.reason == "api")
    );

    // a held workflow advances to its next stage without a resume first (which let a check
    // remind or escalate the stage being left): pending, unpaused, on the new stage's clock
    let w = create(s, "PO-4b").await;
    s.transition(w.id, &Transition::Hold, &ctx(t0() + Duration::hours(1)))
        .await
        .unwrap();
    let at = t0() + Duration::hours(2);
    let advanced = s
        .transition(
            w.id,
            &Transition::Advance {
                stage: "Finance".into(),
                assignee: Some("fran".into()),
            },
            &ctx(at),
        )
        .await
        .unwrap();
    assert_eq!(advanced.status, Status::Pending);
    assert_eq!(advanced.paused_at, None);
    assert_eq!((advanced.stage.as_str(), advanced.cycle), ("Finance", 2));
    assert_eq!(advanced.stage_started_at, at);
    assert_eq!(advanced.due_at, at + Duration::hours(24));
    assert_eq!(advanced.next_check_at, Some(at + Duration::hours(22)));
}

/// A client retrying a transition whose answer it lost (a timeout, a dropped connection) sends
/// it again with the same `Idempotency-Key`: answered with the workflow as it is, applied
/// once. A second `advance` started yet another cycle and restarted the clock; a second
/// `hold` was a 409.
async fn a_transition_sent_again_under_its_key_is_applied_once(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "PO-IK").await;
    let keyed = |key: &str, at, version| TransitionContext {
        idempotency_key: Some(key.into()),
        expected_version: version,
        ..ctx(at)
    };
    let to_finance = Transition::Advance {
        stage: "Finance".into(),
        assignee: None,
    };
    let t1 = t0() + Duration::hours(1);
    let first = s
        .transition(w.id, &to_finance, &keyed("k-1", t1, Some(1)))
        .await
        .unwrap();
    assert_eq!((first.cycle, first.version), (2, 2));
    // again, an hour later, with the version it was sent with: the same workflow, untouched
    let again = s
        .transition(
            w.id,
            &to_finance,
            &keyed("k-1", t1 + Duration::hours(1), Some(1)),
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    let held = s
        .transition(w.id, &Transition::Hold, &keyed("k-2", t1, None))
        .await
        .unwrap();
    let held_again = s
        .transition(w.id, &Transition::Hold, &keyed("k-2", t1, None))
        .await
        .unwrap();
    assert_eq!(held_again, held);
    // a key names one request: on another one it is refused, naming the header
    for (transition, key) in [
        (Transition::Resume, "k-2"),
        (
            Transition::Advance {
                stage: "Legal".into(),
                assignee: None,
            },
            "k-1",
        ),
    ] {
        match s.transition(w.id, &transition, &keyed(key, t1, None)).await {
            Err(StoreError::Invalid { field, message }) => {
                assert_eq!(field, "Idempotency-Key");
                assert!(message.contains("another request"), "{message}");
            }
            other => panic!("{transition:?} under {key}: {other:?}"),
        }
    }
    // keys are per workflow, and a new key is a new request
    let other = create(s, "PO-IK2").await;
    let held_other = s
        .transition(other.id, &Transition::Hold, &keyed("k-2", t1, None))
        .await
        .unwrap();
    assert_eq!(held_other.status, Status::OnHold);
    let resumed = s
        .transition(w.id, &Transition::Resume, &keyed("k-3", t1, None))
        .await
        .unwrap();
    assert_eq!(resumed.status, Status::Pending);
    let actions: Vec<String> = s
        .workflow_audit(w.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["create", "advance", "hold", "resume"]);
    let trail = s.workflow_audit(w.id).await.unwrap();
    assert_eq!(trail[1].details["idempotency_key"], "k-1");
}

async fn transitions_refuse_stale_versions_and_closed_workflows(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "PO-5").await;
    let mut stale = ctx(t0());
    stale.expected_version = Some(7);
    match s.transition(w.id, &Transition::Cancel, &stale).await {
        Err(StoreError::VersionConflict {
            expected: 7,
            actual: 1,
            ..
        }) => {}
        r => panic!("expected a version conflict, got {r:?}"),
    }
    let mut fresh = ctx(t0());
    fresh.expected_version = Some(1);
    s.transition(w.id, &Transition::Cancel, &fresh)
        .await
        .unwrap();
    match s.transition(w.id, &Transition::Complete, &ctx(t0())).await {
        Err(StoreError::InvalidTransition {
            action: "complete",
            status,
        }) => {
            assert_eq!(status, "cancelled")
        }
        r => panic!("expected an invalid transition, got {r:?}"),
    }
    assert!(matches!(
        s.transition(w.id, &Transition::Resume, &ctx(t0())).await,
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        s.transition(Uuid::new_v4(), &Transition::Hold, &ctx(t0()))
            .await,
        Err(StoreError::NotFound {
            entity: "workflow",
            ..
        })
    ));
    // refused transitions leave no trace
    assert_eq!(s.workflow_audit(w.id).await.unwrap().len(), 2);
}

async fn advance_starts_a_new_cycle(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "PO-6").await;
    let later = t0() + Duration::hours(30);
    let next = s
        .transition(
            w.id,
            &Transition::Advance {
                stage: "Budget sign-off".into(),
                assignee: Some("frank".into()),
            },
            &ctx(later),
        )
        .await
        .unwrap();
    assert_eq!((next.cycle, next.escalation_level), (2, 0));
    assert_eq!(next.stage, "Budget sign-off");
    assert_eq!(next.assignee, "frank");
    assert_eq!(next.stage_started_at, later);
    assert_eq!(next.due_at, later + Duration::hours(24));
    assert_eq!(next.next_check_at, Some(later + Duration::hours(22)));
    let audit = s.workflow_audit(w.id).await.unwrap();
    assert_eq!(audit.last().unwrap().action, "advance");
    assert_eq!(audit.last().unwrap().cycle, 2);
    assert_eq!(
        audit.last().unwrap().details["from_stage"],
        "Manager Approval"
    );
}

async fn audit_logs_refuse_update_and_delete(db: &TestDb) {
    create(&db.store, "PO-7").await;
    let statements = [
        "UPDATE audit_logs SET actor = 'mallory'",
        "DELETE FROM audit_logs",
        "UPDATE escalation_policies SET name = 'changed'",
        "DELETE FROM escalation_policies",
    ];
    for sql in statements {
        let err = match &db.store {
            Store::Postgres(s) => sqlx::query(sql).execute(s.pool()).await.err(),
            Store::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.err(),
        };
        let err = err.unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    if let Store::Postgres(s) = &db.store {
        let err = sqlx::query("TRUNCATE audit_logs CASCADE")
            .execute(s.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(db.store.table_counts().await.unwrap().audit_logs, 1);
    assert_eq!(audit_log_from(&db.store, None, 1).await.0[0].actor, "bob");
}

/// A workflow's trail was read whole by the api and the console: a repeating policy adds a row
/// a minute to a workflow nobody acts on (43,000 a month), and its page answered tens of MB.
async fn a_workflows_trail_is_read_a_page_at_a_time(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "PAGED").await;
    for i in 0..3 {
        let at = t0() + Duration::minutes(2 * i);
        s.transition(w.id, &Transition::Hold, &ctx(at))
            .await
            .unwrap();
        s.transition(w.id, &Transition::Resume, &ctx(at + Duration::minutes(1)))
            .await
            .unwrap();
    }
    let whole = s.workflow_audit(w.id).await.unwrap();
    let actions = |rows: &[AuditEntry]| rows.iter().map(|a| a.action.clone()).collect::<Vec<_>>();
    assert_eq!(
        actions(&whole),
        [
            "create", "hold", "resume", "hold", "resume", "hold", "resume"
        ]
    );
    let first = s
        .workflow_audit_page(w.id, TrailPage::After(0), 3)
        .await
        .unwrap();
    assert_eq!(first, whole[..3]);
    let next = s
        .workflow_audit_page(w.id, TrailPage::After(first[2].id), 3)
        .await
        .unwrap();
    assert_eq!(next, whole[3..6]);
    let last = s
        .workflow_audit_page(w.id, TrailPage::After(next[2].id), 3)
        .await
        .unwrap();
    assert_eq!(last, whole[6..]);
    let newest = s
        .workflow_audit_page(w.id, TrailPage::Newest, 2)
        .await
        .unwrap();
    assert_eq!(newest, whole[5..], "the newest, oldest first");
}

/// A run whose jobs were lost (a Redis failover) or died without recording it read `running`
/// (or `queued`) for ever. One that has not moved for the patience given is failed; one that
/// moved since, or is young, is kept; a failed one that moves again is reopened.
async fn runs_that_stopped_moving_are_failed_and_reopen_when_they_move(db: &TestDb) {
    let s = &db.store;
    let now = t0() + Duration::hours(5);
    let run = |hours_ago: i64| async move {
        escalator_testkit::queued_run(s, "cli", "all", now - Duration::hours(hours_ago)).await
    };
    let lost = run(2).await;
    let stalled = run(3).await;
    s.start_check_run(stalled.id, 2, now - Duration::hours(3))
        .await
        .unwrap();
    let moving = run(3).await;
    s.start_check_run(moving.id, 2, now - Duration::minutes(10))
        .await
        .unwrap();
    let young = run(0).await;
    let failed = s
        .fail_stale_check_runs(now, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(failed, [lost.id, stalled.id]);
    for (id, status) in [
        (lost.id, "failed"),
        (stalled.id, "failed"),
        (moving.id, "running"),
        (young.id, "queued"),
    ] {
        let r = s.get_check_run(id).await.unwrap();
        assert_eq!(r.status, status, "{r:?}");
    }
    let r = s.get_check_run(lost.id).await.unwrap();
    assert!(r.error.unwrap().contains("no progress for 60 minutes"));
    // the lost run's planner runs after all: reopened, it is not failed again at once
    assert!(s.reopen_check_run(lost.id, now).await.unwrap());
    assert!(
        !s.reopen_check_run(moving.id, now).await.unwrap(),
        "not failed"
    );
    assert_eq!(s.get_check_run(lost.id).await.unwrap().status, "queued");
    assert_eq!(s.get_check_run(stalled.id).await.unwrap().status, "failed");
    assert!(
        s.fail_stale_check_runs(now, Duration::hours(1))
            .await
            .unwrap()
            .is_empty()
    );
    // failed while its planner was still pushing its batches (waiting for room in a full
    // queue): the planner's start of the run wins, or its batches would complete a run that
    // reads failed for good
    let slow = run(2).await;
    assert_eq!(
        s.fail_stale_check_runs(now, Duration::hours(1))
            .await
            .unwrap(),
        [slow.id]
    );
    let started = s.start_check_run(slow.id, 1, now).await.unwrap();
    assert_eq!(
        (started.status.as_str(), started.error.as_deref()),
        ("running", None)
    );
}

/// A version written before a rule for writes existed (here: renotifying every 30 s, and a
/// warning of half a second, both refused since) is read as it was accepted. Reading it again
/// through `Policy::new` made the policy, the list of all policies and every workflow pinned
/// to it answer 500, and set those workflows aside at every check.
async fn a_policy_stored_before_a_write_rule_is_read_as_it_was_accepted(db: &TestDb) {
    let s = &db.store;
    let mut spec = Policy::default_policy().spec().clone();
    spec.sla_seconds = 50;
    spec.warning = escalator_policy::Warning::Percent { percent: 1 };
    spec.after_last = escalator_policy::AfterLast::Repeat { every_seconds: 30 };
    let field = Policy::new(spec.clone()).unwrap_err().field;
    assert_eq!(field, "warning.percent");
    let old = Policy::stored(spec).unwrap();
    s.create_policy_version("old", "Old", &old).await.unwrap();

    assert_eq!(s.get_policy("old", 1).await.unwrap().policy, old);
    assert_eq!(s.latest_policy("old").await.unwrap().policy, old);
    let listed = s.list_policies().await.unwrap();
    assert!(listed.iter().any(|p| p.id == "old"), "{listed:?}");
    // it renotifies no faster than the rule allows now
    assert_eq!(old.repeat_every_seconds(), Some(60));
    let mut new = new_workflow("PO-OLD");
    new.policy_id = Some("old".into());
    let w = s.create_workflow(&new, t0()).await.unwrap().workflow;
    assert_eq!(w.due_at, t0() + Duration::seconds(50));
    let held = s
        .transition(w.id, &Transition::Hold, &ctx(t0() + Duration::seconds(10)))
        .await
        .unwrap();
    assert_eq!(held.status, Status::OnHold);
}

async fn policies_are_versioned_and_immutable(db: &TestDb) {
    let s = &db.store;
    let mut spec = Policy::default_policy().spec().clone();
    spec.sla_seconds = 3_600;
    spec.warning = escalator_policy::Warning::Percent { percent: 50 };
    let v2 = s
        .create_policy_version("default", "Faster", &Policy::new(spec).unwrap())
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(
        s.get_policy("default", 1).await.unwrap().policy,
        Policy::default_policy()
    );
    assert_eq!(s.latest_policy("default").await.unwrap(), v2);
    // a new workflow pins the newest version
    let w = create(s, "PO-8").await;
    assert_eq!(w.policy_version, 2);
    assert_eq!(w.due_at, t0() + Duration::hours(1));
    assert_eq!(w.warn_at, t0() + Duration::minutes(30));
    let other = s
        .create_policy_version("vip", "VIP", &Policy::default_policy())
        .await
        .unwrap();
    assert_eq!(other.version, 1);
    let ids: Vec<(String, i32)> = s
        .list_policies()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.version))
        .collect();
    assert_eq!(ids, [("default".to_owned(), 2), ("vip".to_owned(), 1)]);
    // creators racing for the next version all get one, each its own (the loser of a race on
    // the primary key tries again instead of failing)
    let racing = (0..8).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.create_policy_version("race", &format!("R{i}"), &Policy::default_policy())
                .await
        })
    });
    let mut versions = Vec::new();
    for r in futures_util::future::join_all(racing).await {
        versions.push(r.unwrap().unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());

    // posted again unchanged (a retry, a sync job), the latest version answers; identical posts
    // racing make one version between them
    let (same, created) = s
        .create_policy_version_unless_same("default", "Faster", &v2.policy)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(same, v2);
    let racing = (0..6).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            s.create_policy_version_unless_same("twin", "Twin", &Policy::default_policy())
                .await
        })
    });
    let mut made = Vec::new();
    for r in futures_util::future::join_all(racing).await {
        let (record, created) = r.unwrap().unwrap();
        assert_eq!(record.version, 1);
        made.push(created);
    }
    assert_eq!(made.iter().filter(|c| **c).count(), 1, "{made:?}");
    // a new name is a new version
    let (renamed, created) = s
        .create_policy_version_unless_same("twin", "Twin, renamed", &Policy::default_policy())
        .await
        .unwrap();
    assert!(created);
    assert_eq!(renamed.version, 2);
}

fn reporting_to(id: &str, manager: Option<&str>) -> User {
    User {
        id: id.into(),
        display_name: id.to_uppercase(),
        email: None,
        phone: None,
        slack: None,
        manager_id: manager.map(Into::into),
        active: true,
        channels: None,
    }
}

/// A user write that gives an assignee a manager makes their workflows exhausted for want of
/// a target due at once: unscheduled ones (`stop`), and, under a repeating policy, those below
/// the chain's last level whose next renotification lies later (they waited for it, up to a
/// day). One at the end of its chain keeps its renotification time.
async fn a_manager_given_moves_exhausted_workflows_on_at_once(db: &TestDb) {
    let s = &db.store;
    let nagging = Policy::new(escalator_policy::PolicySpec {
        after_last: escalator_policy::AfterLast::Repeat {
            every_seconds: 86_400,
        },
        ..Policy::default_policy().spec().clone()
    })
    .unwrap();
    s.create_policy_version("nagging", "Nagging", &nagging)
        .await
        .unwrap();
    let on_nagging = |external_id: &str| NewWorkflow {
        policy_id: Some("nagging".into()),
        ..new_workflow(external_id)
    };
    // whole seconds, as stored; after the write below
    let later = Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap() + Duration::days(3);
    let mut exhausted = Vec::new();
    for (external_id, level, next) in [
        ("NO-TARGET", 0, Some(later)),
        ("STOPPED", 0, None),
        ("CHAIN-END", 1, Some(later)),
    ] {
        let w = s
            .create_workflow(&on_nagging(external_id), t0())
            .await
            .unwrap()
            .workflow;
        exhaust_at(s, &w, level, next).await;
        exhausted.push(w.id);
    }
    let before = Utc::now();
    s.upsert_users(&[
        reporting_to("boss", None),
        reporting_to("alice", Some("boss")),
    ])
    .await
    .unwrap();
    let next = async |id| s.get_workflow(id).await.unwrap().next_check_at;
    for id in &exhausted[..2] {
        let next = next(*id).await.unwrap();
        assert!(before <= next && next <= Utc::now(), "{next}");
    }
    assert_eq!(next(exhausted[2]).await, Some(later));

    // the same users written again, unchanged (an HR sync every few minutes), re-arm nothing:
    // any write of a user with an active manager did, and the repeating policy renotified at
    // every one instead of daily
    let w = s.get_workflow(exhausted[0]).await.unwrap();
    exhaust_at(s, &w, 0, Some(later)).await;
    for _ in 0..2 {
        s.upsert_users(&[
            reporting_to("boss", None),
            reporting_to("alice", Some("boss")),
        ])
        .await
        .unwrap();
    }
    assert_eq!(next(exhausted[0]).await, Some(later));
    // a manager who had left and comes back does
    s.upsert_users(&[User {
        active: false,
        ..reporting_to("boss", None)
    }])
    .await
    .unwrap();
    assert_eq!(next(exhausted[0]).await, Some(later));
    let before = Utc::now();
    s.upsert_users(&[reporting_to("boss", None)]).await.unwrap();
    let back = next(exhausted[0]).await.unwrap();
    assert!(before <= back && back <= Utc::now(), "{back}");
}

/// A round claimed a workflow whose assignee had no manager; a user write gave them one and,
/// finding nothing exhausted yet, re-armed nothing; the round then exhausted the workflow,
/// unscheduled for good. On PostgreSQL the user write now waits for the rounds in flight (the
/// rounds take its lock shared); SQLite runs one writer at a time anyway.
async fn a_manager_given_beside_a_round_still_moves_its_exhaustion_on(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "BESIDE-1").await;
    let mut round = s.begin_batch().await.unwrap();
    let claimed = round.claim_due(t0() + Duration::days(3), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].assignee_manager, None);
    let store = s.clone();
    let write = tokio::spawn(async move {
        store
            .upsert_users(&[
                reporting_to("boss", None),
                reporting_to("alice", Some("boss")),
            ])
            .await
    });
    // the write waits for the round (it finished at once before, re-arming nothing)
    writers_waiting(db, 1).await;
    assert!(
        !write.is_finished(),
        "the user write did not wait for the round"
    );
    let mut change = remind(&w, t0(), None).changes.remove(0);
    change.exhausted_at = Some(t0() + Duration::days(1));
    change.next_check_at = None;
    let effects = BatchEffects {
        changes: vec![change],
        ..BatchEffects::default()
    };
    round.apply(&effects, t0()).await.unwrap();
    round.commit().await.unwrap();
    write.await.unwrap().unwrap();
    let after = s.get_workflow(w.id).await.unwrap();
    assert!(after.exhausted_at.is_some(), "{after:?}");
    let next = after
        .next_check_at
        .expect("the manager given made it due again");
    assert!(next <= Utc::now(), "{next}");
}

/// A round read its policies and calendars through the pool while it held the write lock
/// (SQLite) or the user writes' lock (PostgreSQL): writers waiting on that lock held every
/// other connection, and the round waited for one of them until the pool gave up (30 s), the
/// writers with it. It reads them in its own transaction.
async fn a_round_reads_its_rules_while_the_writers_it_holds_up_fill_the_pool(db: &TestDb) {
    let s = &db.store;
    let spec: escalator_policy::CalendarSpec = serde_json::from_value(serde_json::json!({
        "timezone": "Europe/London",
        "windows": [{ "day": "Mon", "start": "09:00", "end": "17:00" }],
    }))
    .unwrap();
    s.put_calendar("uk", &escalator_policy::Calendar::new(spec).unwrap())
        .await
        .unwrap();
    let mut round = s.begin_batch().await.unwrap();
    // the pool's other connections (10 in all on SQLite), each taken by a user write waiting
    // on the round (on PostgreSQL, whose test pool has 5, the rest wait for a connection)
    let writers: Vec<_> = (0..9)
        .map(|i| {
            let store = s.clone();
            tokio::spawn(async move {
                store
                    .upsert_users(&[reporting_to(&format!("w{i}"), None)])
                    .await
            })
        })
        .collect();
    writers_waiting(db, 9).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "the writers did not wait"
    );
    // a liveness bound, far below the pool's 30 s: the round does not wait on the writers
    let bound = std::time::Duration::from_secs(10);
    let calendar = tokio::time::timeout(bound, round.calendar("uk")).await;
    assert!(calendar.expect("the round waited on its writers").is_ok());
    let policy = tokio::time::timeout(bound, round.policy("default", 1)).await;
    assert_eq!(
        policy
            .expect("the round waited on its writers")
            .unwrap()
            .version,
        1
    );
    round.commit().await.unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
}

/// Returns once `n` user writes wait on a round's lock (as many as the pool lets through, on
/// PostgreSQL: seen in `pg_locks`, at most 30 s); SQLite shows no waiter, so there it gives
/// them half a second.
async fn writers_waiting(db: &TestDb, n: i64) {
    use sqlx::Connection as _;
    if !matches!(db.store, Store::Postgres(_)) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        return;
    }
    // a connection of its own: the writers hold the pool's (the round one of its 5)
    let mut watch = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let n = n.min(4);
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "only {waiting} writers wait"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Exhausts `w` at its level 0: no one to escalate it to, unscheduled (a `stop` policy).
async fn exhaust(s: &Store, w: &Workflow) {
    exhaust_at(s, w, 0, None).await;
}

/// Exhausts `w` at `level`, its next check at `next` (None: unscheduled).
async fn exhaust_at(s: &Store, w: &Workflow, level: i32, next: Option<DateTime<Utc>>) {
    let mut change = remind(w, t0(), None).changes.remove(0);
    change.level = level;
    change.exhausted_at = Some(t0() + Duration::days(1));
    change.next_check_at = next;
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(
        &BatchEffects {
            changes: vec![change],
            ..BatchEffects::default()
        },
        t0(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// An exhausted workflow resumed after its calendar gained a holiday has its deadline ahead
/// again: it is looked at when that deadline passes. Looked at at once, it was found not due
/// and unscheduled for good, even once its assignee had a manager to escalate to.
async fn a_resume_whose_new_deadline_lies_ahead_is_checked_at_it(db: &TestDb) {
    let s = &db.store;
    let every_day: Vec<_> = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        .iter()
        .map(|d| serde_json::json!({ "day": d, "start": "00:00", "end": "24:00" }))
        .collect();
    let calendar = |holidays: &[&str]| {
        let spec: escalator_policy::CalendarSpec = serde_json::from_value(serde_json::json!({
            "timezone": "UTC", "windows": every_day, "holidays": holidays,
        }))
        .unwrap();
        escalator_policy::Calendar::new(spec).unwrap()
    };
    s.put_calendar("always", &calendar(&[])).await.unwrap();
    let mut spec = Policy::default_policy().spec().clone();
    spec.calendar_id = Some("always".into());
    s.create_policy_version("on-always", "On always", &Policy::new(spec).unwrap())
        .await
        .unwrap();
    let new = NewWorkflow {
        policy_id: Some("on-always".into()),
        ..new_workflow("RESUMED")
    };
    // created Tue 24 Nov 09:00, due Wed 09:00; exhausted (no manager) after the breach
    let w = s.create_workflow(&new, t0()).await.unwrap().workflow;
    assert_eq!(w.due_at, t0() + Duration::days(1));
    exhaust_at(s, &w, 0, None).await;
    let held_at = t0() + Duration::hours(25);
    s.transition(w.id, &Transition::Hold, &ctx(held_at))
        .await
        .unwrap();
    // the creation day becomes a holiday: 24 working hours from Wed 00:00, and the hour on hold
    s.put_calendar("always", &calendar(&["2026-11-24"]))
        .await
        .unwrap();
    let resumed_at = held_at + Duration::hours(1);
    let r = s
        .transition(w.id, &Transition::Resume, &ctx(resumed_at))
        .await
        .unwrap();
    let due = Utc.with_ymd_and_hms(2026, 11, 26, 1, 0, 0).unwrap();
    assert_eq!(r.due_at, due);
    // still exhausted (its exhaustion is not recorded, nor told, twice), looked at when due
    assert!(r.exhausted_at.is_some());
    assert_eq!(r.next_check_at, Some(due), "checked at its new deadline");

    // resumed with its deadline still past, it stays exhausted and is looked at again now
    let again = s
        .create_workflow(
            &NewWorkflow {
                policy_id: Some("on-always".into()),
                ..new_workflow("RESUMED-LATE")
            },
            t0(),
        )
        .await
        .unwrap()
        .workflow;
    exhaust_at(s, &again, 0, None).await;
    let late = t0() + Duration::days(4);
    s.transition(again.id, &Transition::Hold, &ctx(late))
        .await
        .unwrap();
    let r = s
        .transition(
            again.id,
            &Transition::Resume,
            &ctx(late + Duration::hours(1)),
        )
        .await
        .unwrap();
    assert!(r.due_at < late, "{}", r.due_at);
    assert!(r.exhausted_at.is_some());
    assert_eq!(r.next_check_at, Some(late + Duration::hours(1)));
}

/// A workflow exhausted because its `user:` target (a policy level, or its own
/// `escalation_target`) had left stayed unscheduled for good once that user came back, where
/// one waiting for a manager moved on: a write making the user active makes it due at once.
async fn a_target_back_moves_exhausted_workflows_on_at_once(db: &TestDb) {
    let s = &db.store;
    let mut spec = Policy::default_policy().spec().clone();
    spec.levels[0].target = escalator_policy::Target::User("erin".into());
    s.create_policy_version("named", "Named", &Policy::new(spec.clone()).unwrap())
        .await
        .unwrap();
    // two named levels: both gone at the breach, the decision passed over the first to the
    // second, and found no one
    spec.levels[0].target = escalator_policy::Target::User("hank".into());
    let mut second = spec.levels[0].clone();
    second.target = escalator_policy::Target::User("gina".into());
    spec.levels.push(second);
    s.create_policy_version("two-named", "Two named", &Policy::new(spec).unwrap())
        .await
        .unwrap();
    let with = |external_id: &str, target: Option<&str>, policy: Option<&str>| NewWorkflow {
        escalation_target: target.map(Into::into),
        policy_id: policy.map(Into::into),
        ..new_workflow(external_id)
    };
    let mut exhausted = Vec::new();
    for new in [
        with("OVERRIDE", Some("dave"), None),
        with("LEVEL", None, Some("named")),
        with("ELSEWHERE", Some("frank"), None),
        with("LATER-LEVEL", None, Some("two-named")),
    ] {
        let w = s.create_workflow(&new, t0()).await.unwrap().workflow;
        exhaust(s, &w).await;
        exhausted.push(w.id);
    }
    let next = async |id| s.get_workflow(id).await.unwrap().next_check_at;
    // written, but not there: nothing moves
    s.upsert_users(&[User {
        active: false,
        ..reporting_to("dave", None)
    }])
    .await
    .unwrap();
    for id in &exhausted {
        assert_eq!(next(*id).await, None);
    }
    let before = Utc::now();
    s.upsert_users(&[reporting_to("dave", None), reporting_to("erin", None)])
        .await
        .unwrap();
    for id in &exhausted[..2] {
        let next = next(*id).await.unwrap();
        assert!(before <= next && next <= Utc::now(), "{next}");
    }
    assert_eq!(
        next(exhausted[2]).await,
        None,
        "nobody named frank came back"
    );
    // the second level's target back: the decision would escalate to her (it waited on the
    // next level only, and stayed unscheduled for good)
    assert_eq!(next(exhausted[3]).await, None);
    let before = Utc::now();
    s.upsert_users(&[reporting_to("gina", None)]).await.unwrap();
    let back = next(exhausted[3]).await.unwrap();
    assert!(before <= back && back <= Utc::now(), "{back}");
    // a write of someone who was there all along (an HR sync) re-arms nothing: a repeating
    // policy renotified at every such write
    let w = s.get_workflow(exhausted[0]).await.unwrap();
    exhaust(s, &w).await;
    s.upsert_users(&[User {
        display_name: "Dave, again".into(),
        ..reporting_to("dave", None)
    }])
    .await
    .unwrap();
    assert_eq!(next(exhausted[0]).await, None);
}

/// A cycle in the manager chain makes "escalate to the manager" go round for ever. The api
/// walked the chain before writing, so a write of its own could not close one, but two
/// concurrent writes (a → b, b → a) each passed that walk and closed one together, and a bulk
/// write was never checked. The store refuses the write, whole, and writes are serialized.
async fn user_writes_never_make_the_manager_chain_circular(db: &TestDb) {
    let s = &db.store;
    let chain = [
        reporting_to("a", Some("b")),
        reporting_to("b", Some("c")),
        reporting_to("c", None),
    ];
    s.upsert_users(&chain).await.unwrap();
    let refused = |e: StoreError| {
        assert!(
            matches!(&e, StoreError::Invalid { field: "manager_id", message } if message.contains("circular")),
            "{e}"
        );
    };
    // closing the loop from the top, directly or as one's own manager
    refused(
        s.upsert_users(&[reporting_to("c", Some("a"))])
            .await
            .unwrap_err(),
    );
    refused(
        s.upsert_users(&[reporting_to("c", Some("c"))])
            .await
            .unwrap_err(),
    );
    // a batch that closes it is refused whole: its other rows are not written either
    refused(
        s.upsert_users(&[reporting_to("d", None), reporting_to("c", Some("b"))])
            .await
            .unwrap_err(),
    );
    assert!(matches!(
        s.get_user("d").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_user("c").await.unwrap().manager_id, None);
    // moving someone within the chart is fine
    s.upsert_users(&[reporting_to("a", Some("c"))])
        .await
        .unwrap();

    // concurrent writes that would close a loop together: at most one of each pair lands
    let pool = s.clone();
    for round in 0..20 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        s.upsert_users(&[reporting_to(&x, None), reporting_to(&y, None)])
            .await
            .unwrap();
        let (p1, p2) = (pool.clone(), pool.clone());
        let (x1, y1, x2, y2) = (x.clone(), y.clone(), x.clone(), y.clone());
        let first =
            tokio::spawn(async move { p1.upsert_users(&[reporting_to(&x1, Some(&y1))]).await });
        let second =
            tokio::spawn(async move { p2.upsert_users(&[reporting_to(&y2, Some(&x2))]).await });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert!(
            first.is_err() || second.is_err(),
            "round {round}: both writes landed and {x} and {y} manage each other"
        );
        let (a, b) = (s.get_user(&x).await.unwrap(), s.get_user(&y).await.unwrap());
        assert!(
            a.manager_id.is_none() || b.manager_id.is_none(),
            "round {round}: {a:?} {b:?}"
        );
    }
}

async fn users_and_calendars_round_trip(db: &TestDb) {
    let s = &db.store;
    let users = vec![
        User {
            id: "emp".into(),
            display_name: "Employee".into(),
            email: Some("emp@example.com".into()),
            phone: None,
            slack: Some("U1".into()),
            manager_id: Some("boss".into()),
            active: true,
            channels: Some(vec!["email".into(), "slack".into()]),
        },
        User {
            id: "boss".into(),
            display_name: "Boss".into(),
            email: None,
            phone: Some("+15550100".into()),
            slack: None,
            manager_id: None,
            active: false,
            channels: None,
        },
    ];
    s.upsert_users(&users).await.unwrap();
    assert_eq!(s.get_user("emp").await.unwrap(), users[0]);
    assert_eq!(
        s.list_users(None, 10).await.unwrap(),
        [users[1].clone(), users[0].clone()]
    );
    let mut renamed = users[0].clone();
    renamed.display_name = "Employee 2".into();
    s.upsert_users(std::slice::from_ref(&renamed))
        .await
        .unwrap();
    assert_eq!(s.get_user("emp").await.unwrap(), renamed);
    // writing no channel list keeps the stored one; a bad list is refused, naming the field
    let mut without = renamed.clone();
    without.channels = None;
    s.upsert_users(std::slice::from_ref(&without))
        .await
        .unwrap();
    assert_eq!(s.get_user("emp").await.unwrap(), renamed);
    // asked to, the same write drops it (the api's `channels: null`); a given list is written
    s.upsert_users_with(std::slice::from_ref(&without), NoChannels::Clear)
        .await
        .unwrap();
    assert_eq!(s.get_user("emp").await.unwrap(), without);
    s.upsert_users_with(std::slice::from_ref(&renamed), NoChannels::Clear)
        .await
        .unwrap();
    assert_eq!(s.get_user("emp").await.unwrap(), renamed);
    without.channels = Some(vec!["email".into(), "pager".into()]);
    let e = s.upsert_users(&[without]).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid { field: "channels", message } if message.contains("pager")),
        "{e}"
    );
    assert!(matches!(
        s.get_user("ghost").await,
        Err(StoreError::NotFound { .. })
    ));

    let spec: escalator_policy::CalendarSpec = serde_json::from_value(serde_json::json!({
        "timezone": "Europe/London",
        "windows": [{ "day": "Mon", "start": "09:00", "end": "17:00" }],
        "holidays": ["2026-12-25"],
    }))
    .unwrap();
    let cal = escalator_policy::Calendar::new(spec).unwrap();
    s.put_calendar("uk", &cal).await.unwrap();
    assert_eq!(s.get_calendar("uk").await.unwrap(), cal);

    // the policies measured on a calendar, every version (running workflows keep theirs)
    assert!(s.policies_on_calendar("uk").await.unwrap().is_empty());
    let mut on_uk = Policy::default_policy().spec().clone();
    on_uk.calendar_id = Some("uk".into());
    for name in ["First", "Second"] {
        s.create_policy_version("office", name, &Policy::new(on_uk.clone()).unwrap())
            .await
            .unwrap();
    }
    s.create_policy_version("office", "Third, 24x7", &Policy::default_policy())
        .await
        .unwrap();
    s.create_policy_version("elsewhere", "24x7", &Policy::default_policy())
        .await
        .unwrap();
    let on = s.policies_on_calendar("uk").await.unwrap();
    let got: Vec<_> = on.iter().map(|p| (p.id.as_str(), p.version)).collect();
    assert_eq!(got, [("office", 1), ("office", 2)]);
    assert_eq!(on[1].name, "Second");
}

/// A deadline past the calendar's horizon is never (`DateTime::<Utc>::MAX_UTC`, year 262143).
/// A policy whose longest SLA its calendar can never reach, and a calendar edit that would
/// leave a policy so, are refused by the writes themselves, under the calendar's lock: the
/// api checked each against what it read before writing, so a policy posted while its calendar
/// was being thinned passed both checks (a deadline that never comes).
async fn a_policy_and_its_calendar_are_checked_for_reach_inside_their_writes(db: &TestDb) {
    let s = &db.store;
    let calendar = |start: &str, end: &str| {
        let spec: escalator_policy::CalendarSpec = serde_json::from_value(serde_json::json!({
            "timezone": "UTC",
            "windows": [{ "day": "Mon", "start": start, "end": end }],
        }))
        .unwrap();
        escalator_policy::Calendar::new(spec).unwrap()
    };
    let (roomy, thin) = (calendar("00:00", "24:00"), calendar("09:00", "09:00:01"));
    let mut spec = Policy::default_policy().spec().clone();
    spec.sla_seconds = escalator_policy::MAX_DURATION_SECONDS;
    spec.calendar_id = Some("cal".into());
    let glacial = Policy::new(spec).unwrap();

    s.put_calendar("cal", &thin).await.unwrap();
    let refused = s
        .create_policy_version("glacial", "Glacial", &glacial)
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidSpec(ref e)) if e.field == "sla_seconds" && e.message.contains("1,000 years")),
        "{refused:?}"
    );
    assert!(
        s.list_policies()
            .await
            .unwrap()
            .iter()
            .all(|p| p.id != "glacial")
    );

    s.put_calendar("cal", &roomy).await.unwrap();
    s.create_policy_version("glacial", "Glacial", &glacial)
        .await
        .unwrap();
    let refused = s.put_calendar("cal", &thin).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid { field: "windows", ref message }) if message.contains("\"glacial\" version 1")),
        "{refused:?}"
    );
    assert_eq!(
        s.get_calendar("cal").await.unwrap(),
        roomy,
        "left as it was"
    );
}

/// SQLite stored it as `+262143-…`, which sorts before every four-digit year: the workflow
/// was due at every check and the earliest deadline the beat waits for.
async fn a_deadline_that_is_never_is_never_due(db: &TestDb) {
    let s = &db.store;
    // a pair both writes now refuse (a calendar one second a week, a policy of a century on
    // it), as one written before they checked: the calendar thinned by hand afterwards
    let calendar = |start: &str, end: &str| {
        let spec: escalator_policy::CalendarSpec = serde_json::from_value(serde_json::json!({
            "timezone": "Europe/London",
            "windows": [{ "day": "Mon", "start": start, "end": end }],
        }))
        .unwrap();
        escalator_policy::Calendar::new(spec).unwrap()
    };
    let whole_monday = calendar("00:00", "24:00");
    s.put_calendar("thin", &whole_monday).await.unwrap();
    let mut spec = Policy::default_policy().spec().clone();
    spec.sla_seconds = escalator_policy::MAX_DURATION_SECONDS;
    spec.calendar_id = Some("thin".into());
    s.create_policy_version("glacial", "Glacial", &Policy::new(spec).unwrap())
        .await
        .unwrap();
    let thin = serde_json::to_value(calendar("09:00", "09:00:01").spec()).unwrap();
    let updated = match &db.store {
        Store::Postgres(p) => sqlx::query("UPDATE calendars SET spec = $1 WHERE id = 'thin'")
            .bind(&thin)
            .execute(p.pool())
            .await
            .unwrap()
            .rows_affected(),
        Store::Sqlite(p) => sqlx::query("UPDATE calendars SET spec = ?1 WHERE id = 'thin'")
            .bind(thin.to_string())
            .execute(p.pool())
            .await
            .unwrap()
            .rows_affected(),
    };
    assert_eq!(updated, 1);
    let w = s
        .create_workflow(
            &NewWorkflow {
                policy_id: Some("glacial".into()),
                ..new_workflow("NEVER-1")
            },
            t0(),
        )
        .await
        .unwrap()
        .workflow;
    // never is the last microsecond of 9999 on both backends, as created and as read back
    // (PostgreSQL stored the year 262142, SQLite answered the create with it and stored 9999)
    let never = escalator_policy::never();
    assert_eq!(never.to_rfc3339(), "9999-12-31T23:59:59.999999+00:00");
    assert_eq!((w.warn_at, w.due_at), (never, never), "{w:?}");
    let read = s.get_workflow(w.id).await.unwrap();
    assert_eq!((read.warn_at, read.due_at), (never, never), "{read:?}");
    // and so is a deadline that falls after the end of 9999 without a calendar (created
    // then: a stage may not start in the future)
    let eleven_pm = "9999-12-31T23:00:00Z".parse().unwrap();
    let late = s
        .create_workflow(
            &NewWorkflow {
                stage_started_at: Some(eleven_pm),
                ..new_workflow("LATE-1")
            },
            eleven_pm,
        )
        .await
        .unwrap()
        .workflow;
    assert_eq!((late.warn_at, late.due_at), (never, never), "{late:?}");
    let read = s.get_workflow(late.id).await.unwrap();
    assert_eq!((read.warn_at, read.due_at), (never, never), "{read:?}");
    let soon = t0() + Duration::days(1);
    assert_eq!(s.count_due(soon).await.unwrap(), 0);
    assert!(s.peek_due(soon, 10).await.unwrap().is_empty());
    assert!(s.due_ranges(soon, 10).await.unwrap().is_empty());
    let earliest = s.earliest_next_check().await.unwrap();
    assert!(earliest.is_none_or(|t| t > soon), "{earliest:?}");
    assert_eq!(
        s.sla_counts(soon).await.unwrap(),
        SlaCounts {
            ok: 2,
            warning: 0,
            breached: 0,
            compliant: 2
        }
    );
}

async fn claim_returns_only_due_open_workflows_oldest_first(db: &TestDb) {
    let s = &db.store;
    let a = create(s, "A").await;
    let mut later = new_workflow("B");
    later.stage_started_at = Some(t0() + Duration::hours(1));
    let b = s
        .create_workflow(&later, t0() + Duration::hours(1))
        .await
        .unwrap()
        .workflow;
    let c = create(s, "C").await;
    s.transition(c.id, &Transition::Hold, &ctx(t0()))
        .await
        .unwrap();

    let mut tx = s.begin_batch().await.unwrap();
    assert!(
        tx.claim_due(t0() + Duration::hours(21), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = tx.claim_due(t0() + Duration::hours(23), 10).await.unwrap();
    let ids: Vec<Uuid> = due.iter().map(|d| d.workflow.id).collect();
    assert_eq!(ids, [a.id, b.id]);
    assert_eq!(
        tx.claim_due(t0() + Duration::hours(23), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        tx.claim_one(c.id, t0() + Duration::hours(23))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        tx.claim_one(a.id, t0() + Duration::hours(23))
            .await
            .unwrap()
            .unwrap()
            .workflow,
        a
    );
    tx.commit().await.unwrap();
    assert_eq!(s.count_due(t0() + Duration::hours(23)).await.unwrap(), 2);
    assert_eq!(
        s.earliest_next_check().await.unwrap(),
        Some(t0() + Duration::hours(22))
    );
}

/// Dry runs read with `peek_due`/`peek_one`. A dry run that claimed (and so locked) rows made a
/// real batch's `SKIP LOCKED` claim pass them over: its short claim then counted the slice as
/// drained, and those workflows waited for the next check.
async fn peeking_sees_what_a_claim_holds_and_takes_nothing_from_the_next_claim(db: &TestDb) {
    let s = &db.store;
    let a = create(s, "PA").await;
    let mut later = new_workflow("PB");
    later.stage_started_at = Some(t0() + Duration::hours(1));
    let b = s
        .create_workflow(&later, t0() + Duration::hours(1))
        .await
        .unwrap()
        .workflow;
    let now = t0() + Duration::hours(23);
    let ids = |due: &[DueWorkflow]| due.iter().map(|d| d.workflow.id).collect::<Vec<_>>();

    assert_eq!(ids(&s.peek_due(now, 10).await.unwrap()), [a.id, b.id]);
    assert_eq!(ids(&s.peek_due(now, 1).await.unwrap()), [a.id]);
    assert!(s.peek_due(t0(), 10).await.unwrap().is_empty());
    assert_eq!(s.peek_one(b.id, now).await.unwrap().unwrap().workflow, b);
    assert!(s.peek_one(b.id, t0()).await.unwrap().is_none());

    // having peeked, a claim takes every due row
    let mut tx = s.begin_batch().await.unwrap();
    assert_eq!(ids(&tx.claim_due(now, 10).await.unwrap()), [a.id, b.id]);
    if matches!(s, Store::Postgres(_)) {
        // while that batch holds them, a peek still sees them (a claim would skip them)
        assert_eq!(ids(&s.peek_due(now, 10).await.unwrap()), [a.id, b.id]);
        assert!(s.peek_one(a.id, now).await.unwrap().is_some());
    }
    tx.rollback().await.unwrap();
}

/// The engine writes effects with plain inserts (`apply_with(…, EffectInserts::Fresh)`): a
/// notification or outbox key that exists already must fail the transaction, visibly, so that
/// the engine can redo the batch with `apply`, which skips the existing row and writes the
/// rest once.
async fn fresh_inserts_refuse_an_existing_key_and_idempotent_ones_skip_it(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "F").await;
    let now = t0() + Duration::hours(23);
    let effects = remind(&w, now, None);
    // the reminder's in-app notification is there already, as if written by hand
    let only_the_notification = BatchEffects {
        changes: Vec::new(),
        audits: Vec::new(),
        outbox: Vec::new(),
        counts: BatchCounts::default(),
        ..effects.clone()
    };
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&only_the_notification, now).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = s.begin_batch().await.unwrap();
    assert_eq!(tx.claim_due(now, 10).await.unwrap().len(), 1);
    let err = tx
        .apply_with(&effects, now, EffectInserts::Fresh)
        .await
        .unwrap_err();
    assert!(err.is_duplicate_key(), "{err:?}");
    tx.rollback().await.unwrap();
    // rolled back: the workflow is untouched and still due
    assert_eq!(s.get_workflow(w.id).await.unwrap().version, w.version);

    let mut tx = s.begin_batch().await.unwrap();
    assert_eq!(tx.claim_due(now, 10).await.unwrap().len(), 1);
    let applied = tx.apply(&effects, now).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.changed, [w.id]);
    assert_eq!(
        (applied.audits, applied.notifications, applied.outbox),
        (1, 0, 1)
    );
    assert_eq!(s.workflow_notifications(w.id, 100).await.unwrap().len(), 1);
    assert_eq!(s.get_workflow(w.id).await.unwrap().reminded_at, Some(now));

    // a fresh insert of keys nobody wrote succeeds
    let w2 = create(s, "G").await;
    let mut tx = s.begin_batch().await.unwrap();
    assert_eq!(tx.claim_due(now, 10).await.unwrap().len(), 1);
    let applied = tx
        .apply_with(&remind(&w2, now, None), now, EffectInserts::Fresh)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (applied.changed.len(), applied.notifications, applied.outbox),
        (1, 1, 1)
    );
}

/// Deliveries without a workflow (digests) are unique on their key alone: on PostgreSQL the key
/// index is (workflow_id, idempotency_key) with NULLS NOT DISTINCT (migration 14), so a second
/// digest with the key of the first is refused by a plain insert and skipped by an idempotent
/// one, exactly as a workflow's delivery is.
async fn a_delivery_without_a_workflow_is_kept_once_per_key(db: &TestDb) {
    let s = &db.store;
    let now = t0();
    let digest = |to: &str| BatchEffects {
        outbox: vec![NewOutbox {
            channel: "email",
            recipient: to.into(),
            workflow_id: None,
            payload: serde_json::json!({ "to": [to] }),
            idempotency_key: "digest:1:carol:email:7".into(),
        }],
        ..BatchEffects::default()
    };
    let write = |effects: BatchEffects, inserts: EffectInserts| async move {
        let mut tx = s.begin_batch().await.unwrap();
        match tx.apply_with(&effects, now, inserts).await {
            Ok(applied) => {
                tx.commit().await.unwrap();
                Ok(applied.outbox)
            }
            Err(e) => {
                tx.rollback().await.unwrap();
                Err(e)
            }
        }
    };
    let first = write(digest("a@example.com"), EffectInserts::Idempotent).await;
    assert_eq!(first.unwrap(), 1);
    let err = write(digest("b@example.com"), EffectInserts::Fresh)
        .await
        .unwrap_err();
    assert!(err.is_duplicate_key(), "{err:?}");
    let again = write(digest("b@example.com"), EffectInserts::Idempotent).await;
    assert_eq!(again.unwrap(), 0);
    let rows = s.list_outbox(&[], 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].recipient, "a@example.com");
}

async fn effects_apply_set_wise_and_only_once(db: &TestDb) {
    let s = &db.store;
    s.upsert_users(&escalator_store::seed::users())
        .await
        .unwrap();
    let mut new = new_workflow("D");
    new.assignee = "u0011".into();
    let w = s.create_workflow(&new, t0()).await.unwrap().workflow;
    let now = t0() + Duration::hours(23);
    let mut tx = s.begin_batch().await.unwrap();
    let due = tx.claim_due(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].assignee_manager.as_deref(), Some("u0001"));
    let applied = tx.apply(&remind(&w, now, None), now).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.changed, [w.id]);
    assert_eq!(
        (applied.audits, applied.notifications, applied.outbox),
        (1, 1, 1)
    );
    assert_eq!(applied.counts.reminded, 1);

    let after = s.get_workflow(w.id).await.unwrap();
    assert_eq!(after.reminded_at, Some(now));
    assert_eq!(after.next_check_at, Some(w.due_at));
    assert_eq!(after.version, 2);
    // the same claim is no longer due, and replaying the effects writes nothing
    let mut tx = s.begin_batch().await.unwrap();
    assert!(tx.claim_due(now, 10).await.unwrap().is_empty());
    let again = tx.apply(&remind(&w, now, None), now).await.unwrap();
    tx.commit().await.unwrap();
    assert!(again.changed.is_empty());
    assert_eq!(
        (
            again.audits,
            again.notifications,
            again.outbox,
            again.counts.reminded
        ),
        (0, 0, 0, 0)
    );
    let counts = s.table_counts().await.unwrap();
    assert_eq!(
        (counts.audit_logs, counts.notifications, counts.outbox),
        (2, 1, 1)
    );
    let inbox = s.workflow_notifications(w.id, 100).await.unwrap();
    assert_eq!(inbox[0].recipient, "u0011");
    let outbox = s.list_outbox(&["pending"], 10).await.unwrap();
    assert_eq!(
        outbox[0].idempotency_key,
        format!("remind:{}:1:0:email", w.id)
    );
    assert_eq!(outbox[0].payload["subject"], "Reminder");
    // a list of statuses selects the rows of any of them
    assert_eq!(
        s.list_outbox(&["failed", "pending"], 10).await.unwrap(),
        outbox
    );
    assert!(
        s.list_outbox(&["failed", "dead"], 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn stale_claims_write_nothing(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "E").await;
    let now = t0() + Duration::hours(23);
    let mut tx = s.begin_batch().await.unwrap();
    let due = tx.claim_due(now, 10).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(due.len(), 1);
    // the workflow is completed through the api after the claim (I4)
    s.transition(w.id, &Transition::Complete, &ctx(now))
        .await
        .unwrap();
    let mut tx = s.begin_batch().await.unwrap();
    let applied = tx
        .apply(&remind(&due[0].workflow, now, None), now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(applied.changed.is_empty());
    let counts = s.table_counts().await.unwrap();
    assert_eq!((counts.notifications, counts.outbox), (0, 0));
    assert_eq!(
        s.get_workflow(w.id).await.unwrap().status,
        Status::Completed
    );
}

async fn concurrent_batches_never_share_a_workflow(db: &TestDb) {
    let s = &db.store;
    for i in 0..40 {
        create(s, &format!("F-{i}")).await;
    }
    let now = t0() + Duration::hours(23);
    let run = |store: Store| async move {
        let mut handled = Vec::new();
        loop {
            let mut tx = store.begin_batch().await.unwrap();
            let due = tx.claim_due(now, 7).await.unwrap();
            if due.is_empty() {
                break;
            }
            let mut effects = BatchEffects::default();
            for d in &due {
                let e = remind(&d.workflow, now, None);
                effects.changes.extend(e.changes);
                effects.audits.extend(e.audits);
            }
            let applied = tx.apply(&effects, now).await.unwrap();
            tx.commit().await.unwrap();
            assert_eq!(
                applied.changed.len(),
                due.len(),
                "a claimed row was changed by another batch"
            );
            handled.extend(applied.changed);
        }
        handled
    };
    let (a, b) = tokio::join!(tokio::spawn(run(s.clone())), tokio::spawn(run(s.clone())));
    let mut all: Vec<Uuid> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    assert_eq!(all.len(), 40);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "a workflow was handled twice");
    assert_eq!(s.table_counts().await.unwrap().audit_logs, 80);
}

async fn check_runs_have_one_per_slot_and_count_batches(db: &TestDb) {
    let s = &db.store;
    let slot = t0();
    let new = NewCheckRun {
        slot: Some(slot),
        requested_by: "beat",
        scope: "all".into(),
        as_of: slot,
        dry_run: false,
        coalesced: 1,
        now: slot,
    };
    let run = s.create_check_run(&new).await.unwrap().unwrap();
    assert_eq!((run.status.as_str(), run.slot), ("queued", Some(slot)));
    assert!(
        s.create_check_run(&new).await.unwrap().is_none(),
        "a slot ran twice"
    );
    // a slot's run is found by its slot (a beat taking the lease pushes it if it never went)
    assert_eq!(
        s.slot_check_run(slot).await.unwrap().map(|r| r.id),
        Some(run.id)
    );
    assert!(
        s.slot_check_run(slot + Duration::minutes(15))
            .await
            .unwrap()
            .is_none()
    );
    let adhoc = NewCheckRun {
        slot: None,
        requested_by: "api",
        ..new.clone()
    };
    let a = s.create_check_run(&adhoc).await.unwrap().unwrap();
    let b = s.create_check_run(&adhoc).await.unwrap().unwrap();
    assert_ne!(a.id, b.id);
    // a run's plan is saved once: a later planner gets the first one back
    let first = [
        DueRange {
            from: None,
            until: Some(slot + Duration::minutes(5)),
            ..DueRange::default()
        },
        DueRange {
            from: Some(slot + Duration::minutes(5)),
            ..DueRange::default()
        },
    ];
    assert_eq!(s.save_check_run_plan(a.id, &first).await.unwrap(), first);
    assert_eq!(
        s.save_check_run_plan(a.id, &first[..1]).await.unwrap(),
        first
    );
    assert!(s.save_check_run_plan(b.id, &[]).await.unwrap().is_empty());
    assert!(matches!(
        s.save_check_run_plan(999_999, &first).await,
        Err(StoreError::NotFound { .. })
    ));

    let w = create(s, "G").await;
    let now = t0() + Duration::hours(23);
    let planned = s.start_check_run(run.id, 2, now).await.unwrap();
    assert_eq!((planned.status.as_str(), planned.batches), ("running", 2));
    // a planner that runs twice cannot change the plan
    assert_eq!(s.start_check_run(run.id, 5, now).await.unwrap().batches, 2);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&w, now, Some(run.id)), now).await.unwrap();
    tx.commit().await.unwrap();
    let mid = s.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (
            mid.status.as_str(),
            mid.batches_done,
            mid.reminded,
            mid.checked
        ),
        ("running", 1, 1, 1)
    );
    // batch 0 delivered twice: its effects are refused and it does not complete the run
    let mut tx = s.begin_batch().await.unwrap();
    assert!(
        !tx.apply(&remind(&w, now, Some(run.id)), now)
            .await
            .unwrap()
            .run_completed
    );
    tx.commit().await.unwrap();
    let dup = s.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (dup.status.as_str(), dup.batches_done, dup.reminded),
        ("running", 1, 1)
    );
    // the last batch found one workflow with no one to escalate to and renotified another:
    // counted as such (a run doing only this read as having done nothing)
    let (h, i) = (create(s, "H").await, create(s, "I").await);
    let mut last = remind(&h, now, Some(run.id));
    last.batch_index = Some(1);
    last.audits[0].action = "exhausted";
    let renotify = remind(&i, now, Some(run.id));
    last.changes.extend(renotify.changes);
    last.audits
        .extend(renotify.audits.into_iter().map(|a| NewAudit {
            action: "notify",
            ..a
        }));
    last.counts.checked = 2;
    let mut tx = s.begin_batch().await.unwrap();
    assert!(tx.apply(&last, now).await.unwrap().run_completed);
    tx.commit().await.unwrap();
    let done = s.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (done.status.as_str(), done.batches_done, done.finished_at),
        ("succeeded", 2, Some(now))
    );
    assert_eq!((done.reminded, done.exhausted, done.renotified), (1, 1, 1));
    assert_eq!(
        audit_log_from(s, None, 2).await.0[1].check_run_id,
        Some(run.id)
    );

    assert_eq!(
        s.start_check_run(a.id, 0, now).await.unwrap().status,
        "succeeded"
    );
    s.fail_check_run(b.id, "boom", now).await.unwrap();
    let failed = s.get_check_run(b.id).await.unwrap();
    assert_eq!(
        (failed.status.as_str(), failed.error.as_deref()),
        ("failed", Some("boom"))
    );
    let recent: Vec<i64> = s
        .recent_check_runs(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(recent, [b.id, a.id, run.id]);
}

async fn listing_filters_and_paginates(db: &TestDb) {
    let s = &db.store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut n = new_workflow(&format!("H-{i}"));
        n.stage_started_at = Some(t0() - Duration::hours([0, 10, 23, 30, 40][i as usize]));
        if i == 4 {
            n.assignee = "zoe".into();
        }
        ids.push(
            s.create_workflow(&n, t0() + Duration::seconds(i))
                .await
                .unwrap()
                .workflow
                .id,
        );
    }
    s.transition(ids[0], &Transition::Hold, &ctx(t0()))
        .await
        .unwrap();
    let page = |after, limit| WorkflowFilter {
        after,
        limit,
        ..Default::default()
    };
    let first = s.list_workflows(&page(None, 2)).await.unwrap();
    assert_eq!(first.iter().map(|w| w.id).collect::<Vec<_>>(), ids[..2]);
    let last = first.last().unwrap();
    let second = s
        .list_workflows(&page(Some((last.created_at, last.id)), 10))
        .await
        .unwrap();
    assert_eq!(second.iter().map(|w| w.id).collect::<Vec<_>>(), ids[2..]);

    let by = |f: WorkflowFilter| async move {
        s.list_workflows(&WorkflowFilter { limit: 100, ..f })
            .await
            .unwrap()
            .len()
    };
    assert_eq!(
        by(WorkflowFilter {
            status: Some(Status::OnHold),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(WorkflowFilter {
            assignee: Some("zoe".into()),
            ..Default::default()
        })
        .await,
        1
    );
    // started 0h (held), 10h, 23h, 30h, 40h ago: one OK, one WARNING, two BREACHED
    let sla = |st| WorkflowFilter {
        sla_status: Some((st, t0())),
        ..Default::default()
    };
    assert_eq!(by(sla(SlaStatus::Ok)).await, 1);
    assert_eq!(by(sla(SlaStatus::Warning)).await, 1);
    assert_eq!(by(sla(SlaStatus::Breached)).await, 2);
    let counts = SlaCounts {
        ok: 1,
        warning: 1,
        breached: 2,
        compliant: 2,
    };
    assert_eq!(s.sla_counts(t0()).await.unwrap(), counts);
    // escalating the 40-hour one starts its next level's clock (OK again), but it has missed
    // its SLA: it leaves the compliant ones
    let w = s.get_workflow(ids[4]).await.unwrap();
    let mut escalate = remind(&w, t0(), None);
    let change = &mut escalate.changes[0];
    change.status = Status::Escalated;
    change.level = 1;
    change.reminded_at = None;
    change.escalated_at = Some(t0());
    change.warn_at = t0() + Duration::hours(22);
    change.due_at = t0() + Duration::hours(24);
    change.next_check_at = Some(change.warn_at);
    escalate.audits[0].action = "escalate";
    escalate.audits[0].level = 1;
    escalate.notifications.clear();
    escalate.outbox.clear();
    let mut tx = s.begin_batch().await.unwrap();
    assert_eq!(tx.apply(&escalate, t0()).await.unwrap().changed, [w.id]);
    tx.commit().await.unwrap();
    let counts = SlaCounts {
        ok: 2,
        breached: 1,
        ..counts
    };
    assert_eq!(s.sla_counts(t0()).await.unwrap(), counts);
    assert_eq!(counts.compliance_ratio(), 0.5);
    // the escalated one has its new level's deadline: only the 30-hour one is due
    let due_before = |t| WorkflowFilter {
        due_before: Some(t),
        ..Default::default()
    };
    assert_eq!(by(due_before(t0())).await, 1);
    // open ones only: the held one's deadline is stale while its clock is paused, and a
    // closed one is due no more (both were listed as due)
    let two_days = t0() + Duration::hours(48);
    assert_eq!(by(due_before(two_days)).await, 4, "not the held one");
    s.transition(ids[3], &Transition::Complete, &ctx(t0()))
        .await
        .unwrap();
    assert_eq!(by(due_before(t0())).await, 0);
    assert_eq!(by(due_before(two_days)).await, 3);
}

async fn bulk_load_yields_the_workload_distribution(db: &TestDb) {
    let s = &db.store;
    let plan = SeedPlan {
        workflows: 2_000,
        seed: 7,
        now: t0(),
        due_within: None,
    };
    s.upsert_users(&escalator_store::seed::users())
        .await
        .unwrap();
    let mut generator = SeedGenerator::new(plan);
    while generator.remaining() > 0 {
        s.bulk_load(&generator.next_chunk(700)).await.unwrap();
    }
    assert_eq!(
        s.sla_counts(t0()).await.unwrap(),
        SlaCounts {
            ok: 1_400,
            warning: 300,
            breached: 300,
            compliant: 1_700
        }
    );
    assert_eq!(s.count_due(t0()).await.unwrap(), 600);
    let counts = s.table_counts().await.unwrap();
    assert_eq!((counts.workflows, counts.audit_logs), (2_000, 2_000));
    let w = s
        .get_workflow_by_external_id("seed-7-0000042")
        .await
        .unwrap();
    assert_eq!(w, SeedGenerator::new(plan).next_chunk(43)[42]);
    assert_eq!(s.workflow_audit(w.id).await.unwrap()[0].action, "create");
}

async fn inbox_lists_and_marks_read(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "I").await;
    let now = t0() + Duration::hours(23);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&w, now, None), now).await.unwrap();
    tx.commit().await.unwrap();
    let inbox = s.inbox("alice", true, None, 10).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(s.mark_notification_read(inbox[0].id, now).await.unwrap());
    assert!(
        !s.mark_notification_read(inbox[0].id, now + Duration::hours(1))
            .await
            .unwrap()
    );
    assert!(s.inbox("alice", true, None, 10).await.unwrap().is_empty());
    assert_eq!(
        s.inbox("alice", false, None, 10).await.unwrap()[0].read_at,
        Some(now)
    );
    assert!(matches!(
        s.mark_notification_read(999_999, now).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// `verify` counted effects made twice, never effects missing: a workflow past its deadline
/// that every check passed over (set aside for ever, a lost batch) left it clean. It names the
/// open workflows that the last complete check of every workflow should have escalated or
/// reminded and that nothing has touched since; not those written after it started.
async fn verify_names_what_the_last_complete_check_left_undone(db: &TestDb) {
    let s = &db.store;
    let started = |external_id: &str, hours: i64| NewWorkflow {
        stage_started_at: Some(t0() + Duration::hours(hours)),
        ..new_workflow(external_id)
    };
    // due at t0 + 24 h; warned at t0 + 24 h, due at t0 + 26 h; not due until t0 + 34 h
    let mut ids = Vec::new();
    for (external_id, hours) in [("LATE", 0), ("WARNED", 2), ("FINE", 10)] {
        let w = s
            .create_workflow(&started(external_id, hours), t0() + Duration::hours(hours))
            .await
            .unwrap()
            .workflow;
        ids.push(w.id.to_string());
    }
    // no complete check yet: nothing is owed
    assert_eq!(s.verify().await.unwrap(), []);
    let check = t0() + Duration::hours(25);
    escalator_testkit::started_run(s, "cli", 0, check).await;
    let found = s.verify().await.unwrap();
    let named: Vec<(&str, &str)> = found
        .iter()
        .map(|v| (v.invariant, v.subject.as_str()))
        .collect();
    assert_eq!(
        named,
        [("I1", ids[0].as_str()), ("I2", ids[1].as_str())],
        "{found:?}"
    );
    // a workflow opened after the check began is the next check's
    s.create_workflow(&started("AFTER", 0), check + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(s.verify().await.unwrap().len(), 2);
}

async fn verify_passes_a_healthy_database_and_names_tampering(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "J").await;
    let other = create(s, "K").await;
    let now = t0() + Duration::hours(23);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&w, now, None), now).await.unwrap();
    tx.commit().await.unwrap();
    s.transition(other.id, &Transition::Complete, &ctx(now))
        .await
        .unwrap();
    assert_eq!(s.verify().await.unwrap(), []);

    // a workflow that claims an escalation the audit log does not have
    let tamper = "UPDATE workflows SET escalation_level = 1, status = 'escalated' \
                  WHERE external_id = 'K' OR external_id = 'J'";
    let reopen = "UPDATE workflows SET status = 'escalated' WHERE external_id = 'K'";
    match s {
        Store::Postgres(p) => {
            sqlx::query(tamper).execute(p.pool()).await.unwrap();
            sqlx::query(reopen).execute(p.pool()).await.unwrap();
        }
        Store::Sqlite(p) => {
            sqlx::query(tamper).execute(p.pool()).await.unwrap();
            sqlx::query(reopen).execute(p.pool()).await.unwrap();
        }
    }
    let found = s.verify().await.unwrap();
    let level: Vec<&str> = found
        .iter()
        .filter(|v| v.invariant == "I1")
        .map(|v| v.subject.as_str())
        .collect();
    assert_eq!(level.len(), 2, "{found:?}");
    assert!(level.contains(&w.id.to_string().as_str()));
    // J's reminder was for level 0; at level 1 it is marked reminded without one
    assert!(
        found
            .iter()
            .any(|v| v.invariant == "I2" && v.subject == w.id.to_string()),
        "{found:?}"
    );
    // PostgreSQL's effect tables have no foreign keys (the per-row checks were a fifth of a
    // tick's database time): a reference to a workflow or run that does not exist is named
    if let Store::Postgres(p) = s {
        sqlx::query(
            "INSERT INTO notifications (recipient, workflow_id, kind, role, subject, body,
                 dedup_key)
             VALUES ('bob', '00000000-0000-0000-0000-00000000beef', 'reminder', 'to', 's', 'b',
                 'forged')",
        )
        .execute(p.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO outbox (channel, recipient, check_run_id, payload, idempotency_key)
             VALUES ('email', 'x@example.com', 424242, '{}', 'forged')",
        )
        .execute(p.pool())
        .await
        .unwrap();
        let found = s.verify().await.unwrap();
        let rules: Vec<&str> = found
            .iter()
            .filter(|v| v.subject.starts_with("notifications ") || v.subject.starts_with("outbox "))
            .map(|v| v.rule)
            .collect();
        assert_eq!(
            rules,
            [
                "audit row, notification or delivery naming a workflow that does not exist",
                "audit row or delivery naming a check run that does not exist",
            ],
            "{found:?}"
        );
    }
    // the trigger refusing UPDATEs of audit rows dropped: I5 is unguarded
    let guards = |found: &[escalator_store::verify::Violation]| {
        found
            .iter()
            .filter(|v| v.rule == "the audit log's append-only triggers are missing")
            .count()
    };
    assert_eq!(guards(&s.verify().await.unwrap()), 0);
    match s {
        Store::Postgres(p) => {
            sqlx::query("DROP TRIGGER audit_logs_update_only_xact ON audit_logs")
                .execute(p.pool())
                .await
                .unwrap();
        }
        Store::Sqlite(p) => {
            sqlx::query("DROP TRIGGER audit_logs_no_update")
                .execute(p.pool())
                .await
                .unwrap();
        }
    }
    assert_eq!(guards(&s.verify().await.unwrap()), 1);
}

async fn workflows_and_check_runs_are_never_deleted(db: &TestDb) {
    let s = &db.store;
    let w = create(s, "PO-8").await;
    // a run with effects (one that did nothing may go: check_runs_that_did_nothing_…)
    let run = escalator_testkit::started_run(s, "deadline", 1, t0()).await;
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&w, t0(), Some(run)), t0()).await.unwrap();
    tx.commit().await.unwrap();
    let Store::Postgres(p) = s else {
        // SQLite keeps its foreign keys: the audit row's reference refuses the delete
        let Store::Sqlite(q) = s else { unreachable!() };
        assert!(
            sqlx::query("DELETE FROM workflows")
                .execute(q.pool())
                .await
                .is_err()
        );
        assert_eq!(s.table_counts().await.unwrap().workflows, 1);
        return;
    };
    for sql in [
        "DELETE FROM workflows",
        "TRUNCATE workflows CASCADE",
        "DELETE FROM check_runs",
        "TRUNCATE check_runs CASCADE",
    ] {
        let err = sqlx::query(sql).execute(p.pool()).await.unwrap_err();
        assert!(
            err.to_string().contains("never deleted") || err.to_string().contains("is kept"),
            "{sql}: {err}"
        );
    }
    assert_eq!(s.table_counts().await.unwrap().workflows, 1);
    s.get_check_run(run).await.unwrap();
}

async fn due_ranges_cut_the_due_workflows_into_disjoint_slices(db: &TestDb) {
    let s = &db.store;
    let plan = SeedPlan {
        workflows: 2_000,
        seed: 3,
        now: t0(),
        due_within: None,
    };
    s.bulk_load(&SeedGenerator::new(plan).next_chunk(2_000))
        .await
        .unwrap();
    let ranges = s.due_ranges(t0(), 250).await.unwrap();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!((ranges[0].from, ranges[2].until), (None, None));
    let mut seen = std::collections::HashSet::new();
    let mut tx = s.begin_batch().await.unwrap();
    for r in &ranges {
        let due = tx.claim_due_in(t0(), r, 10_000).await.unwrap();
        assert!(due.len() <= 250 && !due.is_empty(), "{}", due.len());
        for d in due {
            assert!(seen.insert(d.workflow.id), "a workflow is in two slices");
        }
    }
    tx.commit().await.unwrap();
    assert_eq!(seen.len(), 600);
    assert!(
        s.due_ranges(t0() - Duration::days(10), 250)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Deadlines snapped to the start of business hours, or a bulk import, give many workflows one
/// `next_check_at`. Cut by the instant alone they were one slice, worked by one batch while the
/// other workers idled; the ids now cut them too.
async fn due_ranges_cut_workflows_that_share_one_instant(db: &TestDb) {
    let s = &db.store;
    let mut crowd = std::collections::HashSet::new();
    for i in 0..600 {
        crowd.insert(create(s, &format!("CROWD-{i}")).await.id);
    }
    // ten due earlier, each at an instant of its own
    for i in 0..10 {
        let early = NewWorkflow {
            stage_started_at: Some(t0() - Duration::minutes(30 + i)),
            ..new_workflow(&format!("EARLY-{i}"))
        };
        s.create_workflow(&early, t0()).await.unwrap();
    }
    let as_of = t0() + Duration::days(2);
    let instants: std::collections::HashSet<_> = s
        .peek_due(as_of, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|d| d.workflow.next_check_at)
        .collect();
    assert_eq!(instants.len(), 11, "the crowd shares one instant");
    let ranges = s.due_ranges(as_of, 250).await.unwrap();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!((ranges[0].from, ranges[2].until), (None, None));
    // the second and third slices start inside the crowd
    assert_eq!(ranges[1].from, ranges[2].from);
    let mut seen = std::collections::HashSet::new();
    let mut tx = s.begin_batch().await.unwrap();
    for r in &ranges {
        let due = tx.claim_due_in(as_of, r, 10_000).await.unwrap();
        assert!(due.len() <= 250 && due.len() >= 110, "{}", due.len());
        for d in due {
            assert!(seen.insert(d.workflow.id), "a workflow is in two slices");
        }
    }
    tx.rollback().await.unwrap();
    assert_eq!(seen.len(), 610);
    assert!(crowd.is_subset(&seen));
    // a slice cut by instants alone (a batch job queued before this change) takes the whole
    // crowd from its instant on
    let by_instant = DueRange {
        from: ranges[1].from,
        ..DueRange::default()
    };
    let mut tx = s.begin_batch().await.unwrap();
    let due = tx.claim_due_in(as_of, &by_instant, 10_000).await.unwrap();
    assert_eq!(due.len(), 600);
    tx.rollback().await.unwrap();
}

async fn outbox_backlog_counts_undelivered_rows(db: &TestDb) {
    let s = &db.store;
    assert_eq!(
        s.outbox_backlog(t0()).await.unwrap(),
        OutboxBacklog::default()
    );
    let a = create(s, "OP-1").await;
    let b = create(s, "OP-2").await;
    let now = t0() + Duration::hours(23);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&a, now, None), now).await.unwrap();
    tx.apply(&remind(&b, now, None), now).await.unwrap();
    tx.commit().await.unwrap();
    // both waiting; due from the instant they were written
    let before = s.outbox_backlog(now - Duration::seconds(1)).await.unwrap();
    assert_eq!((before.waiting, before.due, before.due_since), (2, 0, None));
    assert_eq!(before.overdue_seconds(now), 0.0);
    let at = s.outbox_backlog(now).await.unwrap();
    assert_eq!((at.waiting, at.due, at.due_since), (2, 2, Some(now)));
    // unsent ten minutes on, they have been overdue that long
    let later = now + Duration::minutes(10);
    assert_eq!(
        s.outbox_backlog(later)
            .await
            .unwrap()
            .overdue_seconds(later),
        600.0
    );
}

/// A sender that stops mid-round hands back the rows it claimed and never tried: due at once,
/// their claim undone. Only a claim that still holds its row hands it back (one claimed again
/// since, or finished, is left as it is).
async fn claimed_deliveries_handed_back_are_due_again(db: &TestDb) {
    let s = &db.store;
    let now = t0() + Duration::hours(23);
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(create(s, &format!("HB-{i}")).await);
    }
    let mut tx = s.begin_batch().await.unwrap();
    for w in &made {
        tx.apply(&remind(w, now, None), now).await.unwrap();
    }
    tx.commit().await.unwrap();
    let lease = std::time::Duration::from_secs(600);
    let claimed = s.claim_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.attempts == 1));
    // nobody else can claim them now
    assert!(s.claim_deliveries(now, lease, 10).await.unwrap().is_empty());
    // one was sent meanwhile: its claim no longer holds a waiting row
    assert!(
        s.record_delivery(claimed[2].id, 1, &DeliveryOutcome::Sent, now)
            .await
            .unwrap()
    );
    let claims: Vec<(i64, i32)> = claimed.iter().map(|c| (c.id, c.attempts)).collect();
    // a stale claim (attempts as of an older one) hands back nothing
    let stale: Vec<(i64, i32)> = claims.iter().map(|c| (c.0, 0)).collect();
    assert_eq!(s.unclaim_deliveries(&stale, now).await.unwrap(), 0);
    assert_eq!(s.unclaim_deliveries(&claims, now).await.unwrap(), 2);
    let again = s.claim_deliveries(now, lease, 10).await.unwrap();
    let mut ids: Vec<i64> = again.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    let mut want = vec![claimed[0].id, claimed[1].id];
    want.sort_unstable();
    assert_eq!(ids, want);
    // the claim undone: this is their first attempt again
    assert!(again.iter().all(|c| c.attempts == 1), "{again:?}");
}

async fn sent_deliveries_are_pruned_after_their_retention_and_others_kept(db: &TestDb) {
    let s = &db.store;
    let now = t0() + Duration::hours(23);
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(create(s, &format!("PR-{i}")).await);
    }
    let mut tx = s.begin_batch().await.unwrap();
    for w in &made {
        tx.apply(&remind(w, now, None), now).await.unwrap();
    }
    tx.commit().await.unwrap();
    let claimed = s
        .claim_deliveries(now, std::time::Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    let later = now + Duration::days(2);
    let outcomes = [
        (DeliveryOutcome::Sent, now + Duration::hours(1)),
        (DeliveryOutcome::Sent, now),
        (DeliveryOutcome::Sent, later),
        (
            DeliveryOutcome::Dead {
                error: "550 no such user".into(),
            },
            now,
        ),
        (
            DeliveryOutcome::Retry {
                error: "421 try later".into(),
                retry_at: later,
            },
            now,
        ),
    ];
    for (row, (outcome, at)) in claimed.iter().zip(&outcomes) {
        assert!(
            s.record_delivery(row.id, row.attempts, outcome, *at)
                .await
                .unwrap()
        );
    }
    // the two sent before the cut go, a bounded number at a time, oldest first
    let cut = now + Duration::days(1);
    let sent_at = |rows: Vec<escalator_store::OutboxEntry>| {
        let mut v: Vec<_> = rows.into_iter().filter_map(|r| r.sent_at).collect();
        v.sort();
        v
    };
    assert_eq!(s.prune_sent_deliveries(cut, 1).await.unwrap(), 1);
    assert_eq!(
        sent_at(s.list_outbox(&["sent"], 100).await.unwrap()),
        [now + Duration::hours(1), later]
    );
    assert_eq!(s.prune_sent_deliveries(cut, 10).await.unwrap(), 1);
    assert_eq!(s.prune_sent_deliveries(cut, 10).await.unwrap(), 0);
    let statuses = |rows: Vec<escalator_store::OutboxEntry>| {
        let mut v: Vec<String> = rows.into_iter().map(|r| r.status).collect();
        v.sort();
        v
    };
    assert_eq!(
        statuses(s.list_outbox(&[], 100).await.unwrap()),
        ["dead", "failed", "sent"]
    );
    // a cut past every row still keeps what was never delivered
    let far = later + Duration::days(365);
    assert_eq!(s.prune_sent_deliveries(far, 10).await.unwrap(), 1);
    assert_eq!(
        statuses(s.list_outbox(&[], 100).await.unwrap()),
        ["dead", "failed"]
    );
}

/// "Still overdue" notices of a repeating chain that waited together (a relay down through
/// several repeats) go out once per recipient and channel, the newest: each went out, fifty
/// at once after a 50-minute outage at a 60 s repeat. A newer one that died does not stand in.
async fn still_overdue_notices_waiting_together_go_out_once_per_recipient(db: &TestDb) {
    let s = &db.store;
    let now = t0() + Duration::hours(30);
    let w = create(s, "SO-1").await;
    let notice = |channel: &'static str, to: &str, repeat: usize| NewOutbox {
        channel,
        recipient: to.into(),
        workflow_id: Some(w.id),
        payload: serde_json::json!({
            "kind": "exhausted", "level": 0, "cycle": w.cycle, "holder_id": w.assignee,
        }),
        idempotency_key: format!("exhausted:{}:{repeat}:{channel}:{to}", w.id),
    };
    let rows = vec![
        notice("email", "boss@example.com", 1),
        notice("email", "boss@example.com", 2),
        notice("email", "emp@example.com", 2),
        notice("sms", "+15550001", 2),
        notice("email", "boss@example.com", 3),
        notice("email", "left@example.com", 1),
        notice("email", "left@example.com", 2),
    ];
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(
        &BatchEffects {
            outbox: rows,
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let lease = std::time::Duration::from_secs(60);
    let first = s.claim_deliveries(now, lease, 100).await.unwrap();
    assert_eq!(first.len(), 7);
    // on their first try none is replaced: a sender running behind the repeat would find a
    // newer one every time and send none
    let ids: Vec<i64> = first.iter().map(|r| r.id).collect();
    assert!(s.obsolete_deliveries(&ids).await.unwrap().is_empty());
    // the relay is down: every try fails, and they are tried again later
    for r in &first {
        let retry = DeliveryOutcome::Retry {
            error: "421 try later".into(),
            retry_at: now + Duration::minutes(1),
        };
        assert!(
            s.record_delivery(r.id, r.attempts, &retry, now)
                .await
                .unwrap()
        );
    }
    let later = now + Duration::minutes(2);
    let mut claimed = s.claim_deliveries(later, lease, 100).await.unwrap();
    claimed.sort_by_key(|r| r.id);
    assert_eq!(claimed.len(), 7);
    let id = |i: usize| claimed[i].id;
    // the newest to left@ died (its address refused for good): it replaces nothing
    let dead = DeliveryOutcome::Dead {
        error: "550 no such user".into(),
    };
    assert!(
        s.record_delivery(id(6), claimed[6].attempts, &dead, now)
            .await
            .unwrap()
    );
    let waiting: Vec<i64> = (0..6).map(id).collect();
    let mut gone = s.obsolete_deliveries(&waiting).await.unwrap();
    gone.sort();
    assert_eq!(gone, [id(0), id(1)]);
    let obsolete = s.list_outbox(&["obsolete"], 10).await.unwrap();
    assert!(
        obsolete.iter().all(|r| r.last_error.as_deref()
            == Some("not sent: a newer still-overdue notice to the same recipient replaces it")),
        "{obsolete:?}"
    );
    assert!(s.obsolete_deliveries(&waiting).await.unwrap().is_empty());
}

/// I4 at delivery: a reminder or escalation message still waiting (a relay down, a sender
/// dead mid-lease) when its workflow is completed or cancelled is not sent, nor is a reminder
/// of a level the workflow has left; events and the messages of open workflows go on.
async fn deliveries_of_workflows_that_moved_on_are_never_sent(db: &TestDb) {
    let s = &db.store;
    let now = t0() + Duration::hours(23);
    let [
        completed,
        cancelled,
        escalated,
        open,
        advanced,
        reassigned,
        old,
    ] = [
        create(s, "MO-1").await,
        create(s, "MO-2").await,
        create(s, "MO-3").await,
        create(s, "MO-4").await,
        create(s, "MO-5").await,
        create(s, "MO-6").await,
        create(s, "MO-7").await,
    ];
    let mut tx = s.begin_batch().await.unwrap();
    for (w, level) in [
        (&completed, 0),
        (&cancelled, 0),
        (&escalated, 1),
        (&open, 0),
        (&advanced, 0),
        (&reassigned, 0),
        (&old, 0),
    ] {
        let mut e = remind(w, now, None);
        // `escalated`'s reminder is of level 1: the workflow (at 0 here) is elsewhere now
        e.outbox[0].payload = serde_json::json!({
            "kind": "reminder", "level": level, "cycle": w.cycle, "assignee_id": w.assignee,
        });
        if w.id == old.id {
            // written before reminders named their cycle and assignee: judged by its level
            e.outbox[0].payload = serde_json::json!({ "kind": "reminder", "level": 0 });
        }
        e.outbox.push(NewOutbox {
            channel: "email",
            recipient: "boss@example.com".into(),
            workflow_id: Some(w.id),
            payload: serde_json::json!({ "kind": "escalation", "level": 1 }),
            idempotency_key: format!("escalate:{}:email", w.id),
        });
        e.outbox.push(NewOutbox {
            channel: "event",
            recipient: "https://hooks.example.com/escalator".into(),
            workflow_id: Some(w.id),
            payload: serde_json::json!({ "kind": "escalation", "level": 1 }),
            idempotency_key: format!("event:escalate:{}", w.id),
        });
        // a message naming its holder (the escalation emails above, written before messages
        // did, are judged by the workflow's status alone): judged as a reminder is
        e.outbox.push(NewOutbox {
            channel: "email",
            recipient: "still-overdue@example.com".into(),
            workflow_id: Some(w.id),
            payload: serde_json::json!({
                "kind": "exhausted", "level": 0, "cycle": w.cycle,
                "assignee_id": w.assignee, "holder_id": w.assignee,
            }),
            idempotency_key: format!("exhausted:{}:email", w.id),
        });
        tx.apply(&e, now).await.unwrap();
    }
    tx.commit().await.unwrap();
    let later = now + Duration::minutes(5);
    s.transition(completed.id, &Transition::Complete, &ctx(later))
        .await
        .unwrap();
    s.transition(cancelled.id, &Transition::Cancel, &ctx(later))
        .await
        .unwrap();
    let next_stage = Transition::Advance {
        stage: "Finance".into(),
        assignee: None,
    };
    let to_zoe = Transition::Reassign { to: "zoe".into() };
    for (w, t) in [
        (&advanced, &next_stage),
        (&reassigned, &to_zoe),
        (&old, &to_zoe),
    ] {
        s.transition(w.id, t, &ctx(later)).await.unwrap();
    }

    let claimed = s
        .claim_deliveries(later, std::time::Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 28);
    let channel_of = |id: &i64| {
        claimed
            .iter()
            .find(|r| r.id == *id)
            .map(|r| r.channel.clone())
            .unwrap()
    };
    let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    let gone = s.obsolete_deliveries(&ids).await.unwrap();
    // the reminders and escalation emails of the closed two, the reminders of the left
    // level, the left stage and the former assignee, and the "still overdue" emails of all
    // but the two still where they were
    assert_eq!(
        gone.iter().map(channel_of).collect::<Vec<_>>(),
        ["email"; 12]
    );
    let obsolete = s.list_outbox(&["obsolete"], 100).await.unwrap();
    let mut why: Vec<(Uuid, String, String)> = obsolete
        .iter()
        .map(|r| {
            (
                r.workflow_id.unwrap(),
                r.payload["kind"].as_str().unwrap().to_owned(),
                r.last_error.clone().unwrap_or_default(),
            )
        })
        .collect();
    why.sort();
    let mut want = vec![
        (
            completed.id,
            "escalation".to_owned(),
            "not sent: the workflow is completed since".to_owned(),
        ),
        (
            completed.id,
            "reminder".to_owned(),
            "not sent: the workflow is completed since".to_owned(),
        ),
        (
            cancelled.id,
            "escalation".to_owned(),
            "not sent: the workflow is cancelled since".to_owned(),
        ),
        (
            cancelled.id,
            "reminder".to_owned(),
            "not sent: the workflow is cancelled since".to_owned(),
        ),
        (
            escalated.id,
            "reminder".to_owned(),
            "not sent: the workflow was escalated since".to_owned(),
        ),
        (
            advanced.id,
            "reminder".to_owned(),
            "not sent: the workflow moved to another stage since".to_owned(),
        ),
        (
            reassigned.id,
            "reminder".to_owned(),
            "not sent: the workflow was reassigned since".to_owned(),
        ),
        (
            completed.id,
            "exhausted".to_owned(),
            "not sent: the workflow is completed since".to_owned(),
        ),
        (
            cancelled.id,
            "exhausted".to_owned(),
            "not sent: the workflow is cancelled since".to_owned(),
        ),
        (
            advanced.id,
            "exhausted".to_owned(),
            "not sent: the workflow moved to another stage since".to_owned(),
        ),
        (
            reassigned.id,
            "exhausted".to_owned(),
            "not sent: the workflow was reassigned since".to_owned(),
        ),
        (
            old.id,
            "exhausted".to_owned(),
            "not sent: the workflow was reassigned since".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(why, want);
    // a second pass finds nothing more; the rest is sent as usual
    assert!(s.obsolete_deliveries(&ids).await.unwrap().is_empty());
    let mut rest: Vec<(Uuid, String)> = claimed
        .iter()
        .filter(|r| !gone.contains(&r.id))
        .map(|r| (r.workflow_id.unwrap(), r.channel.clone()))
        .collect();
    rest.sort();
    let mut want = vec![
        (completed.id, "event".to_owned()),
        (cancelled.id, "event".to_owned()),
        (escalated.id, "email".to_owned()),
        (escalated.id, "email".to_owned()),
        (escalated.id, "event".to_owned()),
        (open.id, "email".to_owned()),
        (open.id, "email".to_owned()),
        (open.id, "email".to_owned()),
        (open.id, "event".to_owned()),
        (advanced.id, "email".to_owned()),
        (advanced.id, "event".to_owned()),
        (reassigned.id, "email".to_owned()),
        (reassigned.id, "event".to_owned()),
        (old.id, "email".to_owned()),
        (old.id, "email".to_owned()),
        (old.id, "event".to_owned()),
    ];
    want.sort();
    assert_eq!(rest, want);
}

/// A user write waits for the rounds in flight, and every new round queues behind it: the
/// wait is bounded, so a round left open (or a forgotten transaction holding a workflow the
/// re-arm needs) fails the user write as unavailable instead of stopping every round.
#[tokio::test]
async fn a_user_write_waits_for_a_round_at_most_its_patience_on_postgres() {
    let db = TestDb::postgres().await;
    let s = &db.store;
    let round = s.begin_batch().await.unwrap();
    let err = s
        .upsert_users(&[reporting_to("alice", None)])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // and a round that begins afterwards is not held up by it
    round.commit().await.unwrap();
    let next = s.begin_batch().await.unwrap();
    next.commit().await.unwrap();
    s.upsert_users(&[reporting_to("alice", None)])
        .await
        .unwrap();
}

/// A claim that waited on a reassign's row lock reread the workflow (the new assignee) but
/// joined the old assignee's user rows to it: the new assignee had no manager, and the round
/// exhausted a workflow whose manager was there.
#[tokio::test]
async fn a_claim_waiting_on_a_reassign_reads_the_new_assignees_manager_on_postgres() {
    let db = TestDb::postgres().await;
    let s = &db.store;
    let Store::Postgres(pg) = s else {
        unreachable!()
    };
    s.upsert_users(&[
        reporting_to("am", None),
        reporting_to("bm", None),
        reporting_to("alice", Some("am")),
        reporting_to("bob", Some("bm")),
    ])
    .await
    .unwrap();
    let (one, other) = (create(s, "REASSIGN-1").await, create(s, "REASSIGN-2").await);
    let as_of = t0() + Duration::days(3);
    for claim_one in [true, false] {
        let w = if claim_one { &one } else { &other };
        let mut reassign = pg.pool().begin().await.unwrap();
        sqlx::query("UPDATE workflows SET assignee = 'bob', version = version + 1 WHERE id = $1")
            .bind(w.id)
            .execute(&mut *reassign)
            .await
            .unwrap();
        let store = s.clone();
        let id = w.id;
        let claim = tokio::spawn(async move {
            let mut round = store.begin_batch().await.unwrap();
            let due = if claim_one {
                round.claim_one(id, as_of).await.unwrap()
            } else {
                let range = DueRange::default();
                let patience = std::time::Duration::from_secs(30);
                let due = round.claim_due_waiting_in(as_of, &range, 10, patience);
                due.await
                    .unwrap()
                    .unwrap()
                    .into_iter()
                    .find(|d| d.workflow.id == id)
            };
            round.rollback().await.unwrap();
            due
        });
        // the claim waits on the reassign's row lock
        let started = std::time::Instant::now();
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                 WHERE NOT l.granted AND a.datname = current_database()",
            )
            .fetch_one(pg.pool())
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(started.elapsed().as_secs() < 30, "the claim never waited");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        reassign.commit().await.unwrap();
        let due = claim.await.unwrap().expect("still due after the reassign");
        assert_eq!(due.workflow.assignee, "bob");
        assert_eq!(
            due.assignee_manager.as_deref(),
            Some("bm"),
            "claim_one: {claim_one}"
        );
    }
}

/// PostgreSQL takes an audit row's id at INSERT but shows the row at COMMIT: a batch still
/// running holds a lower id than a transition committed meanwhile. A reader paging by id
/// passed the batch's rows for good; paged in commit order, it sees every row once.
#[tokio::test]
async fn the_global_audit_log_pages_in_commit_order_on_postgres() {
    let db = TestDb::postgres().await;
    let s = &db.store;
    let a = create(s, "AUD-1").await;
    let now = t0() + Duration::hours(23);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(&remind(&a, now, None), now).await.unwrap();
    create(s, "AUD-2").await;
    let (first, cursor) = s.list_audit(None, 100).await.unwrap();
    tx.commit().await.unwrap();
    let (rest, end) = audit_log_from(s, cursor, 3 - first.len()).await;
    let seen: Vec<&AuditEntry> = first.iter().chain(&rest).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let ids: std::collections::HashSet<i64> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3, "each row once: {seen:?}");
    assert_eq!(
        seen.iter().filter(|e| e.action == "remind").count(),
        1,
        "{seen:?}"
    );
    // the position after the last row finds nothing more, and keeps its place
    let end = end.or(cursor);
    let (none, kept) = s.list_audit(end, 100).await.unwrap();
    assert!(none.is_empty() && kept.is_none(), "{none:?}");
    // a later row is found from there
    create(s, "AUD-3").await;
    let (later, _) = audit_log_from(s, end, 1).await;
    assert_eq!(later.len(), 1, "{later:?}");
}

/// The global audit log from `after` on, read until it holds `n` rows (at most 30 s): on
/// PostgreSQL a row is shown once every older transaction of the cluster has ended, and the
/// tests running beside this one keep some open for a moment.
async fn audit_log_from(
    s: &Store,
    after: Option<AuditPosition>,
    n: usize,
) -> (Vec<AuditEntry>, Option<AuditPosition>) {
    let started = std::time::Instant::now();
    let (mut rows, mut cursor) = (Vec::new(), after);
    loop {
        let (more, next) = s.list_audit(cursor, 1000).await.unwrap();
        rows.extend(more);
        cursor = next.or(cursor);
        if rows.len() >= n || started.elapsed() > std::time::Duration::from_secs(30) {
            let last = if rows.is_empty() { None } else { cursor };
            return (rows, last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A dump restored into another PostgreSQL cluster brings transaction ids that cluster has
/// not reached: the global log would hide those rows. `migrate` clears them, the only
/// change the append-only log accepts.
#[tokio::test]
async fn audit_rows_restored_from_another_cluster_are_shown_after_migrate() {
    let db = TestDb::postgres().await;
    let s = &db.store;
    create(s, "RST-1").await;
    let Store::Postgres(pg) = s else {
        unreachable!()
    };
    // a row as a restore leaves it: written by a transaction far beyond this cluster's
    sqlx::query(
        "INSERT INTO audit_logs (workflow_id, action, reason, actor, from_assignee, to_assignee,
                                 level, cycle, policy_version, elapsed_seconds, check_run_id,
                                 details, created_at, xact_id)
         SELECT workflow_id, action, reason, 'restored', from_assignee, to_assignee, level,
                cycle, policy_version, elapsed_seconds, check_run_id, details, created_at,
                (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8
         FROM audit_logs",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    let actors = |page: Vec<AuditEntry>| page.into_iter().map(|e| e.actor).collect::<Vec<_>>();
    // this cluster's row shows (once the tests beside this one let it), the restored one not
    assert_eq!(actors(audit_log_from(s, None, 1).await.0).len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(actors(s.list_audit(None, 10).await.unwrap().0).len(), 1);
    // other changes are refused as before
    let err = sqlx::query("UPDATE audit_logs SET xact_id = NULL, actor = 'mallory'")
        .execute(pg.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    s.migrate().await.unwrap();
    let all = actors(audit_log_from(s, None, 2).await.0);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.contains(&"restored".to_owned()), "{all:?}");
    // and a second migrate finds nothing to clear: this cluster's own rows keep their ids
    create(s, "RST-2").await;
    s.migrate().await.unwrap();
    let xacts: i64 = sqlx::query_scalar("SELECT count(xact_id) FROM audit_logs")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(xacts, 1);
}
