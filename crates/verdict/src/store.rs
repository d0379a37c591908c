//! The public KV layout of attestations: the buckets the attestor writes and anyone (the
//! `countersign` command, the gate) reads, their keys and what they hold.
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `{PREFIX}_ATTESTATIONS` | `{uid}` | the attestation event, a structured-mode CloudEvent (JSON) |
//! | `{PREFIX}_ATTESTATIONS` | `{uid}.revoked` | its `attestation.revoked` event, once a CA that issued one of its signing chains was revoked |
//! | `{PREFIX}_ATTESTATION_INDEX` | `{namespace}.{name}` | [`IndexEntry`]: the latest TaskRun of that name |
//!
//! Every key token is [`kv::key_token`]: the events crate's subject token encoding with `~`
//! written `=` (KV keys allow `[-/_=.A-Za-z0-9]`; the encoding never produces `=`), so any
//! Kubernetes name gives one valid key and distinct names give distinct keys. Both buckets are
//! read and written through [`kv::Bucket`]: an attestation is stored as its structured-mode
//! CloudEvent, an index entry as JSON.
//!
//! An attestation is written with create-if-absent: the first writer wins, and a loser reads
//! and uses the stored one ([`Created::AlreadyExisted`]), so the event published and the KV
//! record are always the same. It is never changed afterwards: a revocation is a second key
//! beside it, also written create-if-absent, which every reader checks
//! ([`AttestationStore::revocation`]).

use async_nats::jetstream::context::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use countersign_events::kv::{self, Bucket, Change, Key, KvError};
use countersign_events::{
    AttestationEvent, Bus, Event, KvConfig, KvSpec, SetupError, SubjectError, Subjects,
};
use serde::{Deserialize, Serialize};

/// The attestations bucket's name after the prefix.
pub const ATTESTATIONS_BUCKET: &str = "attestations";
/// The name index bucket's name after the prefix.
pub const INDEX_BUCKET: &str = "attestation_index";

// === keys ===

/// The attestations bucket key of a TaskRun UID.
pub fn attestation_key(uid: &str) -> Result<Key, KvError> {
    Key::tokens([(uid, "TaskRun UID")])
}

/// The last token of a revocation's key.
pub const REVOKED_TOKEN: &str = "revoked";

/// The attestations bucket key of TaskRun `uid`'s revocation: `{uid}.revoked`. A UID token
/// never holds a `.`, so it never names an attestation.
pub fn revocation_key(uid: &str) -> Result<Key, KvError> {
    attestation_key(uid)?.with_raw(REVOKED_TOKEN)
}

/// The attestation key a revocation's key (`{uid}.revoked`) names; `None` for an attestation's.
pub fn revoked_attestation_key(key: &str) -> Option<&str> {
    key.split_once('.')
        .and_then(|(attestation, rest)| (rest == REVOKED_TOKEN).then_some(attestation))
}

