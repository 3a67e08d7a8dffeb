//! End-to-end: real `escalator beat` processes — two at once on a one-second schedule, and a
//! leader frozen with SIGSTOP past its lease.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};

mod common;

use common::*;

/// (slot, coalesced) of every scheduled run, in slot order.
async fn slots(w: &World) -> Vec<(DateTime<Utc>, i32)> {
    let mut out: Vec<_> =
        w.db.store
            .recent_check_runs(1_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| r.slot.map(|s| (s, r.coalesced)))
            .collect();
    out.sort();
    out
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_on_a_one_second_schedule_fire_every_slot_exactly_once() {
    let mut w = World::new().await;
    w.extra_env
        .push(("ESCALATOR_SCHEDULE".into(), "* * * * * *".into()));
    w.extra_env.push(("ESCALATOR_CATCHUP".into(), "5".into()));
    w.extra_env.push(("ESCALATOR_LEASE_TTL".into(), "3".into()));
    let ports = [free_port(), free_port()];
    let a = w.beat(ports[0]);
    let b = w.beat(ports[1]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    // one leader; the standby says 0 (it exported no series at all, so a dashboard could not
    // tell a live standby from a dead one), and both count their ticks from 0
    // (read again if the two reads straddle a hand-over of the lease)
    let mut leaders = Vec::new();
    for _ in 0..20 {
        leaders.clear();
        for port in ports {
            let metrics = reqwest_metrics(port).await;
            for series in [
                "escalator_missed_ticks_total ",
                "escalator_duplicate_ticks_suppressed_total ",
            ] {
                assert!(metrics.contains(series), "no {series} in\n{metrics}");
            }
            let leader = metrics
                .lines()
                .find_map(|l| l.strip_prefix("escalator_beat_leader "))
                .unwrap_or_else(|| panic!("no leader gauge in\n{metrics}"))
                .to_owned();
            leaders.push(leader);
        }
        leaders.sort();
        if leaders == ["0", "1"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(leaders, ["0", "1"]);
    assert!(stop(a).success());
    assert!(stop(b).success());
    let runs = slots(&w).await;
    assert!(runs.len() >= 55, "only {} runs in 60 s", runs.len());
    // consecutive slots, none twice, none skipped (a late wake-up would coalesce instead)
    for pair in runs.windows(2) {
        assert_eq!(
            (pair[1].0 - pair[0].0).num_seconds(),
            1,
            "gap or double between {pair:?}"
        );
    }
    assert!(
        runs.iter().all(|r| r.1 == 1),
        "slots were coalesced: {runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_is_replaced_and_never_doubles_a_slot() {
    let mut w = World::new().await;
    w.extra_env
        .push(("ESCALATOR_SCHEDULE".into(), "* * * * * *".into()));
    w.extra_env.push(("ESCALATOR_CATCHUP".into(), "60".into()));
    w.extra_env.push(("ESCALATOR_LEASE_TTL".into(), "2".into()));
    // waits for `enough` runs (a start-up slowed by a busy machine is waited for, not failed)
    let runs_reach = async |enough: usize, what: &str| {
        let started = std::time::Instant::now();
        loop {
            let n = slots(&w).await.len();
            if n >= enough {
                return n;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: {n} runs after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let first = w.beat(free_port());
    // the first beat leads (it started first) before the second starts
    runs_reach(1, "the first beat did not lead").await;
    let second = w.beat(free_port());
    runs_reach(4, "the first beat stopped leading").await;
    // freeze the leader well past its lease: the standby takes over
    let before = slots(&w).await.len();
    signal(&first, "-STOP");
    runs_reach(before + 3, "the standby did not take over").await;
    // resume the zombie: it must notice it lost the lease and enqueue nothing twice
    signal(&first, "-CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(stop(first).success());
    assert!(stop(second).success());
    let runs = slots(&w).await;
    let first_slot = runs[0].0;
    let last_slot = runs.last().unwrap().0;
    // every slot from the first to the last is accounted for exactly once: run on its own or
    // coalesced into the takeover's catch-up run
    let covered: i64 = runs.iter().map(|r| i64::from(r.1)).sum();
    assert_eq!(
        covered,
        (last_slot - first_slot).num_seconds() + 1,
        "{runs:?}"
    );
    for pair in runs.windows(2) {
        assert!(pair[1].0 > pair[0].0, "a slot ran twice: {pair:?}");
    }
}
