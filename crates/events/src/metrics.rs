//! Prometheus metrics of the bus: publishes (count by outcome, latency), consumed messages by
//! disposition, dead letters by reason, handler latency. No globals: a service creates one
//! [`EventMetrics`], registers it in its own registry and hands clones to its publishers and
//! consumers.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::event_type::EventType;

/// How a publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishOutcome {
    /// Stored by the stream.
    Stored,
    /// Dropped by the stream as a duplicate of an earlier id.
    Duplicate,
    /// Failed.
    Failed,
}

/// What a consumer did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumeOutcome {
    /// Acknowledged after the handler succeeded.
    Ack,
    /// Negatively acknowledged with a delay (transient failure).
    Nak,
    /// Dead-lettered and terminated.
    DeadLetter,
    /// Left unacknowledged (shutdown, or the ack could not be sent); it will be redelivered.
    Abandoned,
}

impl PublishOutcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            PublishOutcome::Stored => "stored",
            PublishOutcome::Duplicate => "duplicate",
            PublishOutcome::Failed => "failed",
        }
    }
}

impl ConsumeOutcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConsumeOutcome::Ack => "ack",
            ConsumeOutcome::Nak => "nak",
            ConsumeOutcome::DeadLetter => "dead_letter",
            ConsumeOutcome::Abandoned => "abandoned",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PublishLabels {
    event_type: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabels {
    event_type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumeLabels {
    consumer: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    consumer: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The bus metrics. Cloning is cheap and shares the values.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    published: Family<PublishLabels, Counter>,
    publish_duration: HistogramFamily<TypeLabels>,
    consumed: Family<ConsumeLabels, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    handler_duration: HistogramFamily<ConsumerLabels>,
}

impl Default for EventMetrics {
    fn default() -> EventMetrics {
        EventMetrics {
            published: Family::default(),
            publish_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            consumed: Family::default(),
            dead_letters: Family::default(),
            handler_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl EventMetrics {
    /// New metrics, not yet registered anywhere.
    pub fn new() -> EventMetrics {
        EventMetrics::default()
    }

    /// Registers the metrics in `registry`, under `countersign_events_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("countersign_events");
        registry.register(
            "published",
            "Events published, by type and outcome",
            self.published.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time from publish to the stream's acknowledgement",
            self.publish_duration.clone(),
        );
        registry.register(
            "consumed",
            "Messages consumed, by consumer and disposition",
            self.consumed.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by consumer and reason",
            self.dead_letters.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Time spent in event handlers, by consumer",
            self.handler_duration.clone(),
        );
    }

    /// The publish metrics of every event type, resolved once so recording allocates nothing.
    pub(crate) fn for_publisher(&self) -> PublisherMetrics {
        let per_type = EventType::ALL
            .into_iter()
            .map(|event_type| {
                let counter = |outcome: PublishOutcome| {
                    self.published.get_or_create_owned(&PublishLabels {
                        event_type: event_type.as_str(),
                        outcome: outcome.as_str(),
                    })
                };
                PublishHandles {
                    stored: counter(PublishOutcome::Stored),
                    duplicate: counter(PublishOutcome::Duplicate),
                    failed: counter(PublishOutcome::Failed),
                    duration: self.publish_duration.get_or_create_owned(&TypeLabels {
                        event_type: event_type.as_str(),
                    }),
                }
            })
            .collect();
        PublisherMetrics {
            per_type: Arc::new(per_type),
        }
    }

    /// The metrics of one consumer, resolved once so recording allocates nothing.
    pub(crate) fn for_consumer(&self, consumer: &str) -> ConsumerMetrics {
        let consumed = |outcome: ConsumeOutcome| {
            self.consumed.get_or_create_owned(&ConsumeLabels {
                consumer: consumer.to_owned(),
                outcome: outcome.as_str(),
            })
        };
        ConsumerMetrics {
            ack: consumed(ConsumeOutcome::Ack),
            nak: consumed(ConsumeOutcome::Nak),
            dead_letter: consumed(ConsumeOutcome::DeadLetter),
            abandoned: consumed(ConsumeOutcome::Abandoned),
            handler_duration: self.handler_duration.get_or_create_owned(&ConsumerLabels {
                consumer: consumer.to_owned(),
            }),
            metrics: self.clone(),
            consumer: consumer.to_owned(),
        }
    }

    pub(crate) fn record_dead_letter(&self, consumer: &str, reason: &'static str) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                consumer: consumer.to_owned(),
                reason,
            })
            .inc();
    }

    /// How many messages `consumer` handled with `outcome` (for tests and status pages).
    pub fn consumed_count(&self, consumer: &str, outcome: ConsumeOutcome) -> u64 {
        self.consumed
            .get_or_create(&ConsumeLabels {
                consumer: consumer.to_owned(),
                outcome: outcome.as_str(),
            })
            .get()
    }
}

#[derive(Debug)]
struct PublishHandles {
    stored: Counter,
    duplicate: Counter,
    failed: Counter,
    duration: Histogram,
}

/// The publish metrics (see [`EventMetrics::for_publisher`]).
#[derive(Debug, Clone)]
pub(crate) struct PublisherMetrics {
    per_type: Arc<Vec<PublishHandles>>,
}

impl PublisherMetrics {
    pub(crate) fn published(
        &self,
        event_type: EventType,
        outcome: PublishOutcome,
        elapsed: Duration,
    ) {
        let Some(handles) = self.per_type.get(event_type.index()) else {
            return;
        };
        match outcome {
            PublishOutcome::Stored => handles.stored.inc(),
            PublishOutcome::Duplicate => handles.duplicate.inc(),
            PublishOutcome::Failed => handles.failed.inc(),
        };
        if outcome != PublishOutcome::Failed {
            handles.duration.observe(elapsed.as_secs_f64());
        }
    }
}

/// The metrics of one consumer (see [`EventMetrics::for_consumer`]).
#[derive(Debug, Clone)]
pub(crate) struct ConsumerMetrics {
    ack: Counter,
    nak: Counter,
    dead_letter: Counter,
    abandoned: Counter,
    handler_duration: Histogram,
    metrics: EventMetrics,
    consumer: String,
}

impl ConsumerMetrics {
    pub(crate) fn consumed(&self, outcome: ConsumeOutcome) {
        match outcome {
            ConsumeOutcome::Ack => self.ack.inc(),
            ConsumeOutcome::Nak => self.nak.inc(),
            ConsumeOutcome::DeadLetter => self.dead_letter.inc(),
            ConsumeOutcome::Abandoned => self.abandoned.inc(),
        };
    }

    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        self.metrics.record_dead_letter(&self.consumer, reason);
    }

    pub(crate) fn handled_in(&self, elapsed: Duration) {
        self.handler_duration.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_are_exposed() {
        let metrics = EventMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.for_publisher().published(
            EventType::TaskRunCreated,
            PublishOutcome::Stored,
            Duration::from_millis(3),
        );
        let registrar = metrics.for_consumer("registrar");
        registrar.consumed(ConsumeOutcome::Ack);
        registrar.dead_lettered("not_json");
        registrar.handled_in(Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            "countersign_events_published_total{event_type=\"dev.countersign.taskrun.created.v1\",outcome=\"stored\"} 1"
        ));
        assert!(text.contains(
            "countersign_events_consumed_total{consumer=\"registrar\",outcome=\"ack\"} 1"
        ));
        assert!(text.contains(
            "countersign_events_dead_letters_total{consumer=\"registrar\",reason=\"not_json\"} 1"
        ));
        assert!(text.contains(
            "countersign_events_handler_duration_seconds_count{consumer=\"registrar\"} 1"
        ));
        assert_eq!(metrics.consumed_count("registrar", ConsumeOutcome::Ack), 1);
    }
}
