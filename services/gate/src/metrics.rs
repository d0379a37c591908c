//! The gate's Prometheus metrics, registered in the service's own registry:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `countersign_gate_admissions_total` | `outcome` | TaskRun reviews by outcome: `skipped`, `admitted`, `denied`, `warned` |
//! | `countersign_gate_admission_duration_seconds` | — | time from reading a review to answering it |
//! | `countersign_gate_replica_attestations` | — | attestations in the replica |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::webhook::Outcome;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The gate's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct GateMetrics {
    admissions: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    decision_events: Family<OutcomeLabels, Counter>,
    /// Attestations in the replica.
    pub replica_size: Gauge,
}

impl Default for GateMetrics {
    fn default() -> Self {
        GateMetrics::new()
    }
}

impl GateMetrics {
    /// Unregistered metrics.
    pub fn new() -> GateMetrics {
        GateMetrics {
            admissions: Family::default(),
            // 0.1 ms to ~3.3 s.
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            decision_events: Family::default(),
            replica_size: Gauge::default(),
        }
    }

    /// Registers them in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "countersign_gate_admissions",
            "TaskRun admission reviews by outcome",
            self.admissions.clone(),
        );
        registry.register_with_unit(
            "countersign_gate_admission_duration",
            "Time from reading an admission review to answering it",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "countersign_gate_replica_attestations",
            "Attestations in the gate's replica",
            self.replica_size.clone(),
        );
        registry.register(
            "countersign_gate_decision_events",
            "Decision events by outcome: published, dropped (queue full), failed (publish error)",
            self.decision_events.clone(),
        );
    }

    /// Counts one decision event: `published`, `dropped` or `failed`.
    pub fn decision_event(&self, outcome: &'static str) {
        self.decision_events
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one review.
    pub fn observe(&self, outcome: Outcome, took: Duration) {
        self.admissions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
}
