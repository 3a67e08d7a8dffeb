//! Ports for the servers tests start (workers' metrics, the API, private Redis and PostgreSQL).
//!
//! `bind("127.0.0.1:0")` hands out a port from the ephemeral range, which is also where the
//! kernel picks the local port of every outgoing connection. Between the probe releasing the
//! port and the child process binding it, a database or Redis client of a concurrently running
//! test may take it, and the child (which refuses a taken metrics port) stops at start-up. The
//! ports here come from below the ephemeral range, which outgoing connections never use; a
//! random start per process and a shared counter keep concurrent test processes apart.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The range handed out: below Linux's default ephemeral range (32768–60999).
const LOW: u32 = 20_000;
const HIGH: u32 = 32_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn start() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (std::process::id().wrapping_mul(7_919) ^ nanos) % (HIGH - LOW)
}

/// A port on 127.0.0.1 that nothing listens on now, from outside the ephemeral range.
pub fn free_port() -> u16 {
    let _ = NEXT.compare_exchange(0, start() + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..(HIGH - LOW) {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % (HIGH - LOW);
        let port = u16::try_from(LOW + offset).expect("ports below 32,000 fit");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {HIGH}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!((20_000..32_000).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
    }
}
