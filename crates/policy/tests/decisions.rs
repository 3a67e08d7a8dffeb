//! Table-driven tests of the pure decision with the seed's default policy and its variants.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns are not covered by allow-unwrap-in-tests"
)]

use chrono::{DateTime, TimeDelta, TimeZone, Utc, Weekday};
use escalator_policy::{
    AfterLast, Calendar, CalendarSpec, Deadlines, Decision, Exhaustion, LevelSpec, Policy,
    PolicySpec, SlaStatus, Snapshot, Status, Target, Warning, WindowSpec, evaluate,
    evaluate_applied, next_check_at, schedule, sla_status,
};

const HOUR: i64 = 3_600;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
}

fn at(h: i64, m: i64, s: i64) -> DateTime<Utc> {
    start() + TimeDelta::seconds(h * HOUR + m * 60 + s)
}

fn snapshot(policy: &Policy) -> Snapshot {
    Snapshot {
        status: Status::Pending,
        level: 0,
        deadlines: schedule(start(), 0, 0, policy, None).unwrap(),
        reminded: false,
        exhausted: false,
        assignee: "alice".into(),
        assignee_manager: Some("bob".into()),
        escalation_target: Some("erin".into()),
        passed_over: Default::default(),
    }
}

fn repeat_policy() -> Policy {
    Policy::new(PolicySpec {
        after_last: AfterLast::Repeat {
            every_seconds: HOUR,
        },
        ..Policy::default_policy().spec().clone()
    })
    .unwrap()
}

#[test]
fn the_default_policy_warns_at_22h_and_is_due_at_24h() {
    let deadlines = schedule(start(), 0, 0, &Policy::default_policy(), None).unwrap();
    assert_eq!(
        deadlines,
        Deadlines {
            warn_at: Utc.with_ymd_and_hms(2026, 11, 24, 22, 0, 0).unwrap(),
            due_at: Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap(),
        }
    );
}

/// (now, reminded, escalation_target override, expected SLA status, expected decision)
type Row = (
    DateTime<Utc>,
    bool,
    Option<&'static str>,
    SlaStatus,
    Decision,
);

#[test]
fn the_default_policy_follows_the_seed_table() {
    let policy = Policy::default_policy();
    let escalated = |target: &str| Decision::Escalate {
        level: 1,
        target: target.into(),
        deadlines: schedule(at(24, 0, 0), 0, 1, &policy, None).unwrap(),
    };
    let table: Vec<Row> = vec![
        (
            at(0, 0, 0),
            false,
            Some("erin"),
            SlaStatus::Ok,
            Decision::Nothing,
        ),
        (
            at(21, 59, 59),
            false,
            Some("erin"),
            SlaStatus::Ok,
            Decision::Nothing,
        ),
        (
            at(22, 0, 0),
            false,
            Some("erin"),
            SlaStatus::Warning,
            Decision::Remind { level: 0 },
        ),
        (
            at(23, 59, 59),
            false,
            Some("erin"),
            SlaStatus::Warning,
            Decision::Remind { level: 0 },
        ),
        (
            at(23, 0, 0),
            true,
            Some("erin"),
            SlaStatus::Warning,
            Decision::Nothing,
        ),
        (
            at(24, 0, 0),
            false,
            Some("erin"),
            SlaStatus::Breached,
            escalated("erin"),
        ),
        // A reminder already sent does not stop the escalation.
        (
            at(24, 0, 0),
            true,
            Some("erin"),
            SlaStatus::Breached,
            escalated("erin"),
        ),
        // Without an override, level 1 (`manager`) goes to the assignee's manager.
        (
            at(24, 0, 0),
            true,
            None,
            SlaStatus::Breached,
            escalated("bob"),
        ),
        // A blank override is no override.
        (
            at(24, 0, 0),
            true,
            Some(" "),
            SlaStatus::Breached,
            escalated("bob"),
        ),
    ];
    for (now, reminded, target, status, decision) in table {
        let snapshot = Snapshot {
            reminded,
            escalation_target: target.map(str::to_owned),
            ..snapshot(&policy)
        };
        let label = format!("now={now} reminded={reminded} override={target:?}");
        assert_eq!(sla_status(&snapshot.deadlines, now), status, "{label}");
        assert_eq!(evaluate(&snapshot, &policy, None, now), decision, "{label}");
    }
}

