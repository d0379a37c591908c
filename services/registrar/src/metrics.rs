//! The registrar's Prometheus metrics, all named `countersign_registrar_*` and registered in the
//! registry the service owns (no global registry):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `entries_registered_total` | `kind` | entries created (or found already there) |
//! | `entries_released_total` | `kind`, `reason` | entries deleted |
//! | `batch_size` | `operation` | entries per `BatchCreateEntry` / ids per `BatchDeleteEntry` |
//! | `spire_call_duration_seconds` | `method` | SPIRE server call latency |
//! | `spire_call_errors_total` | `method`, `code` | failed calls, and failed items of batch calls |
//! | `reconcile_orphans_removed_total` | `kind` | entries of ours nobody needs, deleted |
//! | `reconcile_missing_created_total` | `kind` | entries that should exist, re-created |
//! | `reconcile_duration_seconds` | | one reconciliation pass |
//! | `reconcile_passes_total` | `outcome` | passes by outcome |
//! | `kv_cas_conflicts_total` | `record` | compare-and-set conflicts on the state |
//!
//! And, outside the prefix because it is the system's and not one service's,
//! `countersign_registration_latency_seconds` (pod scheduled → entry created, [`crate::latency`]).

use std::time::Duration;

use countersign_events::data::{EntryKind, ReleaseReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::latency::RegistrationLatency;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReleasedLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    method: &'static str,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RecordLabels {
    record: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn size_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0])
}

/// A SPIRE server method, for labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpireMethod {
    /// `Entry/BatchCreateEntry`.
    BatchCreateEntry,
    /// `Entry/BatchUpdateEntry`.
    BatchUpdateEntry,
    /// `Entry/BatchDeleteEntry`.
    BatchDeleteEntry,
    /// `Entry/ListEntries` (one page).
    ListEntries,
    /// `Entry/GetEntry`.
    GetEntry,
}

impl SpireMethod {
    fn as_str(self) -> &'static str {
        match self {
            SpireMethod::BatchCreateEntry => "BatchCreateEntry",
            SpireMethod::BatchUpdateEntry => "BatchUpdateEntry",
            SpireMethod::BatchDeleteEntry => "BatchDeleteEntry",
            SpireMethod::ListEntries => "ListEntries",
            SpireMethod::GetEntry => "GetEntry",
        }
    }
}

/// How a reconciliation pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// It ran to the end.
    Completed,
    /// It failed part way (SPIRE or NATS unavailable).
    Failed,
    /// Another replica holds the lease.
    Skipped,
}

/// The registrar's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct RegistrarMetrics {
    registered: Family<KindLabels, Counter>,
    released: Family<ReleasedLabels, Counter>,
    batch_size: HistogramFamily<OperationLabels>,
    call_duration: HistogramFamily<MethodLabels>,
    call_errors: Family<ErrorLabels, Counter>,
    /// The sum of `call_errors`, for tests (a family cannot be summed).
    call_errors_total: Counter,
    orphans_removed: Family<KindLabels, Counter>,
    missing_created: Family<KindLabels, Counter>,
    reconcile_duration: Histogram,
    passes: Family<OutcomeLabels, Counter>,
    cas_conflicts: Family<RecordLabels, Counter>,
    registration_latency: RegistrationLatency,
}

impl Default for RegistrarMetrics {
    fn default() -> RegistrarMetrics {
        RegistrarMetrics {
            registered: Family::default(),
            released: Family::default(),
            batch_size: Family::new_with_constructor(size_histogram as fn() -> Histogram),
            call_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            call_errors: Family::default(),
            call_errors_total: Counter::default(),
            orphans_removed: Family::default(),
            missing_created: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            passes: Family::default(),
            cas_conflicts: Family::default(),
            registration_latency: RegistrationLatency::default(),
        }
    }
}

pub(crate) fn kind_label(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Workload => "workload",
        EntryKind::NodeAlias => "node_alias",
    }
}

fn reason_label(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::Finished => "finished",
        ReleaseReason::Deleted => "deleted",
        ReleaseReason::Orphan => "orphan",
        ReleaseReason::NodeIdle => "node_idle",
    }
}

impl RegistrarMetrics {
    /// New metrics, not yet registered.
    pub fn new() -> RegistrarMetrics {
        RegistrarMetrics::default()
    }

    /// Registers every metric under `countersign_registrar_`.
    pub fn register(&self, registry: &mut Registry) {
        self.registration_latency.register(registry);
        let registry = registry.sub_registry_with_prefix("countersign_registrar");
        registry.register(
            "entries_registered",
            "SPIRE entries registered, by kind",
            self.registered.clone(),
        );
        registry.register(
            "entries_released",
            "SPIRE entries released, by kind and reason",
            self.released.clone(),
        );
        registry.register(
            "batch_size",
            "Entries (or ids) per SPIRE batch call, by operation",
            self.batch_size.clone(),
        );
        registry.register_with_unit(
            "spire_call_duration",
            "SPIRE server call latency, by method",
            Unit::Seconds,
            self.call_duration.clone(),
        );
        registry.register(
            "spire_call_errors",
            "Failed SPIRE server calls and failed items of batch calls, by method and code",
            self.call_errors.clone(),
        );
        registry.register(
            "reconcile_orphans_removed",
            "Entries of ours that nothing needed, deleted by reconciliation",
            self.orphans_removed.clone(),
        );
        registry.register(
            "reconcile_missing_created",
            "Entries that should have existed, created by reconciliation",
            self.missing_created.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time of one reconciliation pass",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconciliation passes, by outcome",
            self.passes.clone(),
        );
        registry.register(
            "kv_cas_conflicts",
            "Compare-and-set conflicts on the state bucket, by record",
            self.cas_conflicts.clone(),
        );
    }

