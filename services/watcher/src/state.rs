//! What the watcher has published, per TaskRun, in a JetStream KV bucket: the durable memory that
//! keeps a restart, a relist or a second replica from publishing a transition again after the
//! stream's duplicate window, and that tells which TaskRuns vanished while the watcher was down.
//!
//! One key per TaskRun, `<cluster>.<taskrun uid>` (unchanged by the move to the shared KV layer,
//! `countersign_events::kv`: both parts are kept byte-for-byte), holding a [`TaskRunRecord`] (namespace, name,
//! pod, and the transitions published, by event id without the UID). A record is written after the
//! PubAck of the transitions it lists, with compare-and-set on the key's revision, merging with
//! whatever another replica wrote meanwhile. Once the `deleted` event is published the key is
//! purged with a TTL (`[state] deleted_retention`): the purge marker says "deleted" to late
//! CloudEvents and to other replicas, then expires, so the bucket does not grow for ever.
//!
//! [`TransitionLog`] keeps every record in memory too (loaded at start-up, kept current by its own
//! writes and refreshed from the bucket whenever a write finds it stale), so deciding what to skip
//! costs no round trip.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv;
use countersign_events::data::PodRef;
use countersign_events::kv::{Bucket, Cas, Key, KvError, SnapshotValue, Versioned};
use serde::{Deserialize, Serialize};

/// How long loading may wait for the next record before it gives up.
const LOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a record write is retried after another writer changed the key.
const MAX_WRITE_ATTEMPTS: usize = 8;
/// The record of `finished` (its event id without the UID).
pub const FINISHED: &str = "finished";

/// The value stored per TaskRun.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunRecord {
    /// The TaskRun's namespace.
    pub namespace: String,
    /// The TaskRun's name.
    pub name: String,
    /// Its pod, once one was published in an event.
    #[serde(default)]
    pub pod: Option<PodRef>,
    /// The published transitions: event ids without the `<uid>:` prefix (`created`,
    /// `scheduled:<pod uid>`, `step-completed:<pod uid>:<step>`, `finished`).
    #[serde(default)]
    pub published: BTreeSet<String>,
}

/// What the log knows of a TaskRun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Seen, not deleted: what was published.
    Live(TaskRunRecord),
    /// Its `deleted` event was published.
    Deleted,
}

#[derive(Debug, Clone)]
struct Entry {
    known: Known,
    /// The key's revision in the bucket (the stream sequence of its last write).
    revision: u64,
}

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The TaskRun UID cannot be part of a KV key (1 to 128 bytes of `[A-Za-z0-9_=-]` expected).
    #[error("a TaskRun UID of {length} bytes cannot be used as a key")]
    InvalidUid { length: usize },
    /// The bucket could not be read or written.
    #[error("the state bucket")]
    Kv(#[from] KvError),
    /// The record kept changing under the writer.
    #[error("the record of {uid} kept changing; gave up after {attempts} attempts")]
    Contended { uid: String, attempts: usize },
}

impl StateError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StateError::InvalidUid { .. } => false,
            StateError::Kv(error) => error.is_transient(),
            StateError::Contended { .. } => true,
        }
    }
}

/// The published transitions of every TaskRun of one cluster.
#[derive(Debug)]
pub struct TransitionLog {
    bucket: Bucket<TaskRunRecord>,
    cluster_key: String,
    deleted_retention: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_uid: HashMap<String, Entry>,
    /// How many entries are live.
    live: usize,
}

impl Inner {
    fn insert(&mut self, uid: &str, entry: Entry) {
        self.remove(uid);
        if matches!(entry.known, Known::Live(_)) {
            self.live += 1;
        }
        self.by_uid.insert(uid.to_owned(), entry);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(Entry {
            known: Known::Live(_),
            ..
        }) = self.by_uid.remove(uid)
        {
            self.live -= 1;
        }
    }
}

/// Whether `text` may be one token of a KV key: a UID Kubernetes could have written, bounded
/// in length ([`crate::identifiers::is_valid_uid`]), so no key nears nats-server's control line.
fn is_key_token(text: &str) -> bool {
    crate::identifiers::is_valid_uid(text)
}

