//! What the TaskRun rule needs from a TaskRun object: each terminated step's type-1 entries with
//! its finish time (the signing time), and the merged `status.results`, read from Tekton's JSON
//! (tekton.dev/v1, or the v1beta1 form of Tekton's CloudEvents with `status.taskResults`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use countersign_identity::tekton::{
    ReasonCode, ResultValue, TerminationMessage, TerminationMessageError,
};
use serde::Deserialize;

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
