//! The exporter's Prometheus metrics, registered in the service's own registry:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `countersign_exporter_attachments_total` | `outcome` | artifacts handled: `attached_referrers_api`, `attached_tag_schema`, `not_allowed`, `failed_transient`, `failed_permanent` |
//! | `countersign_exporter_attach_duration_seconds` | | time to attach one bundle (every request to the registry) |
//!
//! The bus's own metrics (`countersign_events_*`, among them consumed messages by disposition
//! for the `exporter` consumer) sit next to these.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What became of one artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachOutcome {
    /// Attached; the registry's Referrers API lists it.
    AttachedReferrersApi,
    /// Attached and listed in the tag-schema index.
    AttachedTagSchema,
    /// Its registry is not on the allow-list.
    NotAllowed,
    /// A failure the event is retried for.
    FailedTransient,
    /// A failure the event is dead-lettered for.
    FailedPermanent,
}

impl AttachOutcome {
    /// Every outcome.
    pub const ALL: [AttachOutcome; 5] = [
        AttachOutcome::AttachedReferrersApi,
        AttachOutcome::AttachedTagSchema,
        AttachOutcome::NotAllowed,
        AttachOutcome::FailedTransient,
        AttachOutcome::FailedPermanent,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachOutcome::AttachedReferrersApi => "attached_referrers_api",
            AttachOutcome::AttachedTagSchema => "attached_tag_schema",
            AttachOutcome::NotAllowed => "not_allowed",
            AttachOutcome::FailedTransient => "failed_transient",
            AttachOutcome::FailedPermanent => "failed_permanent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The exporter's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct ExporterMetrics {
    attachments: Family<OutcomeLabels, Counter>,
    duration: Histogram,
}

impl Default for ExporterMetrics {
    fn default() -> ExporterMetrics {
        ExporterMetrics::new()
    }
}

impl ExporterMetrics {
    /// New metrics, every series created (a scrape shows zeros).
    pub fn new() -> ExporterMetrics {
        let metrics = ExporterMetrics {
            attachments: Family::default(),
            // 5 ms to about 40 s.
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        };
        for outcome in AttachOutcome::ALL {
            let _ = metrics.attachments.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        metrics
    }

    /// Registers every metric in `registry` as `countersign_exporter_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("countersign_exporter");
        registry.register(
            "attachments",
            "Artifacts whose bundle the exporter attached or gave up on, by outcome",
            self.attachments.clone(),
        );
        registry.register_with_unit(
            "attach_duration",
            "Time to attach one bundle to an image in its registry",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    /// Counts one artifact's outcome.
    pub fn record(&self, outcome: AttachOutcome) {
        self.attachments
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Records how long one attachment took.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }
}