    pub(crate) fn registered(&self, kind: EntryKind) {
        self.registered
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .inc();
    }

    pub(crate) fn released(&self, kind: EntryKind, reason: ReleaseReason) {
        self.released
            .get_or_create(&ReleasedLabels {
                kind: kind_label(kind),
                reason: reason_label(reason),
            })
            .inc();
    }

    pub(crate) fn batch(&self, operation: SpireMethod, size: usize) {
        self.batch_size
            .get_or_create(&OperationLabels {
                operation: operation.as_str(),
            })
            .observe(size as f64);
    }

    pub(crate) fn call(&self, method: SpireMethod, elapsed: Duration) {
        self.call_duration
            .get_or_create(&MethodLabels {
                method: method.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn call_error(&self, method: SpireMethod, code: impl Into<String>) {
        self.call_errors
            .get_or_create(&ErrorLabels {
                method: method.as_str(),
                code: code.into(),
            })
            .inc();
        self.call_errors_total.inc();
    }

    pub(crate) fn orphan_removed(&self, kind: EntryKind) {
        self.orphans_removed
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .inc();
    }

    pub(crate) fn missing_created(&self, kind: EntryKind) {
        self.missing_created
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .inc();
    }

    pub(crate) fn pass(&self, outcome: PassOutcome, elapsed: Duration) {
        let outcome = match outcome {
            PassOutcome::Completed => "completed",
            PassOutcome::Failed => "failed",
            PassOutcome::Skipped => "skipped",
        };
        if outcome != "skipped" {
            self.reconcile_duration.observe(elapsed.as_secs_f64());
        }
        self.passes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn entry_created_for(
        &self,
        scheduled_at: chrono::DateTime<chrono::Utc>,
        created_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.registration_latency.observe(scheduled_at, created_at);
    }

    pub(crate) fn cas_conflict(&self, record: &'static str) {
        self.cas_conflicts(record, 1);
    }

    pub(crate) fn cas_conflicts(&self, record: &'static str, conflicts: usize) {
        if conflicts > 0 {
            self.cas_conflicts
                .get_or_create(&RecordLabels { record })
                .inc_by(u64::try_from(conflicts).unwrap_or(u64::MAX));
        }
    }

    /// Entries registered so far, of `kind` (for tests and the bench).
    pub fn registered_count(&self, kind: EntryKind) -> u64 {
        self.registered
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .get()
    }

    /// Entries released so far, of `kind`, for any reason.
    pub fn released_count(&self, kind: EntryKind) -> u64 {
        [
            ReleaseReason::Finished,
            ReleaseReason::Deleted,
            ReleaseReason::Orphan,
            ReleaseReason::NodeIdle,
        ]
        .into_iter()
        .map(|reason| {
            self.released
                .get_or_create(&ReleasedLabels {
                    kind: kind_label(kind),
                    reason: reason_label(reason),
                })
                .get()
        })
        .sum()
    }

    /// Orphans removed by reconciliation so far, of `kind`.
    pub fn orphans_removed_count(&self, kind: EntryKind) -> u64 {
        self.orphans_removed
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .get()
    }

    /// Missing entries created by reconciliation so far, of `kind`.
    pub fn missing_created_count(&self, kind: EntryKind) -> u64 {
        self.missing_created
            .get_or_create(&KindLabels {
                kind: kind_label(kind),
            })
            .get()
    }

    /// Completed reconciliation passes so far.
    pub fn completed_passes(&self) -> u64 {
        self.passes
            .get_or_create(&OutcomeLabels {
                outcome: "completed",
            })
            .get()
    }

    /// Failed SPIRE calls (and failed batch items) so far, for any method and code.
    pub fn spire_errors(&self) -> u64 {
        self.call_errors_total.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_countersign_registrar() {
        let metrics = RegistrarMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.registered(EntryKind::Workload);
        metrics.released(EntryKind::NodeAlias, ReleaseReason::NodeIdle);
        metrics.batch(SpireMethod::BatchCreateEntry, 7);
        metrics.call(SpireMethod::ListEntries, Duration::from_millis(3));
        metrics.call_error(SpireMethod::BatchDeleteEntry, "Unavailable");
        metrics.orphan_removed(EntryKind::Workload);
        metrics.missing_created(EntryKind::NodeAlias);
        metrics.pass(PassOutcome::Completed, Duration::from_millis(20));
        metrics.cas_conflict("taskrun");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(
                line.starts_with("countersign_registrar_")
                    || line.starts_with("countersign_registration_latency_seconds"),
                "{line}"
            );
        }
        for name in [
            "countersign_registrar_entries_registered_total{kind=\"workload\"} 1",
            "countersign_registrar_entries_released_total{kind=\"node_alias\",reason=\"node_idle\"} 1",
            "countersign_registrar_batch_size_count{operation=\"BatchCreateEntry\"} 1",
            "countersign_registrar_spire_call_duration_seconds_count{method=\"ListEntries\"} 1",
            "countersign_registrar_spire_call_errors_total{method=\"BatchDeleteEntry\",code=\"Unavailable\"} 1",
            "countersign_registrar_reconcile_orphans_removed_total{kind=\"workload\"} 1",
            "countersign_registrar_reconcile_missing_created_total{kind=\"node_alias\"} 1",
            "countersign_registrar_reconcile_duration_seconds_count 1",
            "countersign_registrar_kv_cas_conflicts_total{record=\"taskrun\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert_eq!(metrics.spire_errors(), 1);
        assert_eq!(metrics.released_count(EntryKind::NodeAlias), 1);
    }
}