/// The index key of a TaskRun name: `{namespace}.{name}`.
pub fn index_key(namespace: &str, name: &str) -> Result<Key, KvError> {
    Key::tokens([(namespace, "namespace"), (name, "name")])
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
    /// A bucket name could not be built from the prefix.
    #[error("building a bucket name")]
    Key(#[from] SubjectError),
    /// A bucket could not be created or updated at start-up.
    #[error("creating the KV buckets")]
    Setup(#[from] SetupError),
    /// A bucket could not be opened, read or written.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// An attestation event could not be made a CloudEvent.
    #[error("encoding a value for {bucket}")]
    Encode {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: countersign_events::EncodeError,
    },
    /// A stored value is JSON, but not what the attestor writes.
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
            StoreError::Kv(error) if error.is_missing_bucket() => StoreErrorKind::MissingBucket,
            StoreError::Kv(KvError::Key(_) | KvError::InvalidKey { .. }) => StoreErrorKind::Key,
            StoreError::Kv(KvError::Corrupt { .. }) | StoreError::Corrupt { .. } => {
                StoreErrorKind::Corrupt
            }
            StoreError::Kv(KvError::Serialize { .. }) | StoreError::Encode { .. } => {
                StoreErrorKind::Encode
            }
            StoreError::Setup(_) | StoreError::Kv(_) => StoreErrorKind::Unavailable,
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
    /// Attestations as structured-mode CloudEvents.
    attestations: Bucket<cloudevents::Event>,
    index: Bucket<IndexEntry>,
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
            attestations: Bucket::new(attestations),
            index: Bucket::new(index),
        })
    }

    /// Binds the existing buckets (a reader such as the `countersign` command, which never
    /// creates them).
    pub async fn open(
        jetstream: &Context,
        subjects: &Subjects,
    ) -> Result<AttestationStore, StoreError> {
        let attestations =
            Bucket::open(jetstream, &subjects.kv_bucket_name(ATTESTATIONS_BUCKET)?).await?;
        let index = Bucket::open(jetstream, &subjects.kv_bucket_name(INDEX_BUCKET)?).await?;
        Ok(AttestationStore {
            attestations,
            index,
        })
    }

    /// The attestation of TaskRun `uid`, if one was stored.
    pub async fn get(&self, uid: &str) -> Result<Option<Event<AttestationEvent>>, StoreError> {
        self.get_at(&attestation_key(uid)?).await
    }

    /// The raw stored JSON of TaskRun `uid`'s attestation (for `countersign get --json`).
    pub async fn get_raw(&self, uid: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.attestations.get_raw(&attestation_key(uid)?).await?)
    }

    /// Stores `event` as TaskRun `uid`'s attestation unless one exists; then returns that one.
    pub async fn create(
        &self,
        uid: &str,
        event: &Event<AttestationEvent>,
    ) -> Result<Created, StoreError> {
        self.create_at(&attestation_key(uid)?, event).await
    }

    /// Stores `event` under `key` unless something is stored there; then returns that.
    async fn create_at(
        &self,
        key: &Key,
        event: &Event<AttestationEvent>,
    ) -> Result<Created, StoreError> {
        let cloudevent = event.to_cloudevent().map_err(|source| StoreError::Encode {
            bucket: self.attestations.name().to_owned(),
            source,
        })?;
        match self.attestations.create(key, &cloudevent).await? {
            kv::Created::Stored(_) => Ok(Created::Stored),
            kv::Created::AlreadyExisted(existing) => Ok(Created::AlreadyExisted(Box::new(
                self.attestation_of(key, existing)?,
            ))),
        }
    }

    /// The revocation of TaskRun `uid`'s attestation (its `attestation.revoked` event), if a CA
    /// that issued one of its signing chains was revoked.
    pub async fn revocation(
        &self,
        uid: &str,
    ) -> Result<Option<Event<AttestationEvent>>, StoreError> {
        self.get_at(&revocation_key(uid)?).await
    }

    /// Records `event` (an `attestation.revoked` event) as the revocation of TaskRun `uid`'s
    /// attestation unless one is recorded; `Created::AlreadyExisted` holds that one.
    pub async fn record_revocation(
        &self,
        uid: &str,
        event: &Event<AttestationEvent>,
    ) -> Result<Created, StoreError> {
        self.create_at(&revocation_key(uid)?, event).await
    }

    /// The key of every stored attestation whose revocation is not recorded, streamed by the
    /// server: what a scan for a revoked CA walks, so an attestation already revoked is not read
    /// again. The keys alone are held (a UID each).
    pub async fn unrevoked_attestation_keys(&self) -> Result<Vec<Key>, StoreError> {
        let failed = |source: async_nats::Error| KvError::Snapshot {
            bucket: self.attestations.name().to_owned(),
            source,
        };
        let mut keys = self
            .attestations
            .store()
            .keys()
            .await
            .map_err(|error| failed(error.into()))?;
        let mut attestations = Vec::new();
        let mut revoked = std::collections::HashSet::new();
        while let Some(key) = futures::StreamExt::next(&mut keys).await {
            let key = key.map_err(|error| failed(error.into()))?;
            match revoked_attestation_key(&key) {
                Some(attestation) => {
                    revoked.insert(attestation.to_owned());
                }
                None => attestations.push(key),
            }
        }
        attestations
            .into_iter()
            .filter(|key| !revoked.contains(key))
            .map(|key| Ok(Key::raw(key)?))
            .collect()
    }

    /// The attestation stored under `key` (one of [`AttestationStore::unrevoked_attestation_keys`]).
    pub async fn get_at(&self, key: &Key) -> Result<Option<Event<AttestationEvent>>, StoreError> {
        let stored = self.attestations.get(key).await?.value;
        stored
            .map(|cloudevent| self.attestation_of(key, cloudevent))
            .transpose()
    }

    /// The latest TaskRun named `namespace/name`, if any was attested.
    pub async fn lookup(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<IndexEntry>, StoreError> {
        Ok(self.index.get(&index_key(namespace, name)?).await?.value)
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
        let modified = self
            .index
            .modify(&key, |current| match current.value {
                Some(stored) if stored.uid == entry.uid || stored.created_at > entry.created_at => {
                    Change::Keep(())
                }
                // Absent, deleted, or an older TaskRun of that name.
                _ => Change::Write(entry.clone(), ()),
            })
            .await?;
        let conflicts = modified.conflicts;
        Ok(match modified.written {
            Some(_) => IndexUpdate::Updated { conflicts },
            None => IndexUpdate::Kept { conflicts },
        })
    }

    /// The attestation event a stored CloudEvent holds.
    fn attestation_of(
        &self,
        key: &Key,
        cloudevent: cloudevents::Event,
    ) -> Result<Event<AttestationEvent>, StoreError> {
        Event::from_cloudevent(cloudevent).map_err(|source| StoreError::Corrupt {
            bucket: self.attestations.name().to_owned(),
            key: key.to_string(),
            source: Box::new(StoredDecodeError::Event(source)),
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
            .map(|name| index_key("team-a", name).unwrap().to_string())
            .collect();
        for key in &keys {
            assert!(valid(key), "{key}");
        }
        let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert_eq!(
            index_key("default", "run.1").unwrap().as_str(),
            "default.run_1"
        );
        assert!(attestation_key("").is_err());
    }

    #[test]
    fn a_revocation_key_sits_beside_its_attestation_and_never_names_one() {
        let key = revocation_key("a_b-1").unwrap();
        assert_eq!(
            key.as_str(),
            format!("{}.revoked", attestation_key("a_b-1").unwrap())
        );
        assert_eq!(
            revoked_attestation_key(key.as_str()),
            Some(attestation_key("a_b-1").unwrap().as_str())
        );
        assert_eq!(
            revoked_attestation_key(attestation_key("revoked").unwrap().as_str()),
            None
        );
        assert_eq!(revoked_attestation_key("uid.other"), None);
    }
}
