//! The registrar's state in the JetStream KV bucket `{PREFIX}_REGISTRAR`, changed only by
//! compare-and-set, so replicas and redeliveries can run in any order:
//!
//! | key | value |
//! |---|---|
//! | `taskrun.<uid>` | [`TaskRunRecord`]: `active` (its pods, each pending or registered) or a `tombstone` |
//! | `node.<node>` | [`NodeRecord`]: the node alias `registered`, `releasing` or `released` |
//! | `lease.reconciler` | [`LeaseRecord`]: which replica runs the reconciler |
//!
//! Keys are unchanged from before the shared KV layer: the UID or node name is kept
//! byte-for-byte (both are checked as SPIRE entry id parts, so the format is injective).
//!
//! A tombstone wins over a late create: `scheduled` creates the record only when none exists,
//! and once a record is a tombstone nothing turns it back. The bucket's `max_age` is the
//! tombstone TTL; the reconciler rewrites live records before they reach it.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use countersign_events::data::{ReleaseReason, TaskRunRef};
use countersign_events::kv::{Bucket, Key, SnapshotEntry, SnapshotValue};
pub use countersign_events::kv::{Cas, Change, KvError as StateError, Versioned};
use serde::{Deserialize, Serialize};

use crate::metrics::RegistrarMetrics;

/// The bucket's name after the bus prefix: `{PREFIX}_REGISTRAR`.
pub const BUCKET: &str = "registrar";

const TASKRUN_PREFIX: &str = "taskrun";
const NODE_PREFIX: &str = "node";
const LEASE_PREFIX: &str = "lease";
const LEASE_NAME: &str = "reconciler";

/// How many compare-and-set rounds one change tries before giving up (transiently).
pub(crate) const MAX_CAS_ATTEMPTS: usize = 64;

/// How long a snapshot may wait for its next key.
const SNAPSHOT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A pod of a TaskRun and its workload entry, as registered (or about to be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRegistration {
    /// The pod's UID.
    pub pod_uid: String,
    /// The pod's name.
    pub pod_name: String,
    /// The node it runs on.
    pub node_name: String,
    /// The workload entry's id.
    pub entry_id: String,
    /// The entry's SPIFFE ID.
    pub spiffe_id: String,
    /// The entry's parent (the node alias).
    pub parent_id: String,
    /// The entry's selectors, `type:value`.
    pub selectors: Vec<String>,
    /// When SPIRE drops the entry.
    pub expires_at: DateTime<Utc>,
    /// When the registrar first handled the pod's `scheduled` event.
    pub scheduled_at: DateTime<Utc>,
    /// Whether the entry was created (false: pending).
    pub registered: bool,
}

/// A node alias entry, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAliasRegistration {
    /// The node.
    pub node_name: String,
    /// The cluster of the TaskRun that first needed it.
    pub cluster: String,
    /// The entry's id.
    pub entry_id: String,
    /// The node alias SPIFFE ID.
    pub spiffe_id: String,
    /// `spiffe://<td>/spire/server`.
    pub parent_id: String,
    /// The entry's selectors.
    pub selectors: Vec<String>,
    /// When SPIRE drops the entry.
    pub expires_at: DateTime<Utc>,
}

/// The state of one TaskRun.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskRunRecord {
    /// The TaskRun runs: its pods' entries are pending or registered.
    Active {
        taskrun: TaskRunRef,
        pods: Vec<PodRegistration>,
    },
    /// The TaskRun ended (or was deleted): its entries are released, and a late `scheduled`
    /// registers nothing.
    Tombstone {
        taskrun: TaskRunRef,
        pods: Vec<PodRegistration>,
        reason: ReleaseReason,
        ended_at: DateTime<Utc>,
    },
}

impl TaskRunRecord {
    /// The TaskRun.
    pub fn taskrun(&self) -> &TaskRunRef {
        match self {
            TaskRunRecord::Active { taskrun, .. } | TaskRunRecord::Tombstone { taskrun, .. } => {
                taskrun
            }
        }
    }

    /// The pods.
    pub fn pods(&self) -> &[PodRegistration] {
        match self {
            TaskRunRecord::Active { pods, .. } | TaskRunRecord::Tombstone { pods, .. } => pods,
        }
    }
}

/// The state of one node's alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeRecord {
    /// The alias entry exists (with at least this expiry).
    Registered {
        alias: NodeAliasRegistration,
        since: DateTime<Utc>,
    },
    /// A reconciler is releasing the alias: handlers that need it wait (nak) until it is done.
    Releasing {
        alias: NodeAliasRegistration,
        since: DateTime<Utc>,
    },
    /// The alias was released.
    Released {
        node_name: String,
        released_at: DateTime<Utc>,
    },
}

/// Which replica runs the reconciler, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRecord {
    /// The replica's id.
    pub holder: String,
    /// When the lease lapses unless renewed.
    pub until: DateTime<Utc>,
}

