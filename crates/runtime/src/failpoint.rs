//! Named crash points for the fault-injection suite (docs/reliability.md): a process started
//! with `ESCALATOR_FAILPOINT=<name>:<n>` aborts — no destructors, no acknowledgements, like a
//! SIGKILL — the n-th time it reaches [`hit`]`(<name>)`. Unset (always, in production) a hit
//! is one relaxed atomic load.
//!
//! Points: `batch-committed` (a batch's transaction has committed; its job is neither
//! acknowledged nor has it pushed its delivery job).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The armed point, parsed once from the environment.
#[derive(Debug)]
struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Parses `name:n` (n ≥ 1; `name` alone means 1).
fn parse(value: &str) -> Option<(String, u64)> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    match value.split_once(':') {
        None => Some((value.to_owned(), 1)),
        Some((name, n)) => match n.trim().parse::<u64>() {
            Ok(n) if n >= 1 && !name.trim().is_empty() => Some((name.trim().to_owned(), n)),
            _ => None,
        },
    }
}

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let raw = std::env::var("ESCALATOR_FAILPOINT").ok()?;
            match parse(&raw) {
                Some((name, at)) => {
                    tracing::warn!(failpoint = %name, at, "failpoint armed: this process will abort");
                    Some(Armed {
                        name,
                        at,
                        hits: AtomicU64::new(0),
                    })
                }
                None => {
                    tracing::error!(value = %raw, "ESCALATOR_FAILPOINT ignored: expected <name>:<n>");
                    None
                }
            }
        })
        .as_ref()
}

/// Marks the point `name`; aborts the process if it is the armed one and this is its n-th hit.
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    if armed.hits.fetch_add(1, Ordering::Relaxed) + 1 == armed.at {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_setting_names_a_point_and_which_hit_aborts() {
        assert_eq!(
            parse("batch-committed:3"),
            Some(("batch-committed".into(), 3))
        );
        assert_eq!(
            parse("batch-committed"),
            Some(("batch-committed".into(), 1))
        );
        assert_eq!(parse(" x : 2 "), Some(("x".into(), 2)));
        assert_eq!(parse("x:0"), None);
        assert_eq!(parse("x:soon"), None);
        assert_eq!(parse(":3"), None);
        assert_eq!(parse(""), None);
    }
}
