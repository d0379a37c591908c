//! The public KV layout of exports (the attestations in other tools' formats, see
//! [`crate::export`]): written by the attestor, read by anyone (`countersign export`, the
//! exporter).
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `{PREFIX}_EXPORTS` | `{uid}` | the export's manifest: the `export.stored` event, a structured-mode CloudEvent (JSON) |
//! | `{PREFIX}_EXPORTS` | `{uid}.attestation` | the results attestation as a Sigstore bundle v0.3 (JSON) |
//! | `{PREFIX}_EXPORTS` | `{uid}.vsa.{n}` | VSA `n` as a Sigstore bundle v0.3: `0` the TaskRun's, then one per artifact |
//!
//! Keys use the attestations bucket's token encoding ([`key_token`]). Every value is written
//! create-if-absent: the bundles first, the manifest last, so a manifest names only bundles that
//! are stored, and a replica that retries keeps what the first writer stored. Values are bounded
//! by what the attestor writes (one bundle is a few KiB; at most `1 + MAX_ARTIFACTS` VSAs per
//! TaskRun) and the bucket by its `max_bytes`.

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use countersign_events::data::ExportStored;
use countersign_events::{Bus, Event, KvConfig, KvSpec, SubjectError, Subjects};

use crate::store::{StoreError, key_token};

/// The exports bucket's name after the prefix.
pub const EXPORTS_BUCKET: &str = "exports";

/// The largest value [`ExportStore`] reads back (a bundle or a manifest).
pub const MAX_EXPORT_VALUE_BYTES: usize = 1024 * 1024;

/// The manifest key of TaskRun `uid`.
pub fn manifest_key(uid: &str) -> Result<String, SubjectError> {
    key_token(uid, "TaskRun UID")
}

/// The key of TaskRun `uid`'s results attestation bundle: `{uid}.attestation`.
pub fn bundle_key(uid: &str) -> Result<String, SubjectError> {
    Ok(format!("{}.attestation", key_token(uid, "TaskRun UID")?))
}

/// The key of TaskRun `uid`'s VSA number `index`: `{uid}.vsa.{index}`.
pub fn vsa_key(uid: &str, index: usize) -> Result<String, SubjectError> {
    Ok(format!("{}.vsa.{index}", key_token(uid, "TaskRun UID")?))
}

/// The declaration of the exports bucket.
pub fn exports_spec(config: &KvConfig) -> KvSpec {
    KvSpec {
        name: EXPORTS_BUCKET.to_owned(),
        description: "Countersign attestations as Sigstore bundles and SLSA VSAs, by TaskRun UID"
            .to_owned(),
        config: config.clone(),
    }
}

/// How [`ExportStore::create_manifest`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestCreated {
    /// Ours was stored.
    Stored,
    /// Another writer stored one first: this one.
    AlreadyExisted(Box<Event<ExportStored>>),
}

/// The exports bucket.
#[derive(Debug, Clone)]
pub struct ExportStore {
    exports: kv::Store,
    bucket: String,
}

impl ExportStore {
    /// Creates or updates the bucket (the attestor, at start-up).
    pub async fn ensure(bus: &Bus, config: &KvConfig) -> Result<ExportStore, StoreError> {
        Ok(ExportStore {
            exports: bus.ensure_kv(&exports_spec(config)).await?,
            bucket: bus.subjects().kv_bucket_name(EXPORTS_BUCKET)?,
        })
    }

    /// Binds the existing bucket (a reader, which never creates it).
    pub async fn open(jetstream: &Context, subjects: &Subjects) -> Result<ExportStore, StoreError> {
        let bucket = subjects.kv_bucket_name(EXPORTS_BUCKET)?;
        let exports =
            jetstream
                .get_key_value(&bucket)
                .await
                .map_err(|source| StoreError::Bind {
                    bucket: bucket.clone(),
                    source,
                })?;
        Ok(ExportStore { exports, bucket })
    }

    /// Stores a bundle under `key` unless the key holds one (the first writer's stays).
    pub async fn put_bundle(&self, key: &str, json: Vec<u8>) -> Result<(), StoreError> {
        match self.exports.create(key, Bytes::from(json)).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(StoreError::Create {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source,
            }),
        }
    }

    /// Stores `event` as TaskRun `uid`'s manifest unless one exists; then returns that one.
    pub async fn create_manifest(
        &self,
        uid: &str,
        event: &Event<ExportStored>,
    ) -> Result<ManifestCreated, StoreError> {
        let key = manifest_key(uid)?;
        let bytes = event
            .to_cloudevent()
            .map_err(|source| Box::new(source) as Box<dyn std::error::Error + Send + Sync>)
            .and_then(|cloudevent| {
                serde_json::to_vec(&cloudevent).map_err(|source| Box::new(source) as _)
            })
            .map_err(|source| StoreError::Encode {
                bucket: self.bucket.clone(),
                source,
            })?;
        match self.exports.create(key.as_str(), Bytes::from(bytes)).await {
            Ok(_) => Ok(ManifestCreated::Stored),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                match self.manifest(uid).await? {
                    Some(existing) => Ok(ManifestCreated::AlreadyExisted(Box::new(existing))),
                    None => Err(StoreError::Vanished {
                        bucket: self.bucket.clone(),
                        key,
                    }),
                }
            }
            Err(source) => Err(StoreError::Create {
                bucket: self.bucket.clone(),
                key,
                source,
            }),
        }
    }

    /// TaskRun `uid`'s manifest, if its export is stored.
    pub async fn manifest(&self, uid: &str) -> Result<Option<Event<ExportStored>>, StoreError> {
        let key = manifest_key(uid)?;
        self.value(&key)
            .await?
            .map(|bytes| {
                serde_json::from_slice::<cloudevents::Event>(&bytes)
                    .map_err(|source| Box::new(source) as Box<dyn std::error::Error + Send + Sync>)
                    .and_then(|cloudevent| {
                        Event::from_cloudevent(cloudevent).map_err(|source| Box::new(source) as _)
                    })
                    .map_err(|source| StoreError::Corrupt {
                        bucket: self.bucket.clone(),
                        key: key.clone(),
                        source,
                    })
            })
            .transpose()
    }

    /// The bundle JSON stored under `key` (a key a manifest names), if any.
    pub async fn bundle(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.value(key).await
    }

    async fn value(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let bytes = self
            .exports
            .get(key)
            .await
            .map_err(|source| StoreError::Read {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source,
            })?;
        match bytes {
            Some(bytes) if bytes.len() > MAX_EXPORT_VALUE_BYTES => Err(StoreError::Corrupt {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source: format!("{} bytes, more than {MAX_EXPORT_VALUE_BYTES}", bytes.len()).into(),
            }),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_keys_are_distinct_and_valid() {
        assert_eq!(manifest_key("uid-1").unwrap(), "uid-1");
        assert_eq!(bundle_key("uid-1").unwrap(), "uid-1.attestation");
        assert_eq!(vsa_key("uid-1", 0).unwrap(), "uid-1.vsa.0");
        assert_eq!(vsa_key("a.b", 2).unwrap(), "a_b.vsa.2");
        assert!(bundle_key("").is_err());
    }
}