/// One record of a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// The key's revision.
    pub revision: u64,
    /// When the value was written.
    pub written_at: DateTime<Utc>,
    /// The value.
    pub value: T,
}

/// Every live record, read in one pass over each key prefix.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// TaskRun records by TaskRun UID.
    pub taskruns: BTreeMap<String, Stored<TaskRunRecord>>,
    /// Node records by node name.
    pub nodes: BTreeMap<String, Stored<NodeRecord>>,
    /// Keys whose value could not be read as a record.
    pub corrupt: Vec<String>,
}

/// The state bucket: one typed view per record kind. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateStore {
    taskruns: Bucket<TaskRunRecord>,
    nodes: Bucket<NodeRecord>,
    leases: Bucket<LeaseRecord>,
    metrics: RegistrarMetrics,
}

/// Which record a conflict was on, for the metric.
#[derive(Debug, Clone, Copy)]
enum RecordKind {
    TaskRun,
    Node,
    Lease,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            RecordKind::TaskRun => "taskrun",
            RecordKind::Node => "node",
            RecordKind::Lease => "lease",
        }
    }

    /// The key prefix of the kind's records.
    fn prefix(self) -> &'static str {
        match self {
            RecordKind::TaskRun => TASKRUN_PREFIX,
            RecordKind::Node => NODE_PREFIX,
            RecordKind::Lease => LEASE_PREFIX,
        }
    }

    /// The key of the record of `id` (a TaskRun UID, a node name): `<prefix>.<id>`, the id kept
    /// byte-for-byte (it is checked as a SPIRE entry id part first, which is a valid key).
    fn key(self, id: &str) -> Result<Key, StateError> {
        Key::raw(self.prefix())?.with_raw(id)
    }
}

impl StateStore {
    /// The store over a bound bucket (see `Bus::ensure_kv`).
    pub fn new(kv: kv::Store, metrics: RegistrarMetrics) -> StateStore {
        let taskruns = Bucket::new(kv)
            .with_modify_attempts(MAX_CAS_ATTEMPTS)
            .with_snapshot_idle_timeout(SNAPSHOT_IDLE_TIMEOUT);
        StateStore {
            nodes: taskruns.typed(),
            leases: taskruns.typed(),
            taskruns,
            metrics,
        }
    }

    /// The TaskRun record of `uid`.
    pub async fn taskrun(&self, uid: &str) -> Result<Versioned<TaskRunRecord>, StateError> {
        self.taskruns.get(&RecordKind::TaskRun.key(uid)?).await
    }

    /// Compare-and-set of a TaskRun record.
    pub async fn write_taskrun(
        &self,
        uid: &str,
        record: &TaskRunRecord,
        revision: u64,
    ) -> Result<Cas, StateError> {
        let written = self
            .taskruns
            .update(&RecordKind::TaskRun.key(uid)?, record, revision)
            .await?;
        Ok(self.count_conflict(written, RecordKind::TaskRun))
    }

    /// Reads the TaskRun record of `uid`, lets `change` decide, and writes by compare-and-set,
    /// again after a conflict ([`StateError::Contention`] after [`MAX_CAS_ATTEMPTS`]).
    pub async fn modify_taskrun<R>(
        &self,
        uid: &str,
        change: impl FnMut(Versioned<TaskRunRecord>) -> Change<TaskRunRecord, R>,
    ) -> Result<R, StateError> {
        let modified = self
            .taskruns
            .modify(&RecordKind::TaskRun.key(uid)?, change)
            .await
            .inspect_err(|error| {
                if let StateError::Contention { attempts, .. } = error {
                    self.metrics
                        .cas_conflicts(RecordKind::TaskRun.as_str(), *attempts);
                }
            })?;
        self.metrics
            .cas_conflicts(RecordKind::TaskRun.as_str(), modified.conflicts);
        Ok(modified.outcome)
    }

    /// The record of `node`'s alias.
    pub async fn node(&self, node: &str) -> Result<Versioned<NodeRecord>, StateError> {
        self.nodes.get(&RecordKind::Node.key(node)?).await
    }

    /// Compare-and-set of a node record.
    pub async fn write_node(
        &self,
        node: &str,
        record: &NodeRecord,
        revision: u64,
    ) -> Result<Cas, StateError> {
        let written = self
            .nodes
            .update(&RecordKind::Node.key(node)?, record, revision)
            .await?;
        Ok(self.count_conflict(written, RecordKind::Node))
    }

    /// The reconciler lease.
    pub async fn lease(&self) -> Result<Versioned<LeaseRecord>, StateError> {
        self.leases.get(&RecordKind::Lease.key(LEASE_NAME)?).await
    }

    /// Compare-and-set of the reconciler lease.
    pub async fn write_lease(&self, lease: &LeaseRecord, revision: u64) -> Result<Cas, StateError> {
        let written = self
            .leases
            .update(&RecordKind::Lease.key(LEASE_NAME)?, lease, revision)
            .await?;
        Ok(self.count_conflict(written, RecordKind::Lease))
    }

