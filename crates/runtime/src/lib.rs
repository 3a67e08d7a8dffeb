//! Process plumbing shared by escalator's roles: configuration read once from the
//! environment into typed values, the Prometheus recorder, shutdown signals and the small
//! HTTP server that exposes metrics and health on worker and beat processes.

pub mod config;
pub mod error;
pub mod failpoint;
pub mod http;
pub mod metrics;
pub mod serve;
pub mod shutdown;
