//! One typed layer over JetStream KV buckets: keys, a JSON bucket, compare-and-set, snapshots.
//!
//! - [`Key`]: a valid KV key. Variable parts are written with [`key_token`], the subjects'
//!   injective token encoding ([`encode_token`]) with `~` written `=` (KV keys allow
//!   `[-/_=.A-Za-z0-9]`; the encoding never produces `=`), so any Kubernetes name gives one valid
//!   key token and distinct names give distinct tokens. [`Key::with_raw`] keeps a part that is
//!   already a valid key (a configured prefix, a DNS node name) byte-for-byte, for buckets whose
//!   keys existed before this module.
//! - [`Bucket<T>`]: values of type `T` as JSON: [`Bucket::get`], create-if-absent
//!   ([`Bucket::create`]), update at a revision ([`Bucket::update`]), read-change-write with
//!   bounded retries ([`Bucket::modify`]), and the last value of every key in one pass
//!   ([`Bucket::snapshot`]). One bucket may hold several record types under distinct key
//!   prefixes: [`Bucket::typed`] gives another typed view of the same bucket.
//! - [`KvError`]: one error for every operation, with [`KvError::is_transient`].
//!
//! Revision 0 means "the key has never been written": [`Bucket::update`] at revision 0 is a
//! create that fails when the key holds anything, a delete or purge marker included.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::context::{Context, KeyValueError, KeyValueErrorKind};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::subject::{SubjectError, encode_token};

/// How many read-change-write rounds [`Bucket::modify`] tries by default.
pub const DEFAULT_MODIFY_ATTEMPTS: usize = 16;

/// How long [`Bucket::snapshot`] waits for the next key by default.
pub const DEFAULT_SNAPSHOT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The KV header that marks deletes and purges.
const KV_OPERATION_HEADER: &str = "KV-Operation";

// === keys ===

/// One key token: [`encode_token`] with `~` written `=`. Injective; the identity on
/// `[A-Za-z0-9-]` (every Kubernetes UID).
pub fn key_token(value: &str, field: &'static str) -> Result<String, KvError> {
    Ok(encode_token(value, field)
        .map_err(KvError::Key)?
        .replace('~', "="))
}

/// Whether `text` is a valid KV key: dot-separated non-empty tokens of `[-/_=A-Za-z0-9]`.
pub fn is_valid_key(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|token| {
            !token.is_empty()
                && token.bytes().all(|byte| {
                    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'/' | b'_' | b'=')
                })
        })
}

