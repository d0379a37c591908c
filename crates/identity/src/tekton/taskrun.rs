//! TaskRun-level verification: every step's signed set, then the merged `status.results`.
//!
//! Each step signs independently with its own SVID fetch, so a TaskRun has one signed set per
//! step (step 1's manifest lists only the files present after step 1). Tekton merges results
//! across steps with the latest value winning; [`ResultsVerifier::verify_taskrun`] verifies every
//! step that wrote type-1 entries and then requires every merged result (signing keys aside,
//! which released Tekton shows as ordinary string results) to equal, canonically, the value
//! the last step that signed it signed (`results_mismatch` otherwise). A TaskRun whose steps
//! wrote nothing and whose merged results are empty gets [`TaskRunVerdict::NoResults`], a
//! verdict of its own; merged results without any signing material are `unsigned_results`.
//!
//! [`TaskRunSnapshot`] reads what this needs from a TaskRun object (tekton.dev/v1, or the
//! v1beta1 form of Tekton's CloudEvents with `status.taskResults`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::canonical::ResultValue;
use super::is_signing_key;
use super::termination::{TerminationMessage, TerminationMessageError};
use super::verify::{ReasonCode, ResultsVerifier, VerifiedResults, VerifiedValue, VerifyError};

/// One step's type-1 entries and when the step finished (the signing time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSignedResults {
    /// The step's name (`status.steps[].name`).
    pub step_name: String,
    /// Type-1 entries, key → raw value.
    pub results: BTreeMap<String, String>,
    /// `terminated.finishedAt`.
    pub finished_at: DateTime<Utc>,
}

/// One entry of the merged `status.results` (`{name, type, value}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MergedResult {
    /// Result name.
    pub name: String,
    /// The typed value.
    pub value: ResultValue,
}

/// A verified step.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedStep {
    /// The step's name.
    pub step_name: String,
    /// Its verified results.
    pub results: VerifiedResults,
}

/// A TaskRun whose steps and merged results all verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedTaskRun {
    steps: Vec<VerifiedStep>,
    results: BTreeMap<String, VerifiedValue>,
}

impl VerifiedTaskRun {
    /// Every step that signed, in order.
    pub fn steps(&self) -> &[VerifiedStep] {
        &self.steps
    }

    /// The TaskRun's results as the last signer of each signed them.
    pub fn results(&self) -> &BTreeMap<String, VerifiedValue> {
        &self.results
    }

    /// The last step's verified set (its SVID is the one a single-SVID summary should name).
    pub fn last_step(&self) -> Option<&VerifiedStep> {
        self.steps.last()
    }
}

/// The TaskRun-level verdict when nothing was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskRunVerdict {
    /// Every step's set and the merged results verified.
    Verified(VerifiedTaskRun),
    /// No step wrote a result and no result was merged: nothing to verify (not an error).
    NoResults,
}

/// How a merged result failed to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// No step signed a result of that name.
    NotSigned,
    /// The merged value differs from the value the last signer signed.
    ValueDiffers,
}

/// Why a TaskRun's results were rejected.
#[derive(Debug, thiserror::Error)]
pub enum TaskRunVerifyError {
    /// A step's signed set failed.
    #[error("step {step_name}: {source}")]
    Step {
        /// The step.
        step_name: String,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// A merged result is not what the steps signed.
    #[error("merged result {name} does not match what the steps signed ({mismatch:?})")]
    ResultsMismatch {
        /// The result.
        name: String,
        /// How.
        mismatch: Mismatch,
    },
    /// Merged results exist but no step wrote any signing material.
    #[error("results {names:?} carry no signing material")]
    UnsignedResults {
        /// The merged result names.
        names: Vec<String>,
    },
}

impl TaskRunVerifyError {
    /// The closed reason.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::Step { source, .. } => source.reason(),
            Self::ResultsMismatch { .. } => ReasonCode::ResultsMismatch,
            Self::UnsignedResults { .. } => ReasonCode::UnsignedResults,
        }
    }

    /// The event contract's reason code.
    pub fn reason_code(&self) -> &'static str {
        self.reason().as_str()
    }
}