    fn count_conflict(&self, written: Cas, kind: RecordKind) -> Cas {
        if written == Cas::Conflict {
            self.metrics.cas_conflict(kind.as_str());
        }
        written
    }

    /// Every live TaskRun and node record (the last value of each key).
    pub async fn snapshot(&self) -> Result<Snapshot, StateError> {
        let mut snapshot = Snapshot::default();
        let taskruns = self
            .taskruns
            .snapshot(Some(&Key::raw(TASKRUN_PREFIX)?))
            .await?;
        for entry in taskruns {
            snapshot.add(entry, TASKRUN_PREFIX, |snapshot| &mut snapshot.taskruns);
        }
        let nodes = self.nodes.snapshot(Some(&Key::raw(NODE_PREFIX)?)).await?;
        for entry in nodes {
            snapshot.add(entry, NODE_PREFIX, |snapshot| &mut snapshot.nodes);
        }
        Ok(snapshot)
    }
}

impl Snapshot {
    fn add<T>(
        &mut self,
        entry: SnapshotEntry<T>,
        prefix: &str,
        records: impl FnOnce(&mut Snapshot) -> &mut BTreeMap<String, Stored<T>>,
    ) {
        let Some(id) = entry
            .key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return;
        };
        match entry.value {
            SnapshotValue::Value(value) => {
                let id = id.to_owned();
                records(self).insert(
                    id,
                    Stored {
                        revision: entry.revision,
                        written_at: entry.written_at,
                        value,
                    },
                );
            }
            SnapshotValue::Deleted => {}
            SnapshotValue::Corrupt(_) => self.corrupt.push(entry.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn pod() -> PodRegistration {
        PodRegistration {
            pod_uid: "p1".into(),
            pod_name: "build-pod".into(),
            node_name: "node-1".into(),
            entry_id: "countersign.pod.p1".into(),
            spiffe_id: "spiffe://example.org/ns/default/taskrun/build".into(),
            parent_id: "spiffe://example.org/tekton-node/node-1".into(),
            selectors: vec!["k8s:pod-uid:p1".into()],
            expires_at: Utc.with_ymd_and_hms(2026, 8, 20, 11, 10, 0).unwrap(),
            scheduled_at: Utc.with_ymd_and_hms(2026, 8, 20, 10, 0, 0).unwrap(),
            registered: true,
        }
    }

    #[test]
    fn records_round_trip_with_a_state_tag() {
        let taskrun = TaskRunRef {
            cluster: "c".into(),
            namespace: "default".into(),
            name: "build".into(),
            uid: "u1".into(),
        };
        let record = TaskRunRecord::Tombstone {
            taskrun,
            pods: vec![pod()],
            reason: ReleaseReason::Finished,
            ended_at: Utc.with_ymd_and_hms(2026, 8, 20, 10, 5, 0).unwrap(),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["state"], "tombstone");
        assert_eq!(json["reason"], "finished");
        assert_eq!(json["pods"][0]["entryId"], "countersign.pod.p1");
        let back: TaskRunRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_foreign_value_is_refused_as_corrupt() {
        let foreign = serde_json::from_slice::<TaskRunRecord>(b"{\"state\":\"weird\"}");
        assert!(foreign.is_err());
        let entry = |key: &str, value| SnapshotEntry::<TaskRunRecord> {
            key: key.into(),
            revision: 3,
            written_at: Utc::now(),
            value,
        };
        let not_json =
            || SnapshotValue::Corrupt(serde_json::from_slice::<()>(b"not json").unwrap_err());
        let mut snapshot = Snapshot::default();
        snapshot.add(entry("taskrun.u1", not_json()), TASKRUN_PREFIX, |s| {
            &mut s.taskruns
        });
        snapshot.add(entry("other.key", not_json()), TASKRUN_PREFIX, |s| {
            &mut s.taskruns
        });
        snapshot.add(
            entry("taskrun.u2", SnapshotValue::Deleted),
            TASKRUN_PREFIX,
            |s| &mut s.taskruns,
        );
        assert_eq!(snapshot.corrupt, ["taskrun.u1"]);
        assert!(snapshot.taskruns.is_empty());
    }

    #[test]
    fn keys_are_kept_byte_for_byte() {
        assert_eq!(
            RecordKind::TaskRun
                .key("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14")
                .unwrap()
                .as_str(),
            "taskrun.6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"
        );
        assert_eq!(
            RecordKind::Node
                .key("ip-10-0-0-1.ec2.internal")
                .unwrap()
                .as_str(),
            "node.ip-10-0-0-1.ec2.internal"
        );
        assert_eq!(
            RecordKind::Lease.key(LEASE_NAME).unwrap().as_str(),
            "lease.reconciler"
        );
        let invalid = RecordKind::Node.key("a b").unwrap_err();
        assert!(matches!(invalid, StateError::InvalidKey { .. }));
        assert!(!invalid.is_transient());
    }
}
