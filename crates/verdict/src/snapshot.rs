//! What the TaskRun rule needs from a TaskRun object: each terminated step's type-1 entries with
//! its finish time (the signing time), and the merged `status.results`, read from Tekton's JSON
//! (tekton.dev/v1, or the v1beta1 form of Tekton's CloudEvents with `status.taskResults`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use countersign_identity::tekton::{
    ReasonCode, ResultValue, TerminationMessage, TerminationMessageError,
};
use countersign_tekton::{TaskRun, TaskRunStatus, parse_time};
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
    /// The result names the Task declares (`status.taskSpec.results[].name`): a declared result
    /// that no step signed is a rejection, not an empty success.
    pub declared_results: Vec<String>,
}

/// Why a TaskRun object could not be read. Reason code `malformed_results`.
#[derive(Debug, thiserror::Error)]
pub enum TaskRunSnapshotError {
    /// Not a TaskRun-shaped JSON object (or a result value is neither a string, an array of
    /// strings nor an object of strings).
    #[error("not a TaskRun object")]
    Json(#[source] serde_json::Error),
    /// A field verification needs is absent or empty.
    #[error("the TaskRun has no {0}")]
    Missing(&'static str),
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

impl TaskRunSnapshot {
    /// Reads a TaskRun JSON object (v1, or v1beta1 as in Tekton's CloudEvent `data.taskRun`),
    /// through the same types the watcher reads the API's objects with.
    pub fn from_json(value: serde_json::Value) -> Result<Self, TaskRunSnapshotError> {
        let taskrun: TaskRun = serde_json::from_value(value).map_err(TaskRunSnapshotError::Json)?;
        TaskRunSnapshot::from_taskrun(&taskrun)
    }

    /// What verification needs from a parsed TaskRun. The identity (namespace, name, UID), the
    /// creation time and every terminated step's finish time are required: without them the
    /// replay check has nothing to stand on.
    pub fn from_taskrun(taskrun: &TaskRun) -> Result<Self, TaskRunSnapshotError> {
        let required = |value: Option<&str>, field: &'static str| {
            value
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
                .ok_or(TaskRunSnapshotError::Missing(field))
        };
        let namespace = required(taskrun.metadata.namespace.as_deref(), "metadata.namespace")?;
        let name = required(taskrun.metadata.name.as_deref(), "metadata.name")?;
        let uid = required(taskrun.uid(), "metadata.uid")?;
        let created_at = taskrun
            .created_at()
            .ok_or(TaskRunSnapshotError::Missing("metadata.creationTimestamp"))?;
        let default_status = TaskRunStatus::default();
        let status = taskrun.status.as_deref().unwrap_or(&default_status);
        let mut steps = Vec::new();
        for step in &status.steps {
            let Some(terminated) = &step.terminated else {
                continue;
            };
            let step_name = if step.name.is_empty() {
                step.container.clone().unwrap_or_default()
            } else {
                step.name.clone()
            };
            let finished_at = terminated
                .finished_at
                .as_deref()
                .and_then(parse_time)
                .ok_or(TaskRunSnapshotError::Missing(
                    "status.steps[].terminated.finishedAt",
                ))?;
            let message = TerminationMessage::parse(terminated.message.as_deref().unwrap_or(""))
                .map_err(|source| TaskRunSnapshotError::Message {
                    step_name: step_name.clone(),
                    source,
                })?;
            steps.push(StepSignedResults {
                step_name,
                results: message.task_run_results(),
                finished_at,
            });
        }
        let results = status
            .results
            .iter()
            .map(|result| {
                let value =
                    ResultValue::deserialize(&result.value).map_err(TaskRunSnapshotError::Json)?;
                Ok(MergedResult {
                    name: result.name.clone(),
                    value,
                })
            })
            .collect::<Result<Vec<_>, TaskRunSnapshotError>>()?;
        Ok(Self {
            namespace,
            name,
            uid,
            created_at,
            completed_at: status.completion_time.as_deref().and_then(parse_time),
            steps,
            results,
            declared_results: status
                .task_spec
                .iter()
                .flat_map(|spec| &spec.results)
                .map(|result| result.name.clone())
                .collect(),
        })
    }

    /// Reads TaskRun JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, TaskRunSnapshotError> {
        Self::from_json(serde_json::from_str(text).map_err(TaskRunSnapshotError::Json)?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn taskrun(status: serde_json::Value) -> serde_json::Value {
        json!({
            "metadata": {
                "namespace": "ci",
                "name": "build",
                "uid": "0b3c",
                "creationTimestamp": "2026-01-01T00:00:00Z"
            },
            "status": status
        })
    }

    #[test]
    fn declared_results_come_from_the_task_spec() {
        let snapshot = TaskRunSnapshot::from_json(taskrun(
            json!({"taskSpec": {"results": [{"name": "a"}, {"name": "b"}]}}),
        ))
        .expect("a TaskRun");
        assert_eq!(snapshot.declared_results, ["a", "b"]);
        let undeclared = TaskRunSnapshot::from_json(taskrun(json!({}))).expect("a TaskRun");
        assert!(undeclared.declared_results.is_empty());
    }
}