impl TransitionLog {
    /// A log over `kv` for the TaskRuns of cluster `cluster_key` (a valid KV key prefix, checked
    /// by the configuration). Empty until [`TransitionLog::load`].
    pub fn new(kv: kv::Store, cluster_key: &str, deleted_retention: Duration) -> TransitionLog {
        TransitionLog {
            bucket: Bucket::new(kv).with_snapshot_idle_timeout(LOAD_IDLE_TIMEOUT),
            cluster_key: cluster_key.to_owned(),
            deleted_retention,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data stays consistent at every await-free step, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `uid` can be recorded: 1 to 128 bytes of `[A-Za-z0-9_=-]` (every Kubernetes UID
    /// is). The error does not quote the UID, which may be of any size.
    pub fn check_uid(&self, uid: &str) -> Result<(), StateError> {
        if is_key_token(uid) {
            Ok(())
        } else {
            Err(StateError::InvalidUid { length: uid.len() })
        }
    }

    /// The key of `uid`: `<cluster>.<uid>`, both kept byte-for-byte (the cluster name is
    /// checked by the configuration, the UID by [`TransitionLog::check_uid`]), as before the
    /// shared KV layer.
    fn key(&self, uid: &str) -> Result<Key, StateError> {
        self.check_uid(uid)?;
        Ok(self.cluster_prefix()?.with_raw(uid)?)
    }

    fn cluster_prefix(&self) -> Result<Key, StateError> {
        Ok(Key::raw(self.cluster_key.as_str())?)
    }

    /// Reads every record of the cluster from the bucket into memory (the latest value of each
    /// key, deleted markers included) in one snapshot. Returns how many TaskRuns are live.
    pub async fn load(&self) -> Result<usize, StateError> {
        let prefix = self.cluster_prefix()?;
        let records = self.bucket.snapshot(Some(&prefix)).await?;
        let mut loaded = Vec::with_capacity(records.len());
        for record in records {
            let Some(uid) = record
                .key
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
            else {
                continue;
            };
            let known = match record.value {
                SnapshotValue::Value(value) => Known::Live(value),
                SnapshotValue::Deleted => Known::Deleted,
                SnapshotValue::Corrupt(error) => {
                    tracing::warn!(%error, uid, "skipping an unreadable state record");
                    continue;
                }
            };
            loaded.push((
                uid.to_owned(),
                Entry {
                    known,
                    revision: record.revision,
                },
            ));
        }
        let mut inner = self.lock();
        for (uid, entry) in loaded {
            let newer = inner
                .by_uid
                .get(&uid)
                .is_none_or(|current| current.revision < entry.revision);
            if newer {
                inner.insert(&uid, entry);
            }
        }
        Ok(inner.live)
    }

    /// What the log knows of TaskRun `uid`.
    pub fn get(&self, uid: &str) -> Option<Known> {
        self.lock().by_uid.get(uid).map(|entry| entry.known.clone())
    }

    /// Whether nothing but `deleted` can be published for TaskRun `uid` any more: its `finished`
    /// is recorded, or it is deleted. (The emitter never publishes an earlier transition after
    /// `finished`.)
    pub fn is_settled(&self, uid: &str) -> bool {
        self.lock()
            .by_uid
            .get(uid)
            .is_some_and(|entry| match &entry.known {
                Known::Live(record) => record.published.contains(FINISHED),
                Known::Deleted => true,
            })
    }

    /// Every live record whose namespace `in_scope` accepts, as `(uid, record)`.
    pub fn live_records(&self, in_scope: impl Fn(&str) -> bool) -> Vec<(String, TaskRunRecord)> {
        self.lock()
            .by_uid
            .iter()
            .filter_map(|(uid, entry)| match &entry.known {
                Known::Live(record) if in_scope(&record.namespace) => {
                    Some((uid.clone(), record.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// How many TaskRuns are live.
    pub fn live_count(&self) -> usize {
        self.lock().live
    }

    /// Adds `published` (transition ids without the UID) and `pod` to the record of `uid`,
    /// creating it from `seed` when there is none. Returns the record as stored, or
    /// [`Known::Deleted`] when the TaskRun is already marked deleted (nothing is written then).
    pub async fn record(
        &self,
        uid: &str,
        seed: &TaskRunRecord,
        published: &[String],
    ) -> Result<Known, StateError> {
        let key = self.key(uid)?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self.lock().by_uid.get(uid).cloned();
            let (mut record, revision) = match current {
                Some(Entry {
                    known: Known::Deleted,
                    ..
                }) => return Ok(Known::Deleted),
                Some(Entry {
                    known: Known::Live(record),
                    revision,
                }) => (record, revision),
                None => (seed.clone(), 0),
            };
            // The newest pod wins (a retry runs in a new pod).
            if seed.pod.is_some() {
                record.pod.clone_from(&seed.pod);
            }
            record.published.extend(published.iter().cloned());
            // Revision 0 means "only if the key has never been written": a purge marker left by
            // another replica's `deleted` makes it fail, and the refresh below sees the marker.
            match self.bucket.update(&key, &record, revision).await? {
                Cas::Written(revision) => {
                    let known = Known::Live(record);
                    self.lock().insert(
                        uid,
                        Entry {
                            known: known.clone(),
                            revision,
                        },
                    );
                    return Ok(known);
                }
                Cas::Conflict => self.refresh(uid, &key).await?,
            }
        }
        Err(StateError::Contended {
            uid: uid.to_owned(),
            attempts: MAX_WRITE_ATTEMPTS,
        })
    }

    /// Marks `uid` deleted: purges its key, leaving a marker that expires after the deleted
    /// retention.
    pub async fn record_deleted(&self, uid: &str) -> Result<(), StateError> {
        let key = self.key(uid)?;
        self.bucket
            .purge_with_ttl(&key, self.deleted_retention)
            .await?;
        let mut inner = self.lock();
        let revision = inner.by_uid.get(uid).map_or(0, |entry| entry.revision);
        inner.insert(
            uid,
            Entry {
                known: Known::Deleted,
                revision,
            },
        );
        Ok(())
    }

    /// Reads the key of `uid` again into memory.
    async fn refresh(&self, uid: &str, key: &Key) -> Result<(), StateError> {
        let (known, revision) = match self.bucket.get(key).await {
            Ok(Versioned {
                value: Some(record),
                revision,
            }) => (Known::Live(record), revision),
            // Never written (or its marker expired).
            Ok(Versioned {
                value: None,
                revision: 0,
            }) => {
                self.lock().remove(uid);
                return Ok(());
            }
            Ok(Versioned {
                value: None,
                revision,
            }) => (Known::Deleted, revision),
            // Overwrite what no replica can read: it is ours to rewrite.
            Err(KvError::Corrupt { revision, .. }) => {
                (Known::Live(TaskRunRecord::default()), revision)
            }
            Err(error) => return Err(error.into()),
        };
        self.lock().insert(uid, Entry { known, revision });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_cannot_be_key_tokens_are_refused() {
        assert!(is_key_token("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14"));
        let huge = "u".repeat(4096);
        for bad in ["", "a.b", "a b", "a*", "a>", "ü", huge.as_str()] {
            assert!(!is_key_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn records_are_compact_json_that_reads_back() {
        let record = TaskRunRecord {
            namespace: "ns".into(),
            name: "run".into(),
            pod: Some(PodRef {
                name: "run-pod".into(),
                uid: "p".into(),
            }),
            published: ["finished".to_owned(), "created".to_owned()].into(),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json["published"],
            serde_json::json!(["created", "finished"])
        );
        assert_eq!(json["pod"]["uid"], "p");
        let back: TaskRunRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let minimal: TaskRunRecord =
            serde_json::from_str(r#"{"namespace":"ns","name":"run"}"#).unwrap();
        assert!(minimal.published.is_empty());
    }

    #[test]
    fn the_live_count_follows_inserts_and_removals() {
        let mut inner = Inner::default();
        let live = |name: &str| Entry {
            known: Known::Live(TaskRunRecord {
                namespace: "ns".into(),
                name: name.into(),
                ..TaskRunRecord::default()
            }),
            revision: 1,
        };
        inner.insert("a", live("run"));
        inner.insert("b", live("run"));
        assert_eq!(inner.live, 2);
        inner.insert(
            "a",
            Entry {
                known: Known::Deleted,
                revision: 2,
            },
        );
        assert_eq!(inner.live, 1);
        inner.remove("b");
        assert_eq!(inner.live, 0);
        assert_eq!(inner.by_uid.len(), 1, "the deleted marker stays");
    }
}