/// A valid KV key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The key made of `parts`, each encoded with [`key_token`], joined by `.`.
    pub fn tokens<'a>(
        parts: impl IntoIterator<Item = (&'a str, &'static str)>,
    ) -> Result<Key, KvError> {
        let mut key = String::new();
        for (value, field) in parts {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(&key_token(value, field)?);
        }
        Key::raw(key)
    }

    /// `text` as it is, if it is a valid key (a fixed key such as `lease.reconciler`).
    pub fn raw(text: impl Into<String>) -> Result<Key, KvError> {
        let text = text.into();
        if is_valid_key(&text) {
            Ok(Key(text))
        } else {
            Err(KvError::InvalidKey { key: text })
        }
    }

    /// `{self}.{token}`, with `value` encoded by [`key_token`].
    pub fn with_token(&self, value: &str, field: &'static str) -> Result<Key, KvError> {
        Ok(Key(format!("{}.{}", self.0, key_token(value, field)?)))
    }

    /// `{self}.{part}`, with `part` kept as it is: it must already be a valid key. For buckets
    /// whose key format predates [`key_token`] and is injective on the values it accepts.
    pub fn with_raw(&self, part: &str) -> Result<Key, KvError> {
        Key::raw(format!("{}.{part}", self.0))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

// === errors ===

/// Why a bucket operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A key token could not be built (an empty name).
    #[error("building a key")]
    Key(#[source] SubjectError),
    /// The key is not a valid KV key (refused before anything was sent).
    #[error("{key:?} is not a valid KV key")]
    InvalidKey { key: String },
    /// The bucket does not exist (opening it without creating it).
    #[error("opening KV bucket {bucket}")]
    Open {
        bucket: String,
        #[source]
        source: KeyValueError,
    },
    /// A key could not be read.
    #[error("reading {key} from {bucket}")]
    Read {
        bucket: String,
        key: String,
        #[source]
        source: kv::EntryError,
    },
    /// A key could not be created (other than "it exists").
    #[error("creating {key} in {bucket}")]
    Create {
        bucket: String,
        key: String,
        #[source]
        source: kv::CreateError,
    },
    /// A key could not be written (other than a revision conflict).
    #[error("writing {key} to {bucket}")]
    Write {
        bucket: String,
        key: String,
        #[source]
        source: kv::UpdateError,
    },
    /// A key could not be purged.
    #[error("purging {key} from {bucket}")]
    Purge {
        bucket: String,
        key: String,
        #[source]
        source: kv::PurgeError,
    },
    /// A stored value is not a value of this type.
    #[error("{key} in {bucket} holds an unreadable value (revision {revision})")]
    Corrupt {
        bucket: String,
        key: String,
        /// The revision of the unreadable value, to overwrite it by compare-and-set.
        revision: u64,
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be serialized.
    #[error("serializing a value for {key} in {bucket}")]
    Serialize {
        bucket: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The bucket could not be read whole.
    #[error("reading every key of {bucket}")]
    Snapshot {
        bucket: String,
        #[source]
        source: async_nats::Error,
    },
    /// Other writers kept changing the key.
    #[error("{key} in {bucket} kept changing under {attempts} compare-and-set attempts")]
    Contention {
        bucket: String,
        key: String,
        attempts: usize,
    },
    /// A create lost to another writer, whose value was gone when read back.
    #[error("{key} in {bucket} exists but could not be read back")]
    Vanished { bucket: String, key: String },
}

impl KvError {
    /// Whether trying again later may succeed (NATS unreachable, a timeout, contention); a bad
    /// key, a missing bucket or an unreadable value fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            KvError::Key(_)
            | KvError::InvalidKey { .. }
            | KvError::Corrupt { .. }
            | KvError::Serialize { .. } => false,
            KvError::Open { source, .. } => !matches!(source.kind(), KeyValueErrorKind::GetBucket),
            KvError::Read { .. }
            | KvError::Create { .. }
            | KvError::Write { .. }
            | KvError::Purge { .. }
            | KvError::Snapshot { .. }
            | KvError::Contention { .. }
            | KvError::Vanished { .. } => true,
        }
    }

    /// Whether the bucket does not exist.
    pub fn is_missing_bucket(&self) -> bool {
        matches!(self, KvError::Open { source, .. } if matches!(source.kind(), KeyValueErrorKind::GetBucket))
    }
}

// === values ===

/// A key's value and the revision to compare-and-set against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value, if the key holds one (not never written, deleted or purged).
    pub value: Option<T>,
    /// The key's last revision; 0 when it was never written (or the marker expired).
    pub revision: u64,
}

/// What an update at a revision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written; the key's new revision.
    Written(u64),
    /// Someone else wrote the key first: read it again.
    Conflict,
}

/// How a create-if-absent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    /// Ours was stored, at this revision.
    Stored(u64),
    /// Another writer stored one first: this one.
    AlreadyExisted(T),
}

/// What a [`Bucket::modify`] change function decides for the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T, R> {
    /// Write this value (compare-and-set on the revision read), then return `R`.
    Write(T, R),
    /// Write nothing and return `R`.
    Keep(R),
}

/// How a [`Bucket::modify`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modified<R> {
    /// What the change function returned last.
    pub outcome: R,
    /// The new revision when a value was written; `None` when the change kept the value.
    pub written: Option<u64>,
    /// How many times another writer got there first.
    pub conflicts: usize,
}

/// What a key holds in a [`Snapshot`].
#[derive(Debug)]
pub enum SnapshotValue<T> {
    /// A value of the bucket's type.
    Value(T),
    /// A delete or purge marker.
    Deleted,
    /// A value that is not of the bucket's type.
    Corrupt(serde_json::Error),
}

/// One key of a [`Snapshot`].
#[derive(Debug)]
pub struct SnapshotEntry<T> {
    /// The key, without the bucket's subject prefix.
    pub key: String,
    /// Its revision.
    pub revision: u64,
    /// When it was written (whole seconds).
    pub written_at: DateTime<Utc>,
    /// What it holds.
    pub value: SnapshotValue<T>,
}

