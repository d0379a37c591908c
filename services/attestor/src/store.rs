//! The attestor's own KV bucket: the verdicts of TaskRun steps until the TaskRun finishes
//! (attestor-internal JSON, not part of the event contract). The public buckets, attestations
//! and the name index, are `countersign_verdict::store`.
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `{PREFIX}_STEP_VERDICTS` | `{uid}.{pod uid}.{step}` | [`StepVerdict`] |
//!
//! Key tokens are encoded as the public buckets' ([`kv::key_token`]), read and written through
//! [`kv::Bucket`].

use countersign_events::kv::{self, Bucket, Key, KvError};
use countersign_events::{Bus, KvConfig, KvSpec};
use countersign_verdict::steps::StepVerdict;
use countersign_verdict::store::StoreError;

/// The step verdicts bucket's name after the prefix.
pub const STEP_VERDICTS_BUCKET: &str = "step_verdicts";

/// The step verdicts key: `{uid}.{pod uid}.{step}`.
pub fn step_key(uid: &str, pod_uid: &str, step: &str) -> Result<Key, KvError> {
    Key::tokens([
        (uid, "TaskRun UID"),
        (pod_uid, "pod UID"),
        (step, "step name"),
    ])
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
    steps: Bucket<StepVerdict>,
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
            steps: Bucket::new(bus.ensure_kv(&step_verdicts_spec(config)).await?),
        })
    }

    /// The recorded verdict of a step, if any.
    pub async fn get(
        &self,
        uid: &str,
        pod_uid: &str,
        step: &str,
    ) -> Result<Option<StepVerdict>, StoreError> {
        Ok(self.steps.get(&step_key(uid, pod_uid, step)?).await?.value)
    }

    /// Records a step's verdict unless one is recorded (first writer wins).
    pub async fn record(
        &self,
        uid: &str,
        pod_uid: &str,
        verdict: &StepVerdict,
    ) -> Result<StepRecorded, StoreError> {
        let key = step_key(uid, pod_uid, &verdict.step)?;
        Ok(match self.steps.create(&key, verdict).await? {
            kv::Created::Stored(_) => StepRecorded::Stored,
            kv::Created::AlreadyExisted(existing) => {
                StepRecorded::AlreadyRecorded(Box::new(existing))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_are_valid_kv_keys() {
        let key = step_key("uid-1", "pod-1", "step~x").unwrap().to_string();
        assert!(
            key.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-/_=.".contains(&byte)),
            "{key}"
        );
        assert_eq!(key, "uid-1.pod-1.step=7Ex");
    }
}
