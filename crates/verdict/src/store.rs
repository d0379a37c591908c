//! The public KV layout of attestations: the buckets the attestor writes and anyone (the
//! `countersign` command, the gate) reads, their keys and what they hold.
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `{PREFIX}_ATTESTATIONS` | `{uid}` | the attestation event, a structured-mode CloudEvent (JSON) |
//! | `{PREFIX}_ATTESTATION_INDEX` | `{namespace}.{name}` | [`IndexEntry`]: the latest TaskRun of that name |
//!
//! Every key token is the events crate's subject token encoding ([`encode_token`]) with `~`
//! written `=` (KV keys allow `[-/_=.A-Za-z0-9]`; the encoding never produces `=`), so any
//! Kubernetes name gives one valid key and distinct names give distinct keys.
//!
//! An attestation is written with create-if-absent: the first writer wins, and a loser reads
//! and uses the stored one ([`Created::AlreadyExisted`]), so the event published and the KV
//! record are always the same.

use async_nats::jetstream::context::{Context, KeyValueError};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use countersign_events::subject::encode_token;
use countersign_events::{
    AttestationEvent, Bus, Event, KvConfig, KvSpec, SetupError, SubjectError, Subjects,
};
use serde::{Deserialize, Serialize};

/// The attestations bucket's name after the prefix.
pub const ATTESTATIONS_BUCKET: &str = "attestations";
/// The name index bucket's name after the prefix.
pub const INDEX_BUCKET: &str = "attestation_index";

/// How many times an index update is retried when another writer got there first.
const INDEX_ATTEMPTS: usize = 16;

// === keys ===

/// One key token: [`encode_token`] with `~` written `=`.
pub fn key_token(value: &str, field: &'static str) -> Result<String, SubjectError> {
    Ok(encode_token(value, field)?.replace('~', "="))
}

/// The attestations bucket key of a TaskRun UID.
pub fn attestation_key(uid: &str) -> Result<String, SubjectError> {
    key_token(uid, "TaskRun UID")
}

/// The index key of a TaskRun name: `{namespace}.{name}`.
pub fn index_key(namespace: &str, name: &str) -> Result<String, SubjectError> {
    Ok(format!(
        "{}.{}",
        key_token(namespace, "namespace")?,
        key_token(name, "name")?
    ))
}

// === bucket declarations ===

/// The declaration of the attestations bucket.
pub fn attestations_spec(config: &KvConfig) -> KvSpec {
    KvSpec {
        name: ATTESTATIONS_BUCKET.to_owned(),
        description: "Countersign attestations, one per TaskRun UID".to_owned(),
        config: config.clone(),
    }
}

/// The declaration of the index bucket.
pub fn index_spec(config: &KvConfig) -> KvSpec {
    KvSpec {
        name: INDEX_BUCKET.to_owned(),
        description: "Countersign: the latest TaskRun UID of each namespace/name".to_owned(),
        config: config.clone(),
    }
}

// === values ===

/// What the index holds for a TaskRun name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// The TaskRun's UID.
    pub uid: String,
    /// The cluster it ran in.
    pub cluster: String,
    /// Its `creationTimestamp` (the latest wins).
    pub created_at: DateTime<Utc>,
}

