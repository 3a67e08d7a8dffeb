//! Logging set-up: human-readable text by default, JSON lines for production collectors.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info). A service
/// logs sqlx's warnings (a statement slower than a second, named by its SQL); a one-shot
/// command only its errors: a `verify` or `seed` over a large database printed whole SQL
/// statements among its own output.
pub fn init(format: &str, service: bool) {
    let filter = if service {
        "info,sqlx=warn"
    } else {
        "info,sqlx=error"
    };
    let default = || EnvFilter::new(filter);
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            // logging is not up yet: say it on stderr, and go on with the default level
            stderr_line!("warning: RUST_LOG={v:?} is not a valid filter ({e}); logging at info");
            default()
        }),
        _ => default(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
