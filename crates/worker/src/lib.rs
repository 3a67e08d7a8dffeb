//! escalator's job handlers: the check planner and the escalation batch, over the store, and
//! the worker process that runs them.

pub mod engine;
pub mod jobs;
pub mod message;
pub mod plan;
pub mod run;

pub use engine::{Engine, EngineConfig, EngineError, PolicyCache};
pub use run::{WorkerConfig, run};
