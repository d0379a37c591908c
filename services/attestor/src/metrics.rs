//! The attestor's Prometheus metrics, `countersign_attestor_*`, with bounded labels (a verdict
//! is one of three values, a reason one of the contract's codes, a bucket one of three names):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `countersign_attestor_verdicts_total` | `verdict`, `reason` | TaskRun verdicts this replica stored |
//! | `countersign_attestor_step_verdicts_total` | `verdict`, `reason` | step verdicts this replica recorded |
//! | `countersign_attestor_verification_duration_seconds` | | finished event received → attestation published |
//! | `countersign_attestor_kv_conflicts_total` | `bucket` | writes another writer won (replicas, redeliveries) |
//! | `countersign_attestor_material_updates_total` | | SVID and bundle updates received from the Workload API |
//! | `countersign_attestor_trust_bundle_authorities` | | CA certificates in the trust bundles in use |
//! | `countersign_attestor_svid_expiry_timestamp_seconds` | | when the attestor's SVID expires |
//! | `countersign_attestor_timestamps_total` | | RFC 3161 timestamps obtained and verified (`[timestamp]`) |
//! | `countersign_attestor_timestamp_failures_total` | `reason` | timestamp requests that failed (the TaskRun is retried) |
//! | `countersign_attestor_timestamp_duration_seconds` | | request to a verified timestamp |
//! | `countersign_attestor_attestations_revoked_total` | | stored attestations revoked (a CA of their signing chains was revoked) |
//! | `countersign_attestor_revocation_unreadable_total` | | stored attestations a revocation scan could not read (skipped) |
//!
//! And, outside the prefix because it is the system's and not one service's,
//! `countersign_attestation_latency_seconds` (TaskRun finished → attestation published,
//! [`crate::latency`]).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::latency::AttestationLatency;

/// The `reason` label of a verdict that has none.
pub const NO_REASON: &str = "none";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BucketLabels {
    bucket: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    reason: &'static str,
}

/// The attestor's metrics. Cloning is cheap and shares the values.
#[derive(Debug, Clone)]
pub struct AttestorMetrics {
    verdicts: Family<VerdictLabels, Counter>,
    step_verdicts: Family<VerdictLabels, Counter>,
    verification_duration: Histogram,
    kv_conflicts: Family<BucketLabels, Counter>,
    material_updates: Counter,
    bundle_authorities: Gauge,
    svid_expiry: Gauge,
    attestation_latency: AttestationLatency,
    timestamps: Counter,
    timestamp_failures: Family<FailureLabels, Counter>,
    timestamp_duration: Histogram,
    attestations_revoked: Counter,
    revocation_unreadable: Counter,
}

impl Default for AttestorMetrics {
    fn default() -> Self {
        AttestorMetrics {
            verdicts: Family::default(),
            step_verdicts: Family::default(),
            // 0.5 ms to about 8 s.
            verification_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            kv_conflicts: Family::default(),
            material_updates: Counter::default(),
            bundle_authorities: Gauge::default(),
            svid_expiry: Gauge::default(),
            attestation_latency: AttestationLatency::default(),
            timestamps: Counter::default(),
            timestamp_failures: Family::default(),
            // 1 ms to about 16 s.
            timestamp_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            attestations_revoked: Counter::default(),
            revocation_unreadable: Counter::default(),
        }
    }
}

impl AttestorMetrics {
    /// New metrics, not registered anywhere.
    pub fn new() -> AttestorMetrics {
        AttestorMetrics::default()
    }

    /// Registers them in `registry` under `countersign_attestor_`.
    pub fn register(&self, registry: &mut Registry) {
        self.attestation_latency.register(registry);
        let registry = registry.sub_registry_with_prefix("countersign_attestor");
        registry.register(
            "verdicts",
            "TaskRun verdicts stored, by verdict and reason code",
            self.verdicts.clone(),
        );
        registry.register(
            "step_verdicts",
            "Step verdicts recorded, by verdict and reason code",
            self.step_verdicts.clone(),
        );
        registry.register(
            "verification_duration_seconds",
            "Time from receiving a finished event to publishing its attestation",
            self.verification_duration.clone(),
        );
        registry.register(
            "kv_conflicts",
            "KV writes another writer won (replicas and redeliveries converging), by bucket",
            self.kv_conflicts.clone(),
        );
        registry.register(
            "material_updates",
            "SVID and trust bundle updates received from the Workload API",
            self.material_updates.clone(),
        );
        registry.register(
            "trust_bundle_authorities",
            "CA certificates in the trust bundles in use, all trust domains",
            self.bundle_authorities.clone(),
        );
        registry.register(
            "svid_expiry_timestamp_seconds",
            "When the attestor's own SVID expires (Unix time)",
            self.svid_expiry.clone(),
        );
        registry.register(
            "timestamps",
            "RFC 3161 timestamps obtained from the timestamp authority and verified",
            self.timestamps.clone(),
        );
        registry.register(
            "timestamp_failures",
            "Timestamp requests that failed (the TaskRun is retried), by reason",
            self.timestamp_failures.clone(),
        );
        registry.register(
            "timestamp_duration_seconds",
            "Time from a timestamp request to its verified response",
            self.timestamp_duration.clone(),
        );
        registry.register(
            "attestations_revoked",
            "Stored attestations revoked because a CA that issued one of their signing chains was revoked",
            self.attestations_revoked.clone(),
        );
        registry.register(
            "revocation_unreadable",
            "Stored attestations a revocation scan could not read (skipped)",
            self.revocation_unreadable.clone(),
        );
    }

