//! Retrying a start-up step (create the streams, bind a consumer, reach SPIRE) until it succeeds,
//! fails for good, or shutdown begins.
//!
//! A service starts before its dependencies may be ready (a rollout, an outage), so a transient
//! failure is logged and tried again after a [`Backoff`] while the step's readiness latch stays
//! taken; a failure retrying cannot fix (a refused configuration, bad credentials) ends the
//! service at once. Shutdown interrupts both the attempt and the wait.
//!
//! ```
//! # async fn example() -> Result<(), std::io::Error> {
//! use countersign_runtime::retry::{Backoff, retry_transient};
//! use tokio_util::sync::CancellationToken;
//!
//! let shutdown = CancellationToken::new();
//! let bound = retry_transient(
//!     "binding the consumer",
//!     &shutdown,
//!     Backoff::startup(),
//!     |error: &std::io::Error| error.kind() == std::io::ErrorKind::TimedOut,
//!     || async { Ok::<_, std::io::Error>(42) },
//! )
//! .await?;
//! let Some(consumer) = bound else {
//!     return Ok(()); // shut down before the step succeeded
//! };
//! # let _ = consumer; Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use countersign_error_report::error_chain;

/// The shortest delay a [`Backoff`] waits: never a busy loop.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// A delay between attempts that starts at `initial` and doubles up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    next: Duration,
    max: Duration,
}

// === impl Backoff ===

impl Backoff {
    /// A backoff from `initial` (at least one millisecond) doubling up to `max` (at least
    /// `initial`).
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = if initial.as_nanos() < MIN_DELAY.as_nanos() {
            MIN_DELAY
        } else {
            initial
        };
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Backoff {
            initial,
            next: initial,
            max,
        }
    }

    /// 200 ms doubling up to 10 s: the services' start-up steps (a dependency that is back
    /// is noticed within 10 s, a dependency that is down costs a few attempts a minute).
    pub const fn startup() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// The delay before the next attempt; each call doubles the one after (up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps for [`Backoff::next_delay`]; `false` when `shutdown` was cancelled first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Runs `attempt` until it succeeds (`Ok(Some(value))`), fails with an error `is_transient` says
/// retrying cannot fix (`Err`), or `shutdown` is cancelled (`Ok(None)`, during an attempt or
/// between two). Each transient failure is logged at WARN with `what` and the wait before the
/// next attempt.
pub async fn retry_transient<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut backoff: Backoff,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Ok(Some(value)),
            Err(error) if is_transient(&error) => {
                tracing::warn!(
                    step = what,
                    error = %error_chain(&error),
                    retry_in = ?backoff.next,
                    "not yet; retrying"
                );
            }
            Err(error) => return Err(error),
        }
        if !backoff.wait(shutdown).await {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    enum StepError {
        #[error("not yet")]
        NotYet,
        #[error("never")]
        Never,
    }

    fn is_transient(error: &StepError) -> bool {
        *error == StepError::NotYet
    }

    #[test]
    fn the_delay_doubles_up_to_the_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            zero.next_delay(),
            Duration::from_millis(1),
            "never a busy loop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_after_the_backoff() {
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let outcome = retry_transient(
            "a step",
            &CancellationToken::new(),
            Backoff::startup(),
            is_transient,
            || async {
                match attempts.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(StepError::NotYet),
                    _ => Ok("bound"),
                }
            },
        )
        .await;
        assert_eq!(outcome, Ok(Some("bound")));
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_millis(200 + 400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_ends_at_once() {
        let attempts = AtomicU32::new(0);
        let outcome: Result<Option<()>, _> = retry_transient(
            "a step",
            &CancellationToken::new(),
            Backoff::startup(),
            is_transient,
            || async {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err(StepError::Never)
            },
        )
        .await;
        assert_eq!(outcome, Err(StepError::Never));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_and_the_attempt() {
        let shutdown = CancellationToken::new();
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                retry_transient(
                    "a step",
                    &shutdown,
                    Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600)),
                    is_transient,
                    || async { Err::<(), _>(StepError::NotYet) },
                )
                .await
            }
        });
        let hanging = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                retry_transient(
                    "a step",
                    &shutdown,
                    Backoff::startup(),
                    is_transient,
                    std::future::pending::<Result<(), StepError>>,
                )
                .await
            }
        });
        shutdown.cancel();
        assert_eq!(waiting.await.unwrap(), Ok(None));
        assert_eq!(hanging.await.unwrap(), Ok(None));
    }
}
