//! The web console (`/ui`): router tests driven with `oneshot` (auth, CSRF, escaping, every
//! page and action) and browser tests (`ui_*`) in headless Chromium through chromedriver.
//! All run against a real PostgreSQL database and a Redis namespace per test, and fail —
//! never skip — when a service, chromium or chromedriver is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod helpers;
mod pages;
mod security;
