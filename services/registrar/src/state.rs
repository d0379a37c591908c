//! The registrar's state in the JetStream KV bucket `{PREFIX}_REGISTRAR`, changed only by
//! compare-and-set, so replicas and redeliveries can run in any order:
//!
//! | key | value |
//! |---|---|
//! | `taskrun.<uid>` | [`TaskRunRecord`]: `active` (its pods, each pending or registered) or a `tombstone` |
//! | `node.<node>` | [`NodeRecord`]: the node alias `registered`, `releasing` or `released` |
//! | `lease.reconciler` | [`LeaseRecord`]: which replica runs the reconciler |
//!
//! A tombstone wins over a late create: `scheduled` creates the record only when none exists,
//! and once a record is a tombstone nothing turns it back. The bucket's `max_age` is the
//! tombstone TTL; the reconciler rewrites live records before they reach it.

use std::collections::BTreeMap;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use countersign_events::data::{ReleaseReason, TaskRunRef};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics::RegistrarMetrics;

/// The bucket's name after the bus prefix: `{PREFIX}_REGISTRAR`.
pub const BUCKET: &str = "registrar";

const TASKRUN_PREFIX: &str = "taskrun.";
const NODE_PREFIX: &str = "node.";
const LEASE_KEY: &str = "lease.reconciler";

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

/// A value and the revision to compare-and-set against (0: the key has never been written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value, if the key holds one (not deleted or purged).
    pub value: Option<T>,
    /// The key's last revision; a write must name it.
    pub revision: u64,
}

/// What a compare-and-set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written; the key's new revision.
    Written(u64),
    /// Someone else wrote the key first: read it again.
    Conflict,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A key could not be read.
    #[error("reading {key}")]
    Read {
        key: String,
        #[source]
        source: kv::EntryError,
    },
    /// A key could not be written (other than a conflict).
    #[error("writing {key}")]
    Write {
        key: String,
        #[source]
        source: kv::UpdateError,
    },
    /// A stored value is not a record of this version.
    #[error("the value of {key} is not a valid record")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be serialized.
    #[error("serializing the record for {key}")]
    Serialize {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The bucket could not be listed.
    #[error("listing the state bucket")]
    List(#[source] async_nats::Error),
    /// The key is not a valid KV key (refused before any write).
    #[error("{key:?} is not a valid state key")]
    InvalidKey { key: String },
}

impl StateError {
    /// Whether trying again may succeed (NATS unreachable, a timeout); a corrupt record or a bad
    /// key will fail the same way again.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            StateError::Corrupt { .. }
                | StateError::Serialize { .. }
                | StateError::InvalidKey { .. }
        )
    }
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

/// Every live record, read in one pass over the bucket.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// TaskRun records by TaskRun UID.
    pub taskruns: BTreeMap<String, Stored<TaskRunRecord>>,
    /// Node records by node name.
    pub nodes: BTreeMap<String, Stored<NodeRecord>>,
    /// Keys whose value could not be read as a record.
    pub corrupt: Vec<String>,
}

/// The state bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateStore {
    kv: kv::Store,
    client: async_nats::Client,
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
}

impl StateStore {
    /// The store over a bound bucket (see `Bus::ensure_kv`).
    pub fn new(kv: kv::Store, client: async_nats::Client, metrics: RegistrarMetrics) -> StateStore {
        StateStore {
            kv,
            client,
            metrics,
        }
    }

    /// The TaskRun record of `uid`.
    pub async fn taskrun(&self, uid: &str) -> Result<Versioned<TaskRunRecord>, StateError> {
        self.read(&format!("{TASKRUN_PREFIX}{uid}")).await
    }

    /// Compare-and-set of a TaskRun record.
    pub async fn write_taskrun(
        &self,
        uid: &str,
        record: &TaskRunRecord,
        revision: u64,
    ) -> Result<Cas, StateError> {
        self.write(
            &format!("{TASKRUN_PREFIX}{uid}"),
            record,
            revision,
            RecordKind::TaskRun,
        )
        .await
    }

    /// The record of `node`'s alias.
    pub async fn node(&self, node: &str) -> Result<Versioned<NodeRecord>, StateError> {
        self.read(&format!("{NODE_PREFIX}{node}")).await
    }

    /// Compare-and-set of a node record.
    pub async fn write_node(
        &self,
        node: &str,
        record: &NodeRecord,
        revision: u64,
    ) -> Result<Cas, StateError> {
        self.write(
            &format!("{NODE_PREFIX}{node}"),
            record,
            revision,
            RecordKind::Node,
        )
        .await
    }

    /// The reconciler lease.
    pub async fn lease(&self) -> Result<Versioned<LeaseRecord>, StateError> {
        self.read(LEASE_KEY).await
    }

