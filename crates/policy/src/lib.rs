//! The SLA clock of escalator: business-hours calendars, escalation policies and the pure
//! decision of what to do with a workflow at a given instant.
//!
//! Nothing in this crate reads a clock, the environment, a file or a socket: `now` is always an
//! argument, so every decision can be replayed and tested with fixed instants.

mod calendar;
mod clock;
mod decision;
mod error;
mod policy;

pub use calendar::{Calendar, CalendarSpec, WindowSpec};
pub use chrono::{DateTime, Utc};
pub use chrono_tz::Tz;
pub use clock::{Deadlines, never, paused_seconds, schedule, seconds_after};
pub use decision::{
    Decision, Exhaustion, SlaStatus, Snapshot, Status, evaluate, evaluate_applied, next_check_at,
    sla_status,
};
pub use error::PolicyError;
pub use policy::{
    AfterLast, CHANNELS, LevelSpec, MAX_DURATION_SECONDS, MAX_ID_CHARS, Policy, PolicySpec, Target,
    Warning, check_channels, check_targets,
};
