//! Graceful shutdown: one root [`CancellationToken`] per service, tasks spawned with child tokens
//! and tracked, and a drain that waits for them within a grace period.
//!
//! A task stops taking new work when its token is cancelled, finishes (and acks) what it has in
//! flight, and returns:
//!
//! ```
//! # async fn example() {
//! use std::time::Duration;
//! use countersign_runtime::shutdown::{DrainOutcome, Shutdown};
//!
//! let shutdown = Shutdown::new();
//! shutdown.spawn(|token| async move {
//!     loop {
//!         tokio::select! {
//!             _ = token.cancelled() => break,
//!             // message = consumer.next() => handle(message).await, // finish it, then loop
//!             _ = tokio::time::sleep(Duration::from_millis(10)) => {}
//!         }
//!     }
//! });
//! let outcome = shutdown.drain(Duration::from_secs(25)).await;
//! assert!(matches!(outcome, DrainOutcome::Completed { .. }));
//! # }
//! ```
//!
//! [`ShutdownSignals`] turns SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C) into a future.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;

/// A service's shutdown: the root token and the tasks that must finish before the process exits.
/// Cheap to clone; clones share both.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    root: CancellationToken,
    tasks: TaskTracker,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every tracked task returned within the grace period.
    Completed {
        /// How long the drain took.
        elapsed: Duration,
    },
    /// The grace period ran out with tasks still running.
    TimedOut {
        /// The grace period that ran out.
        grace_period: Duration,
        /// How many tasks were still running.
        still_running: usize,
    },
}

impl DrainOutcome {
    /// Whether every task finished in time.
    pub fn completed(&self) -> bool {
        matches!(self, DrainOutcome::Completed { .. })
    }
}

// === impl Shutdown ===

impl Shutdown {
    /// A shutdown that has not started.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A child of the root token: cancelled when shutdown starts, and cancelling it affects
    /// nothing else.
    pub fn token(&self) -> CancellationToken {
        self.root.child_token()
    }

    /// Spawns a tracked task, handing it a child token. The drain waits for it.
    pub fn spawn<F, Fut>(&self, task: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.tasks.spawn(task(self.token()))
    }

    /// Tracks a future the caller spawns in its own way (on a `JoinSet`, say): the drain waits
    /// for the returned future to finish.
    pub fn track<Fut: Future>(&self, future: Fut) -> TrackedFuture<Fut> {
        self.tasks.track_future(future)
    }

    /// Starts shutdown: cancels every token handed out. Calling it again does nothing.
    pub fn cancel(&self) {
        self.root.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_cancelled(&self) -> bool {
        self.root.is_cancelled()
    }

    /// Waits until shutdown starts.
    pub async fn cancelled(&self) {
        self.root.cancelled().await;
    }

    /// How many tracked tasks are still running.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Starts shutdown (if it has not started) and waits up to `grace_period` for every tracked task
    /// to return. Tasks still running after that are left to the caller (the process exits, or a
    /// test drops the runtime). Safe to call more than once.
    pub async fn drain(&self, grace_period: Duration) -> DrainOutcome {
        let started = Instant::now();
        match tokio::time::timeout(grace_period, self.wait_for_tasks()).await {
            Ok(()) => DrainOutcome::Completed {
                elapsed: started.elapsed(),
            },
            Err(_) => DrainOutcome::TimedOut {
                grace_period,
                still_running: self.tasks.len(),
            },
        }
    }
}

impl Shutdown {
    /// Starts shutdown and waits, without a deadline, for every tracked task to return (the
    /// caller puts the deadline around it).
    pub(crate) async fn wait_for_tasks(&self) {
        self.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: what Kubernetes sends before SIGKILL.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "SIGINT",
        })
    }
}

/// Listens for SIGTERM and SIGINT. Register it early: from then on those signals no longer kill
/// the process, they are delivered here.
#[derive(Debug)]
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

/// Why the signal handlers could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler: {source}")]
pub struct SignalError {
    pub signal: ShutdownSignal,
    #[source]
    pub source: std::io::Error,
}

impl ShutdownSignals {
    /// Installs the handlers. Needs a Tokio runtime.
    pub fn register() -> Result<ShutdownSignals, SignalError> {
        let install = |kind, which| {
            signal(kind).map_err(|source| SignalError {
                signal: which,
                source,
            })
        };
        Ok(ShutdownSignals {
            terminate: install(SignalKind::terminate(), ShutdownSignal::Terminate)?,
            interrupt: install(SignalKind::interrupt(), ShutdownSignal::Interrupt)?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.terminate.recv() => ShutdownSignal::Terminate,
            _ = self.interrupt.recv() => ShutdownSignal::Interrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_in_flight_task_finishes_within_the_grace_period() {
        let shutdown = Shutdown::new();
        let (finished_tx, finished_rx) = oneshot::channel();
        shutdown.spawn(|token| async move {
            token.cancelled().await;
            // The message in flight takes a second to finish after shutdown starts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = finished_tx.send(());
        });
        let outcome = shutdown.drain(Duration::from_secs(5)).await;
        assert_eq!(
            outcome,
            DrainOutcome::Completed {
                elapsed: Duration::from_secs(1)
            }
        );
        assert!(finished_rx.await.is_ok(), "the task ran to its end");
        assert_eq!(shutdown.running_tasks(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_does_not_finish_is_reported_as_timed_out() {
        let shutdown = Shutdown::new();
        shutdown.spawn(|_token| async move {
            // Ignores its token and runs far past the grace period.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        shutdown.spawn(|token| async move { token.cancelled().await });
        let outcome = shutdown.drain(Duration::from_secs(5)).await;
        assert_eq!(
            outcome,
            DrainOutcome::TimedOut {
                grace_period: Duration::from_secs(5),
                still_running: 1
            }
        );
        assert!(!outcome.completed());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_cancelled_by_the_drain_and_not_by_each_other() {
        let shutdown = Shutdown::new();
        let first = shutdown.token();
        let second = shutdown.token();
        first.cancel();
        assert!(!second.is_cancelled());
        assert!(!shutdown.is_cancelled());
        let outcome = shutdown.drain(Duration::from_secs(1)).await;
        assert!(outcome.completed());
        assert!(second.is_cancelled());
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_futures_are_waited_for() {
        let shutdown = Shutdown::new();
        let tracked = shutdown.track(tokio::time::sleep(Duration::from_secs(2)));
        let handle = tokio::spawn(tracked);
        let outcome = shutdown.drain(Duration::from_secs(5)).await;
        assert_eq!(
            outcome,
            DrainOutcome::Completed {
                elapsed: Duration::from_secs(2)
            }
        );
        assert!(handle.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn draining_twice_is_safe() {
        let shutdown = Shutdown::new();
        assert!(shutdown.drain(Duration::from_secs(1)).await.completed());
        assert!(shutdown.drain(Duration::from_secs(1)).await.completed());
    }
}
