//! The relay's Prometheus metrics, registered in the service's own registry:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `countersign_relay_deliveries_total` | `sink`, `outcome` | delivery attempts by outcome: `delivered`, `retry`, `rejected`, `exhausted`, `filtered` |
//! | `countersign_relay_delivery_duration_seconds` | `sink` | time from sending the request to the sink's answer |
//! | `countersign_relay_dead_letters_total` | `sink`, `reason` | events given up on: `rejected` (a permanent answer) or `retries_exhausted` |
//!
//! The bus's own metrics (`countersign_events_*`, among them consumed messages by disposition
//! for each `relay-<sink>` consumer) sit next to these.

use std::time::Duration;

use countersign_events::DeadLetterReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// The sink answered 2xx; the message is acked.
    Delivered,
    /// A retryable failure; the message is nakked and delivered again later.
    Retry,
    /// A permanent answer; the message is dead-lettered.
    Rejected,
    /// A retryable failure on the last allowed attempt; the message is dead-lettered.
    Exhausted,
    /// The event is not for this sink (its filter); acked without a request.
    Filtered,
}

impl DeliveryOutcome {
    /// Every outcome.
    pub const ALL: [DeliveryOutcome; 5] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Retry,
        DeliveryOutcome::Rejected,
        DeliveryOutcome::Exhausted,
        DeliveryOutcome::Filtered,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry => "retry",
            DeliveryOutcome::Rejected => "rejected",
            DeliveryOutcome::Exhausted => "exhausted",
            DeliveryOutcome::Filtered => "filtered",
        }
    }

    /// The dead-letter reason this outcome leads to, if it leads to one.
    pub const fn dead_letter_reason(self) -> Option<DeadLetterReason> {
        match self {
            DeliveryOutcome::Rejected => Some(DeadLetterReason::Rejected),
            DeliveryOutcome::Exhausted => Some(DeadLetterReason::RetriesExhausted),
            DeliveryOutcome::Delivered | DeliveryOutcome::Retry | DeliveryOutcome::Filtered => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeliveryLabels {
    sink: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    sink: String,
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The relay's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    duration: HistogramFamily<SinkLabels>,
    dead_letters: Family<DeadLetterLabels, Counter>,
}

impl Default for RelayMetrics {
    fn default() -> RelayMetrics {
        RelayMetrics::new()
    }
}

impl RelayMetrics {
    /// New metrics, not yet registered.
    pub fn new() -> RelayMetrics {
        RelayMetrics {
            deliveries: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            dead_letters: Family::default(),
        }
    }

    /// Registers every metric in `registry` as `countersign_relay_*` (the shape every service's
    /// metrics share: `ctx.metrics.with_registry(|registry| metrics.register(registry))`).
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("countersign_relay");
        registry.register(
            "deliveries",
            "Delivery attempts to HTTP sinks, by sink and outcome",
            self.deliveries.clone(),
        );
        registry.register_with_unit(
            "delivery_duration",
            "Time from sending an event to a sink to its answer",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "dead_letters",
            "Events dead-lettered by the relay, by sink and reason",
            self.dead_letters.clone(),
        );
    }

    /// The metrics of one sink, every series created at once (so a scrape shows zeros).
    pub fn for_sink(&self, sink: &str) -> SinkMetrics {
        let outcomes = DeliveryOutcome::ALL.map(|outcome| {
            self.deliveries.get_or_create_owned(&DeliveryLabels {
                sink: sink.to_owned(),
                outcome: outcome.as_str(),
            })
        });
        let dead_letter = |reason: DeadLetterReason| {
            self.dead_letters.get_or_create_owned(&DeadLetterLabels {
                sink: sink.to_owned(),
                reason: reason.as_str(),
            })
        };
        SinkMetrics {
            outcomes,
            duration: self.duration.get_or_create_owned(&SinkLabels {
                sink: sink.to_owned(),
            }),
            rejected: dead_letter(DeadLetterReason::Rejected),
            exhausted: dead_letter(DeadLetterReason::RetriesExhausted),
        }
    }
}

/// One sink's metric handles.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    outcomes: [Counter; DeliveryOutcome::ALL.len()],
    duration: Histogram,
    rejected: Counter,
    exhausted: Counter,
}

impl SinkMetrics {
    /// Counts an attempt's outcome (and the dead letter it leads to).
    pub fn record(&self, outcome: DeliveryOutcome) {
        let index = DeliveryOutcome::ALL
            .iter()
            .position(|candidate| *candidate == outcome)
            .unwrap_or_default();
        self.outcomes[index].inc();
        match outcome.dead_letter_reason() {
            Some(DeadLetterReason::RetriesExhausted) => {
                self.exhausted.inc();
            }
            Some(_) => {
                self.rejected.inc();
            }
            None => {}
        }
    }

    /// Records how long the sink took to answer.
    pub fn answered_in(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_dead_letters_are_counted_per_sink() {
        let metrics = countersign_runtime::metrics::Metrics::empty();
        let relay = RelayMetrics::new();
        metrics.with_registry(|registry| relay.register(registry));
        let broker = relay.for_sink("broker");
        broker.record(DeliveryOutcome::Delivered);
        broker.record(DeliveryOutcome::Retry);
        broker.record(DeliveryOutcome::Exhausted);
        broker.record(DeliveryOutcome::Rejected);
        broker.answered_in(Duration::from_millis(20));
        relay.for_sink("listener");
        let text = metrics.encode();
        for line in [
            "countersign_relay_deliveries_total{sink=\"broker\",outcome=\"delivered\"} 1",
            "countersign_relay_deliveries_total{sink=\"broker\",outcome=\"retry\"} 1",
            "countersign_relay_deliveries_total{sink=\"broker\",outcome=\"filtered\"} 0",
            "countersign_relay_deliveries_total{sink=\"listener\",outcome=\"delivered\"} 0",
            "countersign_relay_dead_letters_total{sink=\"broker\",reason=\"retries_exhausted\"} 1",
            "countersign_relay_dead_letters_total{sink=\"broker\",reason=\"rejected\"} 1",
            "countersign_relay_delivery_duration_seconds_count{sink=\"broker\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
