//! Deterministic demo and benchmark data (WORKLOAD.md): N open workflows on the default policy,
//! exactly floor(0.15·N) in WARNING and floor(0.15·N) BREACHED at the reference time.

use chrono::{DateTime, Duration, Utc};
use escalator_policy::{Policy, Status};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{User, Workflow};
use crate::time::micros;

/// Size of the user pool assignees, initiators and targets are drawn from.
pub const USER_POOL: usize = 1_000;

const HOUR_MS: i64 = 3_600_000;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedPlan {
    /// Number of workflows.
    pub workflows: u64,
    /// RNG seed: the same seed and `now` give the same data.
    pub seed: u64,
    /// Reference time the SLA states are computed against.
    pub now: DateTime<Utc>,
    /// Instead of the WORKLOAD distribution: every deadline falls uniformly within this many
    /// seconds after `now` (the deadline-latency benchmark).
    pub due_within: Option<u64>,
}

/// SLA state a seeded workflow is generated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Band {
    Ok,
    Warning,
    Breached,
}

impl SeedPlan {
    /// Exactly floor(0.15·N): the number of WARNING and, separately, BREACHED workflows.
    pub fn due_each(&self) -> u64 {
        self.workflows * 15 / 100
    }
}

/// The user pool: `u0000`…`u0999`, all with an email; `u0000` heads the org chart and every
/// other user reports to `u{(i-1)/10}`.
pub fn users() -> Vec<User> {
    (0..USER_POOL)
        .map(|i| User {
            id: user_id(i),
            display_name: format!("User {i:04}"),
            email: Some(format!("{}@example.com", user_id(i))),
            phone: None,
            slack: None,
            manager_id: (i > 0).then(|| user_id((i - 1) / 10)),
            active: true,
            channels: None,
        })
        .collect()
}

fn user_id(i: usize) -> String {
    format!("u{i:04}")
}

/// Generates the workflows in chunks so that a million never sit in memory at once.
#[derive(Debug)]
pub struct SeedGenerator {
    plan: SeedPlan,
    rng: ChaCha8Rng,
    bands: Vec<Band>,
    next: usize,
    policy: Policy,
    now: DateTime<Utc>,
}

impl SeedGenerator {
    /// A generator for `plan`.
    pub fn new(plan: SeedPlan) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
        let n = usize::try_from(plan.workflows).unwrap_or(usize::MAX);
        let due = usize::try_from(plan.due_each()).unwrap_or(0);
        let mut bands = vec![Band::Ok; n];
        bands[..due].fill(Band::Warning);
        bands[due..2 * due].fill(Band::Breached);
        bands.shuffle(&mut rng);
        SeedGenerator {
            plan,
            rng,
            bands,
            next: 0,
            policy: Policy::default_policy(),
            now: micros(plan.now),
        }
    }

    /// Workflows still to generate.
    pub fn remaining(&self) -> usize {
        self.bands.len() - self.next
    }

    /// Up to `max` more workflows; empty when done.
    pub fn next_chunk(&mut self, max: usize) -> Vec<Workflow> {
        let end = (self.next + max).min(self.bands.len());
        let chunk: Vec<Workflow> = (self.next..end).map(|i| self.workflow(i)).collect();
        self.next = end;
        chunk
    }

    fn workflow(&mut self, i: usize) -> Workflow {
        let elapsed_ms = match (self.plan.due_within, self.bands[i]) {
            (Some(secs), _) => {
                let window = i64::try_from(secs.max(1))
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000);
                24 * HOUR_MS - self.rng.random_range(1..=window)
            }
            (None, band) => match band {
                Band::Ok => self.rng.random_range(0..22 * HOUR_MS),
                Band::Warning => self.rng.random_range(22 * HOUR_MS..24 * HOUR_MS),
                Band::Breached => self.rng.random_range(24 * HOUR_MS..72 * HOUR_MS),
            },
        };
        // three different users: assignee, initiator, escalation target
        let assignee = self.rng.random_range(0..USER_POOL);
        let mut initiator = self.rng.random_range(0..USER_POOL - 1);
        if initiator >= assignee {
            initiator += 1;
        }
        let mut target = self.rng.random_range(0..USER_POOL - 2);
        for taken in sorted_pair(assignee, initiator) {
            if target >= taken {
                target += 1;
            }
        }
        let started = self.now - Duration::milliseconds(elapsed_ms);
        let deadlines = escalator_policy::schedule(started, 0, 0, &self.policy, None).unwrap_or(
            escalator_policy::Deadlines {
                warn_at: started + Duration::hours(22),
                due_at: started + Duration::hours(24),
            },
        );
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        Workflow {
            id,
            external_id: format!("seed-{}-{i:07}", self.plan.seed),
            title: format!("Purchase request #{i}"),
            kind: "purchase_request".into(),
            stage: "Manager Approval".into(),
            status: Status::Pending,
            policy_id: "default".into(),
            policy_version: 1,
            assignee: user_id(assignee),
            initiator: user_id(initiator),
            escalation_target: Some(user_id(target)),
            escalation_level: 0,
            cycle: 1,
            stage_started_at: started,
            paused_at: None,
            paused_seconds: 0,
            warn_at: deadlines.warn_at,
            due_at: deadlines.due_at,
            reminded_at: None,
            escalated_at: None,
            exhausted_at: None,
            next_check_at: Some(deadlines.warn_at),
            metadata: serde_json::json!({}),
            created_at: started,
            updated_at: started,
            version: 1,
        }
    }
}

