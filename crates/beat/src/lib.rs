//! escalator's scheduler: a fenced singleton that enqueues checks on a cron schedule, catches
//! up on slots missed while no beat ran, and wakes up at workflow deadlines.

pub mod beat;
pub mod plan;
pub mod schedule;

pub use beat::{
    Beat, BeatConfig, BeatError, DEADLINE_BACKOFF, DEADLINE_BACKOFF_MAX, DEADLINE_RUN_PATIENCE,
    DONE_JOB_RETENTION, EMPTY_RUN_RETENTION, LEASE, LOST_RUN, OUTBOX_RETENTION, STALE_RUN,
};
pub use plan::{SlotPlan, plan_slots};
pub use schedule::{Schedule, ScheduleError};
