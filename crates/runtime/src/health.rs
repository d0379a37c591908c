//! Readiness: named latches that must all be released before a service is ready, and a draining
//! flag that makes it unready again once shutdown starts.
//!
//! The idea is linkerd's `Readiness`/`Latch`, with two differences: latches are named, so
//! `/readyz` says what it is still waiting for, and a latch dropped without [`Latch::release`]
//! stays pending (a task that died before connecting must not make the pod ready).
//!
//! ```
//! use countersign_runtime::health::{Readiness, ReadinessStatus};
//!
//! let readiness = Readiness::new();
//! let nats = readiness.latch("nats connected");
//! let streams = readiness.latch("streams and consumers bound");
//! assert!(!readiness.status().is_ready());
//! nats.release();
//! streams.release();
//! assert_eq!(readiness.status(), ReadinessStatus::Ready);
//! readiness.start_draining();
//! assert_eq!(readiness.status(), ReadinessStatus::Draining);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Whether a service is ready. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Readiness {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, so waiters can wake up and look again.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    next_latch: u64,
    /// Latches not yet released, by id, with their names.
    pending: BTreeMap<u64, String>,
    draining: bool,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadinessStatus {
    /// Every latch released and not draining.
    Ready,
    /// Waiting for these latches (names in the order they were taken).
    Pending(Vec<String>),
    /// Shutdown has started.
    Draining,
}

impl ReadinessStatus {
    /// Whether this is [`ReadinessStatus::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, ReadinessStatus::Ready)
    }
}

impl fmt::Display for ReadinessStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadinessStatus::Ready => formatter.write_str("ready"),
            ReadinessStatus::Pending(names) => {
                write!(formatter, "waiting for: {}", names.join(", "))
            }
            ReadinessStatus::Draining => formatter.write_str("draining"),
        }
    }
}

// === impl Readiness ===

impl Readiness {
    /// A readiness with no latches: ready until one is taken.
    pub fn new() -> Readiness {
        let (changes, _) = watch::channel(0);
        Readiness {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changes,
            }),
        }
    }

    /// Takes a latch: the service is not ready until it is released. Taking one after the service
    /// became ready makes it unready again until that latch is released.
    ///
    /// Services take all their latches before their first `.await`: `run_service` holds its own
    /// "service starting" latch only until the service future's first poll.
    pub fn latch(&self, name: impl Into<String>) -> Latch {
        let name = name.into();
        let id = {
            let mut state = self.shared.lock();
            let id = state.next_latch;
            state.next_latch += 1;
            state.pending.insert(id, name.clone());
            id
        };
        self.shared.notify();
        Latch {
            shared: Arc::clone(&self.shared),
            id,
            name,
            released: false,
        }
    }

    /// Marks the service as draining: from now on it is never ready again.
    pub fn start_draining(&self) {
        self.shared.lock().draining = true;
        self.shared.notify();
    }

    /// Whether [`Readiness::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.lock().draining
    }

    /// The current status.
    pub fn status(&self) -> ReadinessStatus {
        let state = self.shared.lock();
        if state.draining {
            ReadinessStatus::Draining
        } else if state.pending.is_empty() {
            ReadinessStatus::Ready
        } else {
            ReadinessStatus::Pending(state.pending.values().cloned().collect())
        }
    }

    /// Waits until the status is [`ReadinessStatus::Ready`], or returns the status once draining.
    pub async fn wait_ready(&self) -> ReadinessStatus {
        let mut changes = self.shared.changes.subscribe();
        loop {
            let status = self.status();
            if matches!(status, ReadinessStatus::Ready | ReadinessStatus::Draining) {
                return status;
            }
            // The sender lives in `self.shared`, which we hold, so it cannot be dropped.
            if changes.changed().await.is_err() {
                return self.status();
            }
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Readiness")
            .field("status", &self.status())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a map and a flag, each changed in one statement: a panic elsewhere while
        // the lock was held cannot leave it half-updated, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
    }
}

/// One thing a service waits for before it is ready. Release it with [`Latch::release`]; dropping
/// it unreleased leaves the service unready.
pub struct Latch {
    shared: Arc<Shared>,
    id: u64,
    name: String,
    released: bool,
}

impl Latch {
    /// The latch's name, as `/readyz` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Releases the latch.
    pub fn release(mut self) {
        self.shared.lock().pending.remove(&self.id);
        self.released = true;
        self.shared.notify();
    }
}

impl fmt::Debug for Latch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Latch")
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for Latch {
    fn drop(&mut self) {
        if !self.released {
            tracing::debug!(latch = %self.name, "readiness latch dropped without release; the service stays unready");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_without_latches() {
        assert_eq!(Readiness::new().status(), ReadinessStatus::Ready);
    }

    #[test]
    fn pending_latches_are_listed_until_released() {
        let readiness = Readiness::new();
        let nats = readiness.latch("nats connected");
        let streams = readiness.latch("streams bound");
        assert_eq!(
            readiness.status(),
            ReadinessStatus::Pending(vec![
                "nats connected".to_owned(),
                "streams bound".to_owned()
            ])
        );
        nats.release();
        assert_eq!(
            readiness.status(),
            ReadinessStatus::Pending(vec!["streams bound".to_owned()])
        );
        streams.release();
        assert_eq!(readiness.status(), ReadinessStatus::Ready);
    }

    #[test]
    fn a_dropped_latch_stays_pending() {
        let readiness = Readiness::new();
        drop(readiness.latch("reflector synced"));
        assert_eq!(
            readiness.status(),
            ReadinessStatus::Pending(vec!["reflector synced".to_owned()])
        );
    }

    #[test]
    fn a_new_latch_makes_a_ready_service_unready() {
        let readiness = Readiness::new();
        let again = readiness.latch("nats reconnected");
        assert!(!readiness.status().is_ready());
        again.release();
        assert!(readiness.status().is_ready());
    }

    #[test]
    fn draining_wins_over_everything() {
        let readiness = Readiness::new();
        let pending = readiness.latch("nats connected");
        readiness.start_draining();
        assert_eq!(readiness.status(), ReadinessStatus::Draining);
        pending.release();
        assert_eq!(readiness.status(), ReadinessStatus::Draining);
        assert!(readiness.is_draining());
    }

    #[tokio::test]
    async fn wait_ready_wakes_when_the_last_latch_is_released() {
        let readiness = Readiness::new();
        let latch = readiness.latch("nats connected");
        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.wait_ready().await }
        });
        latch.release();
        let status = waiter.await.expect("the waiter does not panic");
        assert_eq!(status, ReadinessStatus::Ready);
    }
}
