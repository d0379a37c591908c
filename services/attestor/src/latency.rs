//! `countersign_attestation_latency_seconds`: from a TaskRun's finish to its attestation
//! published on the bus, observed once per TaskRun by the replica that stored the attestation.
//! The end-to-end number a user waits for (the watcher's delay, the bus, the queue before the
//! attestor and the attestor's own work); `countersign_attestor_verification_duration_seconds`
//! is the attestor's share of it.
//!
//! Kubernetes keeps `completionTime` in whole seconds, so the finish is taken as the latest
//! moment the TaskRun can have finished ([`latest_finish`]): its `completedAt` rounded up to the
//! next second, or when the watcher saw it finished (the `finished` event's time), if earlier.
//! A finish carrying finer time (Tekton's CloudEvents, the bench) is taken as it is. A finish
//! later than the publication (clock skew between nodes) counts as zero.

use chrono::{DateTime, Utc};
use countersign_runtime::metrics::END_TO_END_LATENCY_BUCKETS;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The attestation latency histogram. Cloning is cheap and shares the values.
#[derive(Debug, Clone)]
pub struct AttestationLatency {
    histogram: Histogram,
}

impl Default for AttestationLatency {
    fn default() -> Self {
        AttestationLatency {
            histogram: Histogram::new(END_TO_END_LATENCY_BUCKETS),
        }
    }
}

impl AttestationLatency {
    /// Registers it in `registry` (the root one) as `countersign_attestation_latency_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "countersign_attestation_latency",
            "Time from a TaskRun's finish to its attestation published",
            Unit::Seconds,
            self.histogram.clone(),
        );
    }

    /// Records a TaskRun that finished at `finished_at` and was attested at `published_at`.
    pub fn observe(&self, finished_at: DateTime<Utc>, published_at: DateTime<Utc>) {
        let seconds = (published_at - finished_at)
            .to_std()
            .map_or(0.0, |elapsed| elapsed.as_secs_f64());
        self.histogram.observe(seconds);
    }
}

/// The latest moment a TaskRun completed at `completed_at` (as the API server keeps it) and seen
/// finished at `observed_at` can have finished.
pub fn latest_finish(completed_at: DateTime<Utc>, observed_at: DateTime<Utc>) -> DateTime<Utc> {
    if completed_at.timestamp_subsec_nanos() != 0 {
        return completed_at;
    }
    let rounded_up = completed_at + chrono::TimeDelta::seconds(1);
    rounded_up.min(observed_at).max(completed_at)
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn encoded(latency: &AttestationLatency) -> String {
        let mut registry = Registry::default();
        latency.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_latency_lands_in_its_bucket_and_skew_counts_as_zero() {
        let latency = AttestationLatency::default();
        let finished = Utc::now();
        latency.observe(finished, finished + TimeDelta::milliseconds(30));
        latency.observe(finished, finished - TimeDelta::seconds(3));
        let text = encoded(&latency);
        assert!(text.contains("countersign_attestation_latency_seconds_count 2"));
        assert!(text.contains("countersign_attestation_latency_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("countersign_attestation_latency_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("countersign_attestation_latency_seconds_bucket{le=\"0.05\"} 2"));
    }

    #[test]
    fn a_whole_second_finish_is_the_latest_it_can_be() {
        let whole = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let seen_soon = whole + TimeDelta::milliseconds(300);
        assert_eq!(latest_finish(whole, seen_soon), seen_soon);
        let seen_late = whole + TimeDelta::seconds(30);
        assert_eq!(
            latest_finish(whole, seen_late),
            whole + TimeDelta::seconds(1)
        );
        let fine = whole + TimeDelta::milliseconds(120);
        assert_eq!(latest_finish(fine, seen_late), fine);
        // A watcher clock behind the API server's never moves the finish before completedAt.
        assert_eq!(latest_finish(whole, whole - TimeDelta::seconds(2)), whole);
    }
}