#[test]
fn an_escalation_gives_the_new_level_fresh_deadlines_from_now() {
    let policy = Policy::default_policy();
    let now = at(25, 30, 0);
    let Decision::Escalate { deadlines, .. } = evaluate(&snapshot(&policy), &policy, None, now)
    else {
        panic!("expected an escalation");
    };
    assert_eq!(deadlines.warn_at, now + TimeDelta::hours(22));
    assert_eq!(deadlines.due_at, now + TimeDelta::hours(24));
}

#[test]
fn a_late_check_judges_at_its_as_of_and_starts_the_new_level_when_it_is_applied() {
    let policy = Policy::default_policy();
    // due at 24:00; the check for 24:15 runs three hours late
    let (as_of, applied_at) = (at(24, 15, 0), at(27, 15, 0));
    let Decision::Escalate { deadlines, .. } =
        evaluate_applied(&snapshot(&policy), &policy, None, as_of, applied_at)
    else {
        panic!("expected an escalation");
    };
    assert_eq!(deadlines.warn_at, applied_at + TimeDelta::hours(22));
    assert_eq!(deadlines.due_at, applied_at + TimeDelta::hours(24));

    // what is due is judged at as_of: in the warning window then, breached by the time it runs
    assert_eq!(
        evaluate_applied(
            &snapshot(&policy),
            &policy,
            None,
            at(23, 0, 0),
            at(25, 0, 0)
        ),
        Decision::Remind { level: 0 }
    );

    // a check about the future never dates the new level before its as_of
    let future = at(30, 0, 0);
    let Decision::Escalate { deadlines, .. } =
        evaluate_applied(&snapshot(&policy), &policy, None, future, at(1, 0, 0))
    else {
        panic!("expected an escalation");
    };
    assert_eq!(deadlines.due_at, future + TimeDelta::hours(24));

    // renotifications repeat from when the last one was made
    let exhausted = Snapshot {
        status: Status::Escalated,
        level: 1,
        deadlines: schedule(at(24, 0, 0), 0, 1, &policy, None).unwrap(),
        reminded: true,
        exhausted: true,
        ..snapshot(&repeat_policy())
    };
    assert_eq!(
        evaluate_applied(
            &exhausted,
            &repeat_policy(),
            None,
            at(49, 0, 0),
            at(52, 0, 0)
        ),
        Decision::Renotify {
            level: 1,
            next_check_at: at(53, 0, 0),
        }
    );
}

#[test]
fn the_last_level_breaching_is_recorded_once_then_nothing_with_stop() {
    let policy = Policy::default_policy();
    let level_one = Snapshot {
        status: Status::Escalated,
        level: 1,
        deadlines: schedule(at(24, 0, 0), 0, 1, &policy, None).unwrap(),
        reminded: true,
        assignee: "erin".into(),
        assignee_manager: None,
        ..snapshot(&policy)
    };
    let now = at(48, 0, 0);
    assert_eq!(
        evaluate(&level_one, &policy, None, now),
        Decision::Exhausted {
            level: 1,
            reason: Exhaustion::ChainEnd,
            next_check_at: None,
        }
    );
    let recorded = Snapshot {
        exhausted: true,
        ..level_one
    };
    assert_eq!(evaluate(&recorded, &policy, None, now), Decision::Nothing);
    assert_eq!(
        evaluate(&recorded, &policy, None, now + TimeDelta::days(30)),
        Decision::Nothing
    );
    assert_eq!(next_check_at(&recorded), None);
}

#[test]
fn a_repeat_policy_records_exhaustion_then_renotifies_every_interval() {
    let policy = repeat_policy();
    let level_one = Snapshot {
        status: Status::Escalated,
        level: 1,
        deadlines: schedule(at(24, 0, 0), 0, 1, &policy, None).unwrap(),
        reminded: true,
        ..snapshot(&policy)
    };
    let now = at(48, 0, 0);
    assert_eq!(
        evaluate(&level_one, &policy, None, now),
        Decision::Exhausted {
            level: 1,
            reason: Exhaustion::ChainEnd,
            next_check_at: Some(at(49, 0, 0)),
        }
    );
    let recorded = Snapshot {
        exhausted: true,
        ..level_one
    };
    assert_eq!(
        evaluate(&recorded, &policy, None, at(49, 0, 0)),
        Decision::Renotify {
            level: 1,
            next_check_at: at(50, 0, 0),
        }
    );
}

