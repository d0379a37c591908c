//! The handler of one sink's durable consumer: filter the event, deliver it, and turn the answer
//! into the typed outcome the consumer loop of `countersign-events` settles by its one rule.
//!
//! | delivery | handler returns | the consumer loop then |
//! |---|---|---|
//! | not for this sink | `Ok` | acks (nothing sent) |
//! | 2xx | `Ok` | acks |
//! | retryable failure | `Transient` (`transient_after` with a `Retry-After`) | naks with the sink's backoff (or the `Retry-After`); on the last attempt dead-letters `retries_exhausted` |
//! | permanent answer | `Poison` with code `http_<status>` | dead-letters `rejected`, the status and body excerpt in the detail |
//!
//! `Retry-After`: the handler returns `HandlerError::transient_after` with the longer of the
//! sink's `Retry-After` (up to the sink's `max_backoff`) and the attempt's backoff, and the
//! consumer naks with that delay, so the next attempt comes no sooner than the sink asked and the
//! handler holds nothing while it waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use countersign_events::{AttestationEvent, Delivery, Event, Handler, HandlerError, RetryPolicy};
use tracing::Instrument as _;

use crate::filter::SinkFilter;
use crate::metrics::{DeliveryOutcome, SinkMetrics};
use crate::sink::Sink;

/// Delivers the events of one sink's consumer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SinkHandler {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sink: Sink,
    filter: SinkFilter,
    retry: RetryPolicy,
    metrics: SinkMetrics,
}

impl SinkHandler {
    /// A handler for `sink`. `retry` is the policy its consumer settles with: the handler takes
    /// the attempt's backoff and the last attempt from it, and honours a `Retry-After` up to its
    /// longest backoff (the sink's `max_backoff`).
    pub fn new(
        sink: Sink,
        filter: SinkFilter,
        retry: RetryPolicy,
        metrics: SinkMetrics,
    ) -> SinkHandler {
        SinkHandler {
            shared: Arc::new(Shared {
                sink,
                filter,
                retry,
                metrics,
            }),
        }
    }

    /// Delivers one event and says how the consumer should settle it.
    pub async fn deliver(
        &self,
        event: Event<AttestationEvent>,
        delivery: Delivery,
    ) -> Result<(), HandlerError> {
        let shared = &*self.shared;
        if !shared.filter.matches(&event) {
            shared.metrics.record(DeliveryOutcome::Filtered);
            tracing::debug!(sink = shared.sink.name(), ce.id = %event.id, "not for this sink");
            return Ok(());
        }
        let span = tracing::info_span!(
            "deliver_to_sink",
            sink = shared.sink.name(),
            ce.id = %event.id,
            ce.r#type = %event.event_type,
            attempt = delivery.attempt,
            http.status = tracing::field::Empty,
        );
        async move {
            let started = Instant::now();
            let result = shared.sink.deliver(&event).await;
            shared.metrics.answered_in(started.elapsed());
            let error = match result {
                Ok(status) => {
                    tracing::Span::current().record("http.status", status.as_u16());
                    shared.metrics.record(DeliveryOutcome::Delivered);
                    tracing::debug!("delivered");
                    return Ok(());
                }
                Err(error) => error,
            };
            if let Some(status) = error.status() {
                tracing::Span::current().record("http.status", status.as_u16());
            }
            if !error.is_retryable() {
                shared.metrics.record(DeliveryOutcome::Rejected);
                return Err(HandlerError::poison(error.dead_letter_code(), error));
            }
            if shared.retry.is_last(delivery.attempt) {
                shared.metrics.record(DeliveryOutcome::Exhausted);
                return Err(HandlerError::transient(error));
            }
            shared.metrics.record(DeliveryOutcome::Retry);
            if let Some(retry_after) = error.retry_after() {
                let delay = retry_delay(
                    retry_after,
                    shared.retry.max_backoff(),
                    shared.retry.nak_delay(delivery.attempt),
                );
                tracing::debug!(
                    delay_ms = delay.as_millis(),
                    "the sink asked to retry later"
                );
                return Err(HandlerError::transient_after(delay, error));
            }
            Err(HandlerError::transient(error))
        }
        .instrument(span)
        .await
    }
}

/// The nak delay that honours a `Retry-After` (capped at `cap`) and is never shorter than the
/// attempt's own backoff.
pub fn retry_delay(retry_after: Duration, cap: Duration, nak_delay: Duration) -> Duration {
    retry_after.min(cap).max(nak_delay)
}

impl Handler<AttestationEvent> for SinkHandler {
    fn handle(
        &self,
        event: Event<AttestationEvent>,
        delivery: Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self.deliver(event, delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_lengthens_the_backoff_up_to_the_cap() {
        let secs = Duration::from_secs;
        assert_eq!(retry_delay(secs(10), secs(300), secs(1)), secs(10));
        assert_eq!(
            retry_delay(secs(1), secs(300), secs(5)),
            secs(5),
            "never shorter than the backoff"
        );
        assert_eq!(
            retry_delay(secs(3600), secs(300), secs(60)),
            secs(300),
            "capped"
        );
    }
}