/// Why a stored attestation could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredDecodeError {
    /// Not a structured-mode CloudEvent.
    #[error("not a structured CloudEvent")]
    Json(#[source] serde_json::Error),
    /// A CloudEvent, but not a valid attestation event.
    #[error("not an attestation event")]
    Event(#[source] countersign_events::DecodeError),
}

/// An attestation event as stored: a structured-mode CloudEvent (JSON).
pub fn encode_stored(
    event: &Event<AttestationEvent>,
) -> Result<Bytes, countersign_events::EncodeError> {
    let cloudevent = event.to_cloudevent()?;
    serde_json::to_vec(&cloudevent)
        .map(Bytes::from)
        .map_err(countersign_events::EncodeError::Data)
}

/// Reads a stored attestation event.
pub fn decode_stored(bytes: &[u8]) -> Result<Event<AttestationEvent>, StoredDecodeError> {
    let cloudevent: cloudevents::Event =
        serde_json::from_slice(bytes).map_err(StoredDecodeError::Json)?;
    Event::from_cloudevent(cloudevent).map_err(StoredDecodeError::Event)
}

// === errors ===

/// Why a bucket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key could not be built.
    #[error("building a key")]
    Key(#[from] SubjectError),
    /// A bucket could not be created or updated at start-up.
    #[error("creating the KV buckets")]
    Setup(#[from] SetupError),
    /// A bucket the command reads does not exist.
    #[error("opening KV bucket {bucket}")]
    Bind {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: KeyValueError,
    },
    /// Reading a key failed.
    #[error("reading {key} from {bucket}")]
    Read {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: kv::EntryError,
    },
    /// Creating a key failed (other than "it exists").
    #[error("writing {key} to {bucket}")]
    Create {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: kv::CreateError,
    },
    /// Updating a key failed (other than "someone else updated it").
    #[error("updating {key} in {bucket}")]
    Update {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: kv::UpdateError,
    },
    /// A value is not what the attestor writes.
    #[error("{key} in {bucket} holds an unreadable value")]
    Corrupt {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A value could not be encoded.
    #[error("encoding a value for {bucket}")]
    Encode {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Other writers kept updating the key.
    #[error("{key} in {bucket} kept changing under us")]
    Contention {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The key was just created by another writer and is not readable yet.
    #[error("{key} in {bucket} exists but could not be read back")]
    Vanished {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
}

/// What kind of [`StoreError`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A key could not be built (a name that cannot be encoded).
    Key,
    /// NATS or JetStream is unavailable or failed.
    Unavailable,
    /// The bucket does not exist.
    MissingBucket,
    /// A stored value is unreadable.
    Corrupt,
    /// A value could not be encoded.
    Encode,
}

impl StoreError {
    /// What kind of error this is.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::Key(_) => StoreErrorKind::Key,
            StoreError::Bind { source, .. }
                if matches!(
                    source.kind(),
                    async_nats::jetstream::context::KeyValueErrorKind::GetBucket
                ) =>
            {
                StoreErrorKind::MissingBucket
            }
            StoreError::Corrupt { .. } => StoreErrorKind::Corrupt,
            StoreError::Encode { .. } => StoreErrorKind::Encode,
            StoreError::Setup(_)
            | StoreError::Bind { .. }
            | StoreError::Read { .. }
            | StoreError::Create { .. }
            | StoreError::Update { .. }
            | StoreError::Contention { .. }
            | StoreError::Vanished { .. } => StoreErrorKind::Unavailable,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Setup(error) => error.is_transient(),
            _ => self.kind() == StoreErrorKind::Unavailable,
        }
    }
}

// === the attestations and the index ===

/// How [`AttestationStore::create`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// Ours was stored.
    Stored,
    /// Another writer stored one first: this one (use it, not ours).
    AlreadyExisted(Box<Event<AttestationEvent>>),
}

/// How [`AttestationStore::record_latest`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUpdate {
    /// The index now names this TaskRun.
    Updated {
        /// How many times another writer got there first.
        conflicts: usize,
    },
    /// The index already named this TaskRun, or a newer one of the same name.
    Kept {
        /// How many times another writer got there first.
        conflicts: usize,
    },
}

/// The attestations bucket and the name index.
#[derive(Debug, Clone)]
pub struct AttestationStore {
    attestations: kv::Store,
    attestations_bucket: String,
    index: kv::Store,
    index_bucket: String,
}

impl AttestationStore {
    /// Creates or updates both buckets (the attestor, at start-up).
    pub async fn ensure(
        bus: &Bus,
        attestations: &KvConfig,
        index: &KvConfig,
    ) -> Result<AttestationStore, StoreError> {
        let attestations = bus.ensure_kv(&attestations_spec(attestations)).await?;
        let index = bus.ensure_kv(&index_spec(index)).await?;
        Ok(AttestationStore {
            attestations_bucket: bus.subjects().kv_bucket_name(ATTESTATIONS_BUCKET)?,
            attestations,
            index_bucket: bus.subjects().kv_bucket_name(INDEX_BUCKET)?,
            index,
        })
    }

    /// Binds the existing buckets (a reader such as the `countersign` command, which never
    /// creates them).
    pub async fn open(
        jetstream: &Context,
        subjects: &Subjects,
    ) -> Result<AttestationStore, StoreError> {
        let attestations_bucket = subjects.kv_bucket_name(ATTESTATIONS_BUCKET)?;
        let index_bucket = subjects.kv_bucket_name(INDEX_BUCKET)?;
        let attestations = jetstream
            .get_key_value(&attestations_bucket)
            .await
            .map_err(|source| StoreError::Bind {
                bucket: attestations_bucket.clone(),
                source,
            })?;
        let index = jetstream
            .get_key_value(&index_bucket)
            .await
            .map_err(|source| StoreError::Bind {
                bucket: index_bucket.clone(),
                source,
            })?;
        Ok(AttestationStore {
            attestations,
            attestations_bucket,
            index,
            index_bucket,
        })
    }

    /// The attestation of TaskRun `uid`, if one was stored.
    pub async fn get(&self, uid: &str) -> Result<Option<Event<AttestationEvent>>, StoreError> {
        let key = attestation_key(uid)?;
        let bytes = self
            .attestations
            .get(key.as_str())
            .await
            .map_err(|source| StoreError::Read {
                bucket: self.attestations_bucket.clone(),
                key: key.clone(),
                source,
            })?;
        bytes
            .map(|bytes| {
                decode_stored(&bytes).map_err(|source| StoreError::Corrupt {
                    bucket: self.attestations_bucket.clone(),
                    key: key.clone(),
                    source: Box::new(source),
                })
            })
            .transpose()
    }

    /// The raw stored JSON of TaskRun `uid`'s attestation (for `countersign get --json`).
    pub async fn get_raw(&self, uid: &str) -> Result<Option<Bytes>, StoreError> {
        let key = attestation_key(uid)?;
        self.attestations
            .get(key.as_str())
            .await
            .map_err(|source| StoreError::Read {
                bucket: self.attestations_bucket.clone(),
                key,
                source,
            })
    }

    /// Stores `event` as TaskRun `uid`'s attestation unless one exists; then returns that one.
    pub async fn create(
        &self,
        uid: &str,
        event: &Event<AttestationEvent>,
    ) -> Result<Created, StoreError> {
        let key = attestation_key(uid)?;
        let bytes = encode_stored(event).map_err(|source| StoreError::Encode {
            bucket: self.attestations_bucket.clone(),
            source: Box::new(source),
        })?;
        match self.attestations.create(key.as_str(), bytes).await {
            Ok(_) => Ok(Created::Stored),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                match self.get(uid).await? {
                    Some(existing) => Ok(Created::AlreadyExisted(Box::new(existing))),
                    None => Err(StoreError::Vanished {
                        bucket: self.attestations_bucket.clone(),
                        key,
                    }),
                }
            }
            Err(source) => Err(StoreError::Create {
                bucket: self.attestations_bucket.clone(),
                key,
                source,
            }),
        }
    }

    /// The latest TaskRun named `namespace/name`, if any was attested.
    pub async fn lookup(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<IndexEntry>, StoreError> {
        let key = index_key(namespace, name)?;
        let bytes = self
            .index
            .get(key.as_str())
            .await
            .map_err(|source| StoreError::Read {
                bucket: self.index_bucket.clone(),
                key: key.clone(),
                source,
            })?;
        bytes
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                    bucket: self.index_bucket.clone(),
                    key: key.clone(),
                    source: Box::new(source),
                })
            })
            .transpose()
    }

    /// Makes the index name `entry` for `namespace/name` unless it names a TaskRun created later
    /// (compare-and-set, retried when another writer got there first).
    pub async fn record_latest(
        &self,
        namespace: &str,
        name: &str,
        entry: &IndexEntry,
    ) -> Result<IndexUpdate, StoreError> {
        let key = index_key(namespace, name)?;
        let bytes: Bytes = serde_json::to_vec(entry)
            .map_err(|source| StoreError::Encode {
                bucket: self.index_bucket.clone(),
                source: Box::new(source),
            })?
            .into();
        for conflicts in 0..INDEX_ATTEMPTS {
            let current =
                self.index
                    .entry(key.as_str())
                    .await
                    .map_err(|source| StoreError::Read {
                        bucket: self.index_bucket.clone(),
                        key: key.clone(),
                        source,
                    })?;
            let written = match current {
                Some(current) if current.operation == Operation::Put => {
                    let stored: IndexEntry =
                        serde_json::from_slice(&current.value).map_err(|source| {
                            StoreError::Corrupt {
                                bucket: self.index_bucket.clone(),
                                key: key.clone(),
                                source: Box::new(source),
                            }
                        })?;
                    if stored.uid == entry.uid || stored.created_at > entry.created_at {
                        return Ok(IndexUpdate::Kept { conflicts });
                    }
                    match self
                        .index
                        .update(key.as_str(), bytes.clone(), current.revision)
                        .await
                    {
                        Ok(_) => true,
                        Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => false,
                        Err(source) => {
                            return Err(StoreError::Update {
                                bucket: self.index_bucket.clone(),
                                key,
                                source,
                            });
                        }
                    }
                }
                // Absent, or deleted: create (which also takes a deleted key).
                _ => match self.index.create(key.as_str(), bytes.clone()).await {
                    Ok(_) => true,
                    Err(error) if error.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(source) => {
                        return Err(StoreError::Create {
                            bucket: self.index_bucket.clone(),
                            key,
                            source,
                        });
                    }
                },
            };
            if written {
                return Ok(IndexUpdate::Updated { conflicts });
            }
        }
        Err(StoreError::Contention {
            bucket: self.index_bucket.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_for_any_name_and_distinct_names_give_distinct_keys() {
        let valid = |key: &str| {
            !key.is_empty()
                && !key.starts_with('.')
                && !key.ends_with('.')
                && key
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-/_=.".contains(&byte))
        };
        let names = ["build.1", "build_1", "build~1", "ünïcode", "a b", "x"];
        let keys: Vec<String> = names
            .iter()
            .map(|name| index_key("team-a", name).unwrap())
            .collect();
        for key in &keys {
            assert!(valid(key), "{key}");
        }
        let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert_eq!(index_key("default", "run.1").unwrap(), "default.run_1");
        assert!(attestation_key("").is_err());
    }
}
