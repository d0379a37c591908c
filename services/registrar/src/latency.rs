//! `countersign_registration_latency_seconds`: from a TaskRun pod scheduled (the time of the
//! watcher's `scheduled` event, published when it saw the pod bound to a node) to the pod's
//! SPIRE workload entry created, observed once per pod by the call that created the entry. A
//! step cannot fetch its SVID before this, so it is the delay every TaskRun pays at start.
//! A `scheduled` time later than now (clock skew) counts as zero.

use chrono::{DateTime, Utc};
use countersign_runtime::metrics::END_TO_END_LATENCY_BUCKETS;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The registration latency histogram. Cloning is cheap and shares the values.
#[derive(Debug, Clone)]
pub struct RegistrationLatency {
    histogram: Histogram,
}

impl Default for RegistrationLatency {
    fn default() -> Self {
        RegistrationLatency {
            histogram: Histogram::new(END_TO_END_LATENCY_BUCKETS),
        }
    }
}

impl RegistrationLatency {
    /// Registers it in `registry` (the root one) as `countersign_registration_latency_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "countersign_registration_latency",
            "Time from a TaskRun pod scheduled to its SPIRE entry created",
            Unit::Seconds,
            self.histogram.clone(),
        );
    }

    /// Records a pod scheduled at `scheduled_at` whose entry was created at `created_at`.
    pub fn observe(&self, scheduled_at: DateTime<Utc>, created_at: DateTime<Utc>) {
        let seconds = (created_at - scheduled_at)
            .to_std()
            .map_or(0.0, |elapsed| elapsed.as_secs_f64());
        self.histogram.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn a_latency_lands_in_its_bucket_and_skew_counts_as_zero() {
        let latency = RegistrationLatency::default();
        let scheduled = Utc::now();
        latency.observe(scheduled, scheduled + TimeDelta::milliseconds(7));
        latency.observe(scheduled, scheduled - TimeDelta::seconds(1));
        let mut registry = Registry::default();
        latency.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("countersign_registration_latency_seconds_count 2"));
        assert!(text.contains("countersign_registration_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("countersign_registration_latency_seconds_bucket{le=\"0.01\"} 2"));
    }
}