#[test]
fn workflows_that_are_not_open_are_left_alone() {
    let policy = Policy::default_policy();
    for status in [Status::OnHold, Status::Completed, Status::Cancelled] {
        let snapshot = Snapshot {
            status,
            ..snapshot(&policy)
        };
        for now in [at(22, 0, 0), at(24, 0, 0), at(100, 0, 0)] {
            assert_eq!(
                evaluate(&snapshot, &policy, None, now),
                Decision::Nothing,
                "{status}"
            );
        }
        assert_eq!(next_check_at(&snapshot), None, "{status}");
    }
}

#[test]
fn a_manager_target_without_a_manager_exhausts_with_no_target() {
    for policy in [Policy::default_policy(), repeat_policy()] {
        let orphan = Snapshot {
            assignee_manager: None,
            escalation_target: None,
            ..snapshot(&policy)
        };
        let now = at(24, 0, 0);
        let next_check = match policy.spec().after_last {
            AfterLast::Stop => None,
            AfterLast::Repeat { .. } => Some(at(25, 0, 0)),
        };
        assert_eq!(
            evaluate(&orphan, &policy, None, now),
            Decision::Exhausted {
                level: 0,
                reason: Exhaustion::NoTarget,
                next_check_at: next_check,
            }
        );
        let recorded = Snapshot {
            exhausted: true,
            ..orphan.clone()
        };
        let again = evaluate(&recorded, &policy, None, at(25, 0, 0));
        match policy.spec().after_last {
            AfterLast::Stop => assert_eq!(again, Decision::Nothing),
            AfterLast::Repeat { .. } => assert_eq!(
                again,
                Decision::Renotify {
                    level: 0,
                    next_check_at: at(26, 0, 0),
                }
            ),
        }
        // Once someone gives the assignee a manager, the workflow escalates after all.
        let fixed = Snapshot {
            assignee_manager: Some("bob".into()),
            ..recorded
        };
        assert!(matches!(
            evaluate(&fixed, &policy, None, at(26, 0, 0)),
            Decision::Escalate { level: 1, ref target, .. } if target == "bob"
        ));
    }
}

#[test]
fn the_override_applies_to_level_one_only() {
    let policy = Policy::new(PolicySpec {
        levels: vec![
            LevelSpec {
                target: Target::Manager,
                sla_seconds: 24 * HOUR,
            },
            LevelSpec {
                target: Target::User("vp".into()),
                sla_seconds: 24 * HOUR,
            },
        ],
        ..Policy::default_policy().spec().clone()
    })
    .unwrap();
    let level_one = Snapshot {
        status: Status::Escalated,
        level: 1,
        deadlines: schedule(at(24, 0, 0), 0, 1, &policy, None).unwrap(),
        ..snapshot(&policy)
    };
    assert!(matches!(
        evaluate(&level_one, &policy, None, at(48, 0, 0)),
        Decision::Escalate { level: 2, ref target, .. } if target == "vp"
    ));
}

fn chain(targets: &[Target]) -> Policy {
    Policy::new(PolicySpec {
        levels: targets
            .iter()
            .map(|t| LevelSpec {
                target: t.clone(),
                sla_seconds: 24 * HOUR,
            })
            .collect(),
        ..Policy::default_policy().spec().clone()
    })
    .unwrap()
}