fn sorted_pair(a: usize, b: usize) -> [usize; 2] {
    if a < b { [a, b] } else { [b, a] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use escalator_policy::{SlaStatus, sla_status};

    fn plan(n: u64) -> SeedPlan {
        SeedPlan {
            workflows: n,
            seed: 7,
            now: Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap(),
            due_within: None,
        }
    }

    #[test]
    fn exactly_fifteen_percent_are_warning_and_fifteen_breached() {
        let p = plan(10_007);
        let mut g = SeedGenerator::new(p);
        let all = g.next_chunk(100_000);
        assert_eq!(all.len(), 10_007);
        let count = |s| {
            all.iter()
                .filter(|w| sla_status(&w.deadlines(), p.now) == s)
                .count()
        };
        assert_eq!(count(SlaStatus::Warning), 1_501);
        assert_eq!(count(SlaStatus::Breached), 1_501);
        assert_eq!(count(SlaStatus::Ok), 10_007 - 3_002);
    }

    #[test]
    fn assignee_initiator_and_target_are_three_different_users() {
        let mut g = SeedGenerator::new(plan(5_000));
        for w in g.next_chunk(5_000) {
            let t = w.escalation_target.clone().unwrap();
            assert!(
                w.assignee != w.initiator && w.assignee != t && w.initiator != t,
                "{w:?}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_data_in_any_chunking() {
        let whole = SeedGenerator::new(plan(1_000)).next_chunk(1_000);
        let mut g = SeedGenerator::new(plan(1_000));
        let mut parts = g.next_chunk(333);
        parts.extend(g.next_chunk(1_000));
        assert_eq!(whole, parts);
        let other = SeedGenerator::new(SeedPlan {
            seed: 8,
            ..plan(1_000)
        })
        .next_chunk(1_000);
        assert_ne!(whole[0].id, other[0].id);
    }

    #[test]
    fn deadlines_can_be_spread_over_the_next_seconds() {
        let p = SeedPlan {
            due_within: Some(60),
            ..plan(1_000)
        };
        let all = SeedGenerator::new(p).next_chunk(1_000);
        assert!(
            all.iter()
                .all(|w| w.due_at > p.now && w.due_at <= p.now + Duration::seconds(60))
        );
        assert!(all.iter().any(|w| w.due_at > p.now + Duration::seconds(50)));
    }

    #[test]
    fn the_user_pool_has_emails_and_an_org_chart() {
        let users = users();
        assert_eq!(users.len(), USER_POOL);
        assert!(users.iter().all(|u| u.email.is_some()));
        assert_eq!(users[0].manager_id, None);
        assert_eq!(users[11].manager_id.as_deref(), Some("u0001"));
    }
}