    /// Counts a stored attestation revoked.
    pub fn attestation_revoked(&self) {
        self.attestations_revoked.inc();
    }

    /// Counts a stored attestation a revocation scan could not read.
    pub fn revocation_unreadable(&self) {
        self.revocation_unreadable.inc();
    }

    /// Records a verified timestamp and how long it took.
    pub fn timestamp_obtained(&self, elapsed: Duration) {
        self.timestamps.inc();
        self.timestamp_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a failed timestamp request (`reason`: one of a few fixed words).
    pub fn timestamp_failed(&self, reason: &'static str) {
        self.timestamp_failures
            .get_or_create(&FailureLabels { reason })
            .inc();
    }

    /// How many timestamp requests failed for `reason` (for tests).
    pub fn timestamp_failure_count(&self, reason: &'static str) -> u64 {
        self.timestamp_failures
            .get_or_create(&FailureLabels { reason })
            .get()
    }

    /// Records new material: how many CAs the bundles hold, when the SVID expires.
    pub fn material_updated(&self, authorities: usize, svid_expiry_unix: i64) {
        self.material_updates.inc();
        self.bundle_authorities
            .set(i64::try_from(authorities).unwrap_or(i64::MAX));
        self.svid_expiry.set(svid_expiry_unix);
    }

    /// Counts a TaskRun verdict.
    pub fn verdict(&self, verdict: &'static str, reason: Option<&'static str>) {
        self.verdicts
            .get_or_create(&VerdictLabels {
                verdict,
                reason: reason.unwrap_or(NO_REASON),
            })
            .inc();
    }

    /// Counts a step verdict.
    pub fn step_verdict(&self, verdict: &'static str, reason: Option<&'static str>) {
        self.step_verdicts
            .get_or_create(&VerdictLabels {
                verdict,
                reason: reason.unwrap_or(NO_REASON),
            })
            .inc();
    }

    /// Records how long a finished event took.
    pub fn verification_took(&self, elapsed: Duration) {
        self.verification_duration.observe(elapsed.as_secs_f64());
    }

    /// Records a TaskRun finished at `finished_at` whose attestation was published at
    /// `published_at`.
    pub fn attestation_published(
        &self,
        finished_at: chrono::DateTime<chrono::Utc>,
        published_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.attestation_latency.observe(finished_at, published_at);
    }

    /// Counts KV writes another writer won in `bucket`.
    pub fn kv_conflicts(&self, bucket: &'static str, count: usize) {
        if count > 0 {
            self.kv_conflicts
                .get_or_create(&BucketLabels { bucket })
                .inc_by(count as u64);
        }
    }

    /// How many TaskRun verdicts of `verdict` were stored (for tests).
    pub fn verdict_count(&self, verdict: &'static str, reason: Option<&'static str>) -> u64 {
        self.verdicts
            .get_or_create(&VerdictLabels {
                verdict,
                reason: reason.unwrap_or(NO_REASON),
            })
            .get()
    }

    /// How many KV conflicts `bucket` saw (for tests).
    pub fn kv_conflict_count(&self, bucket: &'static str) -> u64 {
        self.kv_conflicts
            .get_or_create(&BucketLabels { bucket })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_countersign_attestor() {
        let metrics = AttestorMetrics::new();
        metrics.verdict("rejected", Some("chain_invalid"));
        metrics.step_verdict("verified", None);
        metrics.kv_conflicts("attestations", 2);
        metrics.verification_took(Duration::from_millis(3));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            "countersign_attestor_verdicts_total{verdict=\"rejected\",reason=\"chain_invalid\"} 1"
        ));
        assert!(text.contains(
            "countersign_attestor_step_verdicts_total{verdict=\"verified\",reason=\"none\"} 1"
        ));
        assert!(
            text.contains("countersign_attestor_kv_conflicts_total{bucket=\"attestations\"} 2")
        );
        assert!(text.contains("countersign_attestor_verification_duration_seconds_count 1"));
        assert_eq!(metrics.kv_conflict_count("attestations"), 2);
    }
}