/// Escalating from someone to themselves tells no one: a level naming only the holder is
/// passed over (an override kept across a new stage falls back to the policy's own target).
#[test]
fn a_level_naming_the_holder_is_passed_over() {
    let escalates = |d: Decision, want_level: u32, want: &str| match d {
        Decision::Escalate { level, target, .. } => {
            assert_eq!((level, target.as_str()), (want_level, want));
        }
        other => panic!("want escalate to {want} at {want_level}, got {other:?}"),
    };
    let breached = at(24, 0, 0);
    // carol, the override, was escalated to, then kept the workflow into a new stage: the
    // default policy's level 1 (her manager) is who hears of the next breach
    let default = Policy::default_policy();
    let carol = Snapshot {
        assignee: "carol".into(),
        assignee_manager: Some("dave".into()),
        escalation_target: Some("carol".into()),
        ..snapshot(&default)
    };
    escalates(evaluate(&carol, &default, None, breached), 1, "dave");
    // ... and with no manager, the workflow waits for one (no_target), as without an override
    let orphan = Snapshot {
        assignee_manager: None,
        ..carol.clone()
    };
    assert!(matches!(
        evaluate(&orphan, &default, None, breached),
        Decision::Exhausted {
            reason: Exhaustion::NoTarget,
            ..
        }
    ));
    // the director's own request goes over the director's level to the vp's
    let ladder = chain(&[Target::User("director".into()), Target::User("vp".into())]);
    let director = Snapshot {
        assignee: "director".into(),
        escalation_target: None,
        ..snapshot(&ladder)
    };
    escalates(evaluate(&director, &ladder, None, breached), 2, "vp");
    // a chain with no one above the holder ends
    let short = chain(&[Target::User("director".into())]);
    let top = Snapshot {
        deadlines: schedule(start(), 0, 0, &short, None).unwrap(),
        ..director
    };
    assert!(matches!(
        evaluate(&top, &short, None, breached),
        Decision::Exhausted {
            level: 0,
            reason: Exhaustion::ChainEnd,
            ..
        }
    ));
    // an override that is someone else still wins over the policy
    let alice = snapshot(&default);
    escalates(evaluate(&alice, &default, None, breached), 1, "erin");
}

/// A `manager` level whose holder has no manager (none recorded, one who left, or no user
/// record at all) is passed over to the chain's next level, as a level whose user has left is:
/// it stopped the chain, and the director or on-call named after it never heard of the breach.
#[test]
fn a_manager_level_without_a_manager_is_passed_over_to_the_next_level() {
    let breached = at(24, 0, 0);
    let ladder = chain(&[Target::Manager, Target::User("director".into())]);
    let orphan = Snapshot {
        assignee_manager: None,
        escalation_target: None,
        ..snapshot(&ladder)
    };
    match evaluate(&orphan, &ladder, None, breached) {
        Decision::Escalate { level, target, .. } => {
            assert_eq!((level, target.as_str()), (2, "director"))
        }
        other => panic!("want escalate to the director at 2, got {other:?}"),
    }
    // with a manager, level 1 is theirs as before
    let managed = Snapshot {
        assignee_manager: Some("bob".into()),
        ..orphan.clone()
    };
    assert!(matches!(
        evaluate(&managed, &ladder, None, breached),
        Decision::Escalate { level: 1, ref target, .. } if target == "bob"
    ));
    // and with the director gone too, it waits for someone (no_target), not at the chain's end
    let deserted = Snapshot {
        passed_over: ["director".to_string()].into_iter().collect(),
        ..orphan
    };
    assert!(matches!(
        evaluate(&deserted, &ladder, None, breached),
        Decision::Exhausted {
            level: 0,
            reason: Exhaustion::NoTarget,
            ..
        }
    ));
}

#[test]
fn a_level_naming_someone_who_has_left_is_passed_over() {
    let breached = at(24, 0, 0);
    let gone = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect();
    // the override has left: level 1 falls back to the policy's target, the manager
    let default = Policy::default_policy();
    let alice = Snapshot {
        passed_over: gone(&["erin"]),
        ..snapshot(&default)
    };
    match evaluate(&alice, &default, None, breached) {
        Decision::Escalate { level, target, .. } => {
            assert_eq!((level, target.as_str()), (1, "bob"))
        }
        other => panic!("want escalate to bob, got {other:?}"),
    }
    // the director named by level 1 has left: the vp of level 2 hears of it
    let ladder = chain(&[Target::User("director".into()), Target::User("vp".into())]);
    let clerk = Snapshot {
        escalation_target: None,
        passed_over: gone(&["director"]),
        ..snapshot(&ladder)
    };
    match evaluate(&clerk, &ladder, None, breached) {
        Decision::Escalate { level, target, .. } => assert_eq!((level, target.as_str()), (2, "vp")),
        other => panic!("want escalate to vp at 2, got {other:?}"),
    }
    // everyone above has left: no one can be reached, which is not the end of the chain
    let deserted = Snapshot {
        passed_over: gone(&["director", "vp"]),
        ..clerk
    };
    assert!(matches!(
        evaluate(&deserted, &ladder, None, breached),
        Decision::Exhausted {
            level: 0,
            reason: Exhaustion::NoTarget,
            ..
        }
    ));
}