impl ResultsVerifier<'_> {
    /// Verifies every step that wrote type-1 entries, then the merged results against what the
    /// steps signed (last signer wins).
    pub fn verify_taskrun(
        &self,
        steps: &[StepSignedResults],
        merged: &[MergedResult],
    ) -> Result<TaskRunVerdict, TaskRunVerifyError> {
        let merged_results: Vec<&MergedResult> = merged
            .iter()
            .filter(|result| !is_signing_key(&result.name))
            .collect();
        let signing_steps: Vec<&StepSignedResults> = steps
            .iter()
            .filter(|step| !step.results.is_empty())
            .collect();
        if signing_steps.is_empty() {
            if merged_results.is_empty() {
                return Ok(TaskRunVerdict::NoResults);
            }
            return Err(TaskRunVerifyError::UnsignedResults {
                names: merged_results
                    .iter()
                    .map(|result| result.name.clone())
                    .collect(),
            });
        }

        let mut verified_steps = Vec::with_capacity(signing_steps.len());
        let mut last_signed: BTreeMap<String, VerifiedValue> = BTreeMap::new();
        for step in signing_steps {
            let results = self
                .verify_step(&step.results, step.finished_at)
                .map_err(|source| TaskRunVerifyError::Step {
                    step_name: step.step_name.clone(),
                    source,
                })?;
            for (name, value) in results.results() {
                last_signed.insert(name.clone(), value.clone());
            }
            verified_steps.push(VerifiedStep {
                step_name: step.step_name.clone(),
                results,
            });
        }

        for result in merged_results {
            let signed = last_signed.get(&result.name).ok_or_else(|| {
                TaskRunVerifyError::ResultsMismatch {
                    name: result.name.clone(),
                    mismatch: Mismatch::NotSigned,
                }
            })?;
            if signed.canonical != result.value.canonical() {
                return Err(TaskRunVerifyError::ResultsMismatch {
                    name: result.name.clone(),
                    mismatch: Mismatch::ValueDiffers,
                });
            }
        }

        Ok(TaskRunVerdict::Verified(VerifiedTaskRun {
            steps: verified_steps,
            results: last_signed,
        }))
    }
}

// === TaskRunSnapshot ===

/// What verification needs from a TaskRun object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRunSnapshot {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.creationTimestamp`.
    pub created_at: DateTime<Utc>,
    /// `status.completionTime`, if done.
    pub completed_at: Option<DateTime<Utc>>,
    /// Terminated steps' type-1 entries, in step order (steps not terminated are left out).
    pub steps: Vec<StepSignedResults>,
    /// `status.results` (v1) or `status.taskResults` (v1beta1).
    pub results: Vec<MergedResult>,
}

/// Why a TaskRun object could not be read. Reason code `malformed_results`.
#[derive(Debug, thiserror::Error)]
pub enum TaskRunSnapshotError {
    /// Not a TaskRun-shaped JSON object (or a required field is missing).
    #[error("not a TaskRun object")]
    Json(#[source] serde_json::Error),
    /// A step's termination message does not parse.
    #[error("termination message of step {step_name} does not parse")]
    Message {
        /// The step.
        step_name: String,
        /// Why.
        #[source]
        source: TerminationMessageError,
    },
}

impl TaskRunSnapshotError {
    /// Always [`ReasonCode::MalformedResults`].
    pub fn reason(&self) -> ReasonCode {
        ReasonCode::MalformedResults
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTaskRun {
    metadata: WireMetadata,
    #[serde(default)]
    status: WireStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMetadata {
    namespace: String,
    name: String,
    uid: String,
    creation_timestamp: DateTime<Utc>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    #[serde(default)]
    completion_time: Option<DateTime<Utc>>,
    #[serde(default)]
    steps: Vec<WireStep>,
    #[serde(default)]
    results: Option<Vec<MergedResult>>,
    #[serde(default)]
    task_results: Option<Vec<MergedResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStep {
    #[serde(default)]
    name: String,
    #[serde(default)]
    container: String,
    #[serde(default)]
    terminated: Option<WireTerminated>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTerminated {
    #[serde(default)]
    message: String,
    finished_at: DateTime<Utc>,
}

impl TaskRunSnapshot {
    /// Reads a TaskRun JSON object (v1, or v1beta1 as in Tekton's CloudEvent `data.taskRun`).
    pub fn from_json(value: serde_json::Value) -> Result<Self, TaskRunSnapshotError> {
        let wire: WireTaskRun =
            serde_json::from_value(value).map_err(TaskRunSnapshotError::Json)?;
        let mut steps = Vec::new();
        for step in wire.status.steps {
            let Some(terminated) = step.terminated else {
                continue;
            };
            let step_name = if step.name.is_empty() {
                step.container
            } else {
                step.name
            };
            let message = TerminationMessage::parse(&terminated.message).map_err(|source| {
                TaskRunSnapshotError::Message {
                    step_name: step_name.clone(),
                    source,
                }
            })?;
            steps.push(StepSignedResults {
                step_name,
                results: message.task_run_results(),
                finished_at: terminated.finished_at,
            });
        }
        Ok(Self {
            namespace: wire.metadata.namespace,
            name: wire.metadata.name,
            uid: wire.metadata.uid,
            created_at: wire.metadata.creation_timestamp,
            completed_at: wire.status.completion_time,
            steps,
            results: wire
                .status
                .results
                .or(wire.status.task_results)
                .unwrap_or_default(),
        })
    }

    /// Reads TaskRun JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, TaskRunSnapshotError> {
        Self::from_json(serde_json::from_str(text).map_err(TaskRunSnapshotError::Json)?)
    }
}
