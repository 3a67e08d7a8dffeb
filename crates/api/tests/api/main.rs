//! Router tests: every route driven with `oneshot` against a real PostgreSQL database and a
//! Redis namespace per test. They fail, never skip, when either service is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod checks;
mod definitions;
mod helpers;
mod jobs;
mod ops;
mod workflows;