#[test]
fn next_check_is_the_warning_until_reminded_then_the_deadline() {
    let policy = Policy::default_policy();
    let fresh = snapshot(&policy);
    assert_eq!(next_check_at(&fresh), Some(at(22, 0, 0)));
    let reminded = Snapshot {
        reminded: true,
        ..fresh.clone()
    };
    assert_eq!(next_check_at(&reminded), Some(at(24, 0, 0)));
    let exhausted = Snapshot {
        exhausted: true,
        ..fresh
    };
    assert_eq!(next_check_at(&exhausted), None);
}

/// Applies a decision the way the worker would, recording the flags that make it happen once.
fn apply(snapshot: &mut Snapshot, decision: &Decision) {
    match decision {
        Decision::Nothing | Decision::Renotify { .. } => {}
        Decision::Remind { .. } => snapshot.reminded = true,
        Decision::Escalate {
            level,
            target,
            deadlines,
        } => {
            snapshot.status = Status::Escalated;
            snapshot.level = *level;
            snapshot.assignee_manager = None;
            snapshot.assignee = target.clone();
            snapshot.deadlines = *deadlines;
            snapshot.reminded = false;
        }
        Decision::Exhausted { .. } => snapshot.exhausted = true,
    }
}

#[test]
fn sweeping_every_quarter_hour_reminds_and_escalates_each_level_exactly_once() {
    let policy = Policy::default_policy();
    let mut workflow = snapshot(&policy);
    let mut decisions = Vec::new();
    for quarter in 0..(4 * 24 * 4) {
        let now = start() + TimeDelta::minutes(15 * quarter);
        // Running the sweep twice at the same instant must not repeat anything.
        for _ in 0..2 {
            let decision = evaluate(&workflow, &policy, None, now);
            if decision != Decision::Nothing {
                decisions.push((now, decision.clone()));
            }
            apply(&mut workflow, &decision);
        }
    }
    let kinds: Vec<String> = decisions
        .iter()
        .map(|(now, d)| match d {
            Decision::Remind { level } => format!("{now} remind {level}"),
            Decision::Escalate { level, target, .. } => format!("{now} escalate {level} {target}"),
            Decision::Exhausted { level, reason, .. } => {
                format!("{now} exhausted {level} {}", reason.as_str())
            }
            other => format!("{now} {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "2026-11-24 22:00:00 UTC remind 0",
            "2026-11-25 00:00:00 UTC escalate 1 erin",
            "2026-11-25 22:00:00 UTC remind 1",
            "2026-11-26 00:00:00 UTC exhausted 1 chain_end",
        ]
    );
}

#[test]
fn escalation_deadlines_follow_the_policy_calendar() {
    // Mon–Fri 09:00–17:00 London; November is GMT, so local time is UTC.
    let windows = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ]
    .map(|day| WindowSpec {
        day,
        start: "09:00".into(),
        end: "17:00".into(),
    });
    let calendar = Calendar::new(CalendarSpec {
        timezone: "Europe/London".into(),
        windows: windows.to_vec(),
        holidays: vec![],
    })
    .unwrap();
    let policy = Policy::new(PolicySpec {
        sla_seconds: 8 * HOUR,
        warning: Warning::Before { seconds: HOUR },
        levels: vec![LevelSpec {
            target: Target::Manager,
            sla_seconds: 8 * HOUR,
        }],
        after_last: AfterLast::Stop,
        calendar_id: Some("london-office".into()),
        channels: None,
    })
    .unwrap();
    // Started Friday 2026-11-27 09:00; due at 17:00 the same day.
    let friday = Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap();
    let deadlines = schedule(friday, 0, 0, &policy, Some(&calendar)).unwrap();
    assert_eq!(
        deadlines.due_at,
        Utc.with_ymd_and_hms(2026, 11, 27, 17, 0, 0).unwrap()
    );
    let workflow = Snapshot {
        deadlines,
        ..snapshot(&policy)
    };
    // Escalated at 17:00 Friday: the manager's 8 business hours are all of Monday 11-30.
    assert_eq!(
        evaluate(&workflow, &policy, Some(&calendar), deadlines.due_at),
        Decision::Escalate {
            level: 1,
            target: "erin".into(),
            deadlines: Deadlines {
                warn_at: Utc.with_ymd_and_hms(2026, 11, 30, 16, 0, 0).unwrap(),
                due_at: Utc.with_ymd_and_hms(2026, 11, 30, 17, 0, 0).unwrap(),
            },
        }
    );
}
