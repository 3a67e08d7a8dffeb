//! The job payloads. They carry ids and times, never whole rows, so a job is always re-derived
//! from the database; fields added later must be `#[serde(default)]`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use escalator_store::DueRange;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a check looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// Every due workflow: fanned out into batches.
    #[default]
    All,
    /// One workflow, handled inline by the planner.
    Workflow(Uuid),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Workflow(id) => write!(f, "workflow:{id}"),
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(Scope::All);
        }
        s.strip_prefix("workflow:")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(Scope::Workflow)
            .ok_or_else(|| format!("scope: expected \"all\" or \"workflow:<uuid>\", got {s:?}"))
    }
}

impl TryFrom<String> for Scope {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.to_string()
    }
}

/// The planner: counts the workflows due at `as_of` and fans out `EscalateBatch` jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckWorkflows {
    /// The `check_runs` row this job executes.
    pub check_run_id: i64,
    /// The instant the SLA clock is evaluated at.
    pub as_of: DateTime<Utc>,
    /// All due workflows, or one.
    #[serde(default)]
    pub scope: Scope,
}

/// One batch: claim up to `batch_size` due workflows, decide, apply, commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalateBatch {
    /// The run it belongs to.
    pub check_run_id: i64,
    /// The run's evaluation instant.
    pub as_of: DateTime<Utc>,
    /// Index within the run (0-based): a batch delivered twice completes its run once.
    #[serde(default)]
    pub batch_index: i32,
    /// The slice of the due workflows this batch owns (`from`, `from_id`, `until`, `until_id`
    /// on the wire, each optional): disjoint slices keep concurrent batches off each other's
    /// rows.
    #[serde(flatten)]
    pub slice: DueRange,
}

/// Most batch jobs one check run pushes: above it, slices grow instead (apalis-redis wedges
/// with thousands of jobs due at once).
pub const MAX_FANOUT: u32 = 1_000;

/// Deliver pending outbox rows whose time has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverNotifications {
    /// The run that wrote them, if any (for tracing).
    #[serde(default)]
    pub check_run_id: Option<i64>,
}

/// A job that does nothing: the queue-overhead benchmark (WORKLOAD.md measurement 3) runs
/// these through the same queue machinery as real jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noop {
    /// Sequence number, for tracing.
    #[serde(default)]
    pub n: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_as_strings() {
        let id = Uuid::new_v4();
        for s in [Scope::All, Scope::Workflow(id)] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), s);
        }
        assert_eq!(serde_json::to_string(&Scope::All).unwrap(), "\"all\"");
        let err = "workflow:nope".parse::<Scope>().unwrap_err();
        assert!(err.contains("workflow:<uuid>"), "{err}");
    }

    #[test]
    fn payloads_accept_missing_optional_fields() {
        let job: CheckWorkflows =
            serde_json::from_str(r#"{"check_run_id":1,"as_of":"2026-11-25T12:00:00Z"}"#).unwrap();
        assert_eq!(job.scope, Scope::All);
        let batch: EscalateBatch =
            serde_json::from_str(r#"{"check_run_id":1,"as_of":"2026-11-25T12:00:00Z"}"#).unwrap();
        assert_eq!(
            (batch.batch_index, batch.slice.from, batch.slice.until),
            (0, None, None)
        );
        let d: DeliverNotifications = serde_json::from_str("{}").unwrap();
        assert_eq!(d.check_run_id, None);
    }
}