/// The last value of every key (under a prefix), read in one pass.
pub type Snapshot<T> = Vec<SnapshotEntry<T>>;

// === the bucket ===

/// A KV bucket holding values of type `T` as JSON. Cheap to clone.
pub struct Bucket<T> {
    store: kv::Store,
    modify_attempts: usize,
    snapshot_idle_timeout: Duration,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for Bucket<T> {
    fn clone(&self) -> Self {
        Bucket {
            store: self.store.clone(),
            modify_attempts: self.modify_attempts,
            snapshot_idle_timeout: self.snapshot_idle_timeout,
            _value: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Bucket<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Bucket")
            .field("name", &self.store.name)
            .field("modify_attempts", &self.modify_attempts)
            .finish_non_exhaustive()
    }
}

impl<T> Bucket<T> {
    /// A typed view of a bound bucket (see [`Bus::ensure_kv`](crate::Bus::ensure_kv)).
    pub fn new(store: kv::Store) -> Bucket<T> {
        Bucket {
            store,
            modify_attempts: DEFAULT_MODIFY_ATTEMPTS,
            snapshot_idle_timeout: DEFAULT_SNAPSHOT_IDLE_TIMEOUT,
            _value: PhantomData,
        }
    }

    /// Binds an existing bucket by its full name, without creating it (readers such as the
    /// command-line tool). A bucket that does not exist is [`KvError::is_missing_bucket`].
    pub async fn open(jetstream: &Context, bucket: &str) -> Result<Bucket<T>, KvError> {
        let store = jetstream
            .get_key_value(bucket)
            .await
            .map_err(|source| KvError::Open {
                bucket: bucket.to_owned(),
                source,
            })?;
        Ok(Bucket::new(store))
    }

    /// How many rounds [`Bucket::modify`] tries before [`KvError::Contention`] (at least one).
    pub fn with_modify_attempts(mut self, attempts: usize) -> Bucket<T> {
        self.modify_attempts = attempts.max(1);
        self
    }

    /// How long [`Bucket::snapshot`] waits for the next key before it gives up.
    pub fn with_snapshot_idle_timeout(mut self, timeout: Duration) -> Bucket<T> {
        self.snapshot_idle_timeout = timeout;
        self
    }

    /// Another typed view of the same bucket (one bucket, several record types by key prefix).
    pub fn typed<U>(&self) -> Bucket<U> {
        Bucket {
            store: self.store.clone(),
            modify_attempts: self.modify_attempts,
            snapshot_idle_timeout: self.snapshot_idle_timeout,
            _value: PhantomData,
        }
    }

    /// The bucket's full name (`COUNTERSIGN_REGISTRAR`).
    pub fn name(&self) -> &str {
        &self.store.name
    }

    /// The async-nats store, for what this layer does not cover.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// The stored bytes of `key`, if it holds a value.
    pub async fn get_raw(&self, key: &Key) -> Result<Option<Bytes>, KvError> {
        self.store
            .get(key.as_str())
            .await
            .map_err(|source| self.read_error(key, source))
    }

    /// Stores `bytes` under `key` as they are unless the key holds a value (the first writer
    /// wins); whether ours was stored. For values kept byte for byte (a signed bundle's JSON).
    pub async fn create_raw(&self, key: &Key, bytes: Bytes) -> Result<bool, KvError> {
        match self.store.create(key.as_str(), bytes).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) if error.kind() == CreateErrorKind::InvalidKey => Err(KvError::InvalidKey {
                key: key.to_string(),
            }),
            Err(source) => Err(KvError::Create {
                bucket: self.store.name.clone(),
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Purges `key`, leaving a marker that expires after `ttl` (the bucket must allow markers,
    /// `limit_markers`).
    pub async fn purge_with_ttl(&self, key: &Key, ttl: Duration) -> Result<(), KvError> {
        self.store
            .purge_with_ttl(key.as_str(), ttl)
            .await
            .map_err(|source| KvError::Purge {
                bucket: self.store.name.clone(),
                key: key.to_string(),
                source,
            })
    }

    fn read_error(&self, key: &Key, source: kv::EntryError) -> KvError {
        KvError::Read {
            bucket: self.store.name.clone(),
            key: key.to_string(),
            source,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Bucket<T> {
    /// The value of `key` and its revision.
    pub async fn get(&self, key: &Key) -> Result<Versioned<T>, KvError> {
        let entry = self
            .store
            .entry(key.as_str())
            .await
            .map_err(|source| self.read_error(key, source))?;
        let Some(entry) = entry else {
            return Ok(Versioned {
                value: None,
                revision: 0,
            });
        };
        let value = match entry.operation {
            Operation::Put => Some(self.decode(key, entry.revision, &entry.value)?),
            Operation::Delete | Operation::Purge => None,
        };
        Ok(Versioned {
            value,
            revision: entry.revision,
        })
    }

    /// Stores `value` under `key` unless the key holds a value; then returns that one (the
    /// first writer wins, and every loser uses the winner's value).
    pub async fn create(&self, key: &Key, value: &T) -> Result<Created<T>, KvError> {
        let body = self.encode(key, value)?;
        match self.store.create(key.as_str(), body).await {
            Ok(revision) => Ok(Created::Stored(revision)),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                match self.get(key).await?.value {
                    Some(existing) => Ok(Created::AlreadyExisted(existing)),
                    None => Err(KvError::Vanished {
                        bucket: self.store.name.clone(),
                        key: key.to_string(),
                    }),
                }
            }
            Err(error) if error.kind() == CreateErrorKind::InvalidKey => Err(KvError::InvalidKey {
                key: key.to_string(),
            }),
            Err(source) => Err(KvError::Create {
                bucket: self.store.name.clone(),
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Writes `value` if the key's revision is still `revision` (0: never written).
    pub async fn update(&self, key: &Key, value: &T, revision: u64) -> Result<Cas, KvError> {
        let body = self.encode(key, value)?;
        match self.store.update(key.as_str(), body, revision).await {
            Ok(written) => Ok(Cas::Written(written)),
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => Ok(Cas::Conflict),
            Err(error) if error.kind() == UpdateErrorKind::InvalidKey => Err(KvError::InvalidKey {
                key: key.to_string(),
            }),
            Err(source) => Err(KvError::Write {
                bucket: self.store.name.clone(),
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Reads `key`, lets `change` decide, and writes by compare-and-set, reading again after a
    /// conflict, at most the bucket's modify attempts ([`KvError::Contention`] after that).
    /// `change` may run several times: it must not have side effects.
    pub async fn modify<R>(
        &self,
        key: &Key,
        mut change: impl FnMut(Versioned<T>) -> Change<T, R>,
    ) -> Result<Modified<R>, KvError> {
        let mut conflicts = 0;
        for _ in 0..self.modify_attempts {
            let current = self.get(key).await?;
            let revision = current.revision;
            match change(current) {
                Change::Keep(outcome) => {
                    return Ok(Modified {
                        outcome,
                        written: None,
                        conflicts,
                    });
                }
                Change::Write(value, outcome) => match self.update(key, &value, revision).await? {
                    Cas::Written(written) => {
                        return Ok(Modified {
                            outcome,
                            written: Some(written),
                            conflicts,
                        });
                    }
                    Cas::Conflict => conflicts += 1,
                },
            }
        }
        Err(KvError::Contention {
            bucket: self.store.name.clone(),
            key: key.to_string(),
            attempts: self.modify_attempts,
        })
    }

    /// The last value of every key under `prefix` (every key when `None`), delete and purge
    /// markers included, read through one ordered consumer. A pass that stalls or ends early is
    /// an error, never a partial snapshot.
    pub async fn snapshot(&self, prefix: Option<&Key>) -> Result<Snapshot<T>, KvError> {
        let failed = |source: async_nats::Error| KvError::Snapshot {
            bucket: self.store.name.clone(),
            source,
        };
        let filter_subject = match prefix {
            Some(prefix) => format!("{}{}.>", self.store.prefix, prefix),
            None => format!("{}>", self.store.prefix),
        };
        let consumer = self
            .store
            .stream
            .create_consumer(pull::OrderedConfig {
                description: Some(format!("countersign snapshot of {}", self.store.name)),
                filter_subject,
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|error| failed(error.into()))?;
        let mut snapshot = Vec::new();
        let mut remaining = consumer.cached_info().num_pending;
        if remaining == 0 {
            return Ok(snapshot);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| failed(error.into()))?;
        while remaining > 0 {
            // A key that expires (max_age) before it is delivered leaves the pending count
            // stale; a partial snapshot must never pass for a whole one, so give up instead.
            let message = tokio::time::timeout(self.snapshot_idle_timeout, messages.next())
                .await
                .map_err(|_| failed("the snapshot stalled before the last key".into()))?
                .ok_or_else(|| failed("the snapshot ended before the last key".into()))?
                .map_err(|error| failed(error.into()))?;
            let info = message.info().map_err(failed)?;
            remaining = info.pending;
            let revision = info.stream_sequence;
            let written_at = DateTime::<Utc>::from_timestamp(info.published.unix_timestamp(), 0)
                .unwrap_or_default();
            let Some(key) = message.subject.as_str().strip_prefix(&self.store.prefix) else {
                continue;
            };
            let value = match operation(message.headers.as_ref()) {
                Operation::Put => match serde_json::from_slice(&message.payload) {
                    Ok(value) => SnapshotValue::Value(value),
                    Err(error) => SnapshotValue::Corrupt(error),
                },
                Operation::Delete | Operation::Purge => SnapshotValue::Deleted,
            };
            snapshot.push(SnapshotEntry {
                key: key.to_owned(),
                revision,
                written_at,
                value,
            });
        }
        Ok(snapshot)
    }

    fn encode(&self, key: &Key, value: &T) -> Result<Bytes, KvError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|source| KvError::Serialize {
                bucket: self.store.name.clone(),
                key: key.to_string(),
                source,
            })
    }

    fn decode(&self, key: &Key, revision: u64, bytes: &[u8]) -> Result<T, KvError> {
        serde_json::from_slice(bytes).map_err(|source| KvError::Corrupt {
            bucket: self.store.name.clone(),
            key: key.to_string(),
            revision,
            source,
        })
    }
}

/// The KV operation a bucket message carries: a value, or a delete or purge marker (including
/// the markers the server places itself when a marker TTL expires).
fn operation(headers: Option<&async_nats::HeaderMap>) -> Operation {
    let Some(headers) = headers else {
        return Operation::Put;
    };
    if let Some(value) = headers.get(KV_OPERATION_HEADER) {
        return value.as_str().parse().unwrap_or(Operation::Put);
    }
    if headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .is_some()
    {
        return Operation::Purge;
    }
    Operation::Put
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tokens_are_the_subject_encoding_with_equals() {
        assert_eq!(
            key_token("6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14", "uid").unwrap(),
            "6f1c2b8e-4d3a-4e7f-9a51-2c8d0e7b3f14",
            "UIDs are kept byte-for-byte"
        );
        assert_eq!(key_token("a.b", "name").unwrap(), "a_b");
        assert_eq!(key_token("a_b", "name").unwrap(), "a=5Fb");
        assert_eq!(key_token("ü", "name").unwrap(), "=C3=BC");
        assert!(matches!(key_token("", "name"), Err(KvError::Key(_))));
        let key = Key::tokens([("ns.x", "namespace"), ("build", "name")]).unwrap();
        assert_eq!(key.as_str(), "ns_x.build");
    }

    #[test]
    fn raw_parts_must_already_be_valid_keys() {
        let prefix = Key::raw("node").unwrap();
        assert_eq!(
            prefix
                .with_raw("ip-10-0-0-1.ec2.internal")
                .unwrap()
                .as_str(),
            "node.ip-10-0-0-1.ec2.internal"
        );
        for bad in ["", "a..b", ".a", "a.", "a b", "a*", "a>", "ü"] {
            let error = Key::raw(bad).unwrap_err();
            assert!(matches!(error, KvError::InvalidKey { .. }), "{bad:?}");
            assert!(!error.is_transient());
        }
        assert!(prefix.with_raw("a b").is_err());
        assert_eq!(
            prefix.with_token("a b", "node").unwrap().as_str(),
            "node.a=20b"
        );
    }
}
