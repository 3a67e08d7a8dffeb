//! escalator's jobs: payloads, queue names, storage constructors and the enqueue helpers
//! shared by beat, api and CLI. Every workaround for apalis-redis 1.0 lives here, and only here
//! (see `docs/queues.md`).

pub mod attempt;
pub mod codec;
pub mod error;
pub mod payload;
pub mod poll;
pub mod queues;
pub mod settings;
pub mod worker;

pub use codec::{Incoming, LenientJson};
pub use error::{QueueError, within};
pub use payload::{CheckWorkflows, DeliverNotifications, EscalateBatch, Noop, Scope};
pub use poll::{PollObserver, ReliableInterval};
pub use queues::{
    BACKLOG_PATIENCE, DeadJob, MAX_DUE, MAX_QUEUED_DELIVERIES, QueueStats, Queues, UNQUEUED,
};
pub use settings::{QueueNames, WorkerSettings, unique_worker_name};
pub use worker::{Stopped, backstop, register_redis, register_sqlite, run_supervised};
