//! The attestor's own KV bucket: the verdicts of TaskRun steps until the TaskRun finishes
//! (attestor-internal JSON, not part of the event contract). The public buckets, attestations
//! and the name index, are `countersign_verdict::store`.
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `{PREFIX}_STEP_VERDICTS` | `{uid}.{pod uid}.{step}` | [`StepVerdict`] |
//!
//! Key tokens are encoded as the public buckets' ([`key_token`]).

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use countersign_events::{Bus, KvConfig, KvSpec, SubjectError};
use countersign_verdict::steps::StepVerdict;
use countersign_verdict::store::{StoreError, key_token};

/// The step verdicts bucket's name after the prefix.
pub const STEP_VERDICTS_BUCKET: &str = "step_verdicts";

/// The step verdicts key: `{uid}.{pod uid}.{step}`.
pub fn step_key(uid: &str, pod_uid: &str, step: &str) -> Result<String, SubjectError> {
    Ok(format!(
        "{}.{}.{}",
        key_token(uid, "TaskRun UID")?,
        key_token(pod_uid, "pod UID")?,
        key_token(step, "step name")?
    ))
}

/// The declaration of the step verdicts bucket.
pub fn step_verdicts_spec(config: &KvConfig) -> KvSpec {
    KvSpec {
        name: STEP_VERDICTS_BUCKET.to_owned(),
        description: "Countersign: verdicts of TaskRun steps until the TaskRun finishes".to_owned(),
        config: config.clone(),
    }
}

/// The step verdicts bucket.
#[derive(Debug, Clone)]
pub struct StepStore {
    steps: kv::Store,
    bucket: String,
}

/// How [`StepStore::record`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRecorded {
    /// Ours was stored.
    Stored,
    /// Another writer recorded this step first: its verdict.
    AlreadyRecorded(Box<StepVerdict>),
}

impl StepStore {
    /// Creates or updates the bucket.
    pub async fn ensure(bus: &Bus, config: &KvConfig) -> Result<StepStore, StoreError> {
        Ok(StepStore {
            steps: bus.ensure_kv(&step_verdicts_spec(config)).await?,
            bucket: bus.subjects().kv_bucket_name(STEP_VERDICTS_BUCKET)?,
        })
    }

    /// The recorded verdict of a step, if any.
    pub async fn get(
        &self,
        uid: &str,
        pod_uid: &str,
        step: &str,
    ) -> Result<Option<StepVerdict>, StoreError> {
        let key = step_key(uid, pod_uid, step)?;
        let bytes = self
            .steps
            .get(key.as_str())
            .await
            .map_err(|source| StoreError::Read {
                bucket: self.bucket.clone(),
                key: key.clone(),
                source,
            })?;
        bytes
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                    bucket: self.bucket.clone(),
                    key: key.clone(),
                    source: Box::new(source),
                })
            })
            .transpose()
    }

    /// Records a step's verdict unless one is recorded (first writer wins).
    pub async fn record(
        &self,
        uid: &str,
        pod_uid: &str,
        verdict: &StepVerdict,
    ) -> Result<StepRecorded, StoreError> {
        let key = step_key(uid, pod_uid, &verdict.step)?;
        let bytes: Bytes = serde_json::to_vec(verdict)
            .map_err(|source| StoreError::Encode {
                bucket: self.bucket.clone(),
                source: Box::new(source),
            })?
            .into();
        match self.steps.create(key.as_str(), bytes).await {
            Ok(_) => Ok(StepRecorded::Stored),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                match self.get(uid, pod_uid, &verdict.step).await? {
                    Some(existing) => Ok(StepRecorded::AlreadyRecorded(Box::new(existing))),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_are_valid_kv_keys() {
        let key = step_key("uid-1", "pod-1", "step~x").unwrap();
        assert!(
            key.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-/_=.".contains(&byte)),
            "{key}"
        );
        assert_eq!(key, "uid-1.pod-1.step=7Ex");
    }
}
