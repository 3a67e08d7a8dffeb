//! Held deliveries and digests on both backends: a run's held rows are decided exactly once,
//! by the release that follows the transaction finishing the run (a group per transaction,
//! whole), or — for a run that never finishes — by the stale release.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use escalator_store::*;
use escalator_testkit::TestDb;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&escalator_testkit::TestDb::postgres().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&escalator_testkit::TestDb::sqlite().await).await;
                }
            )*
        }
    };
}

on_both!(
    held_rows_become_one_digest_when_their_run_finishes,
    held_rows_of_a_run_that_never_finishes_are_released_once_they_are_stale,
    a_run_with_more_groups_than_one_release_takes_is_released_whole,
    a_threshold_beyond_what_is_stored_is_released_like_any_other,
    a_digest_leaves_out_the_workflows_closed_before_its_run_ended,
    a_run_whose_held_rows_cannot_be_released_holds_up_no_other,
    a_group_larger_than_one_release_takes_goes_in_even_slices,
);

/// A digest listed escalations of workflows completed before its run ended; nothing looked at
/// them again (a digest has no workflow of its own). They are left out of it and go out alone,
/// where the sender finds them closed and marks them obsolete.
async fn a_digest_leaves_out_the_workflows_closed_before_its_run_ended(db: &TestDb) {
    let s = &db.store;
    let mut ids = Vec::new();
    for i in 0..7 {
        let new = escalator_testkit::new_workflow(&format!("D-{i}"), now());
        ids.push(s.create_workflow(&new, now()).await.unwrap().workflow.id);
    }
    let id = run(s, 1).await;
    let rows: Vec<NewOutbox> = ids
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut o = email(&format!("d{i}"), "head@example.com");
            o.workflow_id = Some(*w);
            o.held_for_digest("head", 4)
        })
        .collect();
    // the run's batch holds them; two workflows are completed before the digests are decided
    let effects = BatchEffects {
        check_run_id: Some(id),
        batch_index: Some(0),
        outbox: rows,
        ..Default::default()
    };
    let ctx = TransitionContext {
        actor: "alice".into(),
        reason: AuditReason::Api,
        expected_version: None,
        comment: None,
        now: now(),
        idempotency_key: None,
    };
    let mut tx = s.begin_batch().await.unwrap();
    let applied = tx.apply(&effects, now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((applied.held, applied.run_completed), (7, true));
    for w in [ids[1], ids[5]] {
        s.transition(w, &Transition::Complete, &ctx).await.unwrap();
    }
    // five still open (> 4): one digest listing them; the two closed alone
    assert_eq!(s.release_run_held(id, now()).await.unwrap(), 3);
    let rows = s.list_outbox(&[], 100).await.unwrap();
    let digest = rows.iter().find(|o| o.payload["kind"] == "digest").unwrap();
    assert_eq!(digest.payload["count"], 5);
    let listed: Vec<&str> = digest.payload["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["d0", "d2", "d3", "d4", "d6"]);
    let mut alone: Vec<_> = rows
        .iter()
        .filter(|o| o.payload["kind"] == "escalation")
        .map(|o| o.workflow_id.unwrap())
        .collect();
    alone.sort();
    let mut closed = vec![ids[1], ids[5]];
    closed.sort();
    assert_eq!(alone, closed);
    // and they are not sent: their workflows are closed
    let claimed: Vec<i64> = rows
        .iter()
        .filter(|o| o.payload["kind"] == "escalation")
        .map(|o| o.id)
        .collect();
    let mut obsolete = s.obsolete_deliveries(&claimed).await.unwrap();
    obsolete.sort();
    assert_eq!(obsolete, claimed);
}

/// SQLite stored a threshold above i32::MAX as it was and could not read it back: the release
/// of its run failed, every group held beside it included, on every sweep. PostgreSQL
/// clamped it; both do now.
async fn a_threshold_beyond_what_is_stored_is_released_like_any_other(db: &TestDb) {
    let s = &db.store;
    let id = run(s, 1).await;
    let rows = vec![
        email("huge", "head@example.com").held_for_digest("head", u32::MAX),
        email("other", "other@example.com").held_for_digest("other", 5),
    ];
    let a = apply(s, id, 0, rows).await;
    assert_eq!((a.held, a.run_completed), (2, true));
    assert_eq!(s.release_run_held(id, now()).await.unwrap(), 2);
    assert_eq!(
        keys(s).await,
        ["escalate:huge:email", "escalate:other:email"]
    );
}

fn now() -> DateTime<Utc> {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

fn email(key: &str, to: &str) -> NewOutbox {
    NewOutbox {
        channel: "email",
        recipient: to.into(),
        workflow_id: None,
        payload: serde_json::json!({
            "to": [to], "cc": [], "subject": format!("Escalated {key}"), "title": key,
            "kind": "escalation",
        }),
        idempotency_key: format!("escalate:{key}:email"),
    }
}

async fn run(s: &Store, batches: i32) -> i64 {
    escalator_testkit::started_run(s, "cli", batches, now()).await
}

async fn apply(s: &Store, run: i64, index: i32, outbox: Vec<NewOutbox>) -> Applied {
    let effects = BatchEffects {
        check_run_id: Some(run),
        batch_index: Some(index),
        outbox,
        ..Default::default()
    };
    let mut tx = s.begin_batch().await.unwrap();
    let applied = tx.apply(&effects, now()).await.unwrap();
    tx.commit().await.unwrap();
    applied
}

async fn keys(s: &Store) -> Vec<String> {
    let mut k: Vec<String> = s
        .list_outbox(&[], 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.idempotency_key)
        .collect();
    k.sort();
    k
}

async fn held_rows_become_one_digest_when_their_run_finishes(db: &TestDb) {
    let s = &db.store;
    let id = run(s, 2).await;
    // batch 0: four escalations to the head are held; a reminder goes out at once
    let mut rows: Vec<NewOutbox> = (0..4)
        .map(|i| email(&format!("h{i}"), "head@example.com").held_for_digest("head", 5))
        .collect();
    rows.push(email("direct", "mgr@example.com"));
    let a = apply(s, id, 0, rows).await;
    assert_eq!((a.outbox, a.held, a.run_completed), (1, 4, false));
    assert_eq!(keys(s).await, ["escalate:direct:email"]);
    // batch 1 finishes the run: 7 for the head (> 5) make one digest; 1 for solo goes as is
    let mut rows: Vec<NewOutbox> = (4..7)
        .map(|i| email(&format!("h{i}"), "head@example.com").held_for_digest("head", 5))
        .collect();
    rows.push(email("solo", "solo@example.com").held_for_digest("solo", 5));
    let b = apply(s, id, 1, rows).await;
    assert!(b.run_completed);
    assert_eq!((b.held, b.outbox), (4, 0), "the finishing batch only holds");
    // the worker that finished the run decides its digests next; a second decision (a
    // drain or the sweep racing it) finds nothing
    assert_eq!(
        s.release_run_held(id, now()).await.unwrap(),
        2,
        "released: the digest and solo's row"
    );
    assert_eq!(s.release_run_held(id, now()).await.unwrap(), 0);
    let digest_key = keys(s)
        .await
        .into_iter()
        .find(|k| k.starts_with("digest:"))
        .unwrap();
    assert!(
        digest_key.starts_with(&format!("digest:{id}:head:email:")),
        "{digest_key}"
    );
    assert_eq!(keys(s).await.len(), 3);
    let digest = s
        .list_outbox(&[], 100)
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.idempotency_key == digest_key)
        .unwrap();
    assert_eq!(digest.payload["count"], 7);
    assert_eq!(
        digest.payload["to"],
        serde_json::json!(["head@example.com"])
    );
    assert_eq!(digest.payload["items"][6]["title"], "h6");
    assert!(digest.payload.get("hold").is_none());
    assert_eq!(digest.check_run_id, Some(id));
    // nothing is left to release, now or later
    assert_eq!(
        s.release_stale_held(
            now() + Duration::hours(5),
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(keys(s).await.len(), 3);
}

/// A run whose held rows cannot be released (one no longer decodes) holds up neither the other
/// runs' nor the caller: the stale release returned its error, and a drain, which releases
/// before it claims, sent nothing at all while the row stayed.
async fn a_run_whose_held_rows_cannot_be_released_holds_up_no_other(db: &TestDb) {
    let s = &db.store;
    let broken = run(s, 2).await;
    let sound = run(s, 2).await;
    for (id, key) in [(broken, "b"), (sound, "s")] {
        let rows: Vec<NewOutbox> = (0..2)
            .map(|i| email(&format!("{key}{i}"), "head@example.com").held_for_digest("head", 5))
            .collect();
        apply(s, id, 0, rows).await;
    }
    match s {
        Store::Postgres(p) => sqlx::query(
            "UPDATE outbox_held SET item = jsonb_set(item, '{channel}', '\"pigeon\"')
             WHERE check_run_id = $1",
        )
        .bind(broken)
        .execute(p.pool())
        .await
        .map(|_| ())
        .unwrap(),
        Store::Sqlite(q) => sqlx::query(
            "UPDATE outbox_held SET item = json_set(item, '$.channel', 'pigeon')
             WHERE check_run_id = ?1",
        )
        .bind(broken)
        .execute(q.pool())
        .await
        .map(|_| ())
        .unwrap(),
    }
    let later = now() + Duration::minutes(61);
    let hour = std::time::Duration::from_secs(3_600);
    assert_eq!(s.release_stale_held(later, hour).await.unwrap(), 2);
    assert_eq!(keys(s).await, ["escalate:s0:email", "escalate:s1:email"]);
    // the broken run's rows stay held, for someone to look at; nothing of them went out
    assert!(s.release_run_held(broken, later).await.is_err());
    // and the backlog says so: overdue since their hold ended, an hour after they were
    // written, although the two released rows became due only now
    let backlog = s.outbox_backlog(later).await.unwrap();
    assert_eq!((backlog.waiting, backlog.due), (2, 2));
    assert_eq!(backlog.due_since, Some(now() + Duration::hours(1)));
    assert_eq!(backlog.overdue_seconds(later), 60.0);
}

/// Thousands of escalations to one person in one run (a bulk import, a fixed `user:` level)
/// were one group released in one transaction: read, coalesced and written at once, the
/// worker's memory growing with them. They go in even slices of at most `RELEASE_ITEMS`, each
/// its own digest, every item in exactly one.
async fn a_group_larger_than_one_release_takes_goes_in_even_slices(db: &TestDb) {
    let s = &db.store;
    let id = run(s, 1).await;
    let many = usize::try_from(escalator_store::RELEASE_ITEMS).unwrap() * 2 + 100;
    let rows: Vec<NewOutbox> = (0..many)
        .map(|i| email(&format!("m{i:04}"), "head@example.com").held_for_digest("head", 5))
        .collect();
    assert!(apply(s, id, 0, rows).await.run_completed);
    assert_eq!(
        s.release_run_held(id, now()).await.unwrap(),
        3,
        "three digests"
    );
    assert_eq!(s.release_run_held(id, now()).await.unwrap(), 0);
    let digests: Vec<OutboxEntry> = s
        .list_outbox(&[], 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.idempotency_key.starts_with("digest:"))
        .collect();
    let counts: Vec<u64> = digests
        .iter()
        .map(|d| d.payload["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [367, 367, 366]);
    let mut titles: Vec<String> = digests
        .iter()
        .flat_map(|d| d.payload["items"].as_array().unwrap().clone())
        .map(|i| i["title"].as_str().unwrap().to_owned())
        .collect();
    titles.sort();
    titles.dedup();
    assert_eq!(titles.len(), many, "every item listed once");
}

async fn held_rows_of_a_run_that_never_finishes_are_released_once_they_are_stale(db: &TestDb) {
    let s = &db.store;
    let id = run(s, 2).await;
    let rows: Vec<NewOutbox> = (0..2)
        .map(|i| email(&format!("s{i}"), "head@example.com").held_for_digest("head", 5))
        .collect();
    apply(s, id, 0, rows).await;
    let hour = std::time::Duration::from_secs(3_600);
    // the run may still finish: nothing is released yet
    assert_eq!(s.release_stale_held(now(), hour).await.unwrap(), 0);
    assert!(keys(s).await.is_empty());
    // an hour later it has not: the rows go out as they are, once
    let later = now() + Duration::minutes(61);
    assert_eq!(s.release_stale_held(later, hour).await.unwrap(), 2);
    assert_eq!(s.release_stale_held(later, hour).await.unwrap(), 0);
    assert_eq!(keys(s).await, ["escalate:s0:email", "escalate:s1:email"]);
    // the run's last batch arrives after all: nothing is held any more, nothing doubles
    let b = apply(s, id, 1, Vec::new()).await;
    assert!(b.run_completed);
    assert_eq!(s.release_run_held(id, now()).await.unwrap(), 0);
    assert_eq!(keys(s).await.len(), 2);
}

async fn a_run_with_more_groups_than_one_release_takes_is_released_whole(db: &TestDb) {
    let s = &db.store;
    let id = run(s, 1).await;
    let people = usize::try_from(escalator_store::RELEASE_ITEMS).unwrap() * 2 + 7;
    let mut rows: Vec<NewOutbox> = (0..people)
        .map(|i| {
            let who = format!("p{i:03}");
            email(&format!("one-{who}"), &format!("{who}@example.com")).held_for_digest(&who, 5)
        })
        .collect();
    // and one person over the threshold, whose group sorts last
    rows.extend(
        (0..6).map(|i| email(&format!("z{i}"), "zed@example.com").held_for_digest("zz", 5)),
    );
    let a = apply(s, id, 0, rows).await;
    assert!(a.run_completed);
    assert_eq!(
        s.release_run_held(id, now()).await.unwrap(),
        people as u64 + 1,
        "one row per person, one digest for zz"
    );
    assert_eq!(
        s.table_counts().await.unwrap().outbox,
        i64::try_from(people).unwrap() + 1
    );
    let digests = s
        .list_outbox(&[], 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.idempotency_key.starts_with("digest:"))
        .count();
    assert_eq!(digests, 1);
    assert_eq!(s.release_run_held(id, now()).await.unwrap(), 0);
}