    /// Compare-and-set of the reconciler lease.
    pub async fn write_lease(&self, lease: &LeaseRecord, revision: u64) -> Result<Cas, StateError> {
        self.write(LEASE_KEY, lease, revision, RecordKind::Lease)
            .await
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Versioned<T>, StateError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|source| StateError::Read {
                key: key.to_owned(),
                source,
            })?;
        let Some(entry) = entry else {
            return Ok(Versioned {
                value: None,
                revision: 0,
            });
        };
        let value = match entry.operation {
            Operation::Put => Some(decode(key, &entry.value)?),
            Operation::Delete | Operation::Purge => None,
        };
        Ok(Versioned {
            value,
            revision: entry.revision,
        })
    }

    async fn write<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
        kind: RecordKind,
    ) -> Result<Cas, StateError> {
        let body = serde_json::to_vec(value).map_err(|source| StateError::Serialize {
            key: key.to_owned(),
            source,
        })?;
        // Revision 0 asks for a key with no value ever written: a create.
        match self.kv.update(key, Bytes::from(body), revision).await {
            Ok(revision) => Ok(Cas::Written(revision)),
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                self.metrics.cas_conflict(kind.as_str());
                Ok(Cas::Conflict)
            }
            Err(error) if error.kind() == UpdateErrorKind::InvalidKey => {
                Err(StateError::InvalidKey {
                    key: key.to_owned(),
                })
            }
            Err(source) => Err(StateError::Write {
                key: key.to_owned(),
                source,
            }),
        }
    }

    /// Every live TaskRun and node record, read through one ordered consumer (the last value of
    /// each key).
    pub async fn snapshot(&self) -> Result<Snapshot, StateError> {
        let list = |error: async_nats::Error| StateError::List(error);
        let consumer = self
            .kv
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("countersign registrar state snapshot".to_owned()),
                filter_subject: format!("{}>", self.kv.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|error| list(error.into()))?;
        let mut snapshot = Snapshot::default();
        if consumer.cached_info().num_pending == 0 {
            return Ok(snapshot);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| list(error.into()))?;
        loop {
            // A key that expires (max_age) before it is delivered leaves the pending count
            // stale; a partial snapshot must never pass for a whole one, so give up instead.
            let next = tokio::time::timeout(SNAPSHOT_IDLE_TIMEOUT, messages.next())
                .await
                .map_err(|_| list("the state snapshot stalled before the last key".into()))?;
            let Some(message) = next else {
                return Err(list("the state snapshot ended before the last key".into()));
            };
            let message = message.map_err(|error| list(error.into()))?;
            let info = message.info().map_err(list)?;
            let pending = info.pending;
            let revision = info.stream_sequence;
            let written_at = DateTime::<Utc>::from_timestamp(info.published.unix_timestamp(), 0)
                .unwrap_or_default();
            let key = message
                .subject
                .as_str()
                .strip_prefix(self.kv.prefix.as_str())
                .unwrap_or_default()
                .to_owned();
            let deleted = message.headers.as_ref().is_some_and(|headers| {
                headers.get("KV-Operation").is_some()
                    || headers
                        .get(async_nats::header::NATS_MARKER_REASON)
                        .is_some()
            });
            if !deleted {
                snapshot.add(key, revision, written_at, &message.payload);
            }
            if pending == 0 {
                break;
            }
        }
        Ok(snapshot)
    }
}

impl Snapshot {
    fn add(&mut self, key: String, revision: u64, written_at: DateTime<Utc>, value: &[u8]) {
        if let Some(uid) = key.strip_prefix(TASKRUN_PREFIX) {
            match decode::<TaskRunRecord>(&key, value) {
                Ok(value) => {
                    self.taskruns.insert(
                        uid.to_owned(),
                        Stored {
                            revision,
                            written_at,
                            value,
                        },
                    );
                }
                Err(_) => self.corrupt.push(key),
            }
        } else if let Some(node) = key.strip_prefix(NODE_PREFIX) {
            match decode::<NodeRecord>(&key, value) {
                Ok(value) => {
                    self.nodes.insert(
                        node.to_owned(),
                        Stored {
                            revision,
                            written_at,
                            value,
                        },
                    );
                }
                Err(_) => self.corrupt.push(key),
            }
        }
    }
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(value).map_err(|source| StateError::Corrupt {
        key: key.to_owned(),
        source,
    })
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
        let error = decode::<TaskRunRecord>("taskrun.u1", b"{\"state\":\"weird\"}").unwrap_err();
        assert!(matches!(error, StateError::Corrupt { .. }));
        assert!(!error.is_transient());
        let mut snapshot = Snapshot::default();
        snapshot.add("taskrun.u1".into(), 3, Utc::now(), b"not json");
        snapshot.add("other.key".into(), 4, Utc::now(), b"{}");
        assert_eq!(snapshot.corrupt, ["taskrun.u1"]);
        assert!(snapshot.taskruns.is_empty());
    }
}
