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
//! Keys use the attestations bucket's token encoding ([`kv::key_token`]). Every value is written
//! create-if-absent: the bundles first, the manifest last, so a manifest names only bundles that
//! are stored, and a replica that retries keeps what the first writer stored. Values are bounded
//! by what the attestor writes (one bundle is a few KiB; at most `1 + MAX_ARTIFACTS` VSAs per
//! TaskRun) and the bucket by its `max_bytes`.

use async_nats::jetstream::context::Context;
use bytes::Bytes;
use countersign_events::data::ExportStored;
use countersign_events::kv::{self, Bucket, Key, KvError};
use countersign_events::{Bus, Event, KvConfig, KvSpec, Subjects};

use crate::store::StoreError;

/// The exports bucket's name after the prefix.
pub const EXPORTS_BUCKET: &str = "exports";

/// The largest value [`ExportStore`] reads back (a bundle or a manifest).
pub const MAX_EXPORT_VALUE_BYTES: usize = 1024 * 1024;

/// The manifest key of TaskRun `uid`.
pub fn manifest_key(uid: &str) -> Result<String, KvError> {
    uid_key(uid).map(|key| key.as_str().to_owned())
}

/// The key of TaskRun `uid`'s results attestation bundle: `{uid}.attestation`.
pub fn bundle_key(uid: &str) -> Result<String, KvError> {
    Ok(uid_key(uid)?.with_raw("attestation")?.as_str().to_owned())
}

/// The key of TaskRun `uid`'s VSA number `index`: `{uid}.vsa.{index}`.
pub fn vsa_key(uid: &str, index: usize) -> Result<String, KvError> {
    Ok(uid_key(uid)?
        .with_raw(&format!("vsa.{index}"))?
        .as_str()
        .to_owned())
}

fn uid_key(uid: &str) -> Result<Key, KvError> {
    Key::tokens([(uid, "TaskRun UID")])
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

/// The exports bucket: manifests as structured-mode CloudEvents, bundles as the JSON the
/// attestor made (stored byte for byte).
#[derive(Debug, Clone)]
pub struct ExportStore {
    manifests: Bucket<cloudevents::Event>,
}

impl ExportStore {
    /// Creates or updates the bucket (the attestor, at start-up).
    pub async fn ensure(bus: &Bus, config: &KvConfig) -> Result<ExportStore, StoreError> {
        let store = bus.ensure_kv(&exports_spec(config)).await?;
        Ok(ExportStore {
            manifests: Bucket::new(store),
        })
    }

    /// Binds the existing bucket (a reader, which never creates it).
    pub async fn open(jetstream: &Context, subjects: &Subjects) -> Result<ExportStore, StoreError> {
        let bucket = Bucket::open(jetstream, &subjects.kv_bucket_name(EXPORTS_BUCKET)?).await?;
        Ok(ExportStore { manifests: bucket })
    }

    /// Stores a bundle under `key` unless the key holds one (the first writer's stays).
    pub async fn put_bundle(&self, key: &str, json: Vec<u8>) -> Result<(), StoreError> {
        self.manifests
            .create_raw(&Key::raw(key)?, Bytes::from(json))
            .await?;
        Ok(())
    }

    /// Stores `event` as TaskRun `uid`'s manifest unless one exists; then returns that one.
    pub async fn create_manifest(
        &self,
        uid: &str,
        event: &Event<ExportStored>,
    ) -> Result<ManifestCreated, StoreError> {
        let key = uid_key(uid)?;
        let cloudevent = event.to_cloudevent().map_err(|source| StoreError::Encode {
            bucket: self.manifests.name().to_owned(),
            source,
        })?;
        match self.manifests.create(&key, &cloudevent).await? {
            kv::Created::Stored(_) => Ok(ManifestCreated::Stored),
            kv::Created::AlreadyExisted(existing) => Ok(ManifestCreated::AlreadyExisted(Box::new(
                self.manifest_of(&key, existing)?,
            ))),
        }
    }

    /// TaskRun `uid`'s manifest, if its export is stored.
    pub async fn manifest(&self, uid: &str) -> Result<Option<Event<ExportStored>>, StoreError> {
        let key = uid_key(uid)?;
        self.value(&key)
            .await?
            .map(|bytes| {
                serde_json::from_slice::<cloudevents::Event>(&bytes)
                    .map_err(|source| StoreError::Corrupt {
                        bucket: self.manifests.name().to_owned(),
                        key: key.to_string(),
                        source: Box::new(source),
                    })
                    .and_then(|cloudevent| self.manifest_of(&key, cloudevent))
            })
            .transpose()
    }

    /// The bundle JSON stored under `key` (a key a manifest names), if any.
    pub async fn bundle(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.value(&Key::raw(key)?).await
    }

    /// The export event a stored manifest holds.
    fn manifest_of(
        &self,
        key: &Key,
        cloudevent: cloudevents::Event,
    ) -> Result<Event<ExportStored>, StoreError> {
        Event::from_cloudevent(cloudevent).map_err(|source| StoreError::Corrupt {
            bucket: self.manifests.name().to_owned(),
            key: key.to_string(),
            source: Box::new(source),
        })
    }

    /// The stored bytes of `key`, refused past [`MAX_EXPORT_VALUE_BYTES`].
    async fn value(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        match self.manifests.get_raw(key).await? {
            Some(bytes) if bytes.len() > MAX_EXPORT_VALUE_BYTES => Err(StoreError::Corrupt {
                bucket: self.manifests.name().to_owned(),
                key: key.to_string(),
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
