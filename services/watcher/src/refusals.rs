//! Refusals logged at warn, rate-limited per reason, so an operator sees at the default level
//! that the watcher refuses requests (a misconfigured sender, an attacker) without a flood of
//! them filling the log.
//!
//! Per reason and per minute: the first [`FIRST_PER_MINUTE`] refusals are logged, then every
//! [`EVERY_AFTER`]th; each logged line carries how many of that reason went unlogged since the
//! previous one (`suppressed`). The metrics count every refusal.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many refusals of one reason are logged per window before thinning out.
pub const FIRST_PER_MINUTE: u64 = 5;
/// Past the first ones, one refusal in this many is logged.
pub const EVERY_AFTER: u64 = 100;
/// The window.
const WINDOW: Duration = Duration::from_secs(60);

/// Whether to log a refusal, per reason.
#[derive(Debug, Default)]
pub struct RefusalLimiter {
    windows: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    seen: u64,
    suppressed: u64,
}

impl RefusalLimiter {
    /// Notes one refusal of `reason` at `now`: `Some(suppressed)` when it is to be logged
    /// (`suppressed`: those of the reason not logged since the last logged one), else `None`.
    pub fn admit(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows.entry(reason).or_insert(Window {
            started: now,
            seen: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            window.started = now;
            window.seen = 0;
        }
        window.seen += 1;
        let logged = window.seen <= FIRST_PER_MINUTE
            || (window.seen - FIRST_PER_MINUTE).is_multiple_of(EVERY_AFTER);
        if logged {
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ones_then_every_hundredth_per_reason_and_window() {
        let limiter = RefusalLimiter::default();
        let start = Instant::now();
        let logged: Vec<u64> = (0..300)
            .filter_map(|_| limiter.admit("bad_request", start))
            .collect();
        // 5 first, then the 105th, 205th: 7 lines; the later ones say how many were skipped.
        assert_eq!(logged, [0, 0, 0, 0, 0, 99, 99]);
        assert_eq!(
            limiter.admit("unknown_taskrun", start),
            Some(0),
            "each reason has its own budget"
        );
        assert_eq!(
            limiter.admit("bad_request", start + WINDOW),
            Some(95),
            "a new window logs at once, with what the last one skipped"
        );
    }
}
